"""The README's commands: every ``svdtrt`` line parses with today's options, every extra it
installs exists in pyproject.toml, and (slow, with the network, in CI) the Quickstart's install
lines work as written in a fresh virtual environment of a fresh copy of the clone."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tomllib

from svdtrt.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def code_blocks(text: str) -> list[list[str]]:
    """The README's ```bash blocks as command lines: comments dropped, '\\' continuations joined."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines, pending = [], ""
        for raw in body.splitlines():
            line = pending + re.sub(r"\s+#.*$", "", raw).strip() if not raw.lstrip().startswith("#") else pending
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            if line:
                lines.append(line)
        blocks.append(lines)
    return blocks


def _svdtrt_commands() -> list[str]:
    commands = []
    for block in code_blocks(README.read_text()):
        for line in block:
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("svdtrt "):
                    commands.append(part)
    return commands


def test_readme_has_the_install_lines():
    blocks = code_blocks(README.read_text())
    lines = [line for block in blocks for line in block]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in lines
    assert any(line.startswith("pip install -e '.[cpu]' && svdtrt demo") for line in lines)
    assert "svdtrt --version" in lines
    assert any(line.startswith("pip install -e '.[tensorrt]' --extra-index-url") for line in lines)


@pytest.mark.parametrize("command", _svdtrt_commands())
def test_every_readme_command_parses(command):
    """Optional parts in [brackets] are dropped; a|b alternatives keep the first."""
    words = shlex.split(re.sub(r"\s*\[[^\]]*\]", "", command))
    words = [w.split("|")[0] for w in words]
    try:
        build_parser().parse_args(words[1:])
    except SystemExit as e:
        assert e.code == 0, command  # --version exits 0


def test_every_extra_the_docs_install_exists():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for extra in re.findall(r"pip install -e '\.\[([\w,]+)\]'", doc.read_text()):
            assert set(extra.split(",")) <= set(extras), (doc.name, extra)
        assert "pip install 'svdtrt[" not in doc.read_text(), f"{doc.name}: svdtrt is not on PyPI"


def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10).close()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_quickstart_in_a_fresh_virtualenv(tmp_path):
    """The Quickstart block as written, in a copy of the clone, with a fresh venv: the CPU torch
    line, ``pip install -e '.[cpu]' && svdtrt demo``, the test extra and ``svdtrt --version``. The test
    suite line runs one test file (the whole suite is what CI runs around this test)."""
    if os.environ.get("SVDTRT_FRESH_VENV") != "1":
        pytest.skip("downloads torch and every dependency (minutes, about 1 GB): set SVDTRT_FRESH_VENV=1 "
                    "(.ci/run does)")
    if not _reachable("https://download.pytorch.org/whl/cpu/") or not _reachable("https://pypi.org/simple/"):
        pytest.skip("needs the network: PyPI and PyTorch's CPU wheel index")
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                                               "svdtrt-demo", ".pytest_cache"))
    quickstart = code_blocks(README.read_text())[0]
    script = ["set -euo pipefail"] + [
        line.replace("python -m pytest -q", "python -m pytest -q tests/test_presets.py") for line in quickstart]
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=clone, capture_output=True, text=True,
                          timeout=1800, env={k: v for k, v in os.environ.items()
                                             if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASSED" in done.stdout and "svdtrt 0." in done.stdout
    assert (clone / "svdtrt-demo" / "side_by_side.png").is_file()
    venv_python = clone / ".venv" / "bin" / "python"
    version = subprocess.run([venv_python, "-c", "import torch; print(torch.version.cuda)"], capture_output=True,
                             text=True)
    assert version.stdout.strip() == "None"  # the CPU build, not CUDA wheels
    assert sys.prefix not in str(venv_python)
