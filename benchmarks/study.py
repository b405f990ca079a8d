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
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from clipa.config import load_config
from clipa.eval.world import CHANCE
from clipa.flops import pair_flops
from clipa.models import get_model_config
from clipa.train.trainer import Trainer

# Where a run writes unless told (--out): beside training runs, untracked. The published tables
# and plots are docs/studies/ (--out docs/studies rewrites them).
OUT = Path(__file__).resolve().parents[1] / "runs" / "studies"
METRICS = ["zeroshot_mean", "object_acc1", "colour_acc1", "size_acc1", "relation_acc1",
           "image_retrieval_recall@1", "image_retrieval_recall@5"]
HEADLINE = "zeroshot_mean"

# Micro CLIPs (clipa-tiny's towers narrowed): 32 px images in 4 px patches (64 tokens), 32-token
# captions. Named by width; "micro-32" is the default of every study (the machine they were
# measured on is two CPU cores shared with other jobs).
SIZES = {
    "micro-16": dict(embed_dim=16, vision=dict(width=16, layers=2, head_width=8),
                     text=dict(width=16, heads=2, layers=2, context_length=32)),
    "micro-32": dict(embed_dim=32, vision=dict(width=32, layers=2, head_width=16),
                     text=dict(width=32, heads=2, layers=2, context_length=32)),
    "micro-64": dict(embed_dim=64, vision=dict(width=64, layers=2, head_width=32),
                     text=dict(width=64, heads=2, layers=2, context_length=32)),
    # micro-64 with four heads per tower (the slow world test's model): kinds a little better by 1,024 steps.
    "micro-64-4h": dict(embed_dim=64, vision=dict(width=64, layers=2, head_width=16),
                        text=dict(width=64, heads=4, layers=2, context_length=32)),
}

def stage(name: str, samples: int, batch_size: int = 128, lr: float = 3e-3, **extra) -> dict:
    """One stage of a study run; ``extra`` are StageConfig keys (image_reduction, text_length, ...)."""
    warmup = max(1, min(20, samples // batch_size // 10))
    return {"name": name, "samples": samples, "batch_size": batch_size, "lr": lr, "warmup": warmup, **extra}


def pair_gflops(size: str, image_size: int | None = None, patches: int | None = None,
                text_length: int | None = None) -> float:
    """Training FLOPs per image-text pair of a micro model, as ``clipa flops`` counts them."""
    cfg = get_model_config("clipa-tiny", **SIZES[size])
    return pair_flops(cfg, image_size, patches, text_length).train_step / 1e9


def run(stages: list[dict], seed: int, size: str = "micro-32", train: dict | None = None,
        probe: Callable[[Any], dict] | None = None) -> list[dict]:
    """Train one seed of one setting; the world's metrics after each stage, with seconds taken,
    and ``probe(model)``'s figures on the last stage's row."""
    with tempfile.TemporaryDirectory() as tmp:
        experiment = {
            "model": "clipa-tiny",
            "model_overrides": SIZES[size],
            "data": {"source": "world"},
            "stages": stages,
            "train": {"seed": seed, "threads": 1, "progress": False, "output_dir": tmp, **(train or {})},
        }
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


def sweep(name: str, settings: dict[str, dict], seeds: Iterable[int]) -> list[dict]:
    """Every setting x seed; ``settings[label]`` is ``run``'s keyword arguments plus ``fields``
    (columns for the table). Prints a line per run and returns one row per (run, stage)."""
    rows = []
    t0 = time.perf_counter()
    for label, spec in settings.items():
        spec = dict(spec)
        fields = spec.pop("fields", {})
        for seed in seeds:
            for r in run(seed=seed, **spec):
                rows.append({"setting": label, **fields, "seed": seed, **r})
            last = rows[-1]
            print(f"{name}: {label} seed {seed}: {HEADLINE} {last[HEADLINE]:.3f} "
                  f"({last['seconds']:.0f} s, {time.perf_counter() - t0:.0f} s so far)", flush=True)
    return rows


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


def write(name: str, rows: list[dict], summary: list[dict], seconds: float, out: Path = OUT) -> Path:
    """``OUT/NAME.csv`` (one row per run and stage) and ``NAME.json`` (rows and summary)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{name}.json").write_text(json.dumps({"study": name, "seconds": round(seconds), "summary": summary,
                                                   "rows": rows}, indent=1))
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


def before_after(name: str, settings: dict[str, dict], a: argparse.Namespace, title: str) -> dict[str, dict]:
    """Run a two-stage (pretrain, finetune) comparison; write its table and bar plot; return
    the summary after the fine-tune by setting."""
    t0 = time.perf_counter()
    rows = sweep(name, settings, range(a.seeds))
    summary = summarise(rows, ["setting", "stage"])
    summary += summarise(rows, ["setting", "stage"], "image_retrieval_recall@5")
    stem = name.replace("-", "_")
    write(stem, rows, summary, time.perf_counter() - t0, a.out)
    print_summary(summary, ["setting", "stage"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    bars(ax, [s for s in summary if s["metric"] == HEADLINE], list(settings), ["pretrain", "finetune"], "stage", rows)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(a.out / f"{stem}.png", dpi=120)
    print(f"finished in {time.perf_counter() - t0:.0f} s")
    return {s["setting"]: s for s in summary if s["stage"] == "finetune" and s["metric"] == HEADLINE}


def pyplot():
    """matplotlib's pyplot without a display (``pip install clipa[study]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def args(description: str, seeds: int = 3) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", type=int, default=seeds, help="seeds per setting (0, 1, ...)")
    p.add_argument("--out", type=Path, default=OUT, help="folder for the table and the plot")
    return p.parse_args()
