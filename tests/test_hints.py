"""Hints: every command svdtrt suggests works when pasted as printed (the tests paste it into a
shell, run it, and then run the command that failed), names no placeholder, and loses nothing: a
hint never writes over what is not svdtrt's, and a repair rebuilds only what is damaged and what
was derived from it (docs/architecture.md, "Errors" and "Integrity"); closed sets are refused with
their choices."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from svdtrt import hints
from svdtrt.bundle.store import Bundle
from svdtrt.precisions import NAMES
from svdtrt.specs import COMPONENTS

ROOT = Path(__file__).resolve().parent.parent


def _one_line_error(code, err) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("svdtrt: error:") and "Traceback" not in err, err
    return lines[0]


def _hint(message: str, lead: str) -> str:
    """The command quoted after ``lead`` in ``message`` ('... create it with 'svdtrt ...'')."""
    match = re.search(re.escape(lead) + r" '(svdtrt .*?)'(?:;|$| \(|,)", message, re.MULTILINE)
    assert match, message
    command = match.group(1)
    for placeholder in ("MODEL", "BUNDLE", "PATTERN"):
        assert placeholder not in command.split(), command
    return command


def _paste(command: str, cwd=None) -> None:
    """Paste a hint into a shell as printed (``svdtrt`` of this checkout, through PYTHONPATH)."""
    assert all(shlex.split(part)[0] == "svdtrt" for part in command.split(" && ")), command
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=1800, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"


def _svdtrt(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python -m svdtrt ARGS`` as a user runs it (verify's output is read from its stdout)."""
    return subprocess.run([sys.executable, "-m", "svdtrt", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          check=False,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _sha256s(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fp32_bundle(tiny_bundle, tmp_path, monkeypatch):
    """A writable copy of the tiny fp32 bundle at a path with a space, named relative to the
    working directory as a user would type it."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bundle.path, tmp_path / "my bundle")
    return "my bundle"


def test_missing_fp16_hint_is_one_command_that_works_when_pasted(run_cli, fp32_bundle, tmp_path):
    code, _, err = run_cli("run", fp32_bundle, "--out", "c.mp4", "--precision", "fp16", "--steps", "1",
                           "--image", _photo(tmp_path))
    command = _hint(_one_line_error(code, err), "create it with")
    assert command == "svdtrt convert 'my bundle' --precision fp16"
    # build names the same command (it used to say 'svdtrt export --precision fp16', with no MODEL)
    code, _, err = run_cli("build", fp32_bundle, "--precision", "fp16", "--dry-run")
    assert _hint(_one_line_error(code, err), "create it with") == command
    _paste(command)
    code, out, err = run_cli("run", fp32_bundle, "--out", "c.mp4", "--precision", "fp16", "--steps", "1",
                             "--image", _photo(tmp_path))
    assert code == 0, err
    assert "(onnxruntime, fp16;" in out


@pytest.mark.slow
def test_partial_bundle_hint_adds_every_missing_component_at_once(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("export", "tiny", "--out", "part", "--components", "unet")[0] == 0
    code, _, err = run_cli("run", "part", "--out", "c.mp4", "--precision", "fp16", "--steps", "1",
                           "--image", _photo(tmp_path))
    command = _hint(_one_line_error(code, err), "create it with")
    assert command == ("svdtrt export tiny --out part --components image_encoder,vae_encoder,vae_decoder && "
                       "svdtrt convert part --precision fp16")
    _paste(command)
    assert all({"fp32", "fp16"} <= set(e.graphs) for e in Bundle.open("part").manifest.components.values())
    code, _, err = run_cli("run", "part", "--out", "c.mp4", "--precision", "fp16", "--steps", "1",
                           "--image", _photo(tmp_path))
    assert code == 0, err


@pytest.mark.slow
def test_the_newcomers_hint_chain_keeps_the_photo_and_the_manifest_repair_works(run_cli, tmp_path, monkeypatch):
    """The issue's newcomer: 'svdtrt run catcopy.png ...' with a photo there answered 'export tiny --out
    catcopy.png', then '--force', and the photo was gone. Now the hint names a fresh path, --force
    is refused on the photo, and the bundle's own hints (a missing one, a corrupt manifest) work."""
    monkeypatch.chdir(tmp_path)
    photo = _photo(tmp_path)
    shutil.copy(photo, "catcopy.png")
    kept = Path("catcopy.png").read_bytes()
    code, _, err = run_cli("run", "catcopy.png", "--image", photo, "--out", "c.mp4", "--steps", "1")
    command = _hint(_one_line_error(code, err), "create one beside it with")
    assert command == "svdtrt export tiny --out catcopy.bundle"
    code, _, err = run_cli("export", "tiny", "--out", "catcopy.png", "--force")  # what the user tried next
    assert "is a file; svdtrt replaces only a bundle it made, even with --force" in _one_line_error(code, err)
    code, _, err = run_cli("check", "new.bundle", "--steps", "1")  # nothing there: the path itself
    assert _hint(_one_line_error(code, err), "create one with") == "svdtrt export tiny --out new.bundle"
    _paste(command)
    assert Path("catcopy.png").read_bytes() == kept
    assert run_cli("run", "catcopy.bundle", "--image", photo, "--out", "c.mp4", "--steps", "1")[0] == 0

    manifest = Path("catcopy.bundle/manifest.json")
    manifest.write_bytes(manifest.read_bytes()[:400])  # a truncated copy
    done = _svdtrt("verify", "catcopy.bundle")
    assert done.returncode == 1, done.stdout + done.stderr
    command = _hint(done.stdout, "re-export it with")
    assert command == "svdtrt export tiny --out catcopy.bundle --force"
    _paste(command)
    assert _svdtrt("verify", "catcopy.bundle").returncode == 0
    assert Path("catcopy.png").read_bytes() == kept and sorted(os.listdir()) == ["c.mp4", "catcopy.bundle",
                                                                              "catcopy.png", "photo.png"]


@pytest.mark.slow
def test_missing_int8_hint_calibrates_then_quantizes(run_cli, fp32_bundle, tmp_path):
    code, _, err = run_cli("build", fp32_bundle, "--precision", "int8", "--dry-run")
    command = _hint(_one_line_error(code, err), "create it with")
    assert command == "svdtrt calibrate 'my bundle' && svdtrt quantize 'my bundle' --precision int8"
    # pasted with a smaller calibration set, to keep the test short (the options are the user's)
    _paste(command.replace("svdtrt calibrate 'my bundle'", "svdtrt calibrate 'my bundle' --count 2 --steps 2"))
    code, out, err = run_cli("build", fp32_bundle, "--precision", "int8", "--dry-run")
    assert code == 0 and "plan: int8 engines" in out, err


def test_corrupt_file_hint_names_the_source_model(tiny_bundle, tmp_path):
    shutil.copytree(tiny_bundle.path, tmp_path / "b")
    bundle = Bundle.open(tmp_path / "b")
    unet = bundle.graph("unet", "fp32")
    assert bundle.remedy(unet.data) == f"repair it with 'svdtrt export tiny --out {tmp_path / 'b'} --components unet'"
    (tmp_path / "b" / "manifest.json").write_bytes((tmp_path / "b" / "manifest.json").read_bytes()[:400])
    from svdtrt.errors import BundleError

    with pytest.raises(BundleError, match=re.escape(f"re-export it with 'svdtrt export tiny --out {tmp_path / 'b'} "
                                                    "--force'")):
        Bundle.open(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text("garbage")  # not even the source model can be read
    with pytest.raises(BundleError, match=re.escape(f"with 'svdtrt export tiny --out {tmp_path / 'b'} --force' "
                                                    "(tiny is the demo preset: name that model instead")):
        Bundle.open(tmp_path / "b")


def _unets(*precisions) -> dict[str, set[str]]:
    """A bundle exported with --components unet: the UNet graphs only (the caching graphs go with it)."""
    return {c: set(precisions) for c in COMPONENTS if c not in ("image_encoder", "vae_encoder", "vae_decoder")}


@pytest.mark.parametrize("have, precision, expected", [
    ({c: {"fp32"} for c in COMPONENTS}, "fp16", "svdtrt convert B --precision fp16"),
    # a bundle without the (optional) block-caching graphs lacks nothing else
    ({c: {"fp32"} for c in ("image_encoder", "vae_encoder", "unet", "vae_decoder")}, "fp16",
     "svdtrt convert B --precision fp16"),
    ({c: {"fp32"} for c in COMPONENTS}, "int8", "svdtrt calibrate B && svdtrt quantize B --precision int8"),
    (_unets("fp32", "fp16"), "fp32",
     "svdtrt export src/m --out B --components image_encoder,vae_encoder,vae_decoder"),
    (_unets("fp32"), "fp16",
     "svdtrt export src/m --out B --components image_encoder,vae_encoder,vae_decoder && "
     "svdtrt convert B --precision fp16"),
    (_unets("fp32", "fp16"), "fp16",
     "svdtrt export src/m --out B --components image_encoder,vae_encoder,vae_decoder --precision fp16"),
    (_unets("fp32", "int8"), "int8",
     "svdtrt export src/m --out B --components image_encoder,vae_encoder,vae_decoder && "
     "svdtrt calibrate B && svdtrt quantize B --precision int8 --force"),
])
def test_make_precision_is_one_command_for_everything_missing(have, precision, expected):
    assert hints.make_precision("B", precision, "src/m", calibrated=False, have=have) == expected


@pytest.mark.parametrize("command", ["run", "check", "build", "export", "convert", "quantize"])
def test_precision_typo_is_refused_with_the_choices(run_cli, command, tiny_bundle, tmp_path):
    target = ["tiny", "--out", tmp_path / "x"] if command == "export" else [tiny_bundle.path]
    extra = ["--out", tmp_path / "c.mp4"] if command == "run" else []
    code, _, err = run_cli(command, *target, *extra, "--precision", "int-8")
    line = _one_line_error(code, err)
    assert "invalid choice: 'int-8'" in line and "int-8'" not in line.split("choose from")[1]
    assert all(f"'{name}'" in line for name in ("fp32", "fp16") if command in ("run", "check", "build"))
    assert not (tmp_path / "x").exists()


def test_bench_precision_typo_is_refused_with_the_choices(run_cli, tiny_bundle, tmp_path):
    code, _, err = run_cli("bench", tiny_bundle.path, "--precisions", "fp32,int-8", "--out", tmp_path / "b")
    assert f"unknown precision 'int-8': choose from {', '.join(NAMES)}" in _one_line_error(code, err)


def test_build_components_are_checked_against_the_specs(run_cli, tiny_bundle):
    code, _, err = run_cli("build", tiny_bundle.path, "--precision", "fp32", "--dry-run", "--components", "unett")
    line = _one_line_error(code, err)
    assert "unett" in line and all(name in line for name in COMPONENTS)


def test_install_hint_installs_the_gpu_extra_from_this_clone():
    root = hints.source_root()
    assert root is not None, "the tests run from a clone"
    words = shlex.split(hints.install_extra())
    assert words[:3] == ["pip", "install", "-e"] and words[3] == f"{root}[{hints.GPU_EXTRA}]"
    assert words[4:] == ["--extra-index-url", hints.NVIDIA_INDEX]
    assert hints.install_extra("cuda", replace_onnxruntime=True) == \
        f"pip uninstall -y onnxruntime && pip install -e {shlex.quote(f'{root}[cuda]')}"
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert hints.GPU_EXTRA in extras and any(d.startswith("tensorrt") for d in extras[hints.GPU_EXTRA])
    from svdtrt.environment import INSTALL_HINT

    assert INSTALL_HINT.startswith(hints.install_extra(replace_onnxruntime=True))


def _photo(folder):
    from svdtrt.media.images import sample_image

    path = folder / "photo.png"
    if not path.exists():
        sample_image("astronaut").resize((64, 64)).save(path)
    return path


# Repairs: a realistic bundle (fp32, fp16, the calibration set 'default', int8), damaged one file at a
# time; verify names one repair line, pasted into a shell it repairs the bundle, and every file that
# was not derived from the damaged one is kept byte for byte.

@pytest.fixture(scope="module")
def realistic_bundle(int8_bundle, tmp_path_factory):
    """The int8 bundle (calibrated, quantized) with fp16 graphs too, made by the CLI's functions
    (read-only: copy it to change it)."""
    from svdtrt.export.convert import convert_bundle

    path = tmp_path_factory.mktemp("realistic") / "tiny"
    shutil.copytree(int8_bundle.path, path)
    return convert_bundle(path, "fp16", progress=False)


def _damage(bundle: Path, name: str) -> None:
    """Zero 16 bytes in the middle of ``name``: same size, other content (what only hashing sees)."""
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = bytes(16)
    (bundle / name).write_bytes(bytes(data))


def _repair(folder: Path, name: str, damaged: str) -> str:
    """The repair line verify prints for ``damaged`` in bundle ``name`` (run from ``folder``)."""
    done = _svdtrt("verify", name, cwd=folder)
    assert done.returncode == 1 and f"{damaged}: sha256 differs" in done.stdout, done.stdout + done.stderr
    return _hint(done.stdout, "repair it with")


@pytest.mark.slow
def test_a_pasted_fp32_repair_keeps_fp16_graphs_calibration_and_quantized_graphs(realistic_bundle, tmp_path):
    """The issue's case: a corrupted unet.fp32.onnx.data. The hint used to be 'export tiny --out B
    --force', which rebuilt an fp32-only bundle; now it re-exports the UNet alone and re-derives what
    was made from it."""
    bundle = tmp_path / "my bundle"
    shutil.copytree(realistic_bundle.path, bundle)
    _damage(bundle, "unet.fp32.onnx.data")
    before = _sha256s(bundle)
    command = _repair(tmp_path, "my bundle", "unet.fp32.onnx.data")
    assert command == ("svdtrt export tiny --out 'my bundle' --components unet && "
                       "svdtrt convert 'my bundle' --precision fp16 --components unet && "
                       "svdtrt quantize 'my bundle' --precision int8 --force")
    _paste(command, cwd=tmp_path)
    done = _svdtrt("verify", bundle)
    assert done.returncode == 0, done.stdout
    after = _sha256s(bundle)
    # not derived from the UNet's weights: byte for byte as they were
    untouched = [n for n in before if not n.startswith(("unet", "manifest")) and ".int8." not in n]
    assert [n for n in untouched if after.get(n) != before[n]] == []
    assert any(n.startswith("calibration/default/") for n in untouched)
    assert {"vae_decoder.fp16.onnx", "image_encoder.fp16.onnx"} <= set(untouched)
    m = Bundle.open(bundle).manifest
    assert all({"fp32", "fp16", "int8"} <= set(e.graphs) for e in m.components.values())
    assert m.calibration.keys() == realistic_bundle.manifest.calibration.keys()
    assert after["unet.fp32.onnx.data"] != before["unet.fp32.onnx.data"]  # the damaged file was rebuilt


@pytest.mark.slow
def test_pasted_repairs_of_derived_files_rebuild_only_them(realistic_bundle, tmp_path):
    """An fp16 graph, a processing config and a calibration shard, damaged in turn: each repair
    line rebuilds that file (and what was made from it) and keeps every other file."""
    bundle = tmp_path / "b"
    shutil.copytree(realistic_bundle.path, bundle)
    shard = next(n for n in realistic_bundle.manifest.files if n.startswith("calibration/default/"))
    for damaged, expected, rebuilt in [
        ("vae_decoder.fp16.onnx", "svdtrt convert b --precision fp16 --components vae_decoder --force",
         {"vae_decoder.fp16.onnx", "vae_decoder.fp16.onnx.data"}),
        # any change writes the configs from the manifest; the VAE encoder runs its fp32 graph at fp16
        ("scheduler/scheduler_config.json", "svdtrt convert b --precision fp16 --components vae_encoder --force",
         {"scheduler/scheduler_config.json"}),
        (shard, "svdtrt calibrate b --count 2 --steps 3 --seed 0 --force", {shard}),
    ]:
        _damage(bundle, damaged)
        before = _sha256s(bundle)
        command = _repair(tmp_path, "b", damaged)
        assert command == expected
        _paste(command, cwd=tmp_path)
        assert _svdtrt("verify", bundle).returncode == 0
        after = _sha256s(bundle)
        changed = {n for n in before if after.get(n) != before[n]} - {"manifest.json"}
        assert damaged in changed and changed <= rebuilt | {f for f in before if f.startswith("calibration/")}, \
            changed
        assert after.keys() == before.keys()


def test_repair_lines_name_the_engines_and_the_recorded_options(int8_bundle):
    """What this machine cannot paste (TensorRT builds): the repair line's build part, one command
    per precision, and quantize's recorded calibration options."""
    from svdtrt.bundle.manifest import EngineEntry
    from svdtrt.bundle.repair import repair

    m = int8_bundle.manifest.model_copy(deep=True)
    unet = m.components["unet"].graphs["int8"]
    settings = {**unet.quantization.settings, "exclude_patterns": ["conv_in"], "quantize_bias": True}
    unet.quantization.settings = settings
    for component, precision in (("unet", "int8"), ("vae_decoder", "fp32"), ("vae_decoder", "int8")):
        key = f"{component}.{precision}"
        m.engines[key] = EngineEntry(component=component, precision=precision, engine=f"engines/{key}.engine",
                                     sidecar=f"engines/{key}.engine.json")
    quantize = "svdtrt quantize B --precision int8 --exclude conv_in --quantize-bias --force"
    assert repair("B", m, ["unet.int8.onnx"]).command == \
        f"{quantize} && svdtrt build B --precision int8 --components unet vae_decoder"
    assert repair("B", m, ["engines/vae_decoder.fp32.engine"]).command == \
        "svdtrt build B --precision fp32 --components vae_decoder"
    assert repair("B", m, ["vae_decoder.fp32.onnx.data"]).command == (
        f"svdtrt export tiny --out B --components vae_decoder && {quantize} && "
        "svdtrt build B --precision int8 --components unet vae_decoder && "
        "svdtrt build B --precision fp32 --components vae_decoder")


def test_no_hint_writes_over_what_svdtrt_did_not_make(run_cli, tiny_bundle, tmp_path, monkeypatch):
    """--force on a user's file or folder, or on a file inside a bundle, is refused in one line
    before any work, and the hints name fresh paths or the bundle instead."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bundle.path, "mid.bundle")
    Path("photos").mkdir()
    Path("photos/cat.png").write_bytes(b"a photo")
    before = _sha256s(tmp_path)
    code, _, err = run_cli("verify", "mid.bundle/manifest.json")
    line = _one_line_error(code, err)
    assert line.endswith("is a file inside bundle 'mid.bundle'; give the bundle's folder, 'mid.bundle'")
    code, _, err = run_cli("verify", "photos")
    assert _hint(_one_line_error(code, err), "create a bundle beside it with") == \
        "svdtrt export tiny --out photos.bundle"
    code, _, err = run_cli("export", "tiny", "--out", "photos", "--force")
    assert "is a folder that is not a bundle (no manifest.json); svdtrt replaces only a bundle it made, even " \
           "with --force: choose another path, e.g. 'photos.bundle'" in _one_line_error(code, err)
    code, _, err = run_cli("export", "tiny", "--out", "tiny.mp4")
    assert "--out 'tiny.mp4' names a .mp4 file, but a bundle is a folder; give a folder name, e.g. 'tiny.bundle'" \
        in _one_line_error(code, err)
    code, _, err = run_cli("run", "mid.bundle", "--image", _photo(tmp_path), "--out", "c.mp4", "--steps", "1",
                           "--timings", "mid.bundle/manifest.json", "--force")
    assert "'mid.bundle/manifest.json' is a file that is not a timings file svdtrt wrote" in \
        _one_line_error(code, err)
    os.remove("photo.png")
    assert _sha256s(tmp_path) == before and not Path("tiny.mp4").exists() and not Path("c.mp4").exists()
