"""The training loop: stages in order, one optimizer step per global batch.

The loop knows nothing of which paper an option came from: a stage sets the image size,
image and text token reduction and the schedule; the step function (``step.TrainStep``)
does plain or re-materialised big-batch steps in the run's precision without waiting for
the device; ``distributed`` decides how the model is wrapped;
``checkpoint`` what is saved and where a resume starts.
"""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Callable

import torch

from .. import checkpoint, distributed
from ..config import ConfigError, DataConfig, RunConfig, StageConfig, to_dict
from ..data import build_train_loader
from ..hub import create_model
from ..loss import clip_loss, global_loss, sigmoid_loss, tiled_clip_loss
from ..models import CLIP, load_weights
from ..reduction.text import CaptionTokenizer
from ..tokenizer import tokenizer_for
from . import run_folder
from .logging import RunLogger, check_loggers
from .optim import build_optimizer, lr_at, set_lr
from .resume import resume_point
from .signals import StopRequests, TrainingStopped
from .step import StepStats, TrainStep, autocast_dtype, compile_towers, configure_backends
from .stage import ResolvedStage, resolve_stage


# Above this contrastive batch the B x B logits dominate memory; the tiled loss keeps it linear.
TILED_LOSS_FROM = 8192


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN or infinite loss."""


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.dist = distributed.init_distributed(cfg.train.device, cfg.train.timeout_minutes)
        self.device = self.dist.device
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        configure_backends(cfg.train, self.device)
        self.dtype = autocast_dtype(cfg.train.precision, self.device)  # None: fp32
        check_loggers(cfg.train)
        torch.manual_seed(cfg.train.seed + self.dist.rank)
        self.out = Path(cfg.train.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.model: CLIP = create_model(cfg.model, pretrained=cfg.pretrained, **cfg.model_overrides)
        if cfg.train.loss == "siglip" and self.model.logit_bias is None:
            raise ConfigError("train.loss=siglip needs a logit bias: set model_overrides.init_logit_bias "
                              "(SigLIP uses -10) and model_overrides.init_logit_scale (ln 10)")
        if cfg.train.loss != "siglip" and self.model.logit_bias is not None:  # it would never be trained
            raise ConfigError(f"train.loss={cfg.train.loss} has no use for a logit bias: "
                              "drop model_overrides.init_logit_bias or use train.loss=siglip")
        self.model.to(self.device)
        # Every stage resolved up front: a stage that cannot run fails before any training.
        self.stages = [resolve_stage(s, self.model.cfg, self.dist.world_size) for s in cfg.stages]
        # Image token masking draws from its own generator, which checkpoints save and the
        # big-batch step replays per microbatch.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.train.seed + 7919 * self.dist.rank)
        self.wrapped = self.model
        self.writer = None
        self._skipped_before = 0  # skipped steps of the stages before the current one
        self.step: TrainStep | None = None
        self.waits: list[float] = []  # data waits of the last log_every steps
        self.results: list[dict] = []

    # ------------------------------------------------------------------ set-up per stage

    def _set_up_model(self, stage: StageConfig, plan: ResolvedStage) -> None:
        """Move the model to the stage's resolution and text length (interpolating tables)
        and give its vision tower the stage's token reduction."""
        if plan.image_size != self.model.visual.image_size:
            self.model.visual.set_image_size(plan.image_size)
        if plan.text_length != self.model.context_length:
            self.model.set_context_length(plan.text_length)
        self.model.visual.set_token_reduction(stage.image_reduction, self.generator)
        self.model.to(self.device)

    def _loader(self, stage: StageConfig, plan: ResolvedStage, state: dict | None):
        """The stage's loader: its image size and local batch, captions cut to its text length."""
        tokenize = CaptionTokenizer(tokenizer_for(self.model), plan.text_length, stage.text_reduction,
                                    seed=self.cfg.train.seed)
        return build_train_loader(
            self.data_for(stage), plan.image_size, plan.local_batch, tokenize,
            seed=self.cfg.train.seed + 1000 * self.stage_index, rank=self.dist.rank,
            world_size=self.dist.world_size, state=state,
        )

    def data_for(self, stage: StageConfig) -> DataConfig:
        """The run's ``data`` with the stage's own overrides (``stages[i].data.source``)."""
        if stage.data.source is None:
            return self.cfg.data
        return dataclasses.replace(self.cfg.data, source=stage.data.source)

    # ------------------------------------------------------------------ main loop

    def fit(self) -> list[dict]:
        """Run every stage (resuming where a checkpoint says); return the evaluation results.
        Holds the run folder's lock throughout; a stop signal ends it with ``TrainingStopped``
        after a checkpoint (see ``signals``)."""
        with StopRequests(announce=self.dist.is_main) as self.stop, ExitStack() as folder:
            resume = distributed.from_main(lambda: self._claim_folder(folder), self.dist)
            self._check_before_training()
            return self._fit(resume)

    def _fit(self, resume: Path | None) -> list[dict]:
        start_stage, start_step, loader_state, restored = 0, 0, None, None
        if resume is not None:
            restored = checkpoint.read_checkpoint(resume, self.dist)
            st = restored["state"]
            start_stage, start_step, loader_state = resume_point(st, [s.steps for s in self.stages])
            self.results = st.get("results", [])
            self._skipped_before = st.get("skipped_steps", 0)  # the new stage step counts from zero
            where = (f"stage {start_stage}, step {start_step}" if start_stage < len(self.stages)
                     else f"all {len(self.stages)} stage(s) are done: nothing to train")
            self._log(f"resuming from {resume} ({where})")
        self._write_results()  # the checkpoint's: evaluations made after it are made again
        if restored is not None and restored["state"].get("stage_done"):
            self._evaluate_if_missing(restored)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=1))
            self._log(f"run folder: {self.out.resolve()} (config.json; results.jsonl, tb/ and checkpoints/ "
                      "as they are written)")
        for i in range(start_stage, len(self.cfg.stages)):
            self._run_stage(i, start_step if i == start_stage else 0,
                            loader_state if i == start_stage else None,
                            restored if i == start_stage else None)
        if self.writer is not None:
            self.writer.close()
        return self.results

    def _run_stage(self, index: int, start_step: int, loader_state: dict | None, restored: dict | None) -> None:
        stage, plan = self.cfg.stages[index], self.stages[index]
        self.stage_index = index
        if restored is not None:  # weights at the sizes they were saved at, then this stage's
            load_weights(self.model, restored["model"])
        self._set_up_model(stage, plan)
        # A checkpoint from inside this stage also carries its optimizer and RNG; one written
        # at the end of the previous stage does not: each stage starts them afresh.
        mid_stage = restored is not None and start_step > 0
        self.wrapped = distributed.wrap_model(self.model, self.cfg.train, self.dist)
        if self.cfg.train.compile:
            compile_towers(self.model, per_block=distributed.is_sharded(self.wrapped))
        optimizer = build_optimizer(self.wrapped, self.cfg.optim, stage)
        if mid_stage:
            checkpoint.load_optimizer(restored, self.wrapped, optimizer, self.dist)
        if mid_stage and "rng" in restored:
            checkpoint.set_rng_state(restored["rng"], self.generator)
        train = self.cfg.train
        self.step = TrainStep(
            self.wrapped, self.model.logit_scale, optimizer, self._loss_fn(stage), device=self.device,
            dtype=self.dtype, microbatch_size=train.microbatch_size, grad_clip=self.cfg.optim.grad_clip,
            no_sync=distributed.no_sync_factory(self.wrapped, self.dist, not train.fsdp_reshard_after_forward),
            generators=(self.generator,),
        )
        self._skipped_read = 0  # this stage's skipped steps already logged
        total = plan.steps
        loader = self._loader(stage, plan, loader_state)
        self._log(
            f"stage {index} '{stage.name}': {total} steps of {stage.batch_size} at "
            f"{plan.image_size}px, text {plan.text_length} "
            f"({stage.image_reduction.strategy} / {stage.text_reduction.strategy})"
        )
        progress = self._progress(total, start_step, stage.name)
        self.wrapped.train()
        t0, seen = time.perf_counter(), 0
        # closed on every way out (stage end, stop, error): a suspended loader generator kept by a
        # traceback would keep its persistent workers, and the batches they hold, alive
        with closing(iter(loader)) as batches:
            for step in range(start_step, total):
                lr = lr_at(step, total, stage)
                set_lr(optimizer, lr)
                waited = time.perf_counter()
                batch = next(batches)
                waited = time.perf_counter() - waited  # the step stood idle for data this long
                images, text = self.step.to_device(batch, loader.mean, loader.std)
                self.step(images, text)  # nothing here waits for the device; _report reads at log steps
                seen += images.shape[0] * self.dist.world_size
                rate = seen / max(1e-9, time.perf_counter() - t0)
                self._report(progress, step, lr, rate, waited, loader)
                done = step + 1 == total
                every = self.cfg.train.checkpoint_every
                stop = self._stop_signal()
                if stop and not done:
                    raise TrainingStopped(stop, self._save(index, step + 1, optimizer, loader, stage_done=False))
                if every and (step + 1) % every == 0 and not done:
                    self._save(index, step + 1, optimizer, loader, stage_done=False)
                if self.cfg.eval.every and (step + 1) % self.cfg.eval.every == 0 and not done:
                    self._evaluate(index, step + 1)
        if progress is not None:
            progress.close()
        skipped = self._check_steps(total).skipped
        self.model = distributed.full_model(self.wrapped, self.model, self.dist)  # unsharded for eval, next stage
        self.model.visual.set_token_reduction(None)
        # saved before it is evaluated: a mistake in the evaluation set-up loses no training
        saved = self._save(index, total, optimizer, loader, stage_done=True)
        if stop := self._stop_signal():
            raise TrainingStopped(stop, saved)
        self._evaluate(index, total)
        self._skipped_before += skipped
        self.step = None

    # ------------------------------------------------------------------ helpers

    def _loss_fn(self, stage: StageConfig) -> Callable:
        """(img, txt, t, b) -> loss over the global batch; the tiled
        (linear-memory) InfoNCE from ``TILED_LOSS_FROM`` samples on, unless configured."""
        mode = self.cfg.train.tiled_loss
        tiled = mode == "on" or (mode == "auto" and stage.batch_size >= TILED_LOSS_FROM)
        if self.cfg.train.loss == "siglip":
            fn = sigmoid_loss
        else:
            fn = tiled_clip_loss if tiled else clip_loss
        return global_loss(fn, self.dist.rank, self.dist.world_size)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite loss or gradient in this run (reads the device)."""
        return self._skipped_before + (self.step.read().skipped if self.step is not None else 0)

    def _check_steps(self, step: int) -> StepStats:
        """Read the step counters (one synchronisation, at log steps, checkpoints and stage ends);
        stop after ``train.max_bad_steps`` consecutive skipped steps or on non-finite weights."""
        stats = self.step.read()
        new = stats.skipped - self._skipped_read
        self._skipped_read = stats.skipped
        if new:
            self._log(f"step {step}: {new} step(s) with a non-finite loss or gradient skipped since the last "
                      f"log ({stats.consecutive} in a row)")
        if stats.consecutive >= self.cfg.train.max_bad_steps:
            raise NonFiniteLossError(
                f"{stats.consecutive} consecutive steps had a NaN or infinite loss or gradient; stopping. "
                "Lower the learning rate, check the data, or use train.precision=fp32."
            )
        if not stats.weights_finite:
            raise NonFiniteLossError(f"step {step}: the weights are no longer finite; stopping. Resume from the "
                                     "last checkpoint with a lower learning rate or train.precision=fp32.")
        return stats

    def _progress(self, total: int, start: int, name: str):
        if not (self.cfg.train.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=start, desc=f"stage {name}", dynamic_ncols=True, leave=False)

    def _tb(self):
        if self.writer is None and self.dist.is_main:
            self.writer = RunLogger(self.out, self.cfg)
        return self.writer

    def _global_step(self, index: int, step: int) -> int:
        return sum(s.steps for s in self.stages[:index]) + step

    def _report(self, progress, step: int, lr: float, rate: float, waited: float, loader) -> None:
        """Progress every step; the loss and the step counters only every ``train.log_every``
        steps, the only steps that wait for the device. ``data_wait``: the mean time the last
        ``log_every`` steps waited for their batches; near the step time means input-bound."""
        self.waits.append(waited)
        every = max(1, self.cfg.train.log_every)
        del self.waits[:-every]
        if progress is not None:
            progress.update(1)
        if (step + 1) % every:
            return
        wait = sum(self.waits) / len(self.waits)
        stats = self._check_steps(step + 1)
        loss = stats.loss
        if progress is not None:
            postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "samples/s": f"{rate:.0f}",
                       "data_wait": f"{1e3 * wait:.0f}ms"}
            bad = sum(loader.stats().values())
            if bad:
                postfix["bad"] = bad
            progress.set_postfix(postfix, refresh=False)
        if (tb := self._tb()) is not None:
            g = self._global_step(self.stage_index, step + 1)
            tb.add_scalar("train/loss", loss, g)
            tb.add_scalar("train/lr", lr, g)
            tb.add_scalar("train/samples_per_s", rate, g)
            tb.add_scalar("train/data_wait_s", wait, g)
            tb.add_scalar("train/logit_scale", self.model.logit_scale.exp().item(), g)
            tb.add_scalar("train/skipped_steps", self._skipped_before + stats.skipped, g)
            for reason, count in loader.stats().items():
                tb.add_scalar(f"data/skipped_{reason}", count, g)

    def _evaluate(self, index: int, step: int) -> None:
        model = distributed.evaluation_model(self.wrapped, self.model, self.dist)  # None on ranks > 0
        if model is not None:
            self._record_evaluation(model, index, step)
        # the others wait for rank 0 here rather than in their next collective, so that a rank 0
        # stalled in its evaluation is named when train.timeout_minutes runs out
        distributed.barrier(self.dist, "rank 0's evaluation")

    def _record_evaluation(self, model: CLIP, index: int, step: int) -> None:
        from .evaluate import describe_scored, evaluate_during_training

        metrics = evaluate_during_training(model, self.cfg, self.device, self.dtype)
        if not metrics:
            return
        g = self._global_step(index, step)  # the numbering of checkpoint folders and TensorBoard
        record = {"stage": index, "stage_name": self.cfg.stages[index].name, "step": g, "stage_step": step,
                  **metrics}
        self.results.append(record)
        if (tb := self._tb()) is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    tb.add_scalar(f"eval/{k}", v, g)
        with open(self.out / "results.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        self._log(f"eval after stage {index} step {step} (global step {g}): {shown}{describe_scored(metrics)}")

    def _save(self, index: int, stage_step: int, optimizer, loader, stage_done: bool) -> Path | None:
        state = {
            "stage": index,
            "stage_step": stage_step,
            "stage_done": stage_done,
            "global_step": self._global_step(index, stage_step),
            "config": to_dict(self.cfg),
            "loader": loader.state_dict(),
            "results": self.results,
            "skipped_steps": self._skipped_before + self._check_steps(stage_step).skipped,
        }
        path = checkpoint.save_checkpoint(
            self.ckpt_dir, state["global_step"], self.wrapped, self.model, optimizer, state,
            checkpoint.rng_state(self.generator), self.dist, keep_last=self.cfg.train.keep_last,
        )
        if path is None:
            self._log(f"stage {index} step {stage_step}: the weights are not finite (NaN or infinity); "
                      "no checkpoint written")
        else:
            self._log(f"checkpoint: {path}")
        return path

    # ------------------------------------------------------------------ run folder and stopping

    def _claim_folder(self, folder: ExitStack) -> Path | None:
        """Rank 0: take the run folder's lock (released when ``folder`` closes), apply its
        rules and return the checkpoint to resume from (``run_folder``)."""
        folder.enter_context(run_folder.locked(self.out, self._log))
        return run_folder.prepare(self.out, self.cfg, self._log)

    def _check_before_training(self) -> None:
        """What would otherwise fail after training started, checked before the first step
        (the stages themselves were resolved in ``__init__``): every stage's batch fits a
        finite source, the evaluation set opens."""
        from ..data.digits import check_batch
        from .evaluate import check_evaluation

        if self.cfg.data.source == "digits":
            for stage in self.cfg.stages:
                check_batch(stage.batch_size)
        distributed.from_main(lambda: check_evaluation(self.cfg, self.model.visual.image_size), self.dist)

    def _stop_signal(self) -> int:
        """The stop signal any rank has received (0: none): all ranks stop at the same step."""
        return distributed.max_over_ranks(self.stop.signum, self.dist)

    def _write_results(self) -> None:
        """``results.jsonl`` as the run's results so far (a resumed run's: its checkpoint's)."""
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.results))

    def _evaluate_if_missing(self, restored: dict) -> None:
        """A stage-end checkpoint is written before the stage's evaluation; a run stopped in
        between evaluates on resuming."""
        st = restored["state"]
        if not any(r["stage"] == st["stage"] and r["stage_step"] == st["stage_step"] for r in self.results):
            load_weights(self.model, restored["model"])
            self._evaluate(st["stage"], st["stage_step"])

    def _log(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, flush=True)
