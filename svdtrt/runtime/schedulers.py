"""The schedulers ``--scheduler`` offers: diffusers' own, as data (name, class, config changes,
default steps), so the CLI's help reads them without importing torch or diffusers.

Each is made from the bundle's scheduler config (the released SVD one, :data:`svdtrt.models.presets.
SVD_SCHEDULER`) with ``from_config``, as one swaps schedulers on diffusers' pipeline
(``pipe.scheduler = Cls.from_config(pipe.scheduler.config)``), plus the entry's changes:

- ``euler``: ``EulerDiscreteScheduler``, SVD's own (EDM sigmas from 700 to 0.002 on a Karras
  schedule, continuous timesteps ``0.25 ln(sigma)``, v-prediction). 25 steps: diffusers' default.
- ``edm-euler``: ``EDMEulerScheduler``, the same Euler method written in EDM's own terms; it
  needs ``sigma_data = 1`` to reproduce SVD's preconditioning (``c_in = 1 / sqrt(sigma^2 + 1)``,
  what ``EulerDiscreteScheduler.scale_model_input`` divides by). 25 steps.
- ``edm-dpmsolver``: ``EDMDPMSolverMultistepScheduler``, DPM-Solver++ (2M) on the same EDM
  sigmas (``sigma_data = 1`` as above): a second-order multistep solver, run at 15 steps by
  default (DPM-Solver++ reaches first-order Euler's quality in fewer steps: Lu et al.,
  "DPM-Solver++", 2022, section 6; its tables use 10-20 steps). Quality at 15 steps on real
  weights is for users to measure (``svdtrt bench --scheduler``); presets have random weights.
- ``euler-ancestral``: ``EulerAncestralDiscreteScheduler`` from the same config, as diffusers
  users swap it in. It knows neither Karras sigmas nor continuous timesteps: it runs the
  discrete beta schedule (sigma up to about 14.6) and feeds the UNet integer timesteps, which
  SVD was not trained on; it is offered for comparison and for models fine-tuned that way.
  25 steps. Its noise is drawn from the clip's seeded generator (see :func:`step_kwargs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SchedulerChoice:
    """One ``--scheduler`` entry.

    Attributes:
        name: the CLI name.
        diffusers_class: the class in ``diffusers``.
        default_steps: ``--steps`` when not given.
        config: changes applied over the bundle's scheduler config.
        summary: one line for ``--help``.
        stochastic: its step draws fresh noise, which then comes from the clip's generator
            (:func:`step_kwargs`).
        search_steps: the step counts ``svdtrt tune`` tries by default (docs/tuning.md), its
            default first; empty leaves the scheduler out of a default tune.
    """

    name: str
    diffusers_class: str
    default_steps: int
    config: dict = field(default_factory=dict)
    summary: str = ""
    stochastic: bool = False
    search_steps: tuple[int, ...] = ()


# A default tune tries SVD's Euler from its 25 steps down to 10 and DPM-Solver++ from its 15 down
# to 8 (DPM-Solver++'s tables use 10-20 steps); it leaves out edm-euler (the same method as euler)
# and euler-ancestral (discrete timesteps SVD was not trained on).
SCHEDULERS: dict[str, SchedulerChoice] = {s.name: s for s in (
    SchedulerChoice("euler", "EulerDiscreteScheduler", 25, {}, "SVD's own EDM Euler",
                    search_steps=(25, 20, 15, 12, 10)),
    SchedulerChoice("edm-euler", "EDMEulerScheduler", 25, {"sigma_data": 1.0}, "EDM Euler"),
    SchedulerChoice("edm-dpmsolver", "EDMDPMSolverMultistepScheduler", 15,
                    {"sigma_data": 1.0, "algorithm_type": "dpmsolver++", "solver_order": 2},
                    "EDM DPM-Solver++ (2M)", search_steps=(15, 10, 8)),
    SchedulerChoice("euler-ancestral", "EulerAncestralDiscreteScheduler", 25, {},
                    "Euler ancestral (discrete timesteps)", stochastic=True),
)}
#: The scheduler a bundle's own config describes (SVD's).
DEFAULT_SCHEDULER = "euler"


def make_scheduler(name: str, config: dict):
    """diffusers' scheduler ``name`` (:data:`SCHEDULERS`) from ``config`` plus the entry's changes.

    Raises:
        InputError: ``name`` is not in :data:`SCHEDULERS`.
    """
    import inspect

    import diffusers

    choice = scheduler_choice(name)
    cls = getattr(diffusers, choice.diffusers_class)
    # Only the keys the class takes: from_config warns about the others (SVD's Euler-only keys).
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in {**config, **choice.config}.items() if k in accepted})


def scheduler_choice(name: str) -> SchedulerChoice:
    """The entry called ``name``.

    Raises:
        InputError: unknown name (the message lists the choices).
    """
    from ..errors import InputError

    try:
        return SCHEDULERS[name]
    except KeyError:
        raise InputError(f"unknown scheduler '{name}': choose from {', '.join(SCHEDULERS)}") from None


def step_kwargs(name: str, generator) -> dict:
    """Keyword arguments for the ``step`` of scheduler ``name``: for a stochastic one (Euler
    ancestral), the clip's generator, so that its noise comes from the seeded stream after the
    initial latents and the same seed gives the same clip on every backend. diffusers' pipeline
    passes none (its ancestral noise comes from torch's global generator, which no seed argument
    fixes); the parity test gives diffusers' scheduler the pipeline's generator to match. The
    others get none, as in diffusers: Euler draws (and, with ``s_churn = 0``, discards) noise every
    step, which would otherwise be drawn on the CPU and copied to the device."""
    return {"generator": generator} if scheduler_choice(name).stochastic else {}


def use_scheduler(pipe, name: str, generator) -> None:
    """Give diffusers' ``StableVideoDiffusionPipeline`` ``pipe`` scheduler ``name`` made as the loop
    makes it (from the pipeline's scheduler config); for a stochastic one, its ``step`` draws from
    ``generator``, the generator passed to the pipeline call, as the loop's does (:func:`step_kwargs`)."""
    import functools

    scheduler = make_scheduler(name, dict(pipe.scheduler.config))
    if scheduler_choice(name).stochastic:
        scheduler.step = functools.partial(scheduler.step, generator=generator)
    pipe.scheduler = scheduler
