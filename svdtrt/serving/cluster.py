"""Joining Ray: an embedded local Ray by default, or an existing cluster (``--address``), and how
many CPUs each replica or worker gets."""

from __future__ import annotations

import logging
import math

from ..errors import InputError, first_line
from ..progress import status

log = logging.getLogger(__name__)

#: Where Ray (2.60) logs, on every start of a local cluster, that it turned token authentication on:
#: its secure default, a notice and not a problem, so svdtrt shows it at INFO (``-v``) instead of as
#: a warning among its own lines (issue 22). Ray's other warnings stay warnings.
_RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"

#: How :func:`connect` joined Ray in this process: "local", "cluster", or None (it did not).
_joined_here: str | None = None


class _TokenNoticeAtInfo(logging.Filter):
    """Ray's token-authentication notice, logged at INFO on svdtrt's logger instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith("Token authentication is enabled"):
            log.info("Ray: %s", record.getMessage())
            return False
        return True


def connect(address: str | None = None) -> None:
    """Start an embedded local Ray (``address`` None) or join the cluster at ``address``
    (``auto``, ``HOST:PORT`` of a ``ray start --head``, or ``ray://HOST:10001``); nothing if this
    process is already connected.

    The local Ray runs without its dashboard: it is the slowest part of Ray's start and the heaviest
    in memory; start a cluster (``ray start --head``) and pass ``--address`` to have it. A ticking
    status line shows while Ray starts (:func:`svdtrt.progress.status`).

    Raises:
        InputError: the cluster at ``address`` cannot be reached, or the local Ray did not start in
            the 30 s Ray gives its node (a machine under heavy load).
    """
    import ray

    if ray.is_initialized():
        return
    token_log = logging.getLogger(_RAY_TOKEN_LOGGER)
    if not any(isinstance(f, _TokenNoticeAtInfo) for f in token_log.filters):
        token_log.addFilter(_TokenNoticeAtInfo())
    if address is not None:
        _check_reachable(address)
    global _joined_here
    try:
        if address is None:
            with status("starting a local Ray", logger=log):
                # "local": a new Ray of our own, even where a "ray start" cluster runs on this machine
                ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
            _joined_here = "local"
        else:
            with status(f"joining the Ray cluster at {address}", logger=log):
                ray.init(address=address, logging_level=logging.WARNING)
            _joined_here = "cluster"
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"cannot join the Ray cluster at '{address}' ({first_line(e)[:200]}); start one with "
                         "'ray start --head' or leave out --address to run on this machine") from None
    except Exception as e:  # Ray raises a bare Exception when its node does not come up in time
        if "timed out during startup" not in str(e):
            raise
        raise InputError("Ray's node did not start within the 30 s Ray waits for it (this machine may be busy); "
                         "run the command again, or start Ray once with 'ray start --head' and pass "
                         "--address auto") from None


def disconnect() -> None:
    """Leave Ray if :func:`connect` joined it in this process (a Ray joined by the caller before,
    as the tests' shared one, is left alone), under a status line: Ray's own shutdown at the
    interpreter's exit stops the local Ray's processes with nothing on screen for seconds."""
    global _joined_here
    if not _joined_here:
        return
    import ray

    with status("stopping the local Ray" if _joined_here == "local" else "leaving the Ray cluster", logger=log):
        ray.shutdown()
    _joined_here = None


def _check_reachable(address: str) -> None:
    """Refuse at once a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing listens: Ray itself
    retries for minutes before it gives up."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise InputError(f"cannot join the Ray cluster at '{address}' (nothing answers: {e.strerror or e}); start "
                         "one with 'ray start --head' or leave out --address to run on this machine") from None


def cpus_each(count: int, given: float | None, gpu: bool, what: str) -> float:
    """CPUs to ask Ray for per replica or worker: ``given``, else 1 next to a GPU, else the
    cluster's CPUs shared evenly between the ``count`` (at least 1: :func:`.preflight.preflight`
    checks it before Ray starts) of them.

    Raises:
        InputError: ``given`` not positive, or more GPU ``what`` than the cluster has GPUs (each
            takes one whole GPU).
    """
    import ray

    if given is not None and not given > 0:
        raise InputError(f"CPUs per {what[:-1]} must be more than 0, got {given}")
    resources = ray.cluster_resources()
    if gpu and resources.get("GPU", 0) < count:
        raise InputError(f"{count} {what} on a GPU backend need {count} GPUs (one each); the Ray cluster has "
                         f"{int(resources.get('GPU', 0))}: lower --{what} or add GPU nodes")
    if given is not None:
        if given > 1 and given != int(given):
            raise InputError(f"CPUs per {what[:-1]} above 1 must be a whole number (Ray's rule), got {given}")
        if given * count > resources.get("CPU", 0):  # Ray would leave the rest pending, waiting for CPUs
            raise InputError(f"{count} {what} x {given:g} CPUs need {given * count:g} CPUs; the Ray cluster has "
                             f"{resources.get('CPU', 0):g}: lower --{what} or --cpus-per-{what[:-1]}")
        return given
    if gpu:
        return 1.0
    share = resources.get("CPU", 1) / count
    # Ray takes whole numbers above 1 and fractions (to 1e-4) below
    return float(math.floor(share)) if share >= 1 else max(math.floor(share * 1e4) / 1e4, 1e-4)
