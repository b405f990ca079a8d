"""Study: does a bigger contrastive batch generalise better at the same samples seen (BASIC)?

A micro CLIP trains on the built-in world for the same number of samples at contrastive
batches of 32 to 4,096; the learning rate scales with the square root of the batch. Batches
of 1,024 and more run as the BASIC step does: microbatches of 256 re-materialised, the tiled
linear-memory loss. Writes batch_size.{csv,json,png} to --out (default runs/studies); the last line is batch
4,096's score over batch 128's.

    python benchmarks/study_batch_size.py            # 3 seeds; 2.6 min run alone at load 1.0-1.1 on 2 shared cores
"""

import time

from study import args, chance_and_axis, print_summary, pyplot, stage, summarise, sweep, write

SAMPLES, BATCHES, MICROBATCH = 8192, [32, 128, 512, 1024, 4096], 256


def settings() -> dict:
    out = {}
    for b in BATCHES:
        big = {"microbatch_size": MICROBATCH, "tiled_loss": "on"} if b >= 1024 else {}
        out[f"batch {b}"] = dict(train=big, fields={"batch": b, "steps": SAMPLES // b},
                                 stages=[stage("main", SAMPLES, batch_size=b, lr=3e-3 * (b / 128) ** 0.5)])
    return out


def main() -> None:
    a = args(__doc__)
    t0 = time.perf_counter()
    rows = sweep("batch-size", settings(), range(a.seeds))
    summary = summarise(rows, ["batch"])
    write("batch_size", rows, summary, time.perf_counter() - t0, a.out)
    print_summary(summary, ["batch"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([s["batch"] for s in summary], [s["mean"] for s in summary], yerr=[s["std"] for s in summary],
                marker="o", capsize=3)
    for r in rows:
        ax.plot(r["batch"], r["zeroshot_mean"], "k.", markersize=4)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"contrastive batch ({SAMPLES} samples seen)")
    ax.set_ylabel("zeroshot_mean")
    chance_and_axis(ax, [r["zeroshot_mean"] for r in rows], "zeroshot_mean")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out / "batch_size.png", dpi=120)
    by = {s["batch"]: s["mean"] for s in summary}
    print(f"finished in {time.perf_counter() - t0:.0f} s")
    print(f"batch 4096 / batch 128 zeroshot_mean: {by[4096] / by[128]:.2f}")


if __name__ == "__main__":
    main()
