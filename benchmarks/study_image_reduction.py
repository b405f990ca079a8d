"""Study: which way of cutting image tokens trains best (CLIPA section 3.1, Figure 3 / Table 1).

Each strategy keeps 4 of the 16 patch tokens of a micro CLIP on the built-in world for the
same pretraining samples (so the same compute); "none" sees all 16 tokens for as many samples
as the same FLOPs buy. Every run then gets the same short full-token fine-tune. Writes
image_reduction.{csv,json,png} (to --out, default runs/studies); the last lines are the
verdicts on the paper's claims after the fine-tune, on which object.

    python benchmarks/study_image_reduction.py            # 3 seeds, 2 at a time
"""

from study import args, before_after, claim, pair_gflops, stage

PRETRAIN, FINETUNE, KEEP = 1152 * 128, 128 * 128, 4

STRATEGIES = {
    "resize": dict(image_size=16, image_reduction={"strategy": "resize"}),
    "random": dict(image_reduction={"strategy": "random", "ratio": 0.75}),
    "grid": dict(image_reduction={"strategy": "grid"}),
    "block": dict(image_reduction={"strategy": "block", "keep": KEEP}),
}


def settings() -> dict:
    out = {}
    # Same FLOPs as the reduced runs: full tokens for fewer samples.
    full = int(PRETRAIN * pair_gflops(patches=KEEP) / pair_gflops() // 128 * 128)
    for name, reduction in {"none": {}, **STRATEGIES}.items():
        samples = full if name == "none" else PRETRAIN
        out[name] = dict(stages=[stage("pretrain", samples, **reduction), stage("finetune", FINETUNE, lr=1e-3)],
                         fields={"pretrain_samples": samples})
    return out


def claims(rows: list[dict]) -> list[dict]:
    after = lambda r: r["stage"] == "finetune"  # noqa: E731
    return [claim("CLIPA: resizing beats random masking as image token reduction",
                  "resizing is the best of resize, random, grid and block masking", "resize", "random", rows, after),
            claim("CLIPA: fewer image tokens for more samples beat full tokens at the same compute",
                  "reduced-token pretraining, then a short full-token fine-tune, at a fraction of the compute",
                  "resize", "none", rows, after)]


def main() -> None:
    before_after("image-reduction", settings(), args(__doc__),
                 f"Image tokens: {KEEP} of 16 kept, same compute; then the same full-token fine-tune",
                 claims, baseline="none")


if __name__ == "__main__":
    main()
