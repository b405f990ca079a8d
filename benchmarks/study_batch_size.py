"""Study: does a bigger contrastive batch train a better CLIP (BASIC)?

A micro CLIP trains on the built-in world at contrastive batches of 32 to 4,096, the learning
rate scaled with the square root of the batch. ``--equal steps`` gives every batch the same
optimizer steps, BASIC's setting, where steps are not the limit and a bigger batch also sees
more samples; ``--equal samples`` gives every batch the same samples, so a bigger batch takes
fewer steps. Batches of 1,024 and more run as the BASIC step does: microbatches of 256
re-materialised, the tiled linear-memory loss. Writes batch_size_{steps,samples}.{csv,json,png}
to --out (default runs/studies); the last line is the verdict on the claim, on which object.

    python benchmarks/study_batch_size.py --equal steps      # 3 seeds, 2 at a time
    python benchmarks/study_batch_size.py --equal samples
"""

import time

from study import (args, chance_and_axis, claim, finish, print_summary, pyplot, stage, summaries, sweep,
                   write)

BATCHES, MICROBATCH = [32, 128, 512, 1024, 4096], 256
STEPS = 64  # --equal steps: batch 4,096 then sees 262,144 samples
SAMPLES = 1024 * 128  # --equal samples: 1,024 steps at batch 128, 32 at 4,096


def settings(equal: str) -> dict:
    out = {}
    for b in BATCHES:
        big = {"microbatch_size": MICROBATCH, "tiled_loss": "on"} if b >= 1024 else {}
        samples = STEPS * b if equal == "steps" else SAMPLES
        warmup = max(1, min(60, samples // b // 10))
        out[f"batch {b}"] = dict(train=big, fields={"batch": b, "steps": samples // b, "samples": samples},
                                 stages=[stage("main", samples, batch_size=b, lr=3e-3 * (b / 128) ** 0.5,
                                               warmup=warmup)])
    return out


def main() -> None:
    a = args(__doc__, extra=lambda p: p.add_argument("--equal", choices=["steps", "samples"], default="steps",
                                                     help="what every batch gets the same of (default steps)"))
    equal = a.equal
    t0 = time.perf_counter()
    rows = sweep(f"batch-size-{equal}", settings(equal), a.seeds, a.jobs)
    summary = summaries(rows, ["setting", "batch"])
    if equal == "steps":
        verdict = claim("BASIC: a bigger contrastive batch is better when steps are not the limit",
                        "ImageNet zero-shot rises with the contrastive batch, up to 65,536",
                        "batch 4096", "batch 1024", rows, lambda r: True)
        baseline = lambda r: r["batch"] == 4096  # noqa: E731 (the study's reference: BASIC's setting)
    else:
        verdict = claim("A bigger contrastive batch is better at the same samples seen (control)",
                        "not a paper claim: BASIC compares at equal steps", "batch 4096", "batch 128", rows,
                        lambda r: True)
        baseline = lambda r: r["batch"] == 128  # noqa: E731
    stem = f"batch_size_{equal}"
    write(stem, rows, summary, time.perf_counter() - t0, a.out, [verdict], baseline)
    print_summary(summary, ["batch"])
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("object_acc1", "zeroshot_mean")):
        s = [x for x in summary if x["metric"] == metric]
        ax.errorbar([x["batch"] for x in s], [x["mean"] for x in s], yerr=[x["std"] for x in s], marker="o",
                    capsize=3)
        for r in rows:
            ax.plot(r["batch"], r[metric], "k.", markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(BATCHES, [f"{b:,}" for b in BATCHES])
        ax.set_xlabel(f"contrastive batch ({STEPS} steps each)" if equal == "steps"
                      else f"contrastive batch ({SAMPLES:,} samples each)")
        ax.set_ylabel(metric)
        chance_and_axis(ax, [r[metric] for r in rows], metric)
        ax.legend()
    finish(fig, a.out, stem, t0, [verdict])


if __name__ == "__main__":
    main()
