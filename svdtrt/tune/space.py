"""What ``svdtrt tune`` searches: the candidates (a precision, a scheduler with its step count, a
cache interval and guidance steps on one backend) and the quality floors (docs/tuning.md).

A candidate is a profile's settings (:class:`~svdtrt.bundle.manifest.ProfileSettings`), so the
one a tune recommends is stored as it was measured. Defaults come from the registries: the
bundle's precisions that the backend runs (:mod:`svdtrt.precisions`), each scheduler's
``search_steps`` (:data:`~svdtrt.runtime.schedulers.SCHEDULERS`), and the cache intervals and
guidance fractions below.
"""

from __future__ import annotations

import dataclasses
import math

from ..bundle.manifest import Floor as FloorEntry
from ..bundle.manifest import ProfileSettings
from ..errors import InputError
from ..media.metrics import PSNR_CAP_DB
from ..precisions import NAMES as PRECISION_NAMES
from ..precisions import PRECISIONS
from ..runtime.lists import items, parse_integers, parse_names
from ..runtime.schedulers import DEFAULT_SCHEDULER, SCHEDULERS, scheduler_choice
from ..runtime.settings import SamplingSettings
from ..specs import CACHING_COMPONENTS

#: Cache intervals a default tune tries where the bundle has the block-caching graphs: every
#: other step to every fourth (docs/benchmarks.md measures 2 and 3 on ``mid``; DeepCache's own
#: uniform schedules go to 5 with a visible cost).
CACHE_INTERVALS = (1, 2, 3, 4)
#: Guidance steps a default tune tries, as shares of the candidate's steps (rounded up): guidance
#: on every step, on the first three quarters, on the first half.
GUIDANCE_SHARES = (1.0, 0.75, 0.5)
#: How much closer to the reference the ``balanced`` floor is than the user's (``fast``): 10 dB of
#: PSNR (a tenth of the squared error) and a tenth of the SSIM deficit (1 - SSIM).
BALANCED_DB, BALANCED_SSIM_FACTOR = 10.0, 0.1


@dataclasses.dataclass(frozen=True)
class Floor:
    """A named quality floor: the worst frame over every tuning image against the reference clip.

    Attributes:
        name: the profile it chooses (``fast``, ``balanced``, ``exact``).
        min_psnr_db, min_ssim: the bounds (dB; SSIM); None sets none.
    """

    name: str
    min_psnr_db: float | None
    min_ssim: float | None

    @property
    def identical(self) -> bool:
        """Only a clip identical to the reference meets it (PSNR at the cap): the reference alone."""
        return self.min_psnr_db is not None and self.min_psnr_db >= PSNR_CAP_DB

    def met(self, psnr_db: float, ssim: float) -> bool:
        return ((self.min_psnr_db is None or psnr_db >= self.min_psnr_db)
                and (self.min_ssim is None or ssim >= self.min_ssim))

    def entry(self) -> FloorEntry:
        """The floor as a profile records it."""
        return FloorEntry(min_psnr_db=self.min_psnr_db, min_ssim=self.min_ssim)

    def describe(self) -> str:
        return "identical to the reference" if self.identical else self.entry().describe()


def floors(min_psnr_db: float | None, min_ssim: float | None) -> list[Floor]:
    """The floors a tune searches at once, loosest first: ``fast`` (the user's), ``balanced``
    (:data:`BALANCED_DB`, :data:`BALANCED_SSIM_FACTOR` closer) and ``exact`` (identical to the
    reference: PSNR at :data:`~svdtrt.media.metrics.PSNR_CAP_DB`, SSIM 1; only the reference meets it).

    Raises:
        InputError: neither bound given, or one outside its range (PSNR above 0 dB, up to the cap;
            SSIM above 0, up to 1).
    """
    if min_psnr_db is None and min_ssim is None:
        raise InputError("give a quality floor: --min-psnr DB (e.g. 30) and/or --min-ssim S (e.g. 0.95), the worst "
                         "frame over the tuning images against the full-compute fp32 clip")
    if min_psnr_db is not None and not (math.isfinite(min_psnr_db) and 0 < min_psnr_db <= PSNR_CAP_DB):
        raise InputError(f"--min-psnr must be above 0 and at most {PSNR_CAP_DB:g} dB, got {min_psnr_db}")
    if min_ssim is not None and not (math.isfinite(min_ssim) and 0 < min_ssim <= 1):
        raise InputError(f"--min-ssim must be above 0 and at most 1, got {min_ssim}")
    balanced_psnr = None if min_psnr_db is None else min(PSNR_CAP_DB, min_psnr_db + BALANCED_DB)
    balanced_ssim = None if min_ssim is None else 1 - (1 - min_ssim) * BALANCED_SSIM_FACTOR
    return [Floor("fast", min_psnr_db, min_ssim), Floor("balanced", balanced_psnr, balanced_ssim),
            Floor("exact", PSNR_CAP_DB, 1.0)]


