"""Where a run's scalars go: TensorBoard (``OUTPUT/tb``) always, Weights & Biases when ``train.wandb`` is set.

``RunLogger.add_scalar`` has ``SummaryWriter``'s signature, so the trainer logs through it unchanged.
A wandb run lives in ``OUTPUT/wandb`` and keeps its id in ``OUTPUT/wandb_run_id``, so a resumed run
appends to the same wandb run (``resume="allow"``).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig, TrainConfig, to_dict

WANDB_ID_FILE = "wandb_run_id"


def check_loggers(train: TrainConfig) -> None:
    """Fail before any work when wandb is selected but not installed."""
    if train.wandb is None:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError("train.wandb is set but the wandb package is not installed: "
                          "pip install 'clipa[wandb]' (or pip install wandb), or remove train.wandb") from None


class RunLogger:
    """TensorBoard scalars, mirrored to Weights & Biases at the same step when configured."""

    def __init__(self, out_dir: str | Path, cfg: RunConfig):
        from torch.utils.tensorboard import SummaryWriter

        out = Path(out_dir)
        self.tb = SummaryWriter(str(out / "tb"))
        self.wandb = _start_wandb(out, cfg) if cfg.train.wandb is not None else None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.tb.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log({tag: value}, step=step)

    def close(self) -> None:
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _start_wandb(out: Path, cfg: RunConfig) -> Any:
    check_loggers(cfg.train)
    import wandb

    w = cfg.train.wandb
    id_file = out / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    out.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id + "\n")
    return wandb.init(project=w.project, name=w.name, entity=w.entity, group=w.group, tags=w.tags or None,
                      mode=w.mode, dir=str(out), id=run_id, resume="allow", config=to_dict(cfg))
