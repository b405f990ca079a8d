"""Shared by the memory benchmarks: run a measurement in a fresh child process and read
its peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a high-water
mark), so one measurement never inherits another's allocator pages."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

GIB = 2**30


def rss_bytes() -> int:
    """Resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's highest resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not in /proc/meminfo")


def report(base: int, **fields) -> None:
    """Child side: print the peak RSS, its rise above ``base`` and other fields as JSON."""
    peak = peak_rss_bytes()
    print(json.dumps({"peak": peak, "delta": peak - base, **fields}))


def run_child(script: str, *args: str) -> dict:
    """Parent side: run ``script --child ARGS`` and return the JSON its last line holds."""
    cmd = [sys.executable, script, "--child", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
