"""The limits of :class:`svdtrt.runtime.settings.SamplingSettings`, each with where it comes from
(kept apart from the pipeline so that the CLI's help reads them without importing torch)."""

#: Denoising steps: at most the scheduler's ``num_train_timesteps``, 1000 in the released SVD
#: scheduler config (:data:`svdtrt.models.presets.SVD_SCHEDULER`): the number of noise levels the model
#: was trained on. More steps only resample the same sigma range more finely (diffusers' default
#: is 25), and a typo such as 25000 would run for hours before anyone noticed.
MAX_STEPS = 1000
#: Frames per second: the UNet is conditioned on ``fps - 1``, and Stability's reference sampler
#: (``scripts/sampling/simple_video_sample.py`` in Stability-AI/generative-models) warns outside
#: ``5 <= fps - 1 <= 30``, the range SVD's micro-conditioning was trained on; diffusers' default is
#: 7. The upper bound is that trained limit (fps 31); the lower bound is 1, not 6, because fps is
#: also the mp4's frame rate and slow clips are legitimate (below 6 the conditioning extrapolates).
FPS_RANGE = (1, 31)
#: Motion bucket id: 0-255 in training (the reference sampler warns above 255; diffusers'
#: default is 127).
MOTION_BUCKET_RANGE = (0, 255)
#: Seeds ``torch.Generator.manual_seed`` takes as distinct streams: 0 .. 2**64 - 1. torch also
#: takes -2**63 .. -1, but as aliases of ``seed + 2**64``; they are refused so that one clip has
#: one seed.
SEED_RANGE = (0, 2**64 - 1)
