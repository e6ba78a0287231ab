"""ONNX Runtime sessions (svdtrt/graphs/sessions.py): the options of each purpose, read back from
real sessions, and the sessions the stages open with them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from svdtrt.errors import BackendUnavailableError
from svdtrt.graphs import sessions
from svdtrt.graphs.files import save_graph
from svdtrt.graphs.sessions import PURPOSES, check_provider_loaded, input_types, open_session, provider_loads


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """y = x @ w + x, with x [1, 256] float32 and w in an external-data file beside the graph."""
    folder = tmp_path_factory.mktemp("graph")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "x"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    save_graph(model, folder, folder / "g.onnx")
    return folder / "g.onnx"


def _prepacking(session) -> bool:
    options = session.get_session_options()
    try:
        return options.get_session_config_entry("session.disable_prepacking") != "1"
    except Exception:  # ORT raises its own type when the entry was never set: its default, on
        return True


def _memory(session) -> tuple[bool, bool]:
    """(pre-packing, CPU arena) of a live session."""
    return _prepacking(session), session.get_session_options().enable_cpu_mem_arena


def test_short_lived_sessions_hold_no_second_copy_of_the_weights(graph):
    """validate and calibrate sessions: no pre-packed weights, no arena (a multi-GB graph's weights
    are not copied again); both still compute the graph."""
    x = np.ones((1, 256), np.float32)
    expected = x @ numpy_helper.to_array(onnx.load(graph).graph.initializer[0]) + x
    for purpose in ("validate", "calibrate"):
        session = open_session(graph, purpose)
        assert _memory(session) == (False, False), purpose
        np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-4)


def test_run_sessions_keep_onnxruntime_s_defaults_and_take_threads(graph):
    session = open_session(graph, "run", threads=1)
    assert _memory(session) == (True, True)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level.name == "ORT_ENABLE_ALL"
    assert input_types(session) == {"x": np.float32}


def test_fp8_on_the_cpu_provider_alone_runs_unoptimised(graph):
    """Simulated fp8: the CPU provider has no fp8 kernels, so its optimizer must not fuse Q/DQ."""
    cpu = open_session(graph, "run", precision="fp8").get_session_options()
    assert cpu.graph_optimization_level.name == "ORT_DISABLE_ALL"
    on_gpu = sessions.session_options("run", "fp8", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert on_gpu.graph_optimization_level.name == "ORT_ENABLE_ALL"
    assert open_session(graph, "run", precision="int8").get_session_options().graph_optimization_level.name == \
        "ORT_ENABLE_ALL"


def test_every_purpose_has_its_options():
    assert set(PURPOSES) == {"validate", "calibrate", "run", "probe"}
    with pytest.raises(KeyError):
        sessions.session_options("benchmark")


def test_the_onnxruntime_backend_opens_run_sessions(tiny_bundle):
    from svdtrt.runtime.backends.onnxrt import OnnxRuntimeBackend

    session = OnnxRuntimeBackend(tiny_bundle, "fp32", threads=1).session("vae_decoder")
    assert _memory(session) == (True, True) and session.get_session_options().intra_op_num_threads == 1


def test_unet_shallow_samples_are_derived_in_a_calibrate_session(calibrated_bundle, monkeypatch):
    """The fp32 unet_full graph that derives unet_shallow's deep features is opened with the
    validation sessions' memory care (it used to keep ONNX Runtime's defaults)."""
    from svdtrt.calibration import derived
    from svdtrt.calibration.shards import CalibrationSet

    opened = []

    def recording(*args, **kwargs):
        opened.append(open_session(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(derived, "open_session", recording)
    full = calibrated_bundle.graph_path("unet_full", "fp32")
    samples = derived.component_samples(CalibrationSet(calibrated_bundle, "default"), "unet_shallow", "held_out", full)
    sample = next(samples)
    assert sample["deep_feature"].dtype == np.float32 and sample["deep_feature"].ndim == 5
    assert len(opened) == 1 and _memory(opened[0]) == (False, False)


def test_provider_checks():
    assert provider_loads("CPUExecutionProvider") is None
    assert provider_loads("NoSuchExecutionProvider").startswith("this ONNX Runtime has no NoSuchExecutionProvider")
    check_provider_loaded("CPUExecutionProvider", ["CPUExecutionProvider"], "x")
    with pytest.raises(BackendUnavailableError, match="could not load CUDAExecutionProvider and would run on CPU"):
        check_provider_loaded("CUDAExecutionProvider", ["CPUExecutionProvider"], "the test")


def test_tensorrt_provider_options_need_no_bundle(tmp_path):
    profile = {"x": {"min": [1, 256], "opt": [2, 256], "max": [4, 256]}, "t": {"min": [1], "opt": [2], "max": [4]}}
    options = sessions.tensorrt_provider_options(profile, tmp_path / "cache", "int8")
    assert options["trt_profile_min_shapes"] == "x:1x256,t:1" and options["trt_profile_max_shapes"] == "x:4x256,t:4"
    assert options["trt_int8_enable"] and options["trt_fp16_enable"]  # the Q/DQ graph is on an fp16 base
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
