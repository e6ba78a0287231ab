"""Benchmarks: per-stage and per-clip latency, peak memory and accuracy of every backend and
precision, side by side with diffusers' own pipeline (``svdtrt bench``; ``benchmarks/``).

:func:`run_benchmark` measures; :func:`write_results` writes JSON, Markdown and PNG plots;
:mod:`.variants` reads the command line's lists of what to measure.
"""

from .report import FILES, markdown, write_results
from .results import RESULT_SCHEMA, BenchResults, Row
from .runner import BACKENDS, PRECISIONS, REFERENCE, bundle_precisions, run_benchmark
from .variants import work_variants

__all__ = ["BACKENDS", "FILES", "PRECISIONS", "REFERENCE", "RESULT_SCHEMA", "BenchResults", "Row", "bundle_precisions",
           "markdown", "run_benchmark", "work_variants", "write_results"]
