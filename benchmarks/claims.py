"""The README's claims table, from the studies' JSON files: one row per claim judged.

    python benchmarks/claims.py --out docs/studies

Prints a Markdown table (claim | the paper's figure | the microscope's figure on which object,
mean ± std over seeds | verdict | effect in seed standard deviations), then one line per
study: its time, load average and the full-token baseline's which-object accuracy by seed
(every one should be at least 0.30, three times chance); the last line counts the claims
reproduced.
"""

import argparse
import json
import sys
from pathlib import Path

from study import OUT

STUDIES = ["image_reduction", "text_reduction", "inverse_scaling", "batch_size_samples", "batch_size_steps",
           "masked_finetune"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT, help="the folder the studies wrote")
    a = p.parse_args()
    records = {}
    for name in STUDIES:
        path = a.out / f"{name}.json"
        if not path.exists():
            print(f"clipa: error: {path} is missing: run its benchmarks/study_*.py with --out {a.out}",
                  file=sys.stderr)
            continue
        records[name] = json.loads(path.read_text())
    print("| claim | the paper | the microscope (which object, mean ± std over seeds) | verdict | effect (seed sds) |")
    print("|---|---|---|---|---|")
    claims = [c for r in records.values() for c in r.get("claims", [])]
    for c in claims:
        print(f"| {c['claim']} | {c['paper']} | {c['microscope']} ({c['metric']}) | {c['verdict']} | "
              f"{c['effect_sds']:+.2f} |")
    print()
    for name, r in records.items():
        base = r.get("baseline_object_acc1", {})
        low = min(base.values()) if base else float("nan")
        print(f"{name}: {r['seconds'] / 60:.1f} min at load {r['load_average'][1]:.2f} (5-min average at the end); "
              f"baseline object_acc1 by seed {', '.join(f'{v:.3f}' for v in base.values())} (lowest {low:.3f})")
    print(f"claims reproduced: {sum(c['verdict'] == 'reproduced' for c in claims)} of {len(claims)}")


if __name__ == "__main__":
    main()
