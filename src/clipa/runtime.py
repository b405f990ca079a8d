"""Where and how a process computes: decided once, by :func:`resolve_runtime`, for training, the
evaluation during training and ``clipa eval`` alike.

A :class:`Runtime` holds the device, the autocast dtype (``train.precision`` / ``clipa eval
--precision``), the loader worker count and whether batches are pinned. Everything downstream
takes the runtime and reads these values from it; nothing re-derives them from a config.
Resolving also applies the process-wide settings that go with them (threads, TF32, cuDNN's
algorithm search, glibc's handling of freed memory), so they cannot disagree with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import torch

from .config import ConfigError, Precision, TrainConfig

MAX_DEFAULT_WORKERS = 16


@dataclass(frozen=True)
class Runtime:
    """The resolved execution settings of one process."""

    device: torch.device
    """Where tensors live and models run."""
    dtype: torch.dtype | None
    """Autocast dtype of forward passes (bf16 or fp16); None computes in fp32."""
    workers: int
    """Loader worker processes of this process (0: decode in the process itself)."""
    pin_memory: bool
    """Batches come in page-locked memory (a CUDA device: asynchronous copies)."""

    @property
    def memory(self) -> int | None:
        """Bytes of the device's own memory (a GPU's total); None on CPU, whose RAM is shared."""
        if self.device.type != "cuda":
            return None
        return torch.cuda.get_device_properties(self.device).total_memory

    def autocast(self) -> ContextManager:
        """The forward passes' autocast context (a no-op for fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def resolve_device(name: str | torch.device) -> torch.device:
    """``train.device`` / ``--device`` as a device: "auto" is the GPU when there is one;
    asking for CUDA without one is an error before any work starts."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name} asked for, but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``precision`` asks for on ``device`` (None: fp32). "auto" is bf16 on a
    GPU that has it (Ampere and newer), fp16 on older GPUs (V100, T4), fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def default_workers() -> int:
    """Loader workers when none are configured: the CPU cores this process may run on, shared
    among the training processes on this machine (torchrun's LOCAL_WORLD_SIZE), less one core
    for the training loop itself; at least 1, at most 16."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_DEFAULT_WORKERS, per_process - 1))


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a step frees. By default each block over a few MiB
    (activations, gradients) is mapped for it and unmapped when freed, so every step faults its
    pages back in, zero-filled by the kernel: about 200,000 faults and 5% of the CPU time of a
    ViT-B/16 step on two cores (measured around single steps, with and without). False where
    the C library is not glibc (nothing changed)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt's parameter numbers (malloc.h)
    # big blocks from the heap rather than their own mappings, and the heap's free top kept
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def resolve_runtime(device: str | torch.device = "auto", precision: Precision = "auto", workers: int | None = None,
                    *, threads: int | None = None, tf32: bool = True, cudnn_benchmark: bool = True,
                    keep_host_memory: bool = True) -> Runtime:
    """The one decision of device, precision, workers and pinning, with the backend settings
    that go with them applied to this process.

    ``workers`` None is :func:`default_workers`. CUDA: TF32 tensor cores for fp32 matmuls and
    convolutions (``tf32``), cuDNN's per-shape algorithm search (``cudnn_benchmark``; the patch
    embedding is a convolution). CPU: freed memory kept for the next step (``keep_host_memory``).
    """
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    if dev.type == "cpu" and keep_host_memory:
        keep_freed_memory()
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = cudnn_benchmark
    return Runtime(device=dev, dtype=autocast_dtype(precision, dev),
                   workers=default_workers() if workers is None else workers,
                   pin_memory=dev.type == "cuda")


def training_runtime(train: TrainConfig, workers: int | None, device: torch.device) -> Runtime:
    """The runtime of a training process: ``train``'s settings on ``device`` (this rank's, from
    ``distributed.init_distributed``), ``data.workers`` loader workers."""
    runtime = resolve_runtime(device, train.precision, workers, threads=train.threads, tf32=train.tf32,
                              cudnn_benchmark=train.cudnn_benchmark, keep_host_memory=train.keep_host_memory)
    if train.parallel == "fsdp" and train.fsdp_mixed_precision and runtime.dtype is None:
        raise ConfigError(f"train.fsdp_mixed_precision computes in the run's precision, which is fp32 here "
                          f"(train.precision={train.precision} on {runtime.device.type}): set train.precision "
                          "to bf16 or fp16, or drop fsdp_mixed_precision")
    return runtime
