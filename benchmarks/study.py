"""What every ``benchmarks/study_*.py`` shares: a micro CLIP on the built-in world, one run
through the trainer's public path per (setting, seed), and the table and plot it writes.

A run is a YAML experiment (``model``, ``data.source: world``, its stages) handed to
``clipa.config.load_config`` and ``Trainer(cfg).fit()``, exactly what ``clipa train`` does;
its metrics are the world's held-out zero-shot tasks and retrieval after each stage.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from clipa.checkpoint import MODEL_FILE
from clipa.config import ModelConfig, load_config
from clipa.eval.world import CHANCE
from clipa.flops import pair_flops
from clipa.models import get_model_config
from clipa.train.trainer import Trainer

# Where a run writes unless told (--out): beside training runs, untracked. The published tables
# and plots are docs/studies/ (--out docs/studies rewrites them).
OUT = Path(__file__).resolve().parents[1] / "runs" / "studies"
METRICS = ["object_acc1", "zeroshot_mean", "colour_acc1", "size_acc1", "relation_acc1",
           "image_retrieval_recall@1", "image_retrieval_recall@5"]
# The papers' claims are about zero-shot ImageNet accuracy, which is identity: every table and
# plot leads with which object, on held-out kind-colour pairs; the other tasks stand beside it.
HEADLINE = "object_acc1"

# Micro CLIPs (clipa-tiny's towers narrowed to two layers, heads of 16): 32 px images in 8 px
# patches, so 16 image tokens, a small object one patch and a big one four; 24-token captions
# (the longest caption, training or evaluation, is 23).
# Named by width. With 4 px patches (64 tokens) no micro model learnt which object within a study's
# budget: a glyph's shape was spread over 4-16 patches that two layers had to assemble.
SIZES = {
    f"micro-{w}": dict(embed_dim=w, vision=dict(width=w, layers=2, head_width=16, patch_size=8),
                       text=dict(width=w, heads=w // 16, layers=2, context_length=24))
    for w in (32, 64, 96)
}
# micro-64 with the 4 px patches every study used before (64 image tokens): the world-learning
# study's comparison for why the patches are 8 px now.
SIZES["micro-64-4px"] = dict(SIZES["micro-64"], vision=dict(SIZES["micro-64"]["vision"], patch_size=4))
DEFAULT_SIZE = "micro-64"


def stage(name: str, samples: int, batch_size: int = 128, lr: float = 3e-3, **extra) -> dict:
    """One stage of a study run; ``extra`` are StageConfig keys (image_reduction, text_length, ...)."""
    warmup = max(1, min(20, samples // batch_size // 10))
    return {"name": name, "samples": samples, "batch_size": batch_size, "lr": lr, "warmup": warmup, **extra}


def model_config(size: str = DEFAULT_SIZE) -> ModelConfig:
    """A micro size's full model config (clipa-tiny with the size's overrides)."""
    return get_model_config("clipa-tiny", **SIZES[size])


def pair_gflops(size: str = DEFAULT_SIZE, image_size: int | None = None, patches: int | None = None,
                text_length: int | None = None) -> float:
    """Training FLOPs per image-text pair of a micro model, as ``clipa flops`` counts them."""
    return pair_flops(model_config(size), image_size, patches, text_length).train_step / 1e9


def run(stages: list[dict], seed: int, size: str = DEFAULT_SIZE, train: dict | None = None,
        probe: Callable[[Any], dict] | None = None, keep: Path | None = None,
        start_from: Path | None = None) -> list[dict]:
    """Train one seed of one setting; the world's metrics after each stage, with seconds taken,
    and ``probe(model)``'s figures on the last stage's row. ``keep``: write the run to
    ``keep/seed-N`` and leave it there; ``start_from``: begin from the weights that a kept run
    of the same seed ended with (a fine-tune of one shared pretraining)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep / f"seed-{seed}" if keep else Path(tmp)
        experiment = {
            "model": "clipa-tiny",
            "model_overrides": SIZES[size],
            "data": {"source": "world"},
            "stages": stages,
            "train": {"seed": seed, "threads": 1, "progress": False, "output_dir": str(folder), **(train or {})},
        }
        if start_from:
            experiment["pretrained"] = str(final_weights(start_from / f"seed-{seed}"))
        path = Path(tmp) / "experiment.yaml"
        path.write_text(yaml.safe_dump(experiment))
        t0 = time.perf_counter()
        trainer = Trainer(load_config(path, []))
        results = trainer.fit()
        seconds = time.perf_counter() - t0
        probed = probe(trainer.model) if probe else {}
    rows = [{"stage": r["stage_name"], "seconds": round(seconds, 1), **{m: r[m] for m in METRICS}} for r in results]
    rows[-1].update(probed)
    return rows


