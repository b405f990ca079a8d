"""Study: which way of cutting image tokens trains best (CLIPA section 3.1, Figure 3 / Table 1).

Each strategy keeps 16 of the 64 patch tokens of a micro CLIP on the built-in world for the
same pretraining samples (so the same compute); "none" sees all 64 tokens for as many samples
as the same FLOPs buy. Every run then gets the same short full-token fine-tune. Writes
image_reduction.{csv,json,png} (to --out, default runs/studies); the last line is resize's gain over the best
masking strategy after the fine-tune, in seed standard deviations.

    python benchmarks/study_image_reduction.py            # 3 seeds; 2.6 min run alone at load 1.6-2.0 on 2 shared cores
"""

from study import args, before_after, pair_gflops, stage

PRETRAIN, FINETUNE, KEEP = 8192, 2048, 16

STRATEGIES = {
    "resize": dict(image_size=16, image_reduction={"strategy": "resize"}),
    "random": dict(image_reduction={"strategy": "random", "ratio": 0.75}),
    "grid": dict(image_reduction={"strategy": "grid"}),
    "block": dict(image_reduction={"strategy": "block", "keep": KEEP}),
}


def settings() -> dict:
    out = {}
    # Same FLOPs as the reduced runs: full tokens for fewer samples.
    full = int(PRETRAIN * pair_gflops("micro-32", patches=KEEP) / pair_gflops("micro-32") // 128 * 128)
    for name, reduction in {"none": {}, **STRATEGIES}.items():
        out[name] = dict(stages=[stage("pretrain", full if name == "none" else PRETRAIN, **reduction),
                                 stage("finetune", FINETUNE, lr=1e-3)],
                         fields={"pretrain_samples": full if name == "none" else PRETRAIN})
    return out


def main() -> None:
    after = before_after("image-reduction", settings(), args(__doc__),
                         f"Image tokens: {KEEP} of 64 kept, same compute; then the same full-token fine-tune")
    best_mask = max(("random", "grid", "block"), key=lambda k: after[k]["mean"])
    spread = max(s["std"] for s in after.values()) or 1e-9
    print(f"resize minus best masking ({best_mask}) after fine-tune, in seed standard deviations: "
          f"{(after['resize']['mean'] - after[best_mask]['mean']) / spread:.2f}")


if __name__ == "__main__":
    main()
