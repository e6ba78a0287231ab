"""Serving's preflight: what a replica or worker would refuse is refused before Ray starts (one
line from the command, not a replica's traceback minutes later); then, when there is work for
Ray (``batch`` with nothing left to make starts none), Ray is joined and its CPUs shared out
between the replicas or workers.

Ray is imported only when it is joined (:mod:`.cluster`), so checking costs no Ray start.
"""

from __future__ import annotations

import dataclasses

from ..errors import InputError
from ..runtime.backends import ORT_PROVIDERS, create_backend
from ..specs import SVD_COMPONENTS
from .cluster import connect, cpus_each
from .worker import WorkerOptions


def preflight(bundle, worker: WorkerOptions, count: int, what: str) -> None:
    """Check ``worker`` against ``bundle`` and ``count``, without Ray.

    Args:
        bundle: the opened bundle ``worker.bundle`` names.
        worker: what each replica or worker loads.
        count: how many (``--replicas``, ``--workers``).
        what: ``"replicas"`` or ``"workers"``, as the messages name them.
    Raises:
        InputError: a precision the backend does not run, or ``count`` below 1.
        BundleError: an ``onnxruntime*`` backend's precision lacks a graph of SVD's four components.
        BackendUnavailableError: an ``onnxruntime*`` backend whose provider this machine lacks.
    """
    if worker.backend in ORT_PROVIDERS:  # cheap: checks the precision and the providers, loads nothing
        create_backend(worker.backend, bundle, worker.precision)
        for name in SVD_COMPONENTS:  # the block-caching graphs are optional
            bundle.graph(name, worker.precision)
    if count < 1:
        raise InputError(f"--{what} must be at least 1, got {count}")


def join(worker: WorkerOptions, count: int, what: str, cpus: float | None = None,
         address: str | None = None) -> WorkerOptions:
    """Join Ray and give each of the ``count`` replicas or workers its CPUs.

    Args:
        worker: what each loads (its ``cpus`` are replaced), checked by :func:`preflight`.
        count, what: as :func:`preflight`'s.
        cpus: CPUs each asks Ray for; None shares the cluster's out (:func:`.cluster.cpus_each`).
        address: the Ray cluster to join; None starts an embedded local Ray (:func:`.cluster.connect`).
    Returns:
        ``worker`` with its CPUs.
    Raises:
        InputError: a cluster that cannot be joined, or fewer GPUs or CPUs than asked for.
    """
    connect(address)
    return dataclasses.replace(worker, cpus=cpus_each(count, cpus, worker.needs_gpu, what))
