"""Study: CLIPA's inverse scaling law in miniature (CLIPA Figure 1).

Two micro CLIPs (widths 64 and 96, two layers per tower; 2.2x the FLOPs per pair apart) each
pretrain on the built-in world at 16 and at 4 image tokens (32 px images, or resized to 16 px)
for the same number of samples, then get the same short fine-tune at 32 px. The paper's claim:
the larger the image encoder, the less accuracy it loses to fewer tokens. micro-32 and a middle
token count (9) are left out to keep the study within 30 minutes on two cores. Writes (to
--out, default runs/studies) inverse_scaling.{csv,json,png}; the last line is the verdict on
the claim: which object kept at 4 tokens by the larger model against the smaller.

    python benchmarks/study_inverse_scaling.py            # 3 seeds, 2 at a time
"""

import time

from study import (args, chance, chance_and_axis, claim, finish, print_summary, pyplot, stage, summaries,
                   sweep, write)

PRETRAIN, FINETUNE = 1024 * 128, 128 * 128
IMAGE_SIZES = {16: 32, 4: 16}  # image tokens: image size at 8 px patches
MODELS = ["micro-64", "micro-96"]


def settings() -> dict:
    out = {}
    for size in MODELS:
        for tokens, px in IMAGE_SIZES.items():
            reduction = {} if px == 32 else dict(image_size=px, image_reduction={"strategy": "resize"})
            out[f"{size}/{tokens}"] = dict(size=size, fields={"model": size, "tokens": tokens},
                                           stages=[stage("pretrain", PRETRAIN, **reduction),
                                                   stage("finetune", FINETUNE, lr=1e-3)])
    return out


def main() -> None:
    a = args(__doc__)
    t0 = time.perf_counter()
    rows = sweep("inverse-scaling", settings(), a.seeds, a.jobs)
    # Which object kept against the same model and seed at 16 tokens (negative: lost).
    full = {(r["model"], r["stage"], r["seed"]): r["object_acc1"] for r in rows if r["tokens"] == 16}
    for r in rows:
        r["kept_vs_16"] = r["object_acc1"] - full[r["model"], r["stage"], r["seed"]]
    summary = summaries(rows, ["model", "tokens", "stage"], ("object_acc1", "kept_vs_16", "zeroshot_mean"))
    small, large = MODELS[0], MODELS[-1]
    verdict = claim("CLIPA: a larger encoder loses less accuracy to fewer image tokens",
                    "Figure 1: at fewer tokens the larger models' ImageNet zero-shot falls less",
                    f"{large}/4", f"{small}/4", rows, lambda r: r["stage"] == "finetune", metric="kept_vs_16")
    write("inverse_scaling", rows, summary, time.perf_counter() - t0, a.out, [verdict],
          lambda r: r["model"] == small and r["tokens"] == 16 and r["stage"] == "finetune")
    print_summary(summary, ["model", "tokens", "stage"])
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, phase in zip(axes, ["pretrain", "finetune"]):
        for i, size in enumerate(MODELS):
            pts = sorted((s["tokens"], s["mean"], s["std"]) for s in summary
                         if s["metric"] == "object_acc1" and s["model"] == size and s["stage"] == phase)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                        capsize=3, color=f"C{i}", label=size)
            seeds = [(r["tokens"], r["object_acc1"]) for r in rows if r["model"] == size and r["stage"] == phase]
            ax.plot([t for t, _ in seeds], [v for _, v in seeds], ".", color=f"C{i}", markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(IMAGE_SIZES), [str(t) for t in IMAGE_SIZES])
        ax.set_xlabel("image tokens in pretraining")
        ax.set_title("after pretraining" if phase == "pretrain" else "after the 32 px fine-tune")
    axes[0].set_ylabel("object_acc1")
    chance_and_axis(axes[0], [r["object_acc1"] for r in rows], "object_acc1")  # sharey: both panels
    axes[1].axhline(chance("object_acc1"), color="grey", linestyle="--", linewidth=1)
    axes[0].legend()
    finish(fig, a.out, "inverse_scaling", t0, [verdict])


if __name__ == "__main__":
    main()
