"""Hints: every command svdtrt suggests works when pasted as printed (the tests paste it, split
with shlex as a shell would, run it, and then run the command that failed), and names no
placeholder; closed sets are refused with their choices."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest
import tomllib

from svdtrt import hints
from svdtrt.bundle.store import Bundle
from svdtrt.precisions import NAMES
from svdtrt.specs import COMPONENTS


def _one_line_error(code, err) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("svdtrt: error:") and "Traceback" not in err, err
    return lines[0]


def _hint(message: str, lead: str) -> str:
    """The command quoted after ``lead`` in ``message`` ('... create it with 'svdtrt ...'')."""
    match = re.search(re.escape(lead) + r" '(svdtrt .*?)'(?:;|$| \()", message)
    assert match, message
    command = match.group(1)
    for placeholder in ("MODEL", "BUNDLE", "PATTERN"):
        assert placeholder not in command.split(), command
    return command


def _paste(run_cli, command: str) -> None:
    """Run a pasted hint as a shell would: each '&&'-joined command in turn, stopping at a failure."""
    for part in command.split(" && "):
        words = shlex.split(part)
        assert words[0] == "svdtrt", command
        code, out, err = run_cli(*words[1:])
        assert code == 0, f"{part}: {out}{err}"


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
    _paste(run_cli, command)
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
    _paste(run_cli, command)
    assert all({"fp32", "fp16"} <= set(e.graphs) for e in Bundle.open("part").manifest.components.values())
    code, _, err = run_cli("run", "part", "--out", "c.mp4", "--precision", "fp16", "--steps", "1",
                           "--image", _photo(tmp_path))
    assert code == 0, err


@pytest.mark.slow
def test_missing_bundle_hint_works_when_pasted(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("check", "new.bundle", "--steps", "1")
    command = _hint(_one_line_error(code, err), "create one with")
    assert command == "svdtrt export tiny --out new.bundle"
    _paste(run_cli, command)
    code, out, err = run_cli("check", "new.bundle", "--steps", "1")
    assert code == 0 and "PASSED" in out, err


@pytest.mark.slow
def test_missing_int8_hint_calibrates_then_quantizes(run_cli, fp32_bundle, tmp_path):
    code, _, err = run_cli("build", fp32_bundle, "--precision", "int8", "--dry-run")
    command = _hint(_one_line_error(code, err), "create it with")
    assert command == "svdtrt calibrate 'my bundle' && svdtrt quantize 'my bundle' --precision int8"
    # pasted with a smaller calibration set, to keep the test short (the options are the user's)
    _paste(run_cli, command.replace("svdtrt calibrate 'my bundle'",
                                    "svdtrt calibrate 'my bundle' --count 2 --steps 2"))
    code, out, err = run_cli("build", fp32_bundle, "--precision", "int8", "--dry-run")
    assert code == 0 and "plan: int8 engines" in out, err


def test_corrupt_file_hint_names_the_source_model(tiny_bundle, tmp_path):
    shutil.copytree(tiny_bundle.path, tmp_path / "b")
    bundle = Bundle.open(tmp_path / "b")
    unet = bundle.graph("unet", "fp32")
    assert bundle.remedy(unet.data) == f"rebuild it with 'svdtrt export tiny --out {tmp_path / 'b'} --force'"
    (tmp_path / "b" / "manifest.json").write_bytes((tmp_path / "b" / "manifest.json").read_bytes()[:400])
    from svdtrt.errors import BundleError

    with pytest.raises(BundleError, match=re.escape(f"re-export it with 'svdtrt export tiny --out {tmp_path / 'b'} "
                                                    "--force'")):
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
