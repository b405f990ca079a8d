"""Study: which way of cutting captions trains best (CLIPA section 3.2, Table 2).

The world's captions are 6 to 23 tokens (mean 15, start and end tokens included); each strategy cuts them to 8 for the
same pretraining samples, then every run gets the same short fine-tune at the full 32 tokens.
"full" trains at 32 tokens throughout. Writes text_reduction.{csv,json,png} to --out (default runs/studies); the
last line is syntax's gain over truncation after the fine-tune, in seed standard deviations.

    python benchmarks/study_text_reduction.py            # 3 seeds; 1.9 min for the published table (its JSON: 112 s), 4.7 min once at load 1.4-3.1
"""

from study import args, before_after, stage

PRETRAIN, FINETUNE, LENGTH = 8192, 1024, 8
STRATEGIES = ["truncate", "random", "block", "syntax"]


def settings() -> dict:
    out = {"full": dict(stages=[stage("pretrain", PRETRAIN), stage("finetune", FINETUNE, lr=1e-3)])}
    for name in STRATEGIES:
        short = dict(text_length=LENGTH, text_reduction={"strategy": name})
        out[name] = dict(stages=[stage("pretrain", PRETRAIN, **short), stage("finetune", FINETUNE, lr=1e-3)])
    return out


def main() -> None:
    after = before_after("text-reduction", settings(), args(__doc__),
                         f"Captions cut to {LENGTH} tokens, then the same full-length fine-tune")
    spread = max(s["std"] for s in after.values()) or 1e-9
    print(f"syntax minus truncate after fine-tune, in seed standard deviations: "
          f"{(after['syntax']['mean'] - after['truncate']['mean']) / spread:.2f}")


if __name__ == "__main__":
    main()
