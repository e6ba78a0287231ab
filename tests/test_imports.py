"""Imports flow one way (docs/architecture.md, "Layout"): foundation < graphs < shared < runtime <
stages < entry, counting imports inside functions; no import cycle; no stage imports a sibling
stage; the graphs layer imports no torch, bundle or stage; only serving imports Ray; one line of
the package creates an ONNX Runtime session; and ``--help``, ``doctor`` and the runtime load no
stage they do not run."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import svdtrt

PACKAGE = Path(svdtrt.__file__).parent

#: The layers, lowest first: module-name prefixes (a package and everything in it). The
#: foundation is the package root and its modules.
LAYERS = {
    "foundation": ("svdtrt", "svdtrt.errors", "svdtrt.specs", "svdtrt.precisions", "svdtrt.hints",
                   "svdtrt.environment", "svdtrt.publishing", "svdtrt.progress"),
    "graphs": ("svdtrt.graphs",),
    "shared": ("svdtrt.bundle", "svdtrt.models", "svdtrt.media"),
    "runtime": ("svdtrt.runtime",),
    "stages": ("svdtrt.export", "svdtrt.calibration", "svdtrt.build", "svdtrt.check", "svdtrt.benchmark",
               "svdtrt.serving", "svdtrt.tune"),
    "entry": ("svdtrt.cli", "svdtrt.__main__"),
}
RANK = {layer: i for i, layer in enumerate(LAYERS)}
STAGES = LAYERS["stages"]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer(module: str) -> str:
    """The layer of an svdtrt module (the root package is foundation, its subpackages are not)."""
    for name, prefixes in LAYERS.items():
        if module in prefixes or any(_within(module, p) for p in prefixes if p != "svdtrt"):
            return name
    raise AssertionError(f"{module} is in no layer of docs/architecture.md, 'Layout'")


def stage(module: str) -> str | None:
    """The stage package a module belongs to, or None."""
    return next((p for p in STAGES if _within(module, p)), None)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every import statement of a file, functions included: (absolute base, imported names)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def import_graph() -> dict[str, set[str]]:
    """svdtrt module -> the svdtrt modules it imports anywhere in its body (functions included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for base, names in _imports(path):
            targets = [base] + [f"{base}.{n}" for n in names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def external_imports(path: Path) -> set[str]:
    """Top-level names of the packages outside svdtrt that a file imports (functions included)."""
    return {base.split(".")[0] for base, _ in _imports(path) if not _within(base, "svdtrt")}


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


def test_every_module_is_in_a_layer_and_imports_none_above_it():
    upward = [f"{m} ({layer(m)}) -> {e} ({layer(e)})" for m, edges in import_graph().items() for e in edges
              if RANK[layer(e)] > RANK[layer(m)]]
    assert upward == []


def test_no_stage_imports_a_sibling_stage():
    siblings = [f"{m} -> {e}" for m, edges in import_graph().items() for e in edges
                if stage(m) and stage(e) and stage(m) != stage(e)]
    assert siblings == []


def test_export_and_build_import_no_runtime():
    graph = import_graph()
    for name, edges in graph.items():
        if stage(name) in ("svdtrt.export", "svdtrt.build"):
            assert not [e for e in edges if layer(e) == "runtime"], name


def test_graphs_import_no_torch_bundle_or_stage():
    """The graphs layer is torch-free and knows no bundle (docs/architecture.md, "Layout")."""
    graph, allowed = import_graph(), {"onnx", "onnxruntime", "onnxslim", "numpy", *sys.stdlib_module_names}
    for path in (PACKAGE / "graphs").rglob("*.py"):
        name = _module_name(path)
        assert external_imports(path) - allowed == set(), name
        assert {e for e in graph[name] if layer(e) not in ("foundation", "graphs")} == set(), name


def test_graph_operations_load_no_torch():
    """What the layer does, not only what it names: a graph is converted to fp16, checked for
    deployability, quantized and validated as Q/DQ, and run, and torch is never loaded."""
    loaded = _modules_after("""
import tempfile
from pathlib import Path
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from svdtrt.graphs import deployability, files, fp16, qdq, sessions, slim
tmp = Path(tempfile.mkdtemp())
w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y],
                                            [w]), opset_imports=[helper.make_opsetid("", 17)])
model = slim.slim_graph(model, tmp)
files.save_graph(model, tmp, tmp / "g.onnx")
fp16.convert_to_fp16(tmp / "g.onnx", tmp / "h.onnx")
deployability.check_deployable(tmp / "h.onnx")
samples = iter([{"x": np.ones((1, 64), np.float32)}])
qdq.quantize_graph(tmp / "g.onnx", tmp / "q.onnx", samples, {"quant_type": "QInt8", "calibrate_method": "MinMax",
                   "per_channel": True}, qdq.DEFAULT_EXCLUDE)
qdq.validate_qdq_graph(tmp / "q.onnx")
sessions.open_session(tmp / "q.onnx", "run").run(None, {"x": np.ones((1, 64), np.float32)})
assert sessions.provider_loads("CPUExecutionProvider") is None
""")
    assert "svdtrt.graphs.qdq" in loaded and "onnxruntime.quantization" in loaded
    assert not {m for m in loaded if m == "torch" or m.startswith("torch.")}
    assert not {m for m in loaded if m.startswith("svdtrt.") and layer(m) not in ("foundation", "graphs")}


def test_one_line_of_the_package_creates_an_onnxruntime_session():
    """Every session gets the options of its purpose (svdtrt/graphs/sessions.py)."""
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if "InferenceSession(" in line]
    assert len(found) == 1 and found[0].startswith("graphs/sessions.py:"), found


def test_only_the_serving_layer_imports_ray():
    """Ray is an optional extra (``serve``): a runtime-only install never needs it."""
    for path in PACKAGE.rglob("*.py"):
        if "ray" in external_imports(path):
            assert stage(_module_name(path)) == "svdtrt.serving", _module_name(path)


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
    assert not {m for m in loaded if stage(m)}
    assert "onnxslim" not in loaded and "onnxruntime.quantization" not in loaded
    assert not {m for m in loaded if m == "ray" or m.startswith("ray.")}
    # diffusers (the loop's scheduler) imports torch._dynamo, which loads torch.onnx on its own;
    # svdtrt adds no torch.onnx module of its own beyond that.
    by_diffusers = _modules_after("import diffusers.schedulers.scheduling_euler_discrete")
    assert {m for m in loaded if m.startswith("torch.onnx")} <= by_diffusers


def test_help_and_doctor_import_no_stage():
    help_loaded = _modules_after("from svdtrt.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    # The CLI reads the backend names, the settings' limits and the scheduler registry (modules that import
    # no torch), no more.
    assert not {m for m in help_loaded if stage(m) or m in ("svdtrt.cli.demo", "svdtrt.bundle.integrity")}
    assert {m for m in help_loaded if _within(m, "svdtrt.runtime")} <= {
        "svdtrt.runtime", "svdtrt.runtime.backends", "svdtrt.runtime.backends.base", "svdtrt.runtime.limits",
        "svdtrt.runtime.schedulers"}
    assert not {"torch", "onnx", "onnxruntime", "diffusers", "transformers", "pydantic"} & help_loaded
    doctor_loaded = _modules_after("from svdtrt.cli import main\nmain(['doctor'])")
    assert not {m for m in doctor_loaded if stage(m) or m == "svdtrt.runtime.pipeline"}
    assert not {"diffusers", "transformers", "onnxslim"} & doctor_loaded
