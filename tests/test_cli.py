"""Every subcommand has the same shape (add_parser/run, --output/-o) and a user's mistake is one line."""

import argparse
import glob
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clipa import cli

SRC = Path(cli.__file__).resolve().parents[2]


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every subcommand that runs something, nested ones included."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, path + (name,))


def test_every_subcommand_module_has_add_parser_and_run():
    modules = {m.name for m in pkgutil.iter_modules(cli.__path__)}
    shaped = {m for m in modules if hasattr(__import__(f"clipa.cli.{m}", fromlist=["_"]), "add_parser")}
    assert shaped == {m.__name__.rsplit(".", 1)[1] for m in cli.SUBCOMMANDS}  # none left unregistered
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) == len(cli.SUBCOMMANDS)
    for module in cli.SUBCOMMANDS:
        assert callable(module.run)
        parser = module.add_parser(argparse.ArgumentParser().add_subparsers())
        assert parser.get_default("func") is module.run


def test_every_help_works_and_output_is_one_flag(capsys):
    leaves = list(_leaves(cli.build_parser()))
    assert {words for words, _ in leaves} >= {("train",), ("eval",), ("export",), ("flops",), ("plan",),
                                             ("show-masks",), ("data", "convert"), ("data", "inspect")}
    for words, parser in leaves:
        with pytest.raises(SystemExit) as e:
            cli.main([*words, "--help"])
        assert e.value.code == 0 and "usage: clipa" in capsys.readouterr().out
        flags = [a.option_strings for a in parser._actions if a.dest == "output"]
        assert flags in ([], [["--output", "-o"]]), words
        assert not any("--out" in a.option_strings for a in parser._actions), words


def _clipa(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "clipa", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


USER_ERRORS = {
    "train": (["train", "train.bogus=1"], "train.bogus"),
    "eval": (["eval", "no_such_run"], "no_such_run"),
    "export": (["export", "no_such_run", "-o", "out"], "no_such_run"),
    "flops": (["flops", "ViT-Nope"], "ViT-Nope"),
    "plan": (["plan", "no_such_recipe.yaml"], "no_such_recipe.yaml"),
    "data inspect": (["data", "inspect", "no_such_shard.tar"], "no_such_shard.tar"),
}


@pytest.mark.parametrize("command", USER_ERRORS)
def test_user_error_is_one_line_and_exit_2(tmp_path, command):
    args, named = USER_ERRORS[command]
    proc = _clipa(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipa: error:") and named in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()  # caught before any work


def test_debug_shows_the_traceback(tmp_path):
    proc = _clipa("--debug", "flops", "ViT-Nope", cwd=tmp_path)
    assert proc.returncode not in (0, 2) and "Traceback (most recent call last)" in proc.stderr
    assert "KeyError" in proc.stderr and "clipa: error:" not in proc.stderr


def test_debug_after_the_arguments_re_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_shard"):
        cli.main(["data", "inspect", str(tmp_path / "no_such_shard.tar"), "--debug"])
    assert cli.main(["data", "inspect", str(tmp_path / "no_such_shard.tar")]) == 2


def test_eval_table_says_percent_while_the_json_holds_fractions():
    from clipa.eval.runner import format_table, result_record

    samples = {"scored": 2000, "skipped": {"corrupt_image": 1}, "drawn": "2,000 of 10,000 samples, evenly spaced"}
    record = result_record("cifar10", "zeroshot", {"acc1": 0.905, "mean_per_class_recall": 0.9, "C": 0.0316,
                                                   "samples": samples}, "clipa-tiny", "runs/default")
    assert record["metrics"]["acc1"] == 0.905
    table = format_table([record]).splitlines()
    value = {line.split()[2]: line.split()[3] for line in table[2:-2]}
    assert value == {"acc1": "90.50%", "mean_per_class_recall": "90.00%", "C": "0.0316", "images": "2,000",
                     "skipped": "1"}
    assert table[-2] == "cifar10: 2,000 of 10,000 samples, evenly spaced" and "fractions of 1" in table[-1]


# A path in this repository, as help texts and the README cite them; one inside a URL or another
# repository's path (preceded by "/") is not this repository's.
REPO_PATH = re.compile(r"(?<![\w./:-])((?:src|configs|docs|benchmarks|tests|\.ci)/[\w./*-]*[\w*])")


def test_cited_paths_exist():
    """Acceptance (issue 22): every repository path a help text of any subcommand or the README
    names exists (a pattern such as ``configs/*_336.yaml`` matches a file)."""
    root = SRC.parent
    texts = {"README.md": (root / "README.md").read_text()}
    texts.update({f"clipa {' '.join(words)} --help": parser.format_help()
                  for words, parser in _leaves(cli.build_parser())})
    texts["clipa --help"] = cli.build_parser().format_help()
    cited = {(where, path) for where, text in texts.items() for path in REPO_PATH.findall(text)}
    assert any(where != "README.md" for where, _ in cited)  # the help texts cite some
    missing = [(where, path) for where, path in sorted(cited)
               if not (glob.glob(str(root / path)) if "*" in path else (root / path).exists())]
    assert not missing, f"cited but not in the repository: {missing}"
    assert not REPO_PATH.findall("https://github.com/mlfoundations/open_clip/blob/main/docs/model_profile.csv")
