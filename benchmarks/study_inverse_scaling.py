"""Study: CLIPA's inverse scaling law in miniature (CLIPA Figure 1).

Three micro CLIPs (widths 16, 32 and 64, two layers per tower) each train on the built-in world at four image token
counts (64, 36, 16 and 4 patches: images resized to 32, 24, 16 and 8 px) for the same number of
samples, then get the same short fine-tune at 32 px. The paper's claim: the larger the image
encoder, the less accuracy it loses to fewer tokens. Writes (to --out, default runs/studies) inverse_scaling.
{csv,json,png}; the last line is the largest model's loss at 16 tokens divided by the
smallest model's.

    python benchmarks/study_inverse_scaling.py            # 3 seeds; 6.0 min run alone at load 0.1-1.0 on 2 shared cores
"""

import time

from study import SIZES, args, chance, chance_and_axis, print_summary, pyplot, stage, summarise, sweep, write

PRETRAIN, FINETUNE = 12288, 2048
IMAGE_SIZES = {64: 32, 36: 24, 16: 16, 4: 8}  # image tokens: image size at 4 px patches


def settings() -> dict:
    out = {}
    for size in SIZES:
        for tokens, px in IMAGE_SIZES.items():
            reduction = {} if px == 32 else dict(image_size=px, image_reduction={"strategy": "resize"})
            out[f"{size}/{tokens}"] = dict(size=size, fields={"model": size, "tokens": tokens},
                                           stages=[stage("pretrain", PRETRAIN, **reduction),
                                                   stage("finetune", FINETUNE, lr=1e-3)])
    return out


def main() -> None:
    a = args(__doc__)
    t0 = time.perf_counter()
    rows = sweep("inverse-scaling", settings(), range(a.seeds))
    summary = summarise(rows, ["model", "tokens", "stage"])
    # The accuracy each token count loses against the same model at 64 tokens, per seed.
    for r in rows:
        full = next(x for x in rows if (x["model"], x["tokens"], x["stage"], x["seed"])
                    == (r["model"], 64, r["stage"], r["seed"]))
        r["lost_vs_64"] = full["zeroshot_mean"] - r["zeroshot_mean"]
    lost = summarise(rows, ["model", "tokens", "stage"], "lost_vs_64")
    write("inverse_scaling", rows, summary + lost, time.perf_counter() - t0, a.out)
    print_summary(summary + lost, ["model", "tokens", "stage"])
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, phase in zip(axes, ["pretrain", "finetune"]):
        for i, size in enumerate(SIZES):
            pts = sorted((s["tokens"], s["mean"], s["std"]) for s in summary if s["model"] == size and s["stage"] == phase)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                        capsize=3, color=f"C{i}", label=size)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(IMAGE_SIZES), [str(t) for t in IMAGE_SIZES])
        ax.set_xlabel("image tokens in pretraining")
        ax.set_title("after pretraining" if phase == "pretrain" else "after the 32 px fine-tune")
    axes[0].set_ylabel("zeroshot_mean")
    chance_and_axis(axes[0], [r["zeroshot_mean"] for r in rows], "zeroshot_mean")  # sharey: both panels
    axes[1].axhline(chance("zeroshot_mean"), color="grey", linestyle="--", linewidth=1)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(a.out / "inverse_scaling.png", dpi=120)
    at16 = {s["model"]: s["mean"] for s in lost if s["tokens"] == 16 and s["stage"] == "finetune"}
    small, large = list(SIZES)[0], list(SIZES)[-1]
    print(f"finished in {time.perf_counter() - t0:.0f} s")
    print(f"accuracy lost at 16 tokens after fine-tune, {large} / {small}: "
          f"{at16[large] / at16[small] if at16[small] else float('nan'):.2f}")


if __name__ == "__main__":
    main()