def final_weights(run_folder: Path) -> Path:
    """The model weights of a finished run's last checkpoint."""
    steps = sorted((run_folder / "checkpoints").glob("step_*"))
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {run_folder / 'checkpoints'}")
    return steps[-1] / MODEL_FILE


def sweep(name: str, settings: dict[str, dict], seeds: Iterable[int], jobs: int = 1) -> list[dict]:
    """Every setting x seed, ``jobs`` runs at a time (each on one thread); ``settings[label]`` is
    ``run``'s keyword arguments plus ``fields`` (columns for the table). Prints a line per run and
    returns one row per (run, stage), in the order of settings and seeds."""
    t0 = time.perf_counter()
    tasks = []
    for label, spec in settings.items():
        spec = dict(spec)
        fields = spec.pop("fields", {})
        tasks += [(label, fields, seed, spec) for seed in seeds]

    def report(label: str, seed: int, runs: list[dict]) -> None:
        print(f"{name}: {label} seed {seed}: {HEADLINE} {runs[-1][HEADLINE]:.3f} "
              f"({runs[-1]['seconds']:.0f} s, {time.perf_counter() - t0:.0f} s so far)", flush=True)

    if jobs > 1:
        # spawned, not forked: a child must not inherit the parent's torch thread pools
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run, seed=seed, **spec) for _, _, seed, spec in tasks]
            results = []
            for (label, _, seed, _), future in zip(tasks, futures):
                results.append(future.result())
                report(label, seed, results[-1])
    else:
        results = []
        for label, _, seed, spec in tasks:
            results.append(run(seed=seed, **spec))
            report(label, seed, results[-1])
    return [{"setting": label, **fields, "seed": seed, **r}
            for (label, fields, seed, _), runs in zip(tasks, results) for r in runs]


def after_shared_pretraining(name: str, pretrain: dict, settings: Callable[[Path], dict[str, dict]],
                             seeds: Iterable[int], jobs: int = 1) -> tuple[list[dict], dict[str, dict]]:
    """One pretraining (``pretrain``: ``run``'s keyword arguments) per seed, then every setting of
    ``settings(folder)`` from its weights (each setting's ``start_from=folder``). Returns the
    settings and their rows, each setting's first row per seed the shared pretraining's, so a
    table shows where every setting started."""
    with tempfile.TemporaryDirectory() as tmp:
        shared = sweep(name, {"pretrain": dict(pretrain, keep=Path(tmp))}, seeds, jobs)
        table = settings(Path(tmp))
        tuned = sweep(name, table, seeds, jobs)
    rows = [{**t, "stage": "pretrain", **{k: v for k, v in p.items() if k not in ("setting", "stage")}}
            for t in tuned for p in shared if p["seed"] == t["seed"]] + tuned
    return rows, table


