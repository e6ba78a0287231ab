"""The TensorRT build stage: build plans (pure data, :mod:`.plan`) and engines built through
Polygraphy in a bundle transaction (:mod:`.builder`). Beside ``export/`` and ``calibration/``;
the runtime never imports it (docs/architecture.md, "Layout")."""
