"""The README's code runs as written. A fenced block preceded by ``<!-- runnable -->`` runs by
itself in an empty folder (with the repository's ``configs/`` beside it, as from the
repository root); ``<!-- runnable: slow -->`` blocks need a trained run, so the slow walk runs
every runnable block in README order in one folder, as a reader would. ``clipa`` and
``python`` are this interpreter with this checkout's source. Every Python block must be
marked, runnable or ``<!-- not runnable: why -->``, so an example cannot rot unnoticed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = re.compile(r"^<!-- (runnable(?:: slow)?|not runnable: .+) -->$")


@dataclass(frozen=True)
class Block:
    line: int  # where the fence opens, 1-based
    lang: str
    code: str
    mark: str | None  # "runnable", "runnable: slow", "not runnable: ...", or None

    @property
    def runnable(self) -> bool:
        return self.mark is not None and self.mark.startswith("runnable")


def blocks(text: str) -> list[Block]:
    """Every fenced block with the marker comment on the last non-blank line before it."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.match(before)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        found.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n", mark and mark.group(1)))
        i = end + 1
    return found


def run_block(block: Block, folder: Path, timeout: int) -> None:
    """Run one block in ``folder`` with ``clipa`` and ``python`` on the PATH; fail showing its output."""
    bin_dir = folder / ".bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        # scripts, not symlinks: a venv's python found through a link elsewhere is not the venv's
        for name, command in (("clipa", f'"{sys.executable}" -m clipa'), ("python", f'"{sys.executable}"')):
            (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
            (bin_dir / name).chmod(0o755)
        (folder / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-c", block.code] if block.lang == "python" else ["bash", "-eo", "pipefail", "-c", block.code]
    proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"README.md line {block.line} ({block.lang}) exited {proc.returncode}:\n"
                                  f"{block.code}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


ALL = blocks(README.read_text())
QUICK = [b for b in ALL if b.mark == "runnable"]


def test_blocks_are_found_and_every_python_block_is_marked():
    assert QUICK and any(b.mark == "runnable: slow" for b in ALL)
    unmarked = [b.line for b in ALL if b.lang == "python" and b.mark is None]
    assert not unmarked, f"README.md python blocks at lines {unmarked}: mark them <!-- runnable --> or say why not"
    assert all(b.lang in ("python", "bash") for b in ALL if b.runnable)


def test_marker_parsing():
    text = "x\n<!-- runnable -->\n\n```python\nprint(1)\n```\n```bash\nls\n```\n<!-- not runnable: no GPU -->\n```python\n```\n"
    got = [(b.line, b.lang, b.code, b.mark) for b in blocks(text)]
    assert got == [(4, "python", "print(1)\n", "runnable"), (7, "bash", "ls\n", None),
                   (11, "python", "\n", "not runnable: no GPU")]


@pytest.mark.parametrize("block", QUICK, ids=[f"line{b.line}" for b in QUICK])
def test_quick_block_runs(block, tmp_path):
    run_block(block, tmp_path, timeout=300)


@pytest.mark.slow
def test_readme_walk(tmp_path):
    """Every runnable block in order, in one folder: the default run first, then what uses it."""
    for block in (b for b in ALL if b.runnable):
        run_block(block, tmp_path, timeout=1800)
