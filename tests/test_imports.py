"""Stages import one way (docs/architecture.md, "Layout"): no import cycle, counting imports inside
functions; the runtime never imports the exporter, the build stage or calibration; ``--help`` and
``doctor`` import no stage they do not run."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import svdtrt

PACKAGE = Path(svdtrt.__file__).parent
#: Modules every stage may import; they import no stage.
SHARED = {"svdtrt", "svdtrt.errors", "svdtrt.specs", "svdtrt.precisions", "svdtrt.bundle.manifest", "svdtrt.publishing",
          "svdtrt.bundle.store", "svdtrt.bundle.engines", "svdtrt.media.metrics", "svdtrt.media.images", "svdtrt.models.loading",
          "svdtrt.models.presets", "svdtrt.models.modules", "svdtrt.environment", "svdtrt.models.block_cache", "svdtrt.models.flops",
          "svdtrt.hints"}
STAGES = ("svdtrt.export.bundle_export", "svdtrt.calibration", "svdtrt.build", "svdtrt.runtime", "svdtrt.check.compare",
          "svdtrt.benchmark", "svdtrt.serving", "svdtrt.cli.main", "svdtrt.cli.demo", "svdtrt.bundle.integrity", "svdtrt.cli.doctor")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """svdtrt module -> the svdtrt modules it imports anywhere in its body (functions included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_counting_function_level_imports():
    assert _cycles(import_graph()) == []


def test_shared_modules_import_no_stage_and_the_runtime_no_producing_stage():
    graph = import_graph()
    for name, edges in graph.items():
        if name in SHARED:
            assert not [e for e in edges if e.startswith(STAGES)], name
        if name.startswith("svdtrt.runtime"):
            assert not [e for e in edges if e.startswith(("svdtrt.export.bundle_export", "svdtrt.build", "svdtrt.calibration",
                                                          "svdtrt.check.compare", "svdtrt.benchmark", "svdtrt.cli.main"))], name
        if name.startswith(("svdtrt.export.bundle_export", "svdtrt.build")):
            assert not [e for e in edges if e.startswith(("svdtrt.runtime", "svdtrt.calibration", "svdtrt.check.compare",
                                                          "svdtrt.benchmark", "svdtrt.cli.main"))], name
        if not name.startswith("svdtrt.cli"):  # serving sits below the CLI only
            assert not [e for e in edges if e.startswith("svdtrt.serving")] or name.startswith("svdtrt.serving"), name


def test_only_the_serving_layer_imports_ray():
    """Ray is an optional extra (``serve``): a runtime-only install never needs it."""
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        imported = {a.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Import) for a in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.ImportFrom) and not node.level}
        if "ray" in imported:
            assert name.startswith("svdtrt.serving"), name


def _modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_running_the_onnxruntime_and_tensorrt_backends_imports_no_exporter(tiny_bundle, photo, tmp_path):
    image = tmp_path / "in.png"
    photo.save(image)
    loaded = _modules_after(f"""
from svdtrt.bundle.store import Bundle
from svdtrt.media.images import load_image
from svdtrt.runtime.backends import create_backend
from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline
from svdtrt.errors import BackendUnavailableError
bundle = Bundle.open({str(tiny_bundle.path)!r})
try:
    create_backend("tensorrt", bundle, "fp16")
except BackendUnavailableError:
    pass  # no TensorRT or GPU here; creating it got as far as this machine allows
SvdPipeline(create_backend("onnxruntime", bundle), bundle)(load_image({str(image)!r}),
                                                          SamplingSettings(4, 64, 64, steps=2))
""")
    assert "svdtrt.runtime.backends.onnxrt" in loaded and "svdtrt.runtime.backends.trt" in loaded
    assert not {m for m in loaded if m.startswith(("svdtrt.export.bundle_export", "svdtrt.build", "svdtrt.calibration"))}
    assert "onnxslim" not in loaded and "onnxruntime.quantization" not in loaded
    assert not {m for m in loaded if m.startswith("svdtrt.serving") or m == "ray" or m.startswith("ray.")}
    # diffusers (the loop's scheduler) imports torch._dynamo, which loads torch.onnx on its own;
    # svdtrt adds no torch.onnx module of its own beyond that.
    by_diffusers = _modules_after("import diffusers.schedulers.scheduling_euler_discrete")
    assert {m for m in loaded if m.startswith("torch.onnx")} <= by_diffusers


def test_help_and_doctor_import_no_stage():
    help_loaded = _modules_after("from svdtrt.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    # The CLI reads the backend names, the settings' limits and the scheduler registry (modules that import
    # no torch), no more.
    assert not {m for m in help_loaded if m.startswith(STAGES[:-1])} - {
        "svdtrt.cli.main", "svdtrt.runtime", "svdtrt.runtime.backends", "svdtrt.runtime.backends.base",
        "svdtrt.runtime.limits", "svdtrt.runtime.schedulers"}
    assert not {"torch", "onnx", "onnxruntime", "diffusers", "transformers", "pydantic"} & help_loaded
    doctor_loaded = _modules_after("from svdtrt.cli import main\nmain(['doctor'])")
    assert not {m for m in doctor_loaded if m.startswith(("svdtrt.export.bundle_export", "svdtrt.build", "svdtrt.calibration",
                                                           "svdtrt.runtime.pipeline", "svdtrt.check.compare"))}
    assert not {"diffusers", "transformers", "onnxslim"} & doctor_loaded
