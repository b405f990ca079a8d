"""Files written with the permissions the user's umask gives, whatever library writes them.

safetensors' ``save_file`` creates its file mode 0600 (owner only), where ``open()`` would give
0644 under the usual umask 022. A run folder on a shared file system (the multi-node setup
needs one) or a model handed to a colleague would then be unreadable to everyone else, so
every safetensors file clipa writes goes through :func:`save_tensors`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)  # the only portable way to read it is to set it and set it back
        os.umask(mask)
        return mask


def open_mode(path: str | Path) -> None:
    """Give ``path`` the mode ``open()`` would have created it with: 0666 less the umask."""
    os.chmod(path, 0o666 & ~umask())


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` with the user's umask applied to the new file."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    open_mode(path)
    return Path(path)
