"""Contrastive losses: symmetric softmax InfoNCE (CLIP), its linear-memory tiled form, sigmoid
(SigLIP), and the same losses on a batch spread over processes.

All three take what the model's forward returns, ``loss_fn(*model(images, text))``:

    loss_fn(img, txt, logit_scale, logit_bias=None, *, all_img=None, all_txt=None, offset=0)

``img``/``txt`` are normalised embeddings (rows are pairs), ``logit_scale`` the temperature
``exp(t)`` (OpenCLIP's forward and ``ClipLoss`` pass the same) and ``logit_bias`` SigLIP's bias
(None without one; the softmax losses have no use for it and ignore it). As in OpenCLIP the
losses do not cap the scale: the cap at 100 is the parameter's (``train.step.TrainStep`` keeps
``t`` in [0, ln 100]), so the temperature's gradient is exact wherever it stands.
Across ranks each process passes its own rows as ``img``/``txt``, the whole batch gathered
in rank order as ``all_img``/``all_txt`` and ``offset = rank * B_local``: row i's positive
is then column ``offset + i``. The symmetric InfoNCE needs both gathered sides (image rows
against all texts, text rows against all images); the sigmoid loss, a sum over pairs, needs
only ``all_txt`` and ignores ``all_img``. ``global_loss`` makes that call the same way for all.

Precision: whatever the autocast state, every loss computes its logits, log-sum-exp and
log-sigmoid in fp32 (half-precision embeddings are promoted first). Under bf16 autocast a
bf16 logit at scale 100 carries an error of about 0.4, enough to change the loss, and the
tiled loss (fp32 throughout) would disagree with the naive one it replaces at 8,192.

The tiled loss (Inf-CL's idea, docs/reference.md#tiled-loss) writes each cross-entropy as
``logsumexp(row) - logit(target)``. Its forward pass keeps only the per-row log-sum-exp,
accumulated over column tiles with a running maximum (so logit scale 100 cannot overflow),
and its backward pass recomputes each tile: memory O(rows x tile) instead of O(B^2).
"""

from __future__ import annotations

import math

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)  # the cap on t, so on the scale exp(t) at 100 (CLIP's)
_TILE_ELEMENTS = 2**24  # auto tile: one [rows, tile] fp32 block is 64 MiB
_MIN_TILE = 256  # narrower tiles make the matmuls inefficient


def _fp(x: torch.Tensor) -> torch.Tensor:
    """Half-precision embeddings are promoted: the log-sum-exp needs fp32 accumulation."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _exact(x: torch.Tensor) -> torch.autocast:
    """A region where autocast does not lower matmuls to bf16/fp16 (the logits stay fp32)."""
    return torch.autocast(x.device.type, enabled=False)


def _global_sides(all_img: torch.Tensor | None, all_txt: torch.Tensor | None, offset: int) -> bool:
    """Whether the InfoNCE call is across ranks (both gathered sides given); checks the pairing."""
    if all_img is None and all_txt is None:
        if offset:
            raise ValueError("offset needs the global all_img and all_txt")
        return False
    if all_img is None or all_txt is None:
        raise ValueError("pass both all_img and all_txt, or neither")
    return True


def clip_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    *,
    all_img: torch.Tensor | None = None,
    all_txt: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy over ``logit_scale * img @ txt.T``
    (OpenCLIP's ``ClipLoss``); ``logit_bias`` is ignored. Across ranks (see the module
    docstring) the result is OpenCLIP's local loss, whose mean over ranks is the global loss.
    """
    across = _global_sides(all_img, all_txt, offset)
    labels = torch.arange(img.shape[0], device=img.device) + offset
    with _exact(img):
        scale = _fp(logit_scale)
        img, txt = _fp(img), _fp(txt)
        if not across:  # one matrix serves both directions
            logits = scale * img @ txt.T  # [B, B]
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        rows_img = scale * img @ _fp(all_txt).T  # [B_local, B_global]
        rows_txt = scale * txt @ _fp(all_img).T
        return (F.cross_entropy(rows_img, labels) + F.cross_entropy(rows_txt, labels)) / 2


