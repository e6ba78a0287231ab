"""The bundle as a transactional contract (docs/architecture.md, "Transactions"): a kill at any
instant leaves the old state or the new one, nothing appears over a path that is not ours, and
leftovers of killed runs are removed by the next writer. Commands run as a user runs them, in a
subprocess of ``python -m svdtrt``; ``SVDTRT_KILL_AT`` names the instant at which
:func:`svdtrt.publishing.checkpoint` SIGKILLs the process."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from svdtrt.bundle.store import Bundle


def svdtrt(*args, cwd=None, kill_at: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SVDTRT_KILL_AT", None)
    if kill_at:
        env["SVDTRT_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "svdtrt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The lines svdtrt printed as errors (progress bars share stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("svdtrt:") or "Traceback" in line]


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (the manifest included)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_old_or_new(bundle: Path, old: dict[str, str]) -> str:
    """The bundle verifies, and is byte for byte the old state or a complete new one."""
    done = svdtrt("verify", bundle)
    assert done.returncode == 0, done.stdout + done.stderr
    now = snapshot(bundle)
    if now == old:
        return "old"
    assert now["manifest.json"] != old["manifest.json"]  # a new state has a new manifest (verify: exact)
    return "new"


@pytest.fixture(scope="module")
def calibrated(tiny_bundle, tmp_path_factory):
    """The tiny bundle with a 2-image, 2-step calibration set and int8 graphs."""
    path = tmp_path_factory.mktemp("calibrated") / "tiny"
    shutil.copytree(tiny_bundle.path, path)
    for args in (("calibrate", path, "--count", 2, "--steps", 2), ("quantize", path, "--precision", "int8")):
        done = svdtrt(*args)
        assert done.returncode == 0, done.stderr
    return path


KILL_POINTS = ("locked", "commit", "recorded", "publish", "swapped")


@pytest.mark.slow
@pytest.mark.parametrize("point", ("export-component", *KILL_POINTS))
def test_export_force_killed_anywhere_leaves_old_or_new_bundle(tiny_bundle, tmp_path, point):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, bundle)
    old = snapshot(bundle)
    done = svdtrt("export", "tiny", "--out", bundle, "--force", "--components", "unet", kill_at=point)
    assert done.returncode == -signal.SIGKILL, done.stderr
    state = assert_old_or_new(bundle, old)
    assert state == ("new" if point == "swapped" else "old")
    # The next command that takes the lock removes what the killed one left (from "locked" on,
    # the staging folder exists; "locked" is the instant before it is made).
    assert any(p.name.startswith(".b.txn-") for p in tmp_path.iterdir()) == (point != "locked")
    assert svdtrt("convert", bundle).returncode == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]
    assert svdtrt("verify", bundle).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("point", ("export-component", "publish"))
def test_new_export_killed_leaves_nothing_at_out(tmp_path, point):
    done = svdtrt("export", "tiny", "--out", tmp_path / "b", kill_at=point)
    assert done.returncode == -signal.SIGKILL
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("point", ("calibrate-image", *KILL_POINTS))
def test_calibrate_force_killed_anywhere_leaves_old_or_new_set(calibrated, tmp_path, point):
    bundle = tmp_path / "b"
    shutil.copytree(calibrated, bundle)
    old = snapshot(bundle)
    done = svdtrt("calibrate", bundle, "--count", 2, "--steps", 3, "--force", kill_at=point)
    assert done.returncode == -signal.SIGKILL, done.stderr
    state = assert_old_or_new(bundle, old)
    assert state == ("new" if point == "swapped" else "old")
    if state == "new":  # the new set, whole: 3 steps per image
        assert len(Bundle.open(bundle).manifest.calibration["default"].components["unet"].calibration) == 3


@pytest.mark.slow
@pytest.mark.parametrize("point", ("quantize-component", *KILL_POINTS))
def test_quantize_force_killed_anywhere_leaves_old_or_new_graphs(calibrated, tmp_path, point):
    bundle = tmp_path / "b"
    shutil.copytree(calibrated, bundle)
    old = snapshot(bundle)
    done = svdtrt("quantize", bundle, "--precision", "int8", "--force", kill_at=point)
    assert done.returncode == -signal.SIGKILL, done.stderr
    state = assert_old_or_new(bundle, old)
    assert state == ("new" if point == "swapped" else "old")
    assert not list(bundle.rglob("*-inferred.onnx"))  # ORT's quantizer never writes inside the bundle


@pytest.mark.slow
def test_concurrent_int8_and_fp8_quantization_both_land(calibrated, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(calibrated, bundle)
    env = {k: v for k, v in os.environ.items() if k != "SVDTRT_KILL_AT"}
    procs = [subprocess.Popen([sys.executable, "-m", "svdtrt", "quantize", str(bundle), "--precision", p, "--force"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for p in ("int8", "fp8")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    m = Bundle.open(bundle).manifest
    assert {"int8", "fp8"} <= set(m.components["unet"].graphs)
    assert svdtrt("verify", bundle).returncode == 0


@pytest.mark.slow
def test_export_does_not_replace_a_folder_that_appears_meanwhile(tmp_path, run_cli, monkeypatch):
    import svdtrt.export.bundle_export as export

    out = tmp_path / "D"
    original = export._export_components

    def and_meanwhile(*args, **kwargs):
        original(*args, **kwargs)
        out.mkdir()
        (out / "precious.txt").write_text("keep")

    monkeypatch.setattr(export, "_export_components", and_meanwhile)
    code, _, err = run_cli("export", "tiny", "--out", out)
    assert code == 2 and "appeared" in err and len(error_lines(err)) == 1
    assert (out / "precious.txt").read_text() == "keep" and sorted(os.listdir(out)) == ["precious.txt"]
    assert not [p for p in tmp_path.iterdir() if ".txn-" in p.name]


@pytest.mark.slow
def test_two_exports_to_one_path_cannot_both_succeed(tiny_bundle, tmp_path, run_cli, monkeypatch):
    import svdtrt.export.bundle_export as export

    out = tmp_path / "b"
    original = export._export_components

    def another_export_lands_first(*args, **kwargs):
        original(*args, **kwargs)
        shutil.copytree(tiny_bundle.path, out)  # what a second export published meanwhile

    monkeypatch.setattr(export, "_export_components", another_export_lands_first)
    code, _, err = run_cli("export", "tiny", "--out", out)
    assert code == 2 and "appeared" in err
    assert snapshot(out) == snapshot(tiny_bundle.path)


@pytest.mark.parametrize("option", ("--out", "--save-frames"))
def test_run_does_not_replace_an_output_that_appears_while_sampling(tiny_bundle, photo, tmp_path, run_cli,
                                                                     monkeypatch, option):
    from svdtrt.runtime import pipeline

    image = tmp_path / "in.png"
    photo.save(image)
    clip, frames = tmp_path / "clip.mp4", tmp_path / "frames.npy"
    target = clip if option == "--out" else frames
    original = pipeline.SvdPipeline.__call__

    def and_meanwhile(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        target.write_text("not ours")
        return result

    monkeypatch.setattr(pipeline.SvdPipeline, "__call__", and_meanwhile)
    code, out, err = run_cli("run", tiny_bundle.path, "--image", image, "--out", clip, "--save-frames", frames,
                             "--steps", 2)
    assert code == 2 and "appeared" in err and "written" not in out
    assert target.read_text() == "not ours"
    assert not [p for p in tmp_path.iterdir() if ".part-" in p.name]


def test_a_killed_writers_part_file_is_removed_by_the_next_writer(tmp_path):
    from svdtrt.media.video import CLIP_FILE
    from svdtrt.publishing import OutputFile

    script = ("import os, signal, sys; from svdtrt.publishing import OutputFile; from svdtrt.media.video import "
              "CLIP_FILE; o = OutputFile(sys.argv[1], CLIP_FILE); o.part.write_text('half'); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "clip.mp4")])
    assert done.returncode == -signal.SIGKILL
    assert len([p for p in tmp_path.iterdir() if ".part-" in p.name]) == 1
    out = OutputFile(tmp_path / "clip.mp4", CLIP_FILE)
    assert [p.name for p in tmp_path.iterdir() if ".part-" in p.name] == [out.part.name]  # only the live one
    out.write(lambda part: part.write_bytes(b"whole"))
    assert out.publish().read_bytes() == b"whole"
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]


def _rerecord(bundle: Path, name: str) -> None:
    """Make the manifest vouch for ``name`` as it now is (a file changed by someone on purpose)."""
    from svdtrt.bundle import manifest as schema
    from svdtrt.bundle.store import sha256_file

    m = schema.parse((bundle / "manifest.json").read_bytes(), str(bundle))
    m.files[name] = schema.FileRecord(bytes=(bundle / name).stat().st_size, sha256=sha256_file(bundle / name))
    (bundle / "manifest.json").write_bytes(schema.dump(m))


@pytest.mark.parametrize("fill", (b"\0", bytes.fromhex("0000c07f")))  # zeros, float32 NaNs
def test_same_size_corrupted_weights_are_refused_not_run(tiny_bundle, photo, tmp_path, run_cli, fill):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, bundle)
    data = bundle / "unet.fp32.onnx.data"
    size = data.stat().st_size
    data.write_bytes((fill * (size // len(fill) + 1))[:size])
    image = tmp_path / "in.png"
    photo.save(image)
    code, out, err = run_cli("verify", bundle)
    assert code == 1 and "unet.fp32.onnx.data: sha256 differs" in out
    code, _, err = run_cli("run", bundle, "--image", image, "--out", tmp_path / "clip.mp4", "--steps", 2)
    assert code == 2 and len(error_lines(err)) == 1
    assert "unet.fp32.onnx.data does not match its recorded sha256" in err
    # the repair re-exports the UNet alone (docs/architecture.md, "Integrity"), keeping the rest
    assert f"repair it with 'svdtrt export tiny --out {bundle} --components unet'" in err
    assert not (tmp_path / "clip.mp4").exists()


@pytest.mark.parametrize("damage", ("truncate_graph", "truncate_data", "swap_data"))
def test_truncated_or_swapped_files_are_one_line_errors_naming_the_file(tiny_bundle, photo, tmp_path, run_cli, damage):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, bundle)
    if damage == "swap_data":
        a, b = bundle / "vae_encoder.fp32.onnx.data", bundle / "vae_decoder.fp32.onnx.data"
        a_bytes = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(a_bytes)
        name = "vae_decoder.fp32.onnx.data"
    else:
        name = "unet.fp32.onnx" if damage == "truncate_graph" else "unet.fp32.onnx.data"
        raw = (bundle / name).read_bytes()
        (bundle / name).write_bytes(raw[: len(raw) // 2])
    image = tmp_path / "in.png"
    photo.save(image)
    code, _, err = run_cli("run", bundle, "--image", image, "--out", tmp_path / "clip.mp4", "--steps", 2)
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err
    assert name in err and "svdtrt export tiny" in err


def test_a_graph_that_fails_to_load_is_a_bundle_error_with_the_rebuild_command(tiny_bundle, photo, tmp_path, run_cli):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, bundle)
    (bundle / "vae_encoder.fp32.onnx").write_bytes(b"\0" * 64)  # the manifest vouches for it, ORT cannot load it
    _rerecord(bundle, "vae_encoder.fp32.onnx")
    image = tmp_path / "in.png"
    photo.save(image)
    code, _, err = run_cli("run", bundle, "--image", image, "--out", tmp_path / "clip.mp4", "--steps", 2)
    assert code == 2 and "ONNX Runtime cannot load vae_encoder.fp32.onnx" in err
    assert f"repair it with 'svdtrt export tiny --out {bundle} --components vae_encoder'" in err


def test_files_in_a_bundle_that_the_manifest_does_not_list_fail_verify(tiny_bundle, tmp_path, run_cli):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, bundle)
    (bundle / "unet.fp32-inferred.onnx").write_bytes(b"left by a tool")
    code, out, _ = run_cli("verify", bundle)
    assert code == 1 and "unet.fp32-inferred.onnx: on disk but not in the manifest" in out


def test_a_file_rewritten_in_place_with_its_mtime_restored_is_hashed_again(tiny_bundle, tmp_path, monkeypatch):
    """The sha256 cache keys on ctime too, which cannot be set back (it used to trust device,
    inode, size and mtime: a file zeroed in place with its mtime restored ran silently)."""
    from svdtrt.errors import BundleError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = Bundle.open(shutil.copytree(tiny_bundle.path, tmp_path / "b"))
    name = bundle.graph("vae_decoder", "fp32").data
    path = bundle.check_file(name)  # hashed and remembered
    before = path.stat()
    with open(path, "r+b") as f:  # in place: the same inode and size
        f.write(bytes(16))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    now = path.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    with pytest.raises(BundleError, match=f"{name} does not match its recorded sha256"):
        bundle.check_file(name)


def test_a_change_carries_the_remembered_hashes_of_the_files_it_keeps(tiny_bundle, tmp_path, monkeypatch):
    """Linking a kept file into the new state changes its ctime, not its content: the hash the
    cache knew moves with it, so the next reader pays a stat, not a hash."""
    from svdtrt.bundle.store import HashCache
    from svdtrt.export.convert import convert_bundle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = Bundle.open(shutil.copytree(tiny_bundle.path, tmp_path / "b"))
    name = bundle.graph("unet", "fp32").data
    path = bundle.check_file(name)
    ctime = path.stat().st_ctime_ns
    convert_bundle(bundle.path, components=["vae_decoder"], progress=False)
    assert path.stat().st_ctime_ns != ctime
    assert HashCache().known(path) == bundle.manifest.files[name].sha256


def test_lock_files_live_in_the_cache_folder_and_a_full_disk_does_not_stop_the_lock(tmp_path, monkeypatch):
    import errno

    from svdtrt import publishing

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    spellings = (tmp_path / "out" / "b", tmp_path / "out" / "." / "b", tmp_path / "link" / "b")
    paths = {publishing.lock_path(p) for p in spellings}
    assert len(paths) == 1 and next(iter(paths)).parent == tmp_path / "cache" / "svdtrt" / "locks"

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(publishing.os, "pwrite", disk_full)  # the pid the lock file records
    with publishing.Lock(tmp_path / "out" / "b") as lock:
        assert lock.path.exists()
    assert os.listdir(tmp_path / "out") == []


def test_an_empty_folder_is_written_into_and_a_foreign_one_is_never_replaced(tmp_path):
    """The kinds of publishing: an empty folder holds nothing to lose (no --force needed: the hint
    for one is 'export tiny --out DIR'); a folder that is not of the kind is refused even with force."""
    from svdtrt.errors import InputError
    from svdtrt.publishing import DirectoryTransaction, FolderKind

    kind = FolderKind("a report folder", "report.json", ("report.json",))
    (tmp_path / "empty").mkdir()
    with DirectoryTransaction(tmp_path / "empty", kind) as txn:
        (txn.path / "report.json").write_text("{}")
        txn.publish()
    assert os.listdir(tmp_path / "empty") == ["report.json"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.json").write_text("mine")
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is a report folder holding notes.txt, which svdtrt did not put there; "
                                         "svdtrt replaces only a report folder it made, even with --force"):
        DirectoryTransaction(tmp_path / "mine", kind, force=True).__enter__()
    assert sorted(os.listdir(tmp_path / "mine")) == ["notes.txt", "report.json"]
    assert sorted(os.listdir(tmp_path)) == ["empty", "mine"]
