"""``svdtrt bench``: latency, memory and accuracy of backends and precisions against diffusers
(:mod:`svdtrt.benchmark`)."""

from __future__ import annotations

import logging

from ..progress import loading
from .args import BENCH_PROFILE, SAMPLING, WORK_LISTS

log = logging.getLogger(__name__)


def bench(args) -> int:
    """``svdtrt bench``: every row asked for measured, the results written to ``--out`` and printed
    as Markdown; exit code 0. The lists, the output directory, the settings of every row and each
    row's host memory are checked before anything is measured. ``--profile NAME`` adds the profile's
    settings as a work row and, unless ``--backends``/``--precisions`` are given, measures its backend
    and its precision beside fp32."""
    import shlex

    with loading("bench", "PyTorch, diffusers and ONNX Runtime", log):
        import torch

        from ..benchmark import BACKENDS, PRECISIONS, markdown, run_benchmark, write_results
        from ..benchmark.report import BENCH_FOLDER
        from ..bundle.store import Bundle
        from ..media.images import load_image, sample_image
        from ..models.loading import load_model, reference_model
        from ..runtime.lists import parse_names

    backends = parse_names(args.backends, BACKENDS, "backend")
    precisions = parse_names(args.precisions, PRECISIONS, "precision")
    BENCH_FOLDER.check_target(args.out, args.force)  # before minutes of measuring
    bundle = Bundle.open(args.bundle)
    image = load_image(args.image) if args.image else sample_image()
    profile = BENCH_PROFILE.parse(args, bundle)
    # the full-compute base first, then one row per other work-reduction combination
    settings, *work = [SAMPLING.parse(args, bundle, w) for w in WORK_LISTS.parse(args)]
    if profile:
        given = {"scheduler": None, "cache_interval": None, "guidance_steps": None}  # the lists' are not the profile's
        work.append(SAMPLING.parse(args, bundle, given, profile))
        backends = backends or [profile.settings.backend]
        precisions = precisions or list(dict.fromkeys(["fp32", profile.settings.precision]))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # rows run one at a time: each must fit on its own
    rows = [(b, p, device) for b in backends or BACKENDS for p in precisions or bundle.precisions()]
    SAMPLING.before_sampling(bundle, settings, rows, reference=True, require_graphs=False)
    model = reference_model(bundle, load_model(args.model) if args.model else None)
    results = run_benchmark(bundle, image, settings, model, backends, precisions, args.warmup, args.repeat,
                            device, args.threads, command=shlex.join(["svdtrt", *args.argv]), progress=True,
                            work=work)
    write_results(results, args.out, args.force)
    print(markdown(results), end="")
    print(f"results written to {args.out}/ in {results.seconds:.1f} s")
    return 0
