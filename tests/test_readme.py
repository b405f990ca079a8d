"""The README's code runs as written. A fenced block preceded by ``<!-- runnable -->`` runs by
itself in an empty folder (with the repository's ``configs/`` beside it, as from the
repository root); ``<!-- runnable: slow -->`` blocks need a trained run, so the slow walk runs
every runnable block, bash and Python, in README order in one fresh folder, as a reader would.
``clipa`` and ``python`` are this interpreter with this checkout's source. Every Python block
must be marked, runnable or ``<!-- not runnable: why -->``, so an example cannot rot unnoticed.

A runnable mark may add, after ``;``: ``needs PATH, ...`` (``../shared/data``: the real data
sets beside the folder, the block skipped where they are absent; ``photo.jpg``: a photo the
test draws) and ``CPU-sized in the test: clipa SUB ARGS, ...`` (ARGS added to every ``clipa
SUB`` command of the block, before its comment), e.g.
``<!-- runnable: slow; needs ../shared/data; CPU-sized in the test: clipa train stage.samples=1024 -->``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = re.compile(r"^<!-- (runnable(?:: slow)?(?:; .+)?|not runnable: .+) -->$")
SIZED = "CPU-sized in the test: "


@dataclass(frozen=True)
class Block:
    line: int  # where the fence opens, 1-based
    lang: str
    code: str
    mark: str | None  # "runnable", "runnable: slow", "not runnable: ...", or None
    needs: tuple[str, ...] = ()
    sized: tuple[tuple[str, str], ...] = field(default=())  # ("clipa train", "stage.samples=1024"), ...

    @property
    def runnable(self) -> bool:
        return self.mark is not None and self.mark.startswith("runnable")

    def sized_code(self) -> str:
        """The code with the CPU-sized arguments added to each command they name, before its comment."""
        code = self.code
        for prefix, args in self.sized:
            code = re.sub(rf"^({re.escape(prefix)}(?: [^#\n]*?)?)(\s*#.*)?$",
                          lambda m: f"{m[1]} {args}{m[2] or ''}", code, flags=re.M)
        return code


def _options(mark: str) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A mark's kind, the paths it needs and its CPU-sized arguments by command."""
    kind, *options = mark.split("; ")
    needs, sized = [], []
    for option in options:
        if option.startswith("needs "):
            needs += option[len("needs "):].split(", ")
        elif option.startswith(SIZED):
            for item in option[len(SIZED):].split(", "):
                words = item.split(" ", 2)
                sized.append((" ".join(words[:2]), words[2]))
        else:
            raise ValueError(f"unknown README mark option {option!r}")
    return kind, tuple(needs), tuple(sized)


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
        kind, needs, sized = _options(mark.group(1)) if mark and mark.group(1).startswith("runnable") else (
            mark and mark.group(1), (), ())
        found.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n", kind, needs, sized))
        i = end + 1
    return found


def _photo(path: Path) -> None:
    """A 160 x 120 photo-like picture: a gradient with a bright disc (show-masks draws its patches)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:120, 0:160]
    pixels = np.stack([x * 1.5, y * 2.0, 255 - x * 1.5], axis=-1)
    pixels[(x - 100) ** 2 + (y - 50) ** 2 < 30 ** 2] = (250, 220, 90)
    Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(path, quality=95)


def missing_needs(block: Block, folder: Path) -> list[str]:
    """Provide what ``block`` needs in ``folder`` where the test can; what it cannot is returned."""
    from conftest import SHARED

    missing = []
    for need in block.needs:
        if need == "photo.jpg":
            _photo(folder / need)
        elif need == "../shared/data":
            if not SHARED.is_dir():
                missing.append(f"{need} ({SHARED} is absent)")
            elif not (folder.parent / "shared").exists():
                (folder.parent / "shared").symlink_to(SHARED.parent)
        else:
            raise ValueError(f"README.md line {block.line}: the test cannot provide {need!r}")
    return missing


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
    code = block.sized_code()
    argv = [sys.executable, "-c", code] if block.lang == "python" else ["bash", "-eo", "pipefail", "-c", code]
    proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"README.md line {block.line} ({block.lang}) exited {proc.returncode}:\n"
                                  f"{code}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


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


def test_needs_and_cpu_sized_arguments():
    text = ("<!-- runnable: slow; needs ../shared/data, photo.jpg; CPU-sized in the test: clipa train stage.samples=8, "
            "clipa eval --max-samples 5 -->\n```bash\nclipa train x.yaml   # a recipe\nclipa train\n"
            "clipa eval runs/a --data d\nclipa export runs/a\n```\n")
    (block,) = blocks(text)
    assert block.mark == "runnable: slow" and block.needs == ("../shared/data", "photo.jpg")
    assert block.sized_code() == ("clipa train x.yaml stage.samples=8   # a recipe\nclipa train stage.samples=8\n"
                                  "clipa eval runs/a --data d --max-samples 5\nclipa export runs/a\n")
    with pytest.raises(ValueError, match="unknown README mark option"):
        blocks("<!-- runnable; maybe -->\n```bash\nls\n```\n")


@pytest.mark.parametrize("block", QUICK, ids=[f"line{b.line}" for b in QUICK])
def test_quick_block_runs(block, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    if missing := missing_needs(block, folder):
        pytest.skip(f"needs {', '.join(missing)}")
    run_block(block, folder, timeout=300)


@pytest.mark.slow
def test_readme_walk(tmp_path):
    """Acceptance (issue 22): every runnable block, bash and Python, in README order in one fresh
    folder: the default run first, then what uses it; each command that writes a run has a folder
    of its own, or the next one would stop on the last one's checkpoints."""
    folder = tmp_path / "work"
    folder.mkdir()
    walked = [b for b in ALL if b.runnable]
    assert any(b.lang == "bash" for b in walked) and any(b.lang == "python" for b in walked)
    for block in walked:
        missing = missing_needs(block, folder)
        if missing:
            warnings.warn(f"README.md line {block.line} not run: it needs {', '.join(missing)}")
            continue
        run_block(block, folder, timeout=1800)


def test_show_masks_example_shows_every_text_rule_differently(tmp_path, monkeypatch):
    """The README's ``clipa show-masks`` caption is longer than the text slots, so the four text
    rules keep four different sets of words (a caption that fits keeps all of it under every rule)."""
    import shlex

    from clipa import viz
    from clipa.cli import main

    (command,) = [line for b in ALL for line in b.code.splitlines() if line.startswith("clipa show-masks")]
    args = shlex.split(command)[1:]
    drawn = []
    original = viz._layout_text
    monkeypatch.setattr(viz, "_layout_text", lambda lines, *a: drawn.append(lines) or original(lines, *a))
    _photo(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0 and (tmp_path / "masks.png").is_file()
    (lines,) = drawn
    kept = {rule: tuple(w for w, colour in words if colour != viz.DROPPED) for rule, words in lines}
    assert set(kept) == {"truncate", "random", "block", "syntax"}
    assert len(set(kept.values())) == 4, kept
