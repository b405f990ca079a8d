"""A stage resolved once: the sizes and counts a stage trains at, for a model and a world size.

The trainer moves the model, builds the loader and the caption tokenizer from one
``ResolvedStage``; ``clipa plan`` costs the same one. Nothing reads a size back from the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ConfigError, ModelConfig, StageConfig
from ..reduction.image import num_seen, stage_image_size


@dataclass(frozen=True)
class ResolvedStage:
    name: str
    image_size: int  # pixels per side the loader crops to and the tower is moved to
    grid: tuple[int, int]  # patch grid at that size
    seen_patches: int  # patch tokens per sample the tower keeps in training (class token excluded)
    text_length: int  # tokens per caption, sot and eot included
    steps: int  # optimizer steps: ceil(samples / batch_size)
    batch_size: int  # the global (contrastive) batch
    local_batch: int  # each rank's share of it


def resolve_stage(stage: StageConfig, model: ModelConfig, world_size: int = 1) -> ResolvedStage:
    """``stage`` on ``model`` over ``world_size`` processes; a rule that cannot meet its target
    (grid masking at a ratio not 1/s^2) or a batch that does not split evenly raises here,
    before any work starts."""
    if stage.batch_size % world_size:
        raise ConfigError(f"stage '{stage.name}': batch_size={stage.batch_size} does not split evenly "
                          f"over {world_size} processes")
    patch = model.vision.patch_size
    size = stage_image_size(stage.image_reduction, stage.image_size, model.vision.image_size, patch)
    grid = (size // patch, size // patch)
    return ResolvedStage(
        name=stage.name,
        image_size=size,
        grid=grid,
        seen_patches=num_seen(stage.image_reduction, grid),
        text_length=stage.text_length or model.text.context_length,
        steps=max(1, math.ceil(stage.samples / stage.batch_size)),
        batch_size=stage.batch_size,
        local_batch=stage.batch_size // world_size,
    )
