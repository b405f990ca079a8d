"""Shared by the memory benchmarks: run a measurement in a fresh child process and read
its peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a high-water
mark), so one measurement never inherits another's allocator pages.

``run_ranks`` starts a gloo job of fresh processes the same way. ``TRANSPARENT_MALLOC`` is
an environment for children whose RSS should follow their live tensors: glibc then maps
every block of 64 KiB or more on its own and unmaps it when freed (by default it raises
that threshold as blocks are freed, up to 32 MiB, and keeps freed heap memory), so the
peak RSS is the peak of live bytes plus the runtime, as CUDA's allocated-bytes counter is.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys

TRANSPARENT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}

GIB = 2**30


def rss_bytes() -> int:
    """Resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's highest resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Restart the high-water mark at the current RSS (Linux's /proc/self/clear_refs), so
    ``peak_rss_bytes`` reports the peak of what runs next only."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


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


def run_child(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Parent side: run ``script --child ARGS`` (with ``env`` added to the environment) and
    return the JSON its last line holds."""
    cmd = [sys.executable, script, "--child", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})}).stdout
    return json.loads(out.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world_size: int, script: str, *args: str, env: dict[str, str] | None = None) -> list[dict]:
    """``run_child`` as ``world_size`` ranks of one job (torchrun's variables: RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT), started together; the JSON of each, by rank."""
    if world_size == 1:
        return [run_child(script, *args, env=env)]
    port = str(_free_port())
    procs = []
    for rank in range(world_size):
        ranks = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, script, "--child", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {}), **ranks}))
    outs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise subprocess.CalledProcessError(p.returncode, p.args, stderr=err)
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
