"""Study: does a bigger contrastive batch train a better CLIP (BASIC)?

A micro CLIP trains on the built-in world at contrastive batches of 32, 128, 1,024 and 4,096,
every batch at the same learning rate: scaled with the square root of the batch, 4,096 (at
1.7e-2) lost colour as well as which object, and at 96 steps of 4,096 from scratch 3e-3 beat
6e-3. ``--equal steps`` is BASIC's setting, where steps are not the limit and a bigger batch also
sees more samples: every batch continues one shared pretraining (1,024 steps of 128, where
which object is learnt) for the same 64 optimizer steps. From scratch 64-96 steps are too few
for which object at any batch (9-18%), and the few hundred steps it needs cost an hour of one
core per seed at 4,096. ``--equal samples`` gives every batch the same samples from scratch,
so a bigger batch takes fewer steps. Batches of 1,024 and more run as the BASIC step does:
microbatches of 256 re-materialised, the tiled linear-memory loss. Writes
batch_size_{steps,samples}.{csv,json,png} to --out (default runs/studies); the last line is
the verdict on the claim, on which object.

    python benchmarks/study_batch_size.py --equal steps      # 3 seeds, 2 at a time
    python benchmarks/study_batch_size.py --equal samples
"""

import time
from pathlib import Path

from study import (after_shared_pretraining, args, chance_and_axis, claim, finish, print_summary, pyplot, stage,
                   summaries, sweep, write)

BATCHES, MICROBATCH = [32, 128, 1024, 4096], 256
PRETRAIN = 1024 * 128  # --equal steps: the shared start, at batch 128
STEPS, STEPS_LR = 64, 1e-3  # --equal steps: batch 4,096 then sees 262,144 samples
SAMPLES, SAMPLES_LR = 1024 * 128, 3e-3  # --equal samples: 1,024 steps at batch 128, 32 at 4,096


def settings(equal: str, start_from: Path | None = None) -> dict:
    out = {}
    for b in BATCHES:
        big = {"microbatch_size": MICROBATCH, "tiled_loss": "on"} if b >= 1024 else {}
        samples, lr = (STEPS * b, STEPS_LR) if equal == "steps" else (SAMPLES, SAMPLES_LR)
        out[f"batch {b}"] = dict(train=big, start_from=start_from,
                                 fields={"batch": b, "steps": samples // b, "samples": samples},
                                 stages=[stage("main", samples, batch_size=b, lr=lr)])
    return out


def main() -> None:
    a = args(__doc__, extra=lambda p: p.add_argument("--equal", choices=["steps", "samples"], default="steps",
                                                     help="what every batch gets the same of (default steps)"))
    equal = a.equal
    t0 = time.perf_counter()
    if equal == "steps":
        rows, _ = after_shared_pretraining("batch-size-steps", dict(stages=[stage("pretrain", PRETRAIN)]),
                                           lambda folder: settings("steps", folder), a.seeds, a.jobs)
        verdict = claim("BASIC: a bigger contrastive batch is better when steps are not the limit",
                        "ImageNet zero-shot rises with the contrastive batch, up to 65,536",
                        f"batch {BATCHES[-1]}", "batch 128", rows, lambda r: r["stage"] == "main")
        baseline = lambda r: r["batch"] == BATCHES[-1] and r["stage"] == "main"  # noqa: E731 (BASIC's setting)
    else:
        rows = sweep("batch-size-samples", settings("samples"), a.seeds, a.jobs)
        verdict = claim("A bigger contrastive batch is better at the same samples seen (control)",
                        "not a paper claim: BASIC compares at equal steps", f"batch {BATCHES[-1]}", "batch 128", rows,
                        lambda r: True)
        baseline = lambda r: r["batch"] == 128  # noqa: E731 (every study's batch)
    summary = summaries(rows, ["setting", "batch", "stage"])
    stem = f"batch_size_{equal}"
    write(stem, rows, summary, time.perf_counter() - t0, a.out, [verdict], baseline)
    print_summary(summary, ["batch", "stage"])
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("object_acc1", "zeroshot_mean")):
        s = [x for x in summary if x["metric"] == metric and x["stage"] == "main"]
        ax.errorbar([x["batch"] for x in s], [x["mean"] for x in s], yerr=[x["std"] for x in s], marker="o",
                    capsize=3, label=f"after {STEPS} steps" if equal == "steps" else None)
        for r in rows:
            if r["stage"] == "main":
                ax.plot(r["batch"], r[metric], "k.", markersize=4)
        if equal == "steps":
            start = [r[metric] for r in rows if r["stage"] == "pretrain" and r["batch"] == BATCHES[0]]
            ax.axhline(sum(start) / len(start), color="C1", linestyle=":", label="shared start (mean)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(BATCHES, [f"{b:,}" for b in BATCHES])
        ax.set_xlabel(f"contrastive batch ({STEPS} steps each, lr {STEPS_LR:g})" if equal == "steps"
                      else f"contrastive batch ({SAMPLES:,} samples each, lr {SAMPLES_LR:g})")
        ax.set_ylabel(metric)
        chance_and_axis(ax, [r[metric] for r in rows], metric)
        ax.legend()
    finish(fig, a.out, stem, t0, [verdict])


if __name__ == "__main__":
    main()
