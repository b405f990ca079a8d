"""Reading torch.distributed.checkpoint (DCP) folders without running code from them.

DCP keeps a sharded checkpoint's index in ``.metadata``, a plain ``pickle``, and stores every
non-tensor value (an optimizer's learning rate, its betas) as a ``torch.save`` blob that its
default planner reads with ``weights_only=False``. Both would run whatever a crafted folder
asks for under ``clipa eval``, ``export``, a resume or ``consolidate``. Here the index is read
by an unpickler that builds only DCP's own metadata classes (and the few torch values they
hold), and the blobs with ``torch.load(weights_only=True)``; anything else is refused with an
``UnsafeCheckpointError`` naming the file, before any of it runs.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

METADATA_FILE = ".metadata"

# Everything DCP's filesystem writer pickles into ``.metadata`` (torch 2.x): its metadata
# dataclasses, the storage record, torch.Size, dtypes and layouts by name, and the path it
# was saved to. Each is a plain value container: building one runs no user code.
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},  # a layout looked up by its name
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
}


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that would need code to be run to read it; nothing of it was run."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, name: str):
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self.name}: refused to load '{module}.{name}', which is not part of a "
            "torch.distributed.checkpoint index (the file may be crafted to run code)"
        )


def read_dcp_metadata(path: str | Path) -> Metadata:
    """The index (``.metadata``) of the DCP folder ``path``, read without running code. A
    storage record pointing outside the folder is refused too."""
    file = Path(path) / METADATA_FILE
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f, str(file)).load()
    except UnsafeCheckpointError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"sharded checkpoint {path} has no {METADATA_FILE} file") from None
    except Exception as e:  # truncated or garbled: pickle raises many kinds
        raise UnsafeCheckpointError(f"{file}: unreadable checkpoint index ({type(e).__name__}: {e})") from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{file}: holds a {type(metadata).__name__}, not a checkpoint index")
    for info in (metadata.storage_data or {}).values():
        relative = Path(getattr(info, "relative_path", ""))
        if relative.is_absolute() or len(relative.parts) != 1 or relative.name in ("", ".", ".."):
            raise UnsafeCheckpointError(f"{file}: names a data file outside its folder: {str(relative)!r}")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's filesystem reader, with ``.metadata`` read by ``read_dcp_metadata``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:  # rank-local indexes: clipa never writes them
            raise UnsafeCheckpointError(f"{self.path}: rank-local checkpoint indexes are not read")
        metadata = read_dcp_metadata(self.path)
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, reading non-tensor values with ``weights_only=True``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"refused to load the value of '{read_item.dest_index.fqn}' from a sharded checkpoint: "
                f"{str(e).splitlines()[0]}"
            ) from None
        # DefaultLoadPlanner.load_bytes stores a value the same two ways, after its own torch.load
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def dcp_load(state: dict, path: str | Path, no_dist: bool) -> None:
    """``torch.distributed.checkpoint.load`` of ``state`` (filled in place) from the folder
    ``path``, through the safe reader and planner. The index is read first, so a refusal is
    an ``UnsafeCheckpointError`` naming the file rather than DCP's wrapped failure."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    read_dcp_metadata(path)
    with warnings.catch_warnings():  # it warns about no_dist even when asked for it
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        try:
            dcp.load(state, storage_reader=SafeFileSystemReader(str(path)), planner=SafeLoadPlanner(),
                     no_dist=no_dist)
        except CheckpointException as e:  # under torchrun DCP gathers every rank's failure into one
            refused = [exc for exc, _ in e.failures.values() if isinstance(exc, UnsafeCheckpointError)]
            if refused:
                raise refused[0] from None
            raise
