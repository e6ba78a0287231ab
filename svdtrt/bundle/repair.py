"""What to run to repair a bundle's damaged files while keeping everything else in it
(docs/architecture.md, "Integrity").

A damaged file is rebuilt by the command that made it, at the smallest scope the commands offer,
and then exactly what was derived from it is derived again, in one ``&&`` line:

- an fp32 graph or weights file: ``export MODEL --out B --components C`` (re-exporting ``unet``
  re-exports the block-caching graphs that read its weights file); the export drops every graph
  of C and the engines built from them, so C's fp16 graphs follow (``convert --components``), its
  quantized precisions (``quantize --force``, which makes every component's graphs of that
  precision) and the engines (``build --components``);
- an fp16 graph: ``convert --components C --force`` (``unet`` with the caching graphs, which read
  its fp16 weights file), then its engines;
- a quantized graph: ``quantize --force`` with the options it was made with, then the engines of
  that precision;
- a calibration shard: ``calibrate --force`` with the set's images, steps and seed (the quantized
  graphs made from it stay valid: they were made before the damage);
- an engine or its sidecar: ``build`` (it rebuilds an engine whose file no longer matches);
- a processing config (``scheduler/``, ``feature_extractor/``): every bundle transaction writes
  them from the manifest's ``configs`` (:meth:`svdtrt.bundle.store.Staged.commit`), so the cheapest
  transaction that changes nothing else repairs them.

Graphs of other components and precisions, calibration sets and engines that were not derived
from a damaged file are left as they are. A damaged ``manifest.json`` is not repaired here: it is
what every record comes from (:func:`svdtrt.bundle.manifest.parse` names the re-export).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from .. import hints
from ..graphs.qdq import DEFAULT_EXCLUDE
from ..media.images import SAMPLE_IMAGES
from ..precisions import NAMES as PRECISION_NAMES
from ..precisions import precision as lookup_precision
from ..specs import CACHING_COMPONENTS, COMPONENTS
from .engines import SidecarError, build_options, load_sidecar
from .manifest import CONFIG_FILES, Manifest

#: The component whose fp16 conversion repairs the processing configs: SVD's VAE encoder runs its
#: fp32 graph under fp16 (``force_upcast``), so converting it again writes no graph at all.
CONFIG_CARRIER = "vae_encoder"


@dataclass(frozen=True)
class Repair:
    """What repairs a bundle: ``command``, one ``&&`` line, and ``note``, what the command cannot
    say by itself (None when it is complete)."""

    command: str
    note: str | None = None

    def sentence(self, lead: str = "repair it with") -> str:
        """``repair it with 'COMMAND'`` (or another ``lead``) and the note, for a message."""
        return f"{lead} '{self.command}'" + (f" ({self.note})" if self.note else "")


def repair(path: str | os.PathLike, manifest: Manifest, damaged: Iterable[str]) -> Repair:
    """The command line that rebuilds the ``damaged`` files of the bundle at ``path`` and what was
    derived from them, keeping everything else (see the module doc).

    Args:
        path: the bundle's path as the user gave it.
        manifest: its manifest.
        damaged: names of files listed in the manifest (missing, of another size or content).
    """
    m = manifest
    exported: set[str] = set()
    converted: dict[str, set[str]] = defaultdict(set)
    quantized: set[str] = set()
    recorded: list[str] = []
    engines: set[str] = set()

    def rebuild(component: str, precision: str) -> None:
        made_by = lookup_precision(precision).made_by
        if made_by == "export":
            exported.add(component)
        elif made_by == "convert":
            converted[precision].add(component)
        else:
            quantized.add(precision)

    for name in damaged:
        for component, entry in m.components.items():
            for precision, graph in entry.graphs.items():
                if name in (graph.file, graph.data):
                    rebuild(component, graph.kept_precision or precision)
        recorded += [s for s, cal in m.calibration.items() if name.startswith(cal.directory + "/")]
        engines |= {key for key, e in m.engines.items() if name in (e.engine, e.sidecar)}
        if name in CONFIG_FILES.values():
            carrier = m.components.get(CONFIG_CARRIER)
            rebuild(CONFIG_CARRIER, "fp16" if carrier and "fp16" in carrier.graphs else "fp32")

    # What each rebuilt graph takes with it (export drops every graph of a component; the caching
    # graphs read the UNet's weights file at every precision), and what must be derived again.
    caching = [c for c in CACHING_COMPONENTS if c in m.components]
    if "unet" in exported:
        exported.update(caching)
    for component in exported:
        entry = m.components.get(component)
        for precision in entry.graphs if entry else ():
            if precision != "fp32":
                rebuild(component, precision)
        engines |= {key for key, e in m.engines.items() if e.component == component}
    for precision, components in converted.items():
        if "unet" in components:
            components.update(caching)
        engines |= {key for key, e in m.engines.items() if e.precision == precision and e.component in components}
    engines |= {key for key, e in m.engines.items() if e.precision in quantized}

    def named(components: set[str]) -> list[str]:
        """In registry order; export and convert bring the caching graphs along with unet."""
        return [c for c in COMPONENTS if c in components and not ("unet" in components and c in caching)]

    commands, notes = [], []
    if exported:
        commands.append(hints.export(m.source.name, path, components=named(exported)))
    for precision in [p for p in PRECISION_NAMES if p in converted]:
        components = converted[precision]
        replacing = any(precision in m.components[c].graphs for c in components - exported if c in m.components)
        commands.append(hints.convert(path, precision, components=named(components), force=replacing))
    for name in dict.fromkeys(recorded):
        again = recalibrate(path, m, name)
        commands.append(again.command)
        notes += [again.note] if again.note else []
    for precision in [p for p in PRECISION_NAMES if p in quantized]:
        commands.append(_requantize(path, m, precision))
    commands += _rebuild_engines(path, m, engines)
    return Repair(hints.chain(*commands), "; ".join(notes) or None)


def recalibrate(path, m: Manifest, name: str) -> Repair:
    """``calibrate --force`` recording set ``name`` again as it was recorded: its images, steps and
    seed. Images from the user's own folder are not recorded by path: the note says so."""
    entry = m.calibration[name]
    images = [image.name for image in entry.images]
    samples = images == list(SAMPLE_IMAGES[:len(images)])
    count = None if samples and len(images) == len(SAMPLE_IMAGES) else len(images)
    command = hints.calibrate(path, name, force=True, count=count, steps=entry.steps, seed=entry.images[0].seed)
    note = None if samples else f"add --images and the folder of {', '.join(images)}, the set's images"
    return Repair(command, note)


