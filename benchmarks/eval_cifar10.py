"""Wall time of ``clipa eval`` (zero-shot) on all 10,000 CIFAR-10 test images on CPU.

Model: clipa-tiny (32 px, patch 4, width 128, 3+3 layers), random weights (speed does not
depend on them). Timed: the whole command in a fresh process (start-up, reading the shards,
decoding, the classifier, 10,000 images), against the 120 s budget of issue 8.

    python benchmarks/eval_cifar10.py [--threads 2] [--workers 0] [--data ../shared/data/cifar10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import clipa

BUDGET_S = 120.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "w.safetensors"
        save_file({k: v.contiguous() for k, v in clipa.create_model("clipa-tiny").state_dict().items()},
                  str(weights))
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "clipa", "eval", str(weights), "--model", "clipa-tiny", "--data", args.data,
               "--threads", str(args.threads), "--workers", str(args.workers), "--output", str(out)]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        elapsed = time.perf_counter() - start
        metrics = json.loads(out.read_text())["metrics"]
    print(f"threads {args.threads}, workers {args.workers}, load average before {load:.1f} on "
          f"{os.cpu_count()} cores, torch {torch.__version__}")
    print(f"metrics (random weights): {metrics}")
    print(f"clipa eval, 10,000 CIFAR-10 images: {elapsed:.1f} s (budget {BUDGET_S:.0f} s)")
    print(f"budget / time: {BUDGET_S / elapsed:.2f}")


if __name__ == "__main__":
    main()
