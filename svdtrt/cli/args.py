"""Argument groups: options that belong together, each group adding them to a parser and parsing
them back into the one value a command uses, as Polygraphy's (``tools/args/base.py: BaseArgs``).
A group is stateless beyond its configuration, so each exists once (:data:`SAMPLING`, ...) for
the parser (:mod:`.parser`) and the commands to share. Parsing imports what it builds lazily:
``svdtrt --help`` imports no torch (``tests/test_imports.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import TYPE_CHECKING

from ..precisions import NAMES as PRECISIONS
from ..runtime.backends import BACKENDS
from ..runtime.limits import FPS_RANGE, MAX_STEPS, MOTION_BUCKET_RANGE
from ..runtime.schedulers import DEFAULT_SCHEDULER, SCHEDULERS

if TYPE_CHECKING:
    from ..bundle.manifest import Profile
    from ..runtime.settings import SamplingSettings
    from ..serving.worker import WorkerOptions


class ArgGroup:
    """Options that belong together: :meth:`add_to_parser` adds them, :meth:`parse` turns the
    parsed options into the value they stand for (some groups need more to build it: the opened
    bundle, another group's value)."""

    #: The section of ``--help`` the options are listed under; None lists them with the
    #: command's own options.
    title: str | None = None

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        self.add_options(parser.add_argument_group(self.title) if self.title else parser)

    def add_options(self, group) -> None:
        raise NotImplementedError

    def parse(self, args: argparse.Namespace, *context):
        raise NotImplementedError


def _size_range(text: str) -> tuple[int, int, int]:
    """``N`` or ``MIN:OPT:MAX`` -> (min, opt, max)."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not N or MIN:OPT:MAX") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not parts[0] <= parts[1] <= parts[2]:
        raise argparse.ArgumentTypeError(f"'{text}' is not N or MIN:OPT:MAX with MIN <= OPT <= MAX")
    if parts[0] < 1:
        raise argparse.ArgumentTypeError(f"sizes must be at least 1, got '{text}'")
    return tuple(parts)


def _finite_float(text: str) -> float:
    """A float option: a finite number (``nan``, ``inf`` are refused; ranges are checked by
    :meth:`svdtrt.runtime.settings.SamplingSettings.check`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


class ShapeRangeArgs(ArgGroup):
    """The clip-size ranges of ``export`` and ``build``, each ``N`` or ``MIN:OPT:MAX``; ``defaults_from``:
    whose sizes are taken where none is given (``--help``'s words: "the model's")."""

    def __init__(self, defaults_from: str):
        self.defaults_from = defaults_from

    def add_options(self, p) -> None:
        p.add_argument("--frames", type=_size_range,
                       help=f"frames: N or MIN:OPT:MAX (default: {self.defaults_from})")
        p.add_argument("--height", type=_size_range, help="height in pixels: N or MIN:OPT:MAX")
        p.add_argument("--width", type=_size_range, help="width in pixels: N or MIN:OPT:MAX")

    def parse(self, args) -> tuple:
        """(frames, height, width): each a (min, opt, max), or None for the default."""
        return args.frames, args.height, args.width


class SamplingArgs(ArgGroup):
    """The clip's size, seed, steps and conditioning: :class:`~svdtrt.runtime.settings.SamplingSettings`
    (with the work-reduction values of :class:`WorkArgs`)."""

    title = "sampling (defaults: the bundle's shape and diffusers' pipeline defaults)"
    #: What a refusal of a size outside the bundle's exported range advises.
    OUTSIDE_RANGE_ADVICE = ("pass --allow-outside-range to run it anyway (TensorRT engines built for the "
                            "bundle's profiles will refuse it), or export a bundle for this size")

    def add_options(self, g) -> None:
        g.add_argument("--seed", type=int, default=0, help="seed of the CPU torch.Generator, 0 to 2**64-1 (default 0)")
        g.add_argument("--steps", type=int, help=f"denoising steps, 1 to {MAX_STEPS} (default: the scheduler's, "
                                                 "25 for euler)")
        g.add_argument("--frames", type=int, help="frames of the clip (default and range: the bundle's)")
        g.add_argument("--height", type=int, help="clip height in pixels (default and range: the bundle's)")
        g.add_argument("--width", type=int, help="clip width in pixels (default and range: the bundle's)")
        g.add_argument("--allow-outside-range", action="store_true",
                       help="run a --frames/--height/--width outside the bundle's exported range (ONNX Runtime "
                            "may take it; TensorRT engines built for the bundle's profiles refuse it)")
        g.add_argument("--fps", type=int, default=7, help="frames per second (conditioning and mp4), "
                                                          f"{FPS_RANGE[0]} to {FPS_RANGE[1]} (default 7)")
        g.add_argument("--motion-bucket-id", type=int, default=127,
                       help=f"motion conditioning, {MOTION_BUCKET_RANGE[0]} to {MOTION_BUCKET_RANGE[1]} "
                            "(default 127)")
        g.add_argument("--noise-aug-strength", type=_finite_float, default=0.02,
                       help="conditioning noise, >= 0 (default 0.02)")
        g.add_argument("--min-guidance-scale", type=_finite_float, default=1.0,
                       help="guidance at the first frame, >= 0 (default 1)")
        g.add_argument("--max-guidance-scale", type=_finite_float, default=3.0,
                       help="guidance at the last frame, >= 0; <= 1 turns guidance off (default 3)")
        g.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode call (default: all)")

    def parse(self, args, bundle, work: dict, profile: Profile | None = None) -> SamplingSettings:
        """The checked settings of a clip from ``bundle`` (its default size and range) with the
        ``work`` reduction (:meth:`WorkArgs.parse`, or one of :meth:`WorkListArgs.parse`) over the
        ``profile``'s (:meth:`ProfileArgs.parse`; the options given win).

        Raises:
            InputError: a setting outside its limits, or a size outside the bundle's exported
                range unless ``--allow-outside-range``.
        """
        from ..runtime.settings import SamplingSettings

        return SamplingSettings.for_bundle(
            bundle, refuse_outside_range=None if args.allow_outside_range else self.OUTSIDE_RANGE_ADVICE,
            profile=profile and profile.settings, seed=args.seed, steps=args.steps, frames=args.frames,
            height=args.height, width=args.width, fps=args.fps, motion_bucket_id=args.motion_bucket_id, noise_aug_strength=args.noise_aug_strength,
            min_guidance_scale=args.min_guidance_scale, max_guidance_scale=args.max_guidance_scale,
            decode_chunk_size=args.decode_chunk_size, **work)

    @staticmethod
    def before_sampling(bundle, settings, runs, reference: bool = False, clips: int = 1,
                        require_graphs: bool = True) -> None:
        """The last checks before any model load or sampling: that each ONNX Runtime run has
        the graphs of its precision (the backend opens them lazily, under the clip's bar; unless
        ``require_graphs`` is False, as for ``bench``, whose rows without graphs are skipped), each
        run's host memory (``runs``: (backend, precision, device) each; ``reference``: diffusers'
        clip is made too; ``clips``: clips held at once), then a warning on stderr of a size
        outside the bundle's range that ``--allow-outside-range`` let through. The warning comes
        last, so a refused command prints its one line only.

        Raises:
            BundleError: a graph of the run's precision is missing (the message says how to make it).
            InputError: a run whose host memory estimate does not fit.
        """
        from ..runtime.backends import ORT_PROVIDERS
        from ..runtime.memory import check_host_memory, estimate_host_memory
        from ..specs import SVD_COMPONENTS

        for backend, precision, _ in runs:
            if require_graphs and backend in ORT_PROVIDERS:
                for name in SVD_COMPONENTS:
                    bundle.graph(name, precision)
        for backend, precision, device in runs:
            check_host_memory(estimate_host_memory(bundle, settings, backend, precision, device, reference, clips),
                              _clip_words(settings, backend, precision))
        outside = bundle.outside_range(settings.frames, settings.height, settings.width)
        if outside:
            print(f"svdtrt: warning: {outside}; running it as --allow-outside-range asks: ONNX Runtime may take "
                  "it, TensorRT engines built for the bundle's profiles will refuse it", file=sys.stderr)


def _clip_words(settings, backend: str, precision: str) -> str:
    return f"a {settings.frames}-frame {settings.width}x{settings.height} clip on {backend} ({precision})"


def _gib_amount(text: str) -> float:
    """A positive, finite number of GiB."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of GiB")
    return value


class DeviceMemoryArgs(ArgGroup):
    """``--device-memory GB``: the budget a clip on a GPU backend is held to before sampling, by
    the estimate of :func:`svdtrt.runtime.memory.estimate_device_memory`."""

    def add_options(self, p) -> None:
        p.add_argument("--device-memory", type=_gib_amount, metavar="GB",
                       help="GPU backends: print the clip's estimated peak device memory and refuse a clip "
                            "over GB GiB (default: the GPU's free memory, where there is a GPU)")

    def check(self, args, bundle, settings, choice: BackendChoice) -> None:
        """Print the device-memory estimate of a clip on a GPU backend (``choice``) and refuse a
        clip over the budget, before any model load or sampling.

        Raises:
            InputError: the estimate exceeds ``--device-memory`` (or the GPU's free memory), or
                ``--device-memory`` was given for a backend that computes on the CPU.
        """
        from ..errors import InputError
        from ..runtime.memory import check_device_memory, estimate_device_memory

        budget = None if args.device_memory is None else int(args.device_memory * 2**30)
        estimate = estimate_device_memory(bundle, settings, choice.backend, choice.precision, choice.device,
                                          choice.one_engine_at_a_time)
        if estimate is None:
            if budget is not None:
                raise InputError(f"--device-memory applies to a GPU backend; {choice.backend} "
                                 f"{'on ' + choice.device + ' ' if choice.backend == 'torch' else ''}computes on "
                                 "the CPU (host memory is checked instead)")
            return
        print(f"device memory: {estimate.describe()}")
        check_device_memory(estimate, _clip_words(settings, choice.backend, choice.precision), budget)


class WorkArgs(ArgGroup):
    """Fewer and cheaper UNet calls, one value each: the ``scheduler``, ``cache_interval`` and
    ``guidance_steps`` of :class:`~svdtrt.runtime.settings.SamplingSettings`."""

    lists = False

    @property
    def title(self) -> str:
        return "work reduction" + (" (comma-separated lists: one row per combination)" if self.lists else "")

    def add_options(self, g) -> None:
        lists = self.lists
        choices = ", ".join(f"{n} ({c.summary}, {c.default_steps} steps)" for n, c in SCHEDULERS.items())
        # Single values default to None, so that a --profile's value stands where none is given.
        g.add_argument("--scheduler", default=DEFAULT_SCHEDULER if lists else None,
                       choices=None if lists else tuple(SCHEDULERS),
                       help=f"diffusers scheduler: {choices} (default {DEFAULT_SCHEDULER})")
        g.add_argument("--cache-interval", default="1" if lists else None, type=str if lists else int,
                       help="block caching: the full UNet every N-th step, the shallow UNet between (default 1: "
                            "no caching)")
        g.add_argument("--guidance-steps", default=None, type=str if lists else int,
                       help="classifier-free guidance on the first K steps only, batch-1 UNet calls after "
                            "(default: every step" + ("; 'all' in a list" if lists else "") + ")")

    def parse(self, args) -> dict:
        """The three values as :class:`~svdtrt.runtime.settings.SamplingSettings` keywords (None:
        not given)."""
        return {"scheduler": args.scheduler, "cache_interval": args.cache_interval,
                "guidance_steps": args.guidance_steps}


class WorkListArgs(WorkArgs):
    """``bench``'s work reduction: a comma-separated list of each, one row per combination."""

    lists = True

    def parse(self, args) -> list[dict]:
        """One :meth:`WorkArgs.parse` value per combination, the full-compute base first
        (:func:`svdtrt.benchmark.variants.work_variants`).

        Raises:
            InputError: an empty list, an unknown scheduler, or an item that is not an integer.
        """
        from ..benchmark.variants import work_variants

        return work_variants(args.scheduler, args.cache_interval, args.guidance_steps)


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """What runs the components: ``--backend``, ``--precision`` and the backend's options, by the
    names of :func:`~svdtrt.runtime.backends.create_backend`'s arguments (and of the serving
    layer's ``WorkerOptions``); ``model``: the ``--model`` name, None for the bundle's own."""

    backend: str
    precision: str | None
    device: str
    model: str | None
    cuda_graph: bool
    one_engine_at_a_time: bool

    @property
    def options(self) -> dict:
        """The backend-specific options, as ``create_backend`` keywords."""
        return {"device": self.device, "cuda_graph": self.cuda_graph, "one_engine_at_a_time": self.one_engine_at_a_time}


class BackendArgs(ArgGroup):
    """The backend, precision and backend options of ``run``, ``check``, ``serve`` and ``batch``
    (``tune``'s without ``--precision``: it takes a list of them).

    Args:
        precision: add ``--precision``.
    """

    #: The defaults where neither an option nor a profile gives a value.
    BACKEND, PRECISION = "onnxruntime", "fp32"

    def __init__(self, precision: bool = True):
        self.precision = precision

    def add_options(self, p) -> None:
        # backend and precision default to None, so that a --profile's value stands where none is given
        p.add_argument("--backend", choices=BACKENDS,
                       help=f"what runs the components (default {self.BACKEND}, on CPU; onnxruntime-cuda and "
                            "onnxruntime-trt need onnxruntime-gpu; tensorrt runs engines from 'svdtrt build')")
        if self.precision:
            p.add_argument("--precision", choices=PRECISIONS,
                           help=f"graph or engine precision to run (default {self.PRECISION})")
        p.add_argument("--cuda-graph", action="store_true",
                       help="tensorrt: replay a static-profile UNet engine from a CUDA graph")
        p.add_argument("--one-engine-at-a-time", action="store_true",
                       help="tensorrt: keep only the engine in use loaded (Jetson's unified memory)")
        p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                       help="torch: where the PyTorch modules run (default cpu)")
        p.add_argument("--model", help="source model for the torch backend and the reference "
                                       "(default: the one recorded in the bundle's manifest)")

    def parse(self, args, profile: Profile | None = None) -> BackendChoice:
        """The options given, else the ``profile``'s backend and precision, else the defaults
        (precision None without ``--precision``)."""
        settings = profile.settings if profile else None
        backend = args.backend or (settings.backend if settings else self.BACKEND)
        precision = (args.precision or (settings.precision if settings else self.PRECISION)) if self.precision else None
        return BackendChoice(backend, precision, args.device, args.model, args.cuda_graph, args.one_engine_at_a_time)


class ProfileArgs(ArgGroup):
    """``--profile NAME``: a bundle's named sampling settings from ``svdtrt tune --apply`` (not
    ``build --profile``, TensorRT's optimization profile). Its backend, precision and work
    reduction stand where no option gives one (:meth:`BackendArgs.parse`, :meth:`SamplingArgs.parse`).

    Args:
        use: what the command does with the profile, for ``--help``.
    """

    def __init__(self, use: str = "its backend, precision, scheduler, steps, cache interval and guidance steps, "
                                  "where no option gives one (default: none, the exact settings)"):
        self.use = use

    def add_options(self, p) -> None:
        p.add_argument("--profile", metavar="NAME",
                       help=f"the bundle's tuned profile NAME (from 'svdtrt tune --apply'; 'svdtrt info BUNDLE' "
                            f"lists them): {self.use}")

    def parse(self, args, bundle) -> Profile | None:
        """The bundle's profile named ``--profile``, checked against the bundle; None without one.

        Raises:
            InputError: the bundle has no such profile (the message lists those it has).
            BundleError: the profile was measured with other weights or another model.
        """
        if args.profile is None:
            return None
        from ..bundle.profiles import bundle_profile

        return bundle_profile(bundle, args.profile)


class RayArgs(ArgGroup):
    """How many replicas (``serve``) or workers (``batch``), their CPUs, and the Ray cluster:
    the serving layer's ``WorkerOptions``, checked before Ray starts.

    Args:
        what: ``"replicas"`` or ``"workers"``: the option (``--replicas``, ``--cpus-per-replica``)
            and the messages' word.
    """

    title = "Ray (an embedded local Ray unless --address)"

    def __init__(self, what: str):
        self.what = what

    def add_options(self, g) -> None:
        what = self.what
        g.add_argument(f"--{what}", type=int, default=1,
                       help=f"{what}, each with one warm backend: one GPU each for a GPU backend (default 1)")
        g.add_argument(f"--cpus-per-{what[:-1]}", type=float, dest="cpus",
                       help="CPUs each asks Ray for, and its ONNX Runtime / PyTorch threads "
                            "(default: the cluster's CPUs shared evenly; 1 next to a GPU)")
        g.add_argument("--address", help="join this Ray cluster (auto, HOST:PORT of 'ray start --head', "
                                         "ray://HOST:10001) instead of starting a local Ray")

    def parse(self, args, bundle, backend: BackendChoice) -> WorkerOptions:
        """What each replica or worker loads (``backend`` on ``bundle``), checked before Ray starts by
        :func:`svdtrt.serving.preflight.preflight`, whose InputError, BundleError and
        BackendUnavailableError it raises."""
        from ..serving.preflight import preflight
        from ..serving.worker import WorkerOptions

        worker = WorkerOptions(bundle=str(bundle.path.resolve()), **dataclasses.asdict(backend))
        preflight(bundle, worker, getattr(args, self.what), self.what)
        return worker

    def join(self, args, worker: WorkerOptions) -> WorkerOptions:
        """``worker`` with its CPUs on the Ray cluster of ``--address`` (a local Ray without it),
        joined here: :func:`svdtrt.serving.preflight.join`, whose InputError it raises."""
        from ..serving.preflight import join

        return join(worker, getattr(args, self.what), self.what, args.cpus, args.address)


EXPORT_SHAPES = ShapeRangeArgs("the model's")
BUILD_SHAPES = ShapeRangeArgs("the bundle's")
SAMPLING = SamplingArgs()
WORK = WorkArgs()
WORK_LISTS = WorkListArgs()
DEVICE_MEMORY = DeviceMemoryArgs()
BACKEND = BackendArgs()
TUNE_BACKEND = BackendArgs(precision=False)
PROFILE = ProfileArgs()
BENCH_PROFILE = ProfileArgs("also measured: its settings as a work row, its backend and precision (beside fp32) as the "
                            "rows unless --backends or --precisions say otherwise")
REPLICAS = RayArgs("replicas")
WORKERS = RayArgs("workers")
