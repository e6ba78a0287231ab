"""``svdtrt serve`` and ``svdtrt batch``: clips on Ray (:mod:`svdtrt.serving`, imported when the
command runs: only the serving layer imports Ray)."""

from __future__ import annotations

import logging
import sys

from ..errors import InputError
from ..progress import loading, status
from .args import BACKEND, PROFILE, REPLICAS, SAMPLING, WORK, WORKERS

log = logging.getLogger(__name__)


def serve(args) -> int:
    """``svdtrt serve``: the HTTP service until Ctrl-C or SIGTERM; exit code 0. Its options are
    checked before Ray starts, and the service's modules (Ray Serve, FastAPI) imported after."""
    with loading("serve", "ONNX Runtime and the bundle's manifest", log):
        from ..bundle.store import Bundle

    if args.max_queued < 0 or not args.request_timeout > 0:
        raise InputError("--max-queued must be 0 or more and --request-timeout more than 0")
    bundle = Bundle.open(args.bundle)
    profile = PROFILE.parse(args, bundle)
    worker = REPLICAS.join(args, REPLICAS.parse(args, bundle, BACKEND.parse(args, profile)))
    with status("svdtrt serve: loading Ray Serve and FastAPI", logger=log):
        from ..serving.app import ServeOptions, serve_forever

    serve_forever(ServeOptions(worker, replicas=args.replicas, max_queued=args.max_queued, profile=args.profile),
                  args.host, args.port, args.request_timeout)
    return 0


def batch(args) -> int:
    """``svdtrt batch``: a clip per image on Ray workers; exit code 0, or 1 where some clip failed
    (a re-run retries those). Settings, images and output names are checked before Ray starts."""
    import signal

    with loading("batch", "ONNX Runtime and the bundle's manifest", log):
        from ..bundle.store import Bundle
        from ..media.images import list_images
        from ..serving.batch import JOURNAL, BatchJob, check_out, output_names, run_batch
        from ..serving.cluster import disconnect

    bundle = Bundle.open(args.bundle)
    profile = PROFILE.parse(args, bundle)
    choice = BACKEND.parse(args, profile)
    settings = SAMPLING.parse(args, bundle, WORK.parse(args), profile)
    SAMPLING.before_sampling(bundle, settings, [(choice.backend, choice.precision, choice.device)])
    images = list_images(args.images)
    output_names(images, args.format)  # before Ray starts
    check_out(args.out)
    worker = WORKERS.parse(args, bundle, choice)

    def join():
        """Ray joined only when some clip is left to make: a finished batch starts no Ray."""
        joined = WORKERS.join(args, worker)
        # SIGTERM (docker stop, systemd, a job scheduler) stops the batch as Ctrl-C does, in one
        # line: Ray's own handler, set when Ray started, exits mid-call and prints Ray's C++ stack.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        return joined

    summary = run_batch(BatchJob(worker, images, args.out, settings, args.workers, args.format), join=join)
    disconnect()  # before the summary: the last line is not followed by seconds of Ray's shutdown
    print(f"{len(summary.made)} clip(s) made, {len(summary.skipped)} already in {args.out}, "
          f"{len(summary.failed)} failed, in {summary.seconds:.1f} s; records in {args.out / JOURNAL}")
    if summary.failed:
        print(f"failed: {', '.join(summary.failed)}; run the same command again to retry them", file=sys.stderr)
        return 1
    return 0
