"""Quantized graphs: symmetric Q/DQ on convolutions and matmuls, the exclusion recipe, accuracy."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from svdtrt.graphs.qdq import DEFAULT_EXCLUDE, validate_qdq_graph


def _dq_fed_ops(model) -> set[str]:
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if any(i in dq for i in n.input)}


def test_int8_unet_has_symmetric_qdq_on_convs_and_matmuls(int8_bundle):
    path = int8_bundle.graph_path("unet", "int8")
    model = onnx.load(path)
    zero_points = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_zero_point")]
    assert zero_points and all(z.dtype.name == "int8" and not z.any() for z in zero_points)
    quantized = {n.op_type for n in model.graph.node if n.name in _dq_fed_ops(model)}
    assert {"Conv", "MatMul"} <= quantized
    summary = validate_qdq_graph(path)
    assert summary["quantized_ops"]["Conv"] > 10 and summary["quantized_ops"]["MatMul"] > 10


def _assert_fp16_base(bundle, precision):
    """Q/DQ on an fp16 base: opset 19, fp16 scales (so every DequantizeLinear outputs fp16), and at
    least 80 % of the float arithmetic in fp16 (what TensorRT's strongly typed build computes in;
    the tiny vae_decoder, convolutions and normalisations, measured 83 %); what stays fp32 is the
    sinusoidal time embedding and the normalisations (KEEP_FP32_OPS)."""
    from svdtrt.graphs.fp16 import KEEP_FP32_OPS, arithmetic_precision

    for name in ("unet", "vae_decoder"):
        path = bundle.graph_path(name, precision)
        model = onnx.load(path, load_external_data=False)
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {19}
        inits = {t.name: t for t in model.graph.initializer}
        scales = [inits[n.input[1]] for n in model.graph.node
                  if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in inits]
        assert scales and {t.data_type for t in scales} == {onnx.TensorProto.FLOAT16}
        measured = arithmetic_precision(path)
        assert measured["fp16_share"] >= 0.8, (name, measured)
        kept = ("time_proj", "time_pos_embed", "add_time", *KEEP_FP32_OPS)
        assert all(any(k in n for k in kept) for n in measured["fp32_nodes"]), measured["fp32_nodes"]
        entry = bundle.manifest.components[name].graphs[precision].quantization
        assert entry.settings["base"] == "fp16" and entry.qdq["arithmetic"]["fp16_share"] == measured["fp16_share"]


def test_int8_graphs_are_on_an_fp16_base(int8_bundle):
    _assert_fp16_base(int8_bundle, "int8")


def test_default_recipe_keeps_embeddings_and_edge_convs_in_fp32(int8_bundle):
    model = onnx.load(int8_bundle.graph_path("unet", "int8"), load_external_data=False)
    quantized = _dq_fed_ops(model)
    for name in ("/unet/conv_in/Conv", "/unet/conv_out/Conv", "/unet/time_embedding/linear_1/Gemm",
                 "/unet/add_embedding/linear_2/Gemm",
                 "/unet/up_blocks.0/resnets.0/spatial_res_block/conv_shortcut/Conv"):
        assert name not in quantized, name
    assert "/unet/down_blocks.0/resnets.0/spatial_res_block/conv1/Conv" in quantized
    q = int8_bundle.manifest.components["unet"].graphs["int8"].quantization
    assert q.settings["exclude_patterns"] == list(DEFAULT_EXCLUDE) and "/unet/conv_in/Conv" in q.excluded_nodes


def test_held_out_accuracy_is_measured_against_fp32(int8_bundle):
    for name in ("unet", "vae_decoder"):
        acc = int8_bundle.manifest.components[name].graphs["int8"].quantization.held_out_accuracy
        (metrics,) = acc.outputs.values()
        # measured on the tiny preset: unet 0.994, vae_decoder 0.998 (docs/quantization.md)
        assert 0.98 < metrics["cosine"] < 1.0 and metrics["max_abs_error"] > 0
    decoder = int8_bundle.manifest.components["vae_decoder"].graphs["int8"]
    assert "psnr_db" in decoder.quantization.held_out_accuracy.outputs["frames"]
    # components that run once per clip stay fp32
    encoder = int8_bundle.manifest.components["image_encoder"].graphs["int8"]
    assert encoder.file == "image_encoder.fp32.onnx" and encoder.kept_precision == "fp32"


def test_fp8_graphs_are_symmetric_e4m3_and_run_as_simulated_quantization(calibrated_bundle, tmp_path, photo,
                                                                        monkeypatch):
    from svdtrt.cli.main import main
    from svdtrt.runtime.backends.onnxrt import OnnxRuntimeBackend
    from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline

    from ..test_gpu_paths import _only_onnxruntime_gpu
    from .conftest import copy_bundle

    bundle = copy_bundle(calibrated_bundle, tmp_path)
    with monkeypatch.context() as patch:  # the GPU setup: only onnxruntime-gpu installed (audit defect 3)
        _only_onnxruntime_gpu(patch)
        assert main(["quantize", str(bundle.path), "--precision", "fp8"]) == 0
    bundle = type(bundle).open(bundle.path)
    assert bundle.manifest.components["unet"].graphs["fp8"].quantization.settings["onnxruntime"] == "1.31.1"
    _assert_fp16_base(bundle, "fp8")
    model = onnx.load(bundle.graph_path("unet", "fp8"), load_external_data=False)
    zero_points = [t for t in model.graph.initializer if t.name.endswith("_zero_point")]
    assert zero_points and {t.data_type for t in zero_points} == {onnx.TensorProto.FLOAT8E4M3FN}
    weights = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN and t.dims}
    inits = {t.name: t for t in model.graph.initializer}
    weight_scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    assert weight_scales and all(not t.dims for t in weight_scales)  # per tensor (second audit, defect 8)
    assert not any(numpy_helper.to_array(t).astype("float32").any() for t in zero_points)
    accuracy = bundle.manifest.components["unet"].graphs["fp8"].quantization.held_out_accuracy
    assert accuracy.measured_by.startswith("simulated")
    assert 0.5 < accuracy.outputs["noise_pred"]["cosine"] < 1.0
    clip = SvdPipeline(OnnxRuntimeBackend(bundle, "fp8"), bundle)(photo, SamplingSettings(4, 64, 64, steps=2))
    assert clip.frames.shape == (4, 64, 64, 3) and 0 <= clip.frames.min() and clip.frames.max() <= 1


def test_caching_graphs_are_quantized_with_the_unet_recipe(int8_bundle):
    """unet_full and unet_shallow get real Q/DQ graphs (not their fp32 graphs), on the UNet's calls."""
    m = int8_bundle.manifest
    unet = m.components["unet"].graphs["int8"].quantization
    for name in ("unet_full", "unet_shallow"):
        graph = m.components[name].graphs["int8"]
        assert graph.kept_precision is None and graph.file == f"{name}.int8.onnx"
        summary = validate_qdq_graph(int8_bundle.path / graph.file)
        assert summary["quantized_ops"]["Conv"] >= 10 and summary["quantized_ops"]["MatMul"] >= 10
        q = graph.quantization
        assert q.settings == unet.settings and q.calibration_samples == unet.calibration_samples
        model = onnx.load(int8_bundle.path / graph.file, load_external_data=False)
        assert "/conv_in/Conv" in q.excluded_nodes and "/conv_in/Conv" not in _dq_fed_ops(model)
    # unet_full is the UNet's graph with one more output, quantized on the same calls: the same ops
    # are quantized and kept, so its noise_pred costs exactly what the UNet's does
    full = m.components["unet_full"].graphs["int8"].quantization
    assert full.qdq["quantized_ops"] == unet.qdq["quantized_ops"]
    assert len(full.excluded_nodes) == len(unet.excluded_nodes)


