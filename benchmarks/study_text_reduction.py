"""Study: which way of cutting captions trains best (CLIPA section 3.2, Table 2).

The world's captions are 6 to 23 tokens (mean 15, start and end tokens included); each strategy cuts them to 8 for the
same pretraining samples, then every run gets the same short fine-tune at the full 24 tokens.
"full" trains at 24 tokens throughout. Writes text_reduction.{csv,json,png} to --out (default
runs/studies); the last line is the verdict on the paper's claim after the fine-tune, on which object.

    python benchmarks/study_text_reduction.py            # 3 seeds, 2 at a time
"""

from study import args, before_after, claim, stage

PRETRAIN, FINETUNE, LENGTH = 1024 * 128, 128 * 128, 8
STRATEGIES = ["truncate", "random", "block", "syntax"]


def settings() -> dict:
    out = {"full": dict(stages=[stage("pretrain", PRETRAIN), stage("finetune", FINETUNE, lr=1e-3)])}
    for name in STRATEGIES:
        short = dict(text_length=LENGTH, text_reduction={"strategy": name})
        out[name] = dict(stages=[stage("pretrain", PRETRAIN, **short), stage("finetune", FINETUNE, lr=1e-3)])
    return out


def claims(rows: list[dict]) -> list[dict]:
    return [claim("CLIPA: syntax masking is the best text token reduction", "syntax masking (nouns and adjectives kept) "
                  "is CLIPA's choice over truncation, random and block masking", "syntax", "truncate", rows, lambda r: r["stage"] == "finetune")]


def main() -> None:
    before_after("text-reduction", settings(), args(__doc__),
                 f"Captions cut to {LENGTH} tokens, then the same full-length fine-tune", claims, baseline="full")


if __name__ == "__main__":
    main()
