"""The stage plan: everything a stage runs with, resolved once, before any work.

:func:`resolve_stages` turns a run config's stages into :class:`ResolvedStage` records: sizes
and token counts (the image size a reduction rule implies, the patches it keeps, the text
length), step counts and batch shares, the learning-rate schedule, the data settings (the
stage's own source, loader workers decided), the loss and the microbatch. The trainer moves
the model, builds the loader, the optimizer and the loss from one record; ``clipa plan``
costs the same records. Nothing downstream reads a size back from the model or a setting
back from the config, and every impossible stage (a batch that does not split over the
ranks, a masking rule that cannot meet its target, an image size the patch does not divide)
fails here, before a run folder is touched.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Callable

from .. import memory
from ..config import (ConfigError, DataConfig, ImageReductionConfig, LossName, ModelConfig, RunConfig, Schedule,
                      StageConfig, TextReductionConfig)
from ..flops import grid_side
from ..reduction.image import num_seen, stage_image_size

log = logging.getLogger("clipa.train")

# From this contrastive batch on, train.tiled_loss=auto uses the tiled loss: the B x B logits
# would dominate memory, and the tiled loss keeps it linear in B.
TILED_LOSS_FROM = 8192


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up to ``peak``, then a cosine decay to ``min_lr`` over the stage (or constant)."""

    peak: float
    warmup: int
    kind: Schedule
    min_lr: float
    steps: int

    def at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) of the stage."""
        if self.warmup > 0 and step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.peak
        span = max(1, self.steps - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_lr + 0.5 * (self.peak - self.min_lr) * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class ResolvedStage:
    """One stage as it runs: read by the trainer, the planner and the memory plan."""

    index: int
    name: str
    image_size: int  # pixels per side the loader crops to and the tower is moved to
    grid: tuple[int, int]  # patch grid at that size
    seen_patches: int  # patch tokens per sample the tower keeps in training (class token excluded)
    image_reduction: ImageReductionConfig  # the rule that keeps them
    text_length: int  # tokens per caption, sot and eot included
    text_reduction: TextReductionConfig  # how captions are cut to that length
    samples: int  # image-text pairs trained on
    steps: int  # optimizer steps: ceil(samples / batch_size)
    batch_size: int  # the global (contrastive) batch
    local_batch: int  # each rank's share of it
    microbatch_size: int | None  # BASIC re-materialisation per rank; None: the local batch at once
    lr: LRSchedule
    loss: LossName
    tiled_loss: bool  # the linear-memory InfoNCE (train.tiled_loss, "auto" from TILED_LOSS_FROM)
    data: DataConfig  # the run's data with the stage's own source, workers decided


def resolve_stages(cfg: RunConfig, model: ModelConfig, world_size: int = 1, workers: int | None = None,
                   device: str = "cpu", device_memory: int | None = None,
                   say: Callable[[str], None] = log.info) -> list[ResolvedStage]:
    """Every stage of ``cfg`` on ``model`` over ``world_size`` processes, ``workers`` loader
    workers per process (the runtime's; None keeps ``data.workers``). ``train.microbatch_size:
    auto`` is decided here, for ``device_memory`` bytes of a ``device`` (or the config's
    ``train.memory_budget``), and said through ``say``. Raises ConfigError naming the stage for
    anything that cannot run."""
    check_loss(cfg, model)
    data = cfg.data if workers is None else dataclasses.replace(cfg.data, workers=workers)
    stages = [_resolve(cfg, i, s, model, world_size, data) for i, s in enumerate(cfg.stages)]
    if cfg.train.microbatch_size == "auto":
        budget = memory.budget_bytes(cfg.train, device_memory)
        stages = [_auto_microbatch(cfg, r, model, world_size, device, budget, say) for r in stages]
    return stages


def _auto_microbatch(cfg: RunConfig, r: ResolvedStage, model: ModelConfig, world_size: int, device: str,
                     budget: int, say: Callable[[str], None]) -> ResolvedStage:
    """``r`` with the largest microbatch whose planned step fits ``budget`` less the margin."""
    setup = memory.setup_for_stage(model, r, cfg.train, world_size, device, r.tiled_loss)
    try:
        m = memory.choose_microbatch(setup, budget)
    except ValueError as e:
        raise ConfigError(f"stage '{r.name}': train.microbatch_size=auto: {e}") from None
    peak = memory.plan_memory(dataclasses.replace(setup, microbatch=m)).peak
    how = "a plain step" if m >= r.local_batch else f"{-(-r.local_batch // m)} microbatches of {m}"
    say(f"stage '{r.name}': train.microbatch_size=auto picked {min(m, r.local_batch)} of {r.local_batch} per "
        f"rank ({how}): planned peak {memory.format_bytes(peak)} of {memory.format_bytes(budget)} "
        f"less {memory.DEFAULT_MARGIN:.0%}")
    return dataclasses.replace(r, microbatch_size=None if m >= r.local_batch else m)


def check_loss(cfg: RunConfig, model: ModelConfig) -> None:
    """The sigmoid loss needs a logit bias, and a bias without it would never be trained."""
    if cfg.train.loss == "siglip" and model.init_logit_bias is None:
        raise ConfigError("train.loss=siglip needs a logit bias: set model_overrides.init_logit_bias "
                          "(SigLIP uses -10) and model_overrides.init_logit_scale (ln 10)")
    if cfg.train.loss != "siglip" and model.init_logit_bias is not None:
        raise ConfigError(f"train.loss={cfg.train.loss} has no use for a logit bias: "
                          "drop model_overrides.init_logit_bias or use train.loss=siglip")


def _resolve(cfg: RunConfig, index: int, stage: StageConfig, model: ModelConfig, world_size: int,
             data: DataConfig) -> ResolvedStage:
    key = f"stages.{index}"
    if stage.batch_size % world_size:
        raise ConfigError(f"stage '{stage.name}': batch_size={stage.batch_size} does not split evenly "
                          f"over {world_size} processes")
    patch = model.vision.patch_size
    size = stage_image_size(stage.image_reduction, stage.image_size, model.vision.image_size, patch)
    side = grid_side(size, patch, what=f"{key}.image_size: {model.vision.image_size}-px model's stage size")
    text_length = stage.text_length or model.text.context_length
    if text_length < 2:
        raise ConfigError(f"{key}.text_length={text_length}: a caption needs its start and end tokens (2 or more)")
    steps = max(1, math.ceil(stage.samples / stage.batch_size))
    if stage.samples < stage.batch_size:
        log.warning("stage '%s': samples=%d is less than one batch of %d; it trains one step of %d samples",
                    stage.name, stage.samples, stage.batch_size, stage.batch_size)
    local = stage.batch_size // world_size
    # "auto" is decided by resolve_stages once the rest of the stage is known
    micro = None if cfg.train.microbatch_size == "auto" else cfg.train.microbatch_size
    tiled = cfg.train.tiled_loss == "on" or (cfg.train.tiled_loss == "auto" and stage.batch_size >= TILED_LOSS_FROM)
    return ResolvedStage(
        index=index,
        name=stage.name,
        image_size=size,
        grid=(side, side),
        seen_patches=num_seen(stage.image_reduction, (side, side)),
        image_reduction=stage.image_reduction,
        text_length=text_length,
        text_reduction=stage.text_reduction,
        samples=stage.samples,
        steps=steps,
        batch_size=stage.batch_size,
        local_batch=local,
        microbatch_size=None if micro is None or micro >= local else micro,
        lr=LRSchedule(stage.peak_lr, stage.warmup, stage.schedule, stage.min_lr, steps),
        loss=cfg.train.loss,
        tiled_loss=tiled and cfg.train.loss != "siglip",
        data=data if stage.data.source is None else dataclasses.replace(data, source=stage.data.source),
    )
