"""How a CLIP model is prepared for training beside the model itself (torchtitan's
``parallelize``): what is compiled, what FSDP shards and what stays replicated, in
torchtitan's order: compile each block first, then shard.

The model files know nothing of this. Gradient checkpointing is the model's own switch
(``ModelConfig.grad_checkpointing``, applied per block in ``Transformer.forward``), as in
OpenCLIP; the units everything else works on are the towers' transformer blocks, :func:`blocks`.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import TrainConfig
from .clip import CLIP


def blocks(model: CLIP) -> Iterator[nn.Module]:
    """Every transformer block of both towers: the units of compilation and of FSDP."""
    for tower in (model.visual.transformer, model.transformer):
        yield from tower.resblocks


def temperature_params(model: CLIP) -> list[nn.Parameter]:
    """The loss's own parameters after the embeddings: ``logit_scale`` (and ``logit_bias``)."""
    return [model.logit_scale] + ([model.logit_bias] if model.logit_bias is not None else [])


def apply_compile(model: CLIP, per_block: bool) -> None:
    """``train.compile``: torch.compile in place (the state dict keeps its keys).

    Whole towers for one process or DDP: the image tower compiles all of its forward but the
    draw of the kept patches (a ``torch.Generator`` cannot enter a graph), so every reduction
    strategy is one graph; the text tower compiles its blocks. Per block under FSDP, whose
    units are the blocks, before they are sharded (torchtitan's order)."""
    if per_block:
        for block in blocks(model):
            block.compile()
        return
    model.visual.compile()
    model.transformer.compile()


def apply_fsdp(model: CLIP, cfg: TrainConfig, device: torch.device, world_size: int,
               dtype: torch.dtype | None) -> CLIP:
    """FSDP2 per transformer block and at the root (torch >= 2.7: ``ignored_params``).

    Ranks seed their initialisation differently (rank-dependent masking needs it), so rank 0's
    weights are broadcast first. Resharding: with ``train.fsdp_reshard_after_forward=false``
    (the default) a block's gathered parameters stay from its forward to its backward, and
    ``distributed.no_sync_factory`` also keeps them across the microbatches of a
    re-materialised step: each block is all-gathered once per optimizer step. Resharding after
    every use instead gathers each block three times per microbatch (no-grad embedding pass,
    re-materialised forward, backward), for the memory of one unsharded copy of the parameters
    less. ``train.fsdp_mixed_precision`` gathers and computes in the run's autocast ``dtype``
    and reduces gradients in fp32; the embeddings reach the loss in fp32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)
    kwargs: dict[str, Any] = {"mesh": init_device_mesh(device.type, (world_size,)),
                              "reshard_after_forward": cfg.fsdp_reshard_after_forward}
    root: dict[str, Any] = {}
    if cfg.fsdp_mixed_precision:  # runtime.training_runtime refuses it with an fp32 dtype
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        root["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32,
                                                 output_dtype=torch.float32)
    if cfg.fsdp_cpu_offload:  # shards live in CPU memory and are copied to the GPU per use
        if device.type != "cuda":
            raise ValueError("train.fsdp_cpu_offload=true needs GPUs: on CPU the shards already are in CPU memory")
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for block in blocks(model):
        fully_shard(block, **kwargs)
    replicated = temperature_params(model)  # 0-d: FSDP2 shards along dim 0, so these stay replicated
    fully_shard(model, ignored_params=set(replicated), **{**kwargs, **root})
    for p in replicated:
        p.register_post_accumulate_grad_hook(_average_grad)
    return model


def _average_grad(p: torch.Tensor) -> None:
    """Average a replicated parameter's gradient over ranks after each accumulation. Doing
    it every time stays exact: the already-averaged part is equal on all ranks."""
    dist.all_reduce(p.grad)
    p.grad.div_(dist.get_world_size())


def parallelize(model: CLIP, cfg: TrainConfig, device: torch.device, world_size: int = 1, local_rank: int = 0,
                dtype: torch.dtype | None = None) -> nn.Module:
    """The model as trained: compiled (``train.compile``), then under torchrun wrapped in DDP or
    sharded with FSDP2 (``train.parallel``). ``model`` already sits on ``device``."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        raise RuntimeError("the model is already sharded: pass distributed.full_model(...) to parallelize")
    sharded = world_size > 1 and cfg.parallel == "fsdp"
    if cfg.compile:
        apply_compile(model, per_block=sharded)
    if world_size == 1:
        return model
    if sharded:
        return apply_fsdp(model, cfg, device, world_size, dtype)
    from torch.nn.parallel import DistributedDataParallel

    # DDP broadcasts rank 0's weights itself
    return DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True)
