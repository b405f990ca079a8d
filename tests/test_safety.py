"""Checkpoint files that are crafted or damaged: nothing in them runs, damage is named.

References: torch.distributed.checkpoint's own reader on a checkpoint this test wrote
(the safe reader must give the same index and the same tensors, exactly), and plain
``pickle`` on the crafted files (it does run their code, so the refusals are not vacuous).
"""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from clipa.checksums import CHECKSUM_FILE, ChecksumError, verify_checksums, write_checksums
from clipa.safe_load import METADATA_FILE, UnsafeCheckpointError, dcp_load, read_dcp_metadata


class RunsCode:
    """Unpickles as ``fn(arg)``: what an attacker puts in a pickle."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def _save(state: dict, path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        dcp.save(state, checkpoint_id=str(path), no_dist=True)


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    model(torch.randn(2, 3)).square().sum().backward()
    optimizer.step()
    return model, optimizer


def test_a_real_sharded_checkpoint_loads_exactly(tmp_path):
    model, optimizer = _trained()
    saved = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    _save(saved, tmp_path / "ck")
    trusted = dcp.FileSystemReader(str(tmp_path / "ck")).read_metadata()
    assert read_dcp_metadata(tmp_path / "ck").state_dict_metadata == trusted.state_dict_metadata

    fresh, fresh_opt = _trained()  # other weights, other optimizer moments
    loaded = {"model": get_model_state_dict(fresh), "optimizer": get_optimizer_state_dict(fresh, fresh_opt)}
    dcp_load(loaded, tmp_path / "ck", no_dist=True)
    for k, v in saved["model"].items():
        assert torch.equal(loaded["model"][k], v), k
    groups = loaded["optimizer"]["param_groups"][0]  # non-tensor values: read with weights_only=True
    assert groups["lr"] == 1e-3 and tuple(groups["betas"]) == (0.9, 0.98)
    for name, st in saved["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(loaded["optimizer"]["state"][name][k], v), (name, k)


def _crafted_metadata(tmp_path, payload) -> tuple:
    """A real DCP folder whose ``.metadata`` is replaced by ``payload``'s pickle."""
    model, _ = _trained()
    _save({"model": get_model_state_dict(model)}, tmp_path / "ck")
    (tmp_path / "ck" / METADATA_FILE).write_bytes(pickle.dumps(payload))
    return tmp_path / "ck", {"model": get_model_state_dict(model)}


@pytest.mark.parametrize("how", ["os.system", "builtins.exec", "inside a real index"])
def test_a_code_running_index_is_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    if how == "os.system":
        payload = RunsCode(os.system, command)
    elif how == "builtins.exec":
        payload = RunsCode(exec, f"open({str(marker)!r}, 'w').close()")
    else:  # a genuine index with the payload hidden in one of its fields
        model, _ = _trained()
        _save({"model": get_model_state_dict(model)}, tmp_path / "real")
        payload = dcp.FileSystemReader(str(tmp_path / "real")).read_metadata()
        payload.planner_data = {"model.0.weight": RunsCode(os.system, command)}
    folder, state = _crafted_metadata(tmp_path, payload)

    with pytest.raises(UnsafeCheckpointError, match=rf"{METADATA_FILE}: refused to load '(posix|builtins)\."):
        read_dcp_metadata(folder)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        dcp_load(state, folder, no_dist=True)
    assert not marker.exists()

    with open(folder / METADATA_FILE, "rb") as f:  # the reference: plain pickle runs it
        pickle.load(f)
    assert marker.exists(), "the crafted file does not run code: the test proves nothing"


def test_a_code_running_value_in_the_shards_is_refused(tmp_path):
    """DCP stores non-tensor values as torch.save blobs its default planner reads with
    weights_only=False."""
    marker = tmp_path / "pwned"
    _save({"value": RunsCode(os.system, f"touch {marker}")}, tmp_path / "ck")
    with pytest.raises(UnsafeCheckpointError, match="'value'"):
        dcp_load({"value": None}, tmp_path / "ck", no_dist=True)
    assert not marker.exists()


def test_a_data_file_outside_the_folder_is_refused(tmp_path):
    model, _ = _trained()
    _save({"model": get_model_state_dict(model)}, tmp_path / "ck")
    meta = dcp.FileSystemReader(str(tmp_path / "ck")).read_metadata()
    for info in meta.storage_data.values():
        info.relative_path = "../../etc/passwd"
    (tmp_path / "ck" / METADATA_FILE).write_bytes(pickle.dumps(meta))
    with pytest.raises(UnsafeCheckpointError, match="outside its folder"):
        read_dcp_metadata(tmp_path / "ck")


def test_a_truncated_index_names_the_file(tmp_path):
    model, _ = _trained()
    _save({"model": get_model_state_dict(model)}, tmp_path / "ck")
    index = tmp_path / "ck" / METADATA_FILE
    index.write_bytes(index.read_bytes()[:100])
    with pytest.raises(UnsafeCheckpointError, match=rf"{index}: unreadable checkpoint index"):
        read_dcp_metadata(tmp_path / "ck")
    index.unlink()
    with pytest.raises(FileNotFoundError, match=r"has no \.metadata"):
        read_dcp_metadata(tmp_path / "ck")


# ----------------------------------------------------------------------------- checksums


def _folder(tmp_path):
    folder = tmp_path / "step_00000010"
    (folder / "sharded").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (folder / "state.json").write_text('{"step": 10}')
    (folder / "sharded" / "__0_0.distcp").write_bytes(b"shard" * 100)
    write_checksums(folder)
    return folder


def test_checksums_verify_an_intact_folder_and_name_the_damaged_file(tmp_path):
    folder = _folder(tmp_path)
    assert verify_checksums(folder) is True
    shard = folder / "sharded" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[250] ^= 1  # one flipped bit, same size
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=rf"{shard}: contents differ"):
        verify_checksums(folder)


def test_checksums_catch_truncated_and_missing_files(tmp_path):
    folder = _folder(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ChecksumError, match=rf"{weights}: 1000 bytes, 10240 when written"):
        verify_checksums(folder)
    weights.unlink()
    with pytest.raises(ChecksumError, match=rf"{weights}: missing"):
        verify_checksums(folder)


def test_a_folder_without_a_record_is_unverified_and_a_bad_record_is_named(tmp_path):
    folder = _folder(tmp_path)
    (folder / CHECKSUM_FILE).write_text("{not json")
    with pytest.raises(ChecksumError, match=rf"{CHECKSUM_FILE}: unreadable checksum record"):
        verify_checksums(folder)
    (folder / CHECKSUM_FILE).unlink()
    assert verify_checksums(folder) is False


def test_a_truncated_checkpoint_without_checksums_is_still_named(tmp_path):
    """Checkpoints written before checksums existed: the safetensors header says how long the
    file must be."""
    from safetensors.torch import save_file

    from clipa.checkpoint import verify

    step = tmp_path / "step_00000004"
    step.mkdir()
    save_file({"w": torch.arange(1000.0)}, str(step / "model.safetensors"))
    (step / "state.json").write_text("{}")
    verify(step)  # intact
    weights = step / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match=rf"{weights}: truncated"):
        verify(step)
    weights.write_bytes(b"\xff" * 16)
    with pytest.raises(ChecksumError, match=rf"{weights}: truncated or not a safetensors file"):
        verify(step)