def test_caching_graphs_held_out_accuracy(int8_bundle):
    m = int8_bundle.manifest
    full = m.components["unet_full"].graphs["int8"].quantization.held_out_accuracy
    shallow = m.components["unet_shallow"].graphs["int8"].quantization.held_out_accuracy
    assert set(full.outputs) == {"noise_pred", "deep_feature"} and set(shallow.outputs) == {"noise_pred"}
    held_out = len(m.calibration["default"].components["unet"].held_out)
    assert full.samples == shallow.samples == held_out
    # measured on the tiny preset: unet_full noise_pred 0.9944 (as unet's), deep_feature 0.9970,
    # unet_shallow noise_pred 0.9976 (docs/quantization.md, "Block-caching graphs")
    for metrics in (*full.outputs.values(), *shallow.outputs.values()):
        assert 0.98 < metrics["cosine"] < 1.0 and metrics["max_abs_error"] > 0


def test_quantized_caching_graphs_read_the_quantized_unet_weights_file(int8_bundle):
    """ORT's quantizer writes the same int8 weights, scales and fp16 tensors for the same fp32
    weights (per-channel weight scales depend on the weights alone), so every weight tensor of the
    caching graphs has a byte-identical copy in unet.int8.onnx.data and they read that file."""
    from svdtrt.bundle.integrity import verify_bundle
    from svdtrt.bundle.manifest import MANIFEST
    from svdtrt.bundle.store import owned_files

    m = int8_bundle.manifest
    for name in ("unet_full", "unet_shallow"):
        graph = m.components[name].graphs["int8"]
        assert graph.data == "unet.int8.onnx.data"
        assert not (int8_bundle.path / f"{name}.int8.onnx.data").exists()
        assert graph.bytes == (int8_bundle.path / graph.file).stat().st_size
        assert owned_files(m, name, graph) == [graph.file]
    assert owned_files(m, "unet", m.components["unet"].graphs["int8"]) == ["unet.int8.onnx"]
    on_disk = {p.relative_to(int8_bundle.path).as_posix() for p in int8_bundle.path.rglob("*") if p.is_file()}
    assert set(m.files) == on_disk - {MANIFEST}
    assert verify_bundle(int8_bundle.path) == []


def test_cached_int8_clip_runs_on_onnxruntime_close_to_the_cached_fp32_clip(int8_bundle, photo):
    from svdtrt.media.metrics import clip_metrics
    from svdtrt.runtime.backends.onnxrt import OnnxRuntimeBackend
    from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline

    settings = SamplingSettings(4, 64, 64, steps=4, cache_interval=2)
    clips = {p: SvdPipeline(OnnxRuntimeBackend(int8_bundle, p), int8_bundle)(photo, settings) for p in ("fp32", "int8")}
    assert clips["int8"].unet_calls == [("unet_full", 2), ("unet_shallow", 2)] * 2
    metrics = clip_metrics(clips["int8"].frames, clips["fp32"].frames)
    # measured on the tiny preset: min / mean PSNR 34.0 / 35.6 dB, SSIM min 0.976; the bound keeps
    # 4 dB of margin (check's int8 limit is 28 dB); below 50 dB: the int8 graphs did run
    assert 30 < metrics["min_psnr_db"] < 50, metrics
