"""Calibration shards: one ``.npz`` file per recorded component call, and the set that lists them.

Layout inside a bundle::

    BUNDLE/calibration/<name>/<component>-NNN.npz   one call's inputs, keyed by input name

and ``manifest["calibration"][<name>]`` (see :func:`svdtrt.calibration.capture.calibrate_bundle`).
Shards are plain numpy arrays: written with ``np.savez`` and read with ``allow_pickle=False``,
so a shard can never execute code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from .. import hints
from ..bundle.repair import recalibrate
from ..errors import InputError, QuantizationError
from ..specs import DYNAMIC_SYMBOLS, ComponentSpec, ModelDims, component, split_dim

CALIBRATION_DIR = "calibration"
SPLITS = ("calibration", "held_out")


def shard_filename(component_name: str, index: int) -> str:
    """File name of a component's ``index``-th shard, e.g. ``unet-007.npz``."""
    return f"{component_name}-{index:03d}.npz"


def save_shard(path: Path, inputs: Mapping[str, np.ndarray]) -> None:
    """Write one call's inputs (name -> array) as an uncompressed ``.npz``."""
    with open(path, "wb") as f:
        np.savez(f, **{k: np.ascontiguousarray(v) for k, v in inputs.items()})


def load_shard(path: Path, spec: ComponentSpec, dims: ModelDims, remedy: str) -> dict[str, np.ndarray]:
    """Read one shard and check it against ``spec`` (see :func:`check_sample`).

    ``remedy`` is the clause that says how to record the set again, e.g. ``record the set again
    with 'svdtrt calibrate B --count 2 --steps 4 --seed 0 --force'``
    (:func:`svdtrt.bundle.repair.recalibrate`).

    Returns:
        ``{input_name: float32 array}`` in spec order.
    Raises:
        QuantizationError: the file is missing, not a readable ``.npz`` (or holds pickled objects),
            or its tensors do not match the spec.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise QuantizationError(f"calibration shard '{path}' is missing; {remedy}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise QuantizationError(f"calibration shard '{path}' is corrupt ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); "
                                f"{remedy}") from None
    check_sample(arrays, spec, dims, where=str(path))
    return {n: arrays[n] for n in spec.input_names}


def check_sample(arrays: Mapping[str, np.ndarray], spec: ComponentSpec, dims: ModelDims, where: str) -> None:
    """Check that ``arrays`` are exactly the inputs of ``spec``: the same names, float32 (the spec's
    dtype), and shapes that fit the spec's symbols with the model's fixed sizes (C, D, S) and one
    consistent value per dynamic symbol (B, F, h, w, ...).

    Raises:
        QuantizationError: names, dtypes or shapes differ; the message names the tensor.
    """
    names, expected = sorted(arrays), sorted(spec.input_names)
    if names != expected:
        raise QuantizationError(f"{where}: tensors {names} do not match the inputs of {spec.name} {expected}")
    fixed = {k: v for k, v in dims.sizes(1, 1, dims.pixel_multiple, dims.pixel_multiple).items()
             if k not in DYNAMIC_SYMBOLS}
    bound: dict[str, int] = {}
    for t in spec.inputs:
        a = arrays[t.name]
        if a.dtype != np.dtype(t.dtype):
            raise QuantizationError(f"{where}: '{t.name}' is {a.dtype}, {spec.name} takes {t.dtype}")
        if a.ndim != len(t.dims):
            raise QuantizationError(f"{where}: '{t.name}' has shape {list(a.shape)}, {spec.name} takes "
                                    f"[{', '.join(t.dims)}]")
        for size, dim in zip(a.shape, t.dims):
            factor, symbol = split_dim(dim)
            if symbol is None:
                want = factor
            elif symbol in fixed:
                want = factor * fixed[symbol]
            else:
                want = bound.setdefault(symbol, size // factor) * factor if size % factor == 0 else -1
            if size != want:
                raise QuantizationError(f"{where}: '{t.name}' has shape {list(a.shape)}, which does not fit "
                                        f"{spec.name}'s [{', '.join(t.dims)}] for this bundle ({dim} = {want})")


class CalibrationSet:
    """A calibration set stored in a bundle, read from its manifest entry.

    Attributes:
        name: the set's name (``BUNDLE/calibration/<name>/``).
        entry: its :class:`svdtrt.bundle.manifest.CalibrationEntry`.
    """

    def __init__(self, bundle, name: str):
        sets = bundle.manifest.calibration
        if name not in sets:
            have = ", ".join(sets) or "none"
            raise InputError(f"bundle '{bundle.path}' has no calibration set '{name}' (has: {have}); "
                             f"record one with '{hints.calibrate(bundle.path, name)}'")
        self.bundle, self.name, self.entry = bundle, name, sets[name]

    def files(self, component_name: str, split: str = "calibration") -> list[Path]:
        """Shard paths of one component and split (``"calibration"`` or ``"held_out"``)."""
        return [self.bundle.path / f for f in self.entry.shard_paths(component_name, split)]

    def samples(self, component_name: str, split: str = "calibration") -> Iterator[dict[str, np.ndarray]]:
        """The checked shards of one component and split, one call's inputs at a time.

        Raises:
            QuantizationError: the set has no such samples, or a shard is corrupt or mismatched.
        """
        files = self.files(component_name, split)
        # the set recorded again as it was recorded (its images, steps and seed), not with defaults
        again = recalibrate(self.bundle.path, self.bundle.manifest, self.name)
        if not files:
            raise QuantizationError(
                f"calibration set '{self.name}' has no {split.replace('_', '-')} samples for {component_name}; "
                f"{again.sentence('record them with')}")
        spec, dims = component(component_name), self.bundle.dims
        remedy = again.sentence("record the set again with")
        for path in files:
            yield load_shard(path, spec, dims, remedy)