def _requantize(path, m: Manifest, precision: str) -> str:
    """``quantize --force`` with the calibration set, exclusions and bias setting the precision's
    graphs were made with (their manifest entries record them)."""
    made = next((g.quantization for e in m.components.values() for g in (e.graphs.get(precision),)
                 if g is not None and g.quantization is not None), None)
    if made is None:
        return hints.quantize(path, precision, force=True)
    exclude = made.settings.get("exclude_patterns")
    exclude = None if exclude is None or list(exclude) == list(DEFAULT_EXCLUDE) else list(exclude)
    return hints.quantize(path, precision, made.calibration, force=True, exclude=exclude,
                          quantize_bias=bool(made.settings.get("quantize_bias")))


def _rebuild_engines(path, m: Manifest, keys: set[str]) -> list[str]:
    """``build`` commands for the engines ``keys``, one per precision and build options (read from
    each engine's sidecar; TensorRT's defaults where it cannot be read). ``build`` rebuilds an
    engine that is missing or no longer matches, and reuses the others."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for key in sorted(keys):
        engine = m.engines[key]
        try:
            profile, shapes = build_options(load_sidecar(os.path.join(path, engine.sidecar)))
        except SidecarError:
            profile, shapes = None, None
        groups[(engine.precision, profile, tuple((shapes or {}).items()))].append(engine.component)
    return [hints.build(path, precision, profile, dict(shapes), [c for c in COMPONENTS if c in components])
            for (precision, profile, shapes), components in groups.items()]