def sigmoid_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    *,
    all_img: torch.Tensor | None = None,
    all_txt: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """SigLIP: every pair is a binary problem over ``logit_scale * img @ txt.T + logit_bias``;
    positives on the diagonal. Normalised by B. Across ranks this rank's image rows against
    ``all_txt`` are its whole share of the pairs (``all_img`` is not needed)."""
    if logit_bias is None:
        raise ValueError("sigmoid_loss needs the bias (the model's logit_bias)")
    with _exact(img):
        cols = _fp(txt if all_txt is None else all_txt)
        logits = _fp(logit_scale) * _fp(img) @ cols.T + _fp(logit_bias)  # [B_local, B_global]
        signs = -torch.ones_like(logits)
        rows = torch.arange(img.shape[0], device=img.device)
        signs[rows, rows + offset] = 1
        return -F.logsigmoid(signs * logits).sum() / img.shape[0]


def tile_width(n_rows: int, n_cols: int) -> int:
    """Columns per block when the tiled loss picks them: blocks of about 2^24 logits, at
    least 256 columns, at most all of them (``clipa.memory`` sizes the loss with it)."""
    return min(n_cols, max(_MIN_TILE, _TILE_ELEMENTS // max(n_rows, 1)))


def _column_tiles(n_cols: int, n_rows: int, tile: int | None) -> range:
    if tile is None:
        tile = tile_width(n_rows, n_cols)
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    return range(0, n_cols, tile)


def _target_rows(offset: int, n_rows: int, j0: int, j1: int) -> range:
    """Rows whose target column ``offset + i`` falls in the tile [j0, j1)."""
    return range(max(j0 - offset, 0), min(j1 - offset, n_rows))


class _TiledInfoNCE(torch.autograd.Function):
    """Sum over rows i of the cross-entropy of ``s * q @ k.T`` with target column ``offset + i``;
    with ``symmetric`` (square, offset 0) also the column cross-entropy of the same matrix,
    so one pass over the tiles serves both directions of the single-device CLIP loss.
    Returns an unnormalised sum; gradients are exact for q, k and the scale s."""

    @staticmethod
    def forward(ctx, q, k, s, offset: int, tile: int | None, symmetric: bool):
        n, m = q.shape[0], k.shape[0]
        tiles = _column_tiles(m, n, tile)
        with torch.autocast(q.device.type, enabled=False):
            row_max = q.new_full((n,), -math.inf)
            row_sum = q.new_zeros(n)
            col_lse = q.new_empty(m) if symmetric else None
            for j0 in tiles:
                block = (q @ k[j0 : j0 + tiles.step].T).mul_(s)
                new_max = torch.maximum(row_max, block.amax(dim=1))
                row_sum.mul_((row_max - new_max).exp_())
                row_sum.add_((block - new_max[:, None]).exp_().sum(dim=1))
                row_max = new_max
                if symmetric:
                    col_lse[j0 : j0 + tiles.step] = block.logsumexp(dim=0)
            row_lse = row_max + row_sum.log()
            target = s * (q * k[offset : offset + n]).sum(dim=1)
            loss = (row_lse - target).sum()
            if symmetric:
                loss = loss + (col_lse - target).sum()
        ctx.save_for_backward(q, k, s, row_lse, col_lse)
        ctx.offset, ctx.tiles, ctx.symmetric = offset, tiles, symmetric
        return loss

    @staticmethod
    def backward(ctx, grad):
        q, k, s, row_lse, col_lse = ctx.saved_tensors
        offset, tiles, symmetric = ctx.offset, ctx.tiles, ctx.symmetric
        targets_per_cell = 2.0 if symmetric else 1.0
        with torch.autocast(q.device.type, enabled=False):
            dq = torch.zeros_like(q)  # d(loss)/d(S) @ k, before the factor s
            dk = torch.empty_like(k)
            for j0 in tiles:
                j1 = min(j0 + tiles.step, k.shape[0])
                kj = k[j0:j1]
                block = (q @ kj.T).mul_(s)
                dlogits = (block - row_lse[:, None]).exp_()  # row softmax
                if symmetric:
                    dlogits += block.sub_(col_lse[None, j0:j1]).exp_()  # column softmax
                rows = _target_rows(offset, q.shape[0], j0, j1)
                if len(rows):
                    idx = torch.arange(rows.start, rows.stop, device=q.device)
                    dlogits[idx, idx + offset - j0] -= targets_per_cell
                dq.addmm_(dlogits, kj)
                torch.mm(dlogits.T, q, out=dk[j0:j1])
            # d(loss)/ds = sum_ij dS_ij * (q_i . k_j) = sum_i q_i . (dS @ k)_i
            dscale = (dq * q).sum()
            gs = grad * s
        return dq.mul_(gs), dk.mul_(gs), grad * dscale, None, None, None


def tiled_cross_entropy(
    rows: torch.Tensor,
    cols: torch.Tensor,
    logit_scale: torch.Tensor,
    offset: int = 0,
    tile: int | None = None,
) -> torch.Tensor:
    """Mean over rows i of the cross-entropy of ``logit_scale * rows @ cols.T`` with target
    column ``offset + i``, in O(len(rows) x tile) memory.

    This is one direction of the cross-rank loss: a rank's local rows against the global
    (gathered with gradient) columns, with ``offset = rank * B_local``.
    """
    if offset < 0 or offset + rows.shape[0] > cols.shape[0]:
        raise ValueError(f"targets {offset}..{offset + rows.shape[0]} fall outside {cols.shape[0]} columns")
    return _TiledInfoNCE.apply(_fp(rows), _fp(cols), _fp(logit_scale), offset, tile, False) / rows.shape[0]


def tiled_clip_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    *,
    all_img: torch.Tensor | None = None,
    all_txt: torch.Tensor | None = None,
    offset: int = 0,
    tile: int | None = None,
) -> torch.Tensor:
    """``clip_loss`` in linear memory, with the same value and gradients (``logit_bias`` is ignored).

    ``tile`` is the number of columns per block (default: blocks of about 2^24 logits);
    bind it with ``functools.partial`` to keep the common signature.
    """
    if not _global_sides(all_img, all_txt, offset):
        return _TiledInfoNCE.apply(_fp(img), _fp(txt), _fp(logit_scale), 0, tile, True) / (2 * img.shape[0])
    return (
        tiled_cross_entropy(img, all_txt, logit_scale, offset, tile)
        + tiled_cross_entropy(txt, all_img, logit_scale, offset, tile)
    ) / 2


# ----------------------------------------------------------------------------- across ranks


# torch 2.14 renamed these; the old names remain for torch >= 2.7
_all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
_reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows in rank order; the backward sums every rank's gradient for this
    rank's rows (each rank's loss depends on all rows) and keeps this rank's block."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
        _all_gather(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.new_empty((grad.shape[0] // dist.get_world_size(), *grad.shape[1:]))
        _reduce_scatter(out, grad.contiguous())
        return out


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` from every rank, concatenated in rank order: (B_local, ...) -> (world * B_local, ...)."""
    return _GatherWithGrad.apply(x)


LossFn = Callable[..., torch.Tensor]


def global_loss(loss_fn: LossFn, rank: int, world_size: int) -> LossFn:
    """``loss_fn`` (any of the three, or a partial of one) on the global batch when each of
    ``world_size`` ranks holds ``B_local`` rows; the identity in one process.

    Each rank gathers all embeddings with gradient and takes its own rows against every
    column, targets offset by ``rank * B_local``. Gradient averaging (DDP / FSDP) of these
    local losses gives exactly the global loss's gradient. The value returned is the global
    loss (the mean over ranks, added without gradient), so every rank logs the same number
    and agrees on skipping a non-finite step.
    """
    if world_size == 1:
        return loss_fn

    def across(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
               logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        img, txt = _fp(img), _fp(txt)  # gathered (and their gradients reduced) in fp32
        loss = loss_fn(img, txt, logit_scale, logit_bias, all_img=gather_with_grad(img), all_txt=gather_with_grad(txt),
                       offset=rank * img.shape[0])
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        return loss + (mean / world_size - loss.detach())

    return across
