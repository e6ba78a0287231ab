"""Recording calibration sets from real sampling trajectories.

The reference sampling loop (:class:`SvdPipeline` over the fp32 PyTorch modules) runs on each
calibration image, and :class:`Recorder` keeps the inputs each quantized component receives:
the UNet at every denoising step, with the classifier-free-guidance batch of 2 and that step's
timestep, and the VAE decoder's latent chunks. The last image's samples are held out for
measuring the quantized graphs' accuracy.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image

from ..bundle.manifest import CalibrationEntry
from ..bundle.store import changing
from ..errors import InputError
from ..media.images import IMAGE_SUFFIXES, SAMPLE_IMAGES, image_sha256, load_image, sample_image
from ..models.loading import reference_model
from ..publishing import checkpoint, path_kind
from ..runtime.backends import Recorder
from ..runtime.backends.pytorch import TorchBackend
from ..runtime.pipeline import SamplingSettings, SvdPipeline
from .recipe import RECORDED_COMPONENTS
from .shards import CALIBRATION_DIR, SPLITS, save_shard, shard_filename

log = logging.getLogger(__name__)


def calibration_images(directory: str | os.PathLike | None = None,
                       count: int | None = None) -> list[tuple[str, PIL.Image.Image]]:
    """The calibration images as ``(name, RGB image)``, in sorted file-name order.

    Args:
        directory: a folder of image files; None uses scikit-image's real photographs
            (:data:`svdtrt.media.images.SAMPLE_IMAGES`: five different scenes).
        count: use only the first ``count`` images (at least 2: the last one is held out).
    Raises:
        InputError: the folder is missing or holds no image file, ``count`` < 2, or fewer than 2
            images are available.
    """
    if count is not None and count < 2:
        raise InputError(f"--count must be at least 2 (one image is held out for evaluation), got {count}")
    if directory is None:
        names = list(SAMPLE_IMAGES[:count])
        images = [(n, sample_image(n)) for n in names]
    else:
        directory = Path(directory)
        if not directory.is_dir():
            raise InputError(f"--images '{directory}' is {path_kind(directory)}, not a folder; give a folder of "
                             "PNG or JPEG files")
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"image folder '{directory}' holds no image file "
                             f"({', '.join(IMAGE_SUFFIXES)}); add calibration photographs to it")
        images = [(p.name, load_image(p)) for p in files[:count]]
    if len(images) < 2:
        raise InputError(f"calibration needs at least 2 images (one is held out for evaluation), got {len(images)}")
    return images


def capture_calls(backend, bundle, image: PIL.Image.Image, settings: SamplingSettings,
                  components: tuple[str, ...] = RECORDED_COMPONENTS, progress: bool | str = False) -> dict[str, list[dict]]:
    """Run one clip on ``backend`` and return the inputs of every call of ``components``.

    ``progress``: a bar over the clip's denoising steps (a string: its label).

    Returns:
        ``{component: [{input_name: float32 array}, ...]}`` in call order: for the UNet, one
        entry per denoising step with ``sample`` [B, F, 2C, h, w] (B = 2 with guidance) and
        ``timestep`` [B]; for the VAE decoder, one per decode chunk with ``latents`` [N, C, h, w].
    """
    recorder = Recorder(backend, components)
    SvdPipeline(recorder, bundle)(image, settings, progress=progress)
    return {c: [{k: v.numpy().astype(np.float32, copy=False) for k, v in inputs.items()}
                for inputs, _ in calls] for c, calls in recorder.calls.items()}


def calibrate_bundle(bundle_path, images: list[tuple[str, PIL.Image.Image]], name: str = "default",
                     steps: int = 25, seed: int = 0, force: bool = False, model=None,
                     progress: bool = True) -> CalibrationEntry:
    """Record a calibration set into the bundle at ``bundle_path``, in one bundle transaction.

    Each image is sampled at the bundle's default shape with diffusers' default settings and
    ``steps`` steps; image ``i`` uses seed ``seed + i``. The last image is the held-out split.
    The shards and the manifest entry appear together (docs/architecture.md, "Transactions"),
    so an interrupted calibration leaves the bundle as it was, and a replaced set never mixes
    with the old one.

    Args:
        bundle_path: the bundle.
        images: ``(name, RGB image)`` pairs, e.g. from :func:`calibration_images`.
        name: the set's name.
        steps: denoising steps per clip (the UNet yields one sample per step).
        seed: seed of the first image.
        force: replace an existing set of that name.
        model: the source :class:`SvdModel`; rebuilt from the manifest if None.
    Returns:
        The manifest entry: ``directory``, ``images`` (name, sha256, seed, split), ``steps``,
        ``settings``, ``components`` (per component: shard files per split, ``per_timestep``
        sample counts for the UNet), ``seconds``.
    Raises:
        InputError: the set exists and ``force`` is false, fewer than 2 images, bad settings, a
            read-only bundle.
        BundleError: ``model`` is not the bundle's source model.
    """

    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise InputError(f"calibration set name '{name}' must be a plain folder name")
    if len(images) < 2:
        raise InputError(f"calibration needs at least 2 images (one is held out), got {len(images)}")
    with changing(bundle_path) as staged:
        bundle = staged.old
        if name in bundle.manifest.calibration and not force:
            raise InputError(f"bundle '{bundle.path}' already has calibration set '{name}'; "
                             "choose another --name or pass --force to replace it")
        frames, height, width = bundle.default_shape
        base = SamplingSettings(frames=frames, height=height, width=width, steps=steps)
        base.check(bundle.dims)
        backend = TorchBackend(reference_model(bundle, model))
        start = time.perf_counter()
        directory = f"{CALIBRATION_DIR}/{name}"
        old = staged.manifest.calibration.pop(name, None)
        for file in (old.shard_paths(c, s) for c in old.components for s in SPLITS) if old else ():
            for f in file:
                staged.remove(f)
        folder = staged.path / directory
        folder.mkdir(parents=True, exist_ok=True)
        components = {c: {"calibration": [], "held_out": [], "per_timestep": Counter()} for c in RECORDED_COMPONENTS}
        image_entries = []
        for i, (image_name, image) in enumerate(images):
            split = "held_out" if i == len(images) - 1 else "calibration"
            settings = dataclasses.replace(base, seed=seed + i)
            # One bar per image, over its denoising steps: a clip of a large model takes minutes.
            label = f"calibrate {i + 1}/{len(images)} {image_name}" + (" (held out)" if split == "held_out" else "")
            calls = capture_calls(backend, bundle, image, settings, progress=label if progress else False)
            for c, samples in calls.items():
                for inputs in samples:
                    entry = components[c]
                    filename = shard_filename(c, len(entry["calibration"]) + len(entry["held_out"]))
                    save_shard(folder / filename, inputs)
                    entry[split].append(filename)
                    if "timestep" in inputs and split == "calibration":
                        entry["per_timestep"][f"{float(inputs['timestep'][0]):.6g}"] += 1
            image_entries.append({"name": image_name, "sha256": image_sha256(image), "seed": seed + i,
                                  "split": split})
            checkpoint("calibrate-image")
        entry = CalibrationEntry(
            directory=directory, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), images=image_entries, steps=steps,
            settings={k: v for k, v in dataclasses.asdict(base).items() if k != "seed"},
            components={c: {"calibration": e["calibration"], "held_out": e["held_out"],
                            "per_timestep": dict(e["per_timestep"]) or None} for c, e in components.items()},
            seconds=round(time.perf_counter() - start, 3))
        staged.manifest.calibration[name] = entry
        staged.commit()
    log.info("calibration set '%s': %s", name, {c: len(e.calibration) for c, e in entry.components.items()})
    return entry
