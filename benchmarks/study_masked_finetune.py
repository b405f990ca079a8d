"""Study: CLIPA-v2's masked fine-tune: fine-tuning at the full
resolution with 30-40% of the patches masked keeps the accuracy of an unmasked fine-tune for
less compute.

A micro CLIP pretrains on the built-in world at 24 px (9 image tokens), then every run gets the
same number of fine-tune steps at 32 px (16 tokens) with 0%, 30%, 40% or 50% of the patches
masked at random; the fine-tune's FLOPs per run come from ``clipa.flops``. Writes
masked_finetune.{csv,json,png} to --out (default runs/studies); the last line is the verdict on
the paper's claim (30% masked against unmasked, on which object).

    python benchmarks/study_masked_finetune.py            # 3 seeds, 2 at a time
"""

import time

from study import (args, bars, chance_and_axis, claim, model_config, pair_gflops, print_claim, print_summary, pyplot,
                   stage, summarise, sweep, write)

from clipa.config import ImageReductionConfig
from clipa.reduction.image import num_kept

SIZE, PRETRAIN, FINETUNE, LOW_RES = "micro-64", 1024 * 128, 128 * 128, 24
MASKED = [0.0, 0.3, 0.4, 0.5]


def tokens(ratio: float) -> int:
    """Patch tokens a fine-tune image keeps at ``ratio`` masked (16 at 32 px in 8 px patches)."""
    vision = model_config(SIZE).vision
    patches = (vision.image_size // vision.patch_size) ** 2
    return num_kept(ImageReductionConfig(strategy="random", ratio=ratio), patches)


def settings() -> dict:
    out = {}
    for ratio in MASKED:
        masking = {"image_reduction": {"strategy": "random", "ratio": ratio}} if ratio else {}
        finetune_gflops = pair_gflops(SIZE, patches=tokens(ratio)) * FINETUNE
        out[f"{ratio:.0%} masked"] = dict(
            size=SIZE, fields={"masked": ratio, "finetune_tokens": tokens(ratio),
                               "finetune_tflops": round(finetune_gflops / 1e3, 3)},
            stages=[stage("pretrain", PRETRAIN, image_size=LOW_RES, image_reduction={"strategy": "resize"}),
                    stage("finetune", FINETUNE, lr=1e-3, **masking)])
    return out


def main() -> None:
    a = args(__doc__)
    t0 = time.perf_counter()
    table = settings()
    rows = sweep("masked-finetune", table, a.seeds, a.jobs)
    summary = [s for m in ("object_acc1", "zeroshot_mean", "image_retrieval_recall@5")
               for s in summarise(rows, ["setting", "stage"], m)]
    verdict = claim("CLIPA-v2: a 30%-masked fine-tune keeps an unmasked one's accuracy for less compute",
                    "the law holds in fine-tuning: 30% masked at 224 px, then 40% at 336 px, for 81.8% ImageNet zero-shot", "30% masked", "0% masked",
                    rows, lambda r: r["stage"] == "finetune", equivalence=True)
    write("masked_finetune", rows, summary, time.perf_counter() - t0, a.out, claims=[verdict])
    print_summary(summary, ["setting", "stage"])
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bars(left, [s for s in summary if s["metric"] == "object_acc1"], list(table), ["pretrain", "finetune"], "stage",
         rows)
    left.set_title(f"pretrain at {LOW_RES} px, then {FINETUNE // 128} fine-tune steps at 32 px", fontsize=10)
    after = [s for s in summary if s["metric"] == "object_acc1" and s["stage"] == "finetune"]
    tflops = [table[s["setting"]]["fields"]["finetune_tflops"] for s in after]
    right.errorbar(tflops, [s["mean"] for s in after], yerr=[s["std"] for s in after], fmt="o", capsize=3)
    for x, s in zip(tflops, after):
        right.annotate(s["setting"], (x, s["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    right.set_xticks(sorted(set(tflops)), [f"{x:.2f}" for x in sorted(set(tflops))])
    right.set_xlabel("fine-tune TFLOPs (clipa.flops)")
    right.set_ylabel("object_acc1 after the fine-tune")
    chance_and_axis(right, [r["object_acc1"] for r in rows if r["stage"] == "finetune"], "object_acc1")
    fig.tight_layout()
    fig.savefig(a.out / "masked_finetune.png", dpi=120)
    print(f"finished in {time.perf_counter() - t0:.0f} s")
    print_claim(verdict)


if __name__ == "__main__":
    main()
