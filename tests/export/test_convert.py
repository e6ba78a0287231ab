"""``svdtrt convert``: fp16 graphs for the components asked for, from fp32 graphs that are hashed
against the manifest first, and a graph ONNX Runtime refuses to load is one line."""

from __future__ import annotations

import hashlib
import shutil

import onnx
import pytest

from svdtrt.bundle.store import Bundle

from ..helpers import rerecord


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle.path, tmp_path / "b")


def _one_line_error(code, err) -> str:
    lines = [line for line in err.splitlines() if line.startswith("svdtrt:") or "Traceback" in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("svdtrt: error: "), err
    return lines[0]


def _sha256s(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_components_are_converted_alone_and_every_graph_is_listed(run_cli, bundle):
    code, out, err = run_cli("convert", bundle, "--components", "vae_decoder")
    assert code == 0, err
    before = _sha256s(bundle)
    assert {c for c, e in Bundle.open(bundle).manifest.components.items() if "fp16" in e.graphs} == {"vae_decoder"}
    # unet brings the block-caching graphs, which read its weights file; the others are kept
    code, out, err = run_cli("convert", bundle, "--components", "image_encoder,vae_encoder,unet")
    assert code == 0, err
    assert all("fp16" in e.graphs for e in Bundle.open(bundle).manifest.components.values())
    after = _sha256s(bundle)
    assert all(after[n] == h for n, h in before.items() if n != "manifest.json")
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert listed == ["image_encoder", "vae_encoder", "unet", "unet_full", "unet_shallow"]
    assert "vae_encoder    fp16  runs its fp32 graph, by design: the model's vae config sets force_upcast" in out
    code, _, err = run_cli("convert", bundle, "--components", "unet")
    assert "already has fp16 graphs (unet, unet_full, unet_shallow); pass --force" in _one_line_error(code, err)


def test_a_corrupted_fp32_source_is_refused_not_converted(run_cli, bundle):
    """It used to convert a same-size corrupted UNet into fp16 graphs 15.7 dB off, silently."""
    data = bundle / "unet.fp32.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[1000:1016] = bytes(16)
    data.write_bytes(bytes(raw))
    code, _, err = run_cli("convert", bundle)
    line = _one_line_error(code, err)
    assert "unet.fp32.onnx.data does not match its recorded sha256" in line
    assert f"repair it with 'svdtrt export tiny --out {bundle} --components unet'" in line
    assert not any("fp16" in e.graphs for e in Bundle.open(bundle, complete=False).manifest.components.values())


def test_external_data_outside_the_bundle_is_one_line(run_cli, bundle, tmp_path):
    graph = onnx.load(str(bundle / "vae_decoder.fp32.onnx"), load_external_data=False)
    shutil.copy(bundle / "vae_decoder.fp32.onnx.data", tmp_path / "outside.data")
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    onnx.save(graph, str(bundle / "vae_decoder.fp32.onnx"))
    rerecord(bundle, "vae_decoder.fp32.onnx")  # as if the manifest vouched for it: ONNX Runtime still refuses
    code, _, err = run_cli("convert", bundle, "--components", "vae_decoder")
    line = _one_line_error(code, err)
    assert "ONNX Runtime cannot load vae_decoder.fp32.onnx" in line and "escapes model directory" in line