def reference_candidate(backend: str) -> ProfileSettings:
    """The full-compute fp32 candidate: what ``run`` does without options (the exact profile)."""
    return ProfileSettings(backend=backend, precision="fp32", scheduler=DEFAULT_SCHEDULER,
                           steps=scheduler_choice(DEFAULT_SCHEDULER).default_steps, cache_interval=1)


#: The settings a candidate sets; the rest of :class:`SamplingSettings` is the clip's.
WORK_FIELDS = ("scheduler", "steps", "cache_interval", "guidance_steps")


def clip_fields(base: SamplingSettings) -> dict[str, str | int | float | None]:
    """The clip's settings but the work a candidate sets: size, seed, conditioning, by name."""
    return {k: v for k, v in vars(base).items() if k not in WORK_FIELDS}


def clip_settings(base: SamplingSettings, c: ProfileSettings) -> SamplingSettings:
    """The settings of candidate ``c``'s clip: ``base`` (size, seed, conditioning) with its work."""
    return dataclasses.replace(base, scheduler=c.scheduler, steps=c.steps, cache_interval=c.cache_interval,
                               guidance_steps=c.guidance_steps)


def candidates(bundle, backend: str, base: SamplingSettings, precisions: str | None = None,
               schedulers: str | None = None, cache_intervals: str | None = None,
               guidance_steps: str | None = None) -> list[ProfileSettings]:
    """The candidate space, the reference (:func:`reference_candidate`) first, each candidate once.

    Args:
        bundle: the opened bundle (its precisions and block-caching graphs).
        backend: the backend every candidate runs on.
        base: the clip's settings (:meth:`SamplingSettings.check` checks each candidate's).
        precisions: comma-separated; default the bundle's precisions that ``backend`` runs.
        schedulers: comma-separated ``NAME`` (its ``search_steps``, else its default steps) or
            ``NAME:STEPS``; default every scheduler with ``search_steps``.
        cache_intervals: comma-separated integers; default :data:`CACHE_INTERVALS` where the
            bundle has the block-caching graphs of every precision, else 1.
        guidance_steps: comma-separated integers or ``all``; default :data:`GUIDANCE_SHARES` of
            each candidate's steps. K >= steps is every step (the same clip as ``all``).
    Raises:
        InputError: an unknown name, a precision the backend does not run, a bad number, or
            settings outside their limits.
        BundleError: the bundle lacks a precision's graphs or the block-caching graphs asked for
            (the message is the command that makes them).
    """
    runs = tuple(p for p in PRECISION_NAMES if backend in PRECISIONS[p].backends)
    chosen = parse_names(precisions, PRECISION_NAMES, "precision")
    if chosen is None:
        chosen = [p for p in bundle.precisions() if p in runs]
    for p in chosen:
        if p not in runs:
            raise InputError(f"the {backend} backend runs {', '.join(runs)}, not {p}")
        if backend != "torch":  # the torch backend runs the source model's modules, not graphs
            bundle.graph("unet", p)  # BundleError with the command that makes it
    has_caching = backend == "torch" or all(c in bundle.manifest.components and p in bundle.manifest.components[c].graphs
                                            for c in CACHING_COMPONENTS for p in chosen)
    if cache_intervals is None:
        intervals = list(CACHE_INTERVALS if has_caching else (1,))
    else:
        intervals = parse_integers(cache_intervals, "cache-interval")
        if any(i != 1 for i in intervals) and backend != "torch":
            for p in chosen:
                for component in CACHING_COMPONENTS:
                    bundle.graph(component, p)
    guidance = None if guidance_steps is None else parse_integers(guidance_steps, "guidance-steps", ("all",))
    found = [reference_candidate(backend)]
    for p in chosen:
        for scheduler, steps in _scheduler_steps(schedulers):
            ks = guidance if guidance is not None else [math.ceil(share * steps) for share in GUIDANCE_SHARES]
            for interval in intervals:
                for k in ks:
                    work = {"scheduler": scheduler, "steps": steps, "cache_interval": interval,
                            "guidance_steps": None if k is None or k >= steps else k}
                    dataclasses.replace(base, **work).check(bundle.dims)  # one line for a value out of range
                    found.append(ProfileSettings(backend=backend, precision=p, **work))
    return list(dict.fromkeys(found))


def _scheduler_steps(text: str | None) -> list[tuple[str, int]]:
    """``--schedulers``' (name, steps) pairs (see :func:`candidates`)."""
    if text is None:
        return [(name, steps) for name, choice in SCHEDULERS.items() for steps in choice.search_steps]
    pairs = []
    for item in items(text):
        name, _, steps = item.partition(":")
        choice = scheduler_choice(name.strip())
        if not steps:
            pairs += [(choice.name, s) for s in choice.search_steps or (choice.default_steps,)]
            continue
        try:
            pairs.append((choice.name, int(steps)))
        except ValueError:
            raise InputError(f"--schedulers takes NAME or NAME:STEPS items, got '{item}'") from None
    if not pairs:
        raise InputError(f"--schedulers is empty; choose from {', '.join(SCHEDULERS)}")
    return pairs
