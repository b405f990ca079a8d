"""FSDP2 on two gloo processes: how often parameters are gathered, and what evaluation costs.

Reference for the counts: FSDP2's own all-gather calls, counted by wrapping
``torch.distributed``'s all-gather entry points during one step (the loss's gathers bind
the function at import and are not counted). The model has 2 + 2 sharded blocks and the
root, so one gather per parameter group per step is 5 all-gathers. Correctness of the
sharded step against one process is tests/test_distributed.py's.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from clipa import distributed
from clipa.bigbatch import forward_backward
from clipa.config import TrainConfig
from clipa.loss import clip_loss, global_loss
from clipa.models.parallelize import parallelize

from test_distributed import _join, global_batch, spawn, tiny_model

WORLD, GROUPS, MICRO = 2, 5, 2  # 4 local rows in 2 microbatches


def _count_gathers(fn) -> int:
    names = [n for n in ("all_gather_single", "all_gather_into_tensor") if hasattr(dist, n)]
    originals = {n: getattr(dist, n) for n in names}
    calls = [0]

    def counted(original):
        def call(*args, **kwargs):
            calls[0] += 1
            return original(*args, **kwargs)
        return call

    for n in names:
        setattr(dist, n, counted(originals[n]))
    try:
        fn()
    finally:
        for n, f in originals.items():
            setattr(dist, n, f)
    return calls[0]


def _worker(rank: int, port: int, out: str) -> None:
    info = _join(rank, WORLD, port)
    images, text = (x.chunk(WORLD)[rank] for x in global_batch())
    loss_fn = global_loss(clip_loss, rank, WORLD)
    result = {}
    for reshard in (False, True):
        cfg = TrainConfig(parallel="fsdp", fsdp_reshard_after_forward=reshard)
        torch.manual_seed(0)
        model = tiny_model("clip")
        wrapped = parallelize(model, cfg, info.device, info.world_size)
        no_sync = distributed.no_sync_factory(wrapped, info, keep_gathered=not reshard)
        for micro in (None, MICRO):
            def step():
                wrapped.zero_grad(set_to_none=True)
                forward_backward(wrapped, images, text, loss_fn, micro, no_sync=no_sync)
            step()  # FSDP's lazy initialisation happens in the first step
            result[(reshard, micro)] = _count_gathers(step)
        plain = distributed.evaluation_model(wrapped, model, info)
        result[("eval", reshard)] = None if plain is None else {k: v.clone() for k, v in plain.state_dict().items()}
        result[("full", reshard)] = distributed.full_model(wrapped, model, info).state_dict()
    # mixed precision: bf16 gathers and compute, fp32 embeddings into the loss and fp32 grads
    for mp in (False, True):
        torch.manual_seed(0)
        model = tiny_model("clip")
        wrapped = parallelize(model, TrainConfig(parallel="fsdp", fsdp_mixed_precision=mp), info.device, info.world_size,
                              dtype=torch.bfloat16 if mp else None)
        loss = forward_backward(wrapped, images, text, loss_fn, MICRO,
                                no_sync=distributed.no_sync_factory(wrapped, info))
        result[("mp", mp)] = (loss, {p.grad.dtype for p in wrapped.parameters()},
                              wrapped(images, text)[0].dtype)
    objects = [None] * WORLD
    dist.all_gather_object(objects, result)
    if rank == 0:
        torch.save(objects, out)
    distributed.shutdown()


@pytest.mark.slow
def test_fsdp_gathers_once_per_step_mixes_precision_and_evaluates_on_rank_0_only(tmp_path):
    out = tmp_path / "result.pt"
    spawn(_worker, str(out))
    ranks = torch.load(out, weights_only=False)
    for r in ranks:
        assert r[(False, None)] == GROUPS, "forward and backward share one gather"
        assert r[(False, MICRO)] == GROUPS, "all microbatches share one gather"
        # resharding after every use: three gathers per block per microbatch (the root stays
        # gathered from its forward to its backward)
        assert r[(True, MICRO)] >= 3 * MICRO * (GROUPS - 1)
    (loss32, dtypes32, _), (loss16, dtypes16, emb16) = ranks[0][("mp", False)], ranks[0][("mp", True)]
    assert dtypes32 == dtypes16 == {torch.float32} and emb16 == torch.float32
    assert loss16 != loss32 and abs(loss16 - loss32) < 2e-2 * abs(loss32), "bf16 compute, close to fp32"
    for reshard in (False, True):
        assert ranks[1][("eval", reshard)] is None, "rank 1 builds no evaluation copy"
        for k, v in ranks[0][("full", reshard)].items():
            torch.testing.assert_close(ranks[0][("eval", reshard)][k], v, rtol=0, atol=0, msg=k)