def summarise(rows: list[dict], by: list[str], metric: str = HEADLINE) -> list[dict]:
    """Mean, sample standard deviation and range over seeds of ``metric`` per group ``by``."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r[metric])
    out = []
    for key, values in groups.items():
        out.append({**dict(zip(by, key)), "metric": metric, "mean": statistics.mean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values), "seeds": len(values)})
    return out


def summaries(rows: list[dict], by: list[str],
              metrics: Iterable[str] = ("object_acc1", "zeroshot_mean", "image_retrieval_recall@5")) -> list[dict]:
    """``summarise`` for each of ``metrics``, identity first."""
    return [s for m in metrics for s in summarise(rows, by, m)]


def write(name: str, rows: list[dict], summary: list[dict], seconds: float, out: Path = OUT,
          claims: list[dict] = (), baseline: Callable[[dict], bool] | None = None) -> Path:
    """``OUT/NAME.csv`` (one row per run and stage) and ``NAME.json``: the rows, the summary, the
    claims judged, the time and load average it ran at, and the full-token ``baseline`` rows'
    which-object accuracy per seed (the check that identity was learnt at this budget)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    record = {"study": name, "seconds": round(seconds), "load_average": [round(x, 2) for x in os.getloadavg()],
              "claims": list(claims), "summary": summary, "rows": rows}
    if baseline is not None:
        record["baseline_object_acc1"] = {r["seed"]: r["object_acc1"] for r in rows if baseline(r)}
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    return out


def print_summary(summary: list[dict], by: list[str]) -> None:
    for s in summary:
        label = ", ".join(str(s[k]) for k in by)
        print(f"  {label:40s} {s['metric']} {s['mean']:.3f} +- {s['std']:.3f} (seeds {s['seeds']})")


def bars(ax, summary: list[dict], groups: list[str], series: list[str], key: str, rows: list[dict],
         metric: str = HEADLINE) -> None:
    """Grouped bars (mean over seeds, whiskers one standard deviation) with each seed as a dot."""
    width = 0.8 / len(series)
    for j, name in enumerate(series):
        for i, g in enumerate(groups):
            s = next(x for x in summary if x["setting"] == g and x[key] == name)
            x = i + (j - (len(series) - 1) / 2) * width
            ax.bar(x, s["mean"], width, yerr=s["std"], color=f"C{j}", label=name if i == 0 else None, capsize=3)
            dots = [r[metric] for r in rows if r["setting"] == g and r[key] == name]
            ax.plot([x] * len(dots), dots, "k.", markersize=4)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(metric)
    chance_and_axis(ax, [r[metric] for r in rows], metric)
    ax.legend()


def chance(metric: str) -> float | None:
    """A metric's chance level on the world (``zeroshot_mean``: the mean of the four tasks')."""
    if metric == "zeroshot_mean":
        return sum(CHANCE.values()) / len(CHANCE)
    return CHANCE.get(metric)


def chance_and_axis(ax, values: list[float], metric: str) -> None:
    """A dashed chance line, and a y axis around the values and chance rather than from 0,
    which would flatten differences of a few points."""
    level = chance(metric)
    if level is not None:
        ax.axhline(level, color="grey", linestyle="--", linewidth=1, label="chance")
        values = [*values, level]
    low, high = min(values), max(values)
    pad = 0.1 * (high - low) or 0.01
    ax.set_ylim(low - pad, high + pad)


def before_after(name: str, settings: dict[str, dict], a: argparse.Namespace, title: str,
                 claims: Callable[[list[dict]], list[dict]], baseline: str) -> list[dict]:
    """Run a two-stage (pretrain, finetune) comparison; write its table, the ``claims`` judged on
    its rows and a bar plot of which object (and the mean of the four tasks) after each stage;
    print and return the claims. ``baseline`` is the full-token setting."""
    t0 = time.perf_counter()
    rows = sweep(name, settings, a.seeds, a.jobs)
    summary = summaries(rows, ["setting", "stage"])
    judged = claims(rows)
    stem = name.replace("-", "_")
    write(stem, rows, summary, time.perf_counter() - t0, a.out, judged,
          lambda r: r["setting"] == baseline and r["stage"] == "finetune")
    print_summary(summary, ["setting", "stage"])
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, metric in zip(axes, ("object_acc1", "zeroshot_mean")):
        bars(ax, [s for s in summary if s["metric"] == metric], list(settings), ["pretrain", "finetune"], "stage",
             rows, metric)
    fig.suptitle(title, fontsize=10)
    finish(fig, a.out, stem, t0, judged)
    return judged


