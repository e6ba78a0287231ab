"""A bundle's named profiles (``manifest.profiles``, made by ``svdtrt tune --apply``): what a
profile was measured with, and the one place a profile is read for use, refused when the bundle
no longer has the weights it was measured with (docs/architecture.md, "Tuning")."""

from __future__ import annotations

import hashlib

from .. import hints
from ..errors import BundleError, InputError
from .manifest import MeasuredWith, Profile

#: The floor a hint suggests where a bundle has no profile yet to take one from (an example:
#: 30 dB worst-frame PSNR against the full-compute fp32 clip).
EXAMPLE_MIN_PSNR_DB = 30.0


def weights_identity(bundle, precision: str) -> str | None:
    """One sha256 over every component's graph of ``precision`` (each graph file and its weights
    file, by their recorded sha256: :meth:`~svdtrt.bundle.store.Bundle.graph_identity`; no
    hashing), or None when the bundle has no graph of ``precision``. It changes whenever any of
    those graphs is exported, converted or quantized again."""
    components = sorted(name for name, entry in bundle.manifest.components.items() if precision in entry.graphs)
    if not components:
        return None
    h = hashlib.sha256()
    for component in components:
        h.update(f"{component}:{bundle.graph_identity(component, precision)}\n".encode())
    return h.hexdigest()


def measured_with(bundle, precisions: list[str]) -> MeasuredWith:
    """The bundle's config hashes and the weights identity of its graphs of each of ``precisions``
    (each must be in the bundle)."""
    return MeasuredWith(config_hashes=dict(bundle.manifest.config_hashes),
                        weights={p: weights_identity(bundle, p) for p in dict.fromkeys(precisions)})


def stale_reason(bundle, profile: Profile) -> str | None:
    """Why ``profile`` no longer describes ``bundle`` (another model, or other weights of a
    precision it ran), or None when it does."""
    if profile.measured_with.config_hashes != bundle.manifest.config_hashes:
        return "it was measured on another model (the config hashes differ)"
    for precision, identity in profile.measured_with.weights.items():
        now = weights_identity(bundle, precision)
        if now != identity:
            return (f"the bundle has no {precision} graphs now" if now is None else
                    f"it was measured with other {precision} weights than the bundle has now (a graph exported, "
                    "converted or quantized again since, or a profile copied from another bundle)")
    return None


def bundle_profile(bundle, name: str) -> Profile:
    """The bundle's profile ``name``, checked against the bundle.

    Raises:
        InputError: the bundle has no profile of that name (the message lists those it has, or
            the command that makes them).
        BundleError: the profile was measured with another model or other weights
            (:func:`stale_reason`); the message is the command that measures it again.
    """
    profiles = bundle.manifest.profiles
    if name not in profiles:
        if not profiles:
            raise InputError(f"bundle '{bundle.path}' has no profiles; make them with "
                             f"'{hints.tune(bundle.path, EXAMPLE_MIN_PSNR_DB)}' "
                             f"({EXAMPLE_MIN_PSNR_DB:g} dB is an example floor)")
        raise InputError(f"bundle '{bundle.path}' has no profile '{name}': choose from {', '.join(profiles)}")
    profile = profiles[name]
    reason = stale_reason(bundle, profile)
    if reason:
        again = hints.tune(bundle.path, profile.tuned_for.min_psnr_db, profile.tuned_for.min_ssim,
                           profile.settings.backend, force=True)
        raise BundleError(f"profile '{name}' of bundle '{bundle.path}' is out of date: {reason}; measure it again "
                          f"with '{again}'")
    return profile
