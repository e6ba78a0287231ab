"""The ``svdtrt`` command line: parse, set up logging, run the command, and map its errors to exit
codes.

Every :class:`SvdtrtError` becomes one line on stderr and exit code 2; a missed accuracy
threshold in ``check`` is exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys

from ..errors import SvdtrtError
from .parser import build_parser

#: Each command's module in this package, whose function of the command's name runs it. A module
#: is imported only when its command runs: ``svdtrt --help`` imports none of them, nor what they
#: import (tests/test_imports.py).
COMMANDS = {"export": "bundle_commands", "convert": "bundle_commands", "calibrate": "bundle_commands",
            "quantize": "bundle_commands", "build": "bundle_commands", "verify": "bundle_commands",
            "run": "clip_commands", "check": "clip_commands", "bench": "bench", "serve": "serving",
            "batch": "serving", "tune": "tune", "info": "info", "demo": "demo", "doctor": "doctor"}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 1 (a failed check or verify), 2 (bad input, one
    line on stderr) or 130 (Ctrl-C, at any point: parsing, a command's lazy imports, its work)."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # argparse exits on --help and on bad arguments; return its code instead
            return e.code
        args.argv = sys.argv[1:] if argv is None else list(argv)  # recorded by bench
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # a handler, where none is set
        logging.getLogger().setLevel(logging.INFO if args.verbose else logging.WARNING)
        _quiet_libraries(args.verbose)
        # Each command imports its modules lazily, inside this try: a Ctrl-C during an import
        # is handled as any other. -v's log lines go through tqdm, so they do not tear a bar.
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[logging.getLogger()]) if args.verbose else contextlib.nullcontext():
            command = getattr(importlib.import_module(f"{__package__}.{COMMANDS[args.command]}"),
                              args.command)
            return command(args)
    except SvdtrtError as e:
        print(f"svdtrt: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] != "onnxruntime":
            raise
        from ..environment import ORT_HINT

        print(f"svdtrt: error: ONNX Runtime is not installed; {ORT_HINT}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("svdtrt: interrupted; nothing was left half-written", file=sys.stderr)
        return 130


def _quiet_libraries(verbose: bool) -> None:
    """Silence the libraries' advisory warnings (e.g. transformers' torchvision notice) unless -v,
    through the variables they read when first imported (so no command imports them for this)."""
    if verbose:
        return
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


if __name__ == "__main__":
    sys.exit(main())