def pyplot():
    """matplotlib's pyplot without a display (``pip install clipa[study]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seed_list(text: str) -> list[int]:
    """``--seeds 3,4,5`` -> [3, 4, 5]."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds wants integers separated by commas, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds wants distinct integers, got {text!r}")
    return seeds


def args(description: str, seeds: str = "0,1,2",
         extra: Callable[[argparse.ArgumentParser], Any] | None = None) -> argparse.Namespace:
    """Every study's flags (``--seeds``, ``--out``, ``--jobs``), and the study's own (``extra``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if extra is not None:
        extra(p)
    p.add_argument("--seeds", type=seed_list, default=seed_list(seeds), help=f"seeds, e.g. 3,4,5 (default {seeds})")
    p.add_argument("--out", type=Path, default=OUT, help="folder for the table and the plot")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2: two cores)")
    return p.parse_args()


# ----------------------------------------------------------------------------- claims

def effect(paper: list[float], other: list[float]) -> tuple[float, float]:
    """(mean of ``paper`` - mean of ``other``, that difference in seed standard deviations): the
    pooled sample standard deviation of the two groups, the spread one seed's run has."""
    diff = statistics.mean(paper) - statistics.mean(other)
    if min(len(paper), len(other)) < 2:
        raise ValueError("an effect in seed standard deviations needs two seeds or more")
    spread = ((statistics.variance(paper) + statistics.variance(other)) / 2) ** 0.5
    if not spread:
        return diff, math.copysign(math.inf, diff) if diff else 0.0
    return diff, diff / spread


def claim(text: str, paper_figure: str, favoured: str, other: str, rows: list[dict], select: Callable[[dict], bool],
          equivalence: bool = False, metric: str = HEADLINE) -> dict:
    """A paper's claim judged on this study's runs: ``favoured`` (the setting the paper says is at
    least as good) against ``other``, on ``metric`` over the seeds of the rows ``select`` keeps.

    Verdicts: "reproduced" where ``favoured`` beats ``other`` by more than two seed standard
    deviations; "contradicted" where it loses by more than two; otherwise "not resolved". An
    equivalence claim (``favoured`` keeps ``other``'s accuracy for less compute) cannot be
    reproduced by a difference: within two deviations it is "consistent", beyond them in
    ``favoured``'s favour "reproduced", against it "contradicted"."""
    values = {s: [r[metric] for r in rows if r["setting"] == s and select(r)] for s in (favoured, other)}
    diff, sds = effect(values[favoured], values[other])
    verdict = "reproduced" if sds > 2 else "contradicted" if sds < -2 else "consistent" if equivalence else "not resolved"
    mean = {s: statistics.mean(v) for s, v in values.items()}
    std = {s: statistics.stdev(v) if len(v) > 1 else 0.0 for s, v in values.items()}
    return {"claim": text, "paper": paper_figure, "metric": metric, "favoured": favoured, "other": other,
            "microscope": f"{favoured} {mean[favoured]:.3f} ± {std[favoured]:.3f} vs {other} "
                          f"{mean[other]:.3f} ± {std[other]:.3f}",
            "difference": round(diff, 4), "effect_sds": round(sds, 2), "verdict": verdict,
            "seeds": min(len(v) for v in values.values())}


def print_claim(c: dict) -> None:
    """The study's last line: its claim's verdict and effect."""
    print(f"{c['claim']}: {c['microscope']} ({c['metric']}); effect {c['effect_sds']:+.2f} seed sds: {c['verdict']}")


def finish(fig, out: Path, stem: str, t0: float, claims: list[dict]) -> None:
    """Save the study's plot as ``out/STEM.png``; print its time, then its verdicts, last."""
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    print(f"finished in {time.perf_counter() - t0:.0f} s")
    for c in claims:
        print_claim(c)
