"""The training loop: stages in order, one optimizer step per global batch.

Everything is decided before the first step, once: the runtime (device, precision, loader
workers: ``clipa.runtime``), the model with its preprocessing (``hub.run_model_source``), the
stage plans (``train.stage``: sizes, reductions, schedule, data, loss), the checkpoint to
resume from (``train.resume``). The loop itself knows nothing of which paper an option came
from: it moves the model to the stage's sizes, builds the loader, the optimizer and the loss
from the stage plan, and runs the step (``step.TrainStep``); ``models.parallelize`` decides
how the model is compiled and wrapped, ``checkpoint.CheckpointManager`` when and how it is saved.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Callable

import torch

from .. import checkpoint, distributed
from ..config import RunConfig, to_dict
from ..data import build_train_loader
from ..data.builtin import built_in
from ..eval.runner import EvalOptions, describe_scored, eval_transform, evaluate_run
from ..hub import build, run_model_source
from ..loss import clip_loss, global_loss, sigmoid_loss, tiled_clip_loss
from ..models import CLIP, load_weights
from ..models.parallelize import parallelize
from ..reduction.text import CaptionTokenizer
from ..runtime import training_runtime
from ..tokenizer import tokenizer_for
from . import run_folder
from .logging import RunLogger, check_loggers
from .optim import build_optimizer, set_lr
from .resume import ResumePoint, check_same_run, locate
from .signals import StopRequests, TrainingStopped
from .stage import ResolvedStage, resolve_stages
from .step import StepStats, TrainStep


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN or infinite loss."""


class Trainer:
    """``Trainer(cfg).fit()`` trains a run. ``resume`` is the checkpoint ``clipa train`` located
    (``resume.resolve_run``); without one, ``cfg.train.resume`` is located here."""

    def __init__(self, cfg: RunConfig, resume: ResumePoint | None = None):
        self.cfg = cfg
        self.dist = distributed.init_distributed(cfg.train.device, cfg.train.timeout_minutes)
        self.runtime = training_runtime(cfg.train, cfg.data.workers, self.dist.device)
        self.device = self.runtime.device
        check_loggers(cfg.train)
        torch.manual_seed(cfg.train.seed + self.dist.rank)
        self.out = Path(cfg.train.output_dir)
        if resume is None and cfg.train.resume is not None:
            resume = locate(cfg, self._log)
            if resume is not None:
                check_same_run(resume, cfg)
        self.resume = resume
        # a resume's weights are its checkpoint's: nothing pretrained is loaded (or fetched) for them
        source = run_model_source(cfg, None) if resume is None else \
            run_model_source(dataclasses.replace(cfg, pretrained=None), resume.model)
        # Every stage resolved before the model is built: a stage that cannot run fails first.
        self.stages = resolve_stages(cfg, source.config, self.dist.world_size, self.runtime.workers,
                                     self.device.type, self.runtime.memory, self._log)
        self.model: CLIP = build(source).to(self.device)
        # Image token masking draws from its own generator, which checkpoints save and the
        # big-batch step replays per microbatch.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.train.seed + 7919 * self.dist.rank)
        self.checkpoints = checkpoint.CheckpointManager(self.out / "checkpoints", self.dist,
                                                        cfg.train.checkpoint_every, cfg.train.keep_last)
        self.eval_options = EvalOptions.during_training(self.runtime, cfg.eval)
        self.wrapped: torch.nn.Module = self.model
        self.writer: RunLogger | None = None
        self._skipped_before = 0  # skipped steps of the stages before the current one
        self.step: TrainStep | None = None
        self.waits: list[float] = []  # data waits of the last log_every steps
        self.results: list[dict] = []
        self._stepped = False  # an optimizer step has run (a failure before one removes the folder it made)

    # ------------------------------------------------------------------ main loop

    def fit(self) -> list[dict]:
        """Run every stage (resuming where the checkpoint says); return the evaluation results.
        Holds the run folder's lock throughout; a stop signal ends it with ``TrainingStopped``
        after a checkpoint (see ``signals``)."""
        created = not self.out.exists()
        try:
            return self._fit()
        except BaseException as e:
            # a run that failed before its first step leaves no folder it made (only its mistake)
            if created and self.dist.is_main and not self._stepped:
                shutil.rmtree(self.out, ignore_errors=True)
            # a collective that timed out or lost a peer: the one error naming the ranks missing
            if (stalled := distributed.collective_failure(e, "training")) is not e:
                raise stalled from None
            raise

    def _fit(self) -> list[dict]:
        with StopRequests(announce=self.dist.is_main) as self.stop, ExitStack() as folder:
            distributed.from_main(lambda: self._claim_folder(folder), self.dist)
            self._check_before_training()
            start_stage, start_step = 0, 0
            if self.resume is not None:
                start_stage, start_step = self._restore_run_state()
            self._write_run_files()
            for plan in self.stages[start_stage:]:
                resuming = self.resume is not None and plan.index == start_stage
                self._run_stage(plan, start_step if resuming else 0, self.resume if resuming else None)
            if self.writer is not None:
                self.writer.close()
            return self.results

    def _restore_run_state(self) -> tuple[int, int]:
        """Results and counters from the checkpoint; a stage-end checkpoint whose evaluation
        never ran (a stop in between) is evaluated now."""
        point = self.resume
        start_stage, start_step = point.position([s.steps for s in self.stages])
        self.results = list(point.state.results)
        self._skipped_before = point.state.skipped_steps  # the new stage step counts from zero
        where = (f"stage {start_stage}, step {start_step}" if start_stage < len(self.stages)
                 else f"all {len(self.stages)} stage(s) are done: nothing to train")
        self._log(f"resuming from {point.path} ({where})")
        st = point.state
        if st.stage_done and not any(r["stage"] == st.stage and r["stage_step"] == st.stage_step for r in self.results):
            load_weights(self.model, point.restore(self.dist).model, point.path)
            self._evaluate(st.stage, st.stage_step)
        return start_stage, start_step

    def _run_stage(self, plan: ResolvedStage, start_step: int, resume: ResumePoint | None) -> None:
        restored = resume.restore(self.dist) if resume is not None else None
        if restored is not None:  # weights at the sizes they were saved at, then this stage's
            load_weights(self.model, restored.model, resume.path)
        self._set_up_model(plan)
        self.wrapped = parallelize(self.model, self.cfg.train, self.device, self.dist.world_size,
                                   self.dist.local_rank, self.runtime.dtype)
        optimizer = build_optimizer(self.wrapped, self.cfg.optim, plan.lr.peak)
        # A checkpoint from inside this stage also carries its optimizer and RNG; one written
        # at the end of the previous stage does not: each stage starts them afresh.
        if restored is not None and start_step > 0:
            checkpoint.load_optimizer(resume.path, restored, self.wrapped, optimizer, self.dist)
            if restored.rng is not None:
                checkpoint.set_rng_state(restored.rng, self.generator)
        self.step = self._train_step(plan, optimizer)
        self._skipped_read = 0  # this stage's skipped steps already logged
        self._log(f"stage {plan.index} '{plan.name}': {plan.steps} steps of {plan.batch_size} at {plan.image_size}px, "
                  f"text {plan.text_length} ({plan.image_reduction.strategy} / {plan.text_reduction.strategy})")
        loader = self._loader(plan, restored.loader if restored is not None and start_step > 0 else None)
        self._loop(plan, start_step, optimizer, loader)
        skipped = self._check_steps(plan.steps).skipped
        self.model = distributed.full_model(self.wrapped, self.model, self.dist)  # unsharded for eval, next stage
        self.model.visual.set_token_reduction(None)
        # saved before it is evaluated: a mistake in the evaluation set-up loses no training
        saved = self._save(plan, plan.steps, optimizer, loader, stage_done=True)
        if stop := self._stop_signal():
            raise TrainingStopped(stop, saved)
        self._evaluate(plan.index, plan.steps)
        self._skipped_before += skipped
        self.step = None

    def _loop(self, plan: ResolvedStage, start_step: int, optimizer, loader) -> None:
        """The stage's steps from ``start_step``: periodic checkpoints and evaluations, and a stop
        signal answered with a checkpoint."""
        progress = self._progress(plan, start_step)
        self.wrapped.train()
        mean, std = self.model.cfg.preprocess.mean, self.model.cfg.preprocess.std
        t0, seen = time.perf_counter(), 0
        # closed on every way out (stage end, stop, error), which ends the loader's workers
        with closing(loader), closing(iter(loader)) as batches:
            for step in range(start_step, plan.steps):
                lr = plan.lr.at(step)
                set_lr(optimizer, lr)
                waited = time.perf_counter()
                batch = next(batches)
                waited = time.perf_counter() - waited  # the step stood idle for data this long
                images, text = self.step.to_device(batch, mean, std)
                self.step(images, text)  # nothing here waits for the device; _report reads at log steps
                self._stepped = True
                seen += images.shape[0] * self.dist.world_size
                rate = seen / max(1e-9, time.perf_counter() - t0)
                self._report(progress, plan, step, lr, rate, waited, loader)
                if stop := self._stop_signal():
                    if step + 1 < plan.steps:
                        raise TrainingStopped(stop, self._save(plan, step + 1, optimizer, loader, stage_done=False))
                if self.checkpoints.should_save(step + 1, plan.steps):
                    self._save(plan, step + 1, optimizer, loader, stage_done=False)
                if self.cfg.eval.every and (step + 1) % self.cfg.eval.every == 0 and step + 1 < plan.steps:
                    self._evaluate(plan.index, step + 1)
        if progress is not None:
            progress.close()

    # ------------------------------------------------------------------ set-up per stage

    def _set_up_model(self, plan: ResolvedStage) -> None:
        """Move the model to the stage's resolution and text length (interpolating tables)
        and give its vision tower the stage's token reduction."""
        if plan.image_size != self.model.visual.image_size:
            self.model.visual.set_image_size(plan.image_size)
        if plan.text_length != self.model.context_length:
            self.model.set_context_length(plan.text_length)
        self.model.visual.set_token_reduction(plan.image_reduction, self.generator)
        self.model.to(self.device)

    def _loader(self, plan: ResolvedStage, state: dict | None):
        """The stage's loader: its data, image size and local batch, captions cut to its text length."""
        tokenize = CaptionTokenizer(tokenizer_for(self.model), plan.text_length, plan.text_reduction,
                                    seed=self.cfg.train.seed)
        return build_train_loader(plan.data, plan.image_size, plan.local_batch, tokenize,
                                  seed=self.cfg.train.seed + 1000 * plan.index, rank=self.dist.rank,
                                  world_size=self.dist.world_size, state=state, pin_memory=self.runtime.pin_memory)

    def _train_step(self, plan: ResolvedStage, optimizer) -> TrainStep:
        train = self.cfg.train
        return TrainStep(
            self.wrapped, self.model.logit_scale, optimizer, self._loss_fn(plan), device=self.device,
            dtype=self.runtime.dtype, microbatch_size=plan.microbatch_size, grad_clip=self.cfg.optim.grad_clip,
            no_sync=distributed.no_sync_factory(self.wrapped, self.dist, not train.fsdp_reshard_after_forward),
            generators=(self.generator,),
        )

    def _loss_fn(self, plan: ResolvedStage) -> Callable:
        """(img, txt, t, b) -> loss over the global batch, as the stage plan says."""
        fn = sigmoid_loss if plan.loss == "siglip" else tiled_clip_loss if plan.tiled_loss else clip_loss
        return global_loss(fn, self.dist.rank, self.dist.world_size)

    # ------------------------------------------------------------------ reporting

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

    def _progress(self, plan: ResolvedStage, start: int):
        if not (self.cfg.train.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=plan.steps, initial=start, desc=f"stage {plan.name}", dynamic_ncols=True, leave=False)

    def _tb(self) -> RunLogger | None:
        if self.writer is None and self.dist.is_main:
            self.writer = RunLogger(self.out, self.cfg)
        return self.writer

    def _global_step(self, index: int, step: int) -> int:
        return sum(s.steps for s in self.stages[:index]) + step

    def _report(self, progress, plan: ResolvedStage, step: int, lr: float, rate: float, waited: float,
                loader) -> None:
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
        if progress is not None:
            postfix = {"loss": f"{stats.loss:.4f}", "lr": f"{lr:.2e}", "samples/s": f"{rate:.0f}",
                       "data_wait": f"{1e3 * wait:.0f}ms"}
            if bad := sum(loader.stats().values()):
                postfix["bad"] = bad
            progress.set_postfix(postfix, refresh=False)
        if (tb := self._tb()) is not None:
            g = self._global_step(plan.index, step + 1)
            for name, value in (("loss", stats.loss), ("lr", lr), ("samples_per_s", rate), ("data_wait_s", wait),
                                ("logit_scale", self.model.logit_scale.exp().item()),
                                ("skipped_steps", self._skipped_before + stats.skipped)):
                tb.add_scalar(f"train/{name}", value, g)
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
        done = evaluate_run(model, tokenizer_for(model), self.cfg.data.source, self.cfg.eval.data, self.eval_options)
        if done is None:
            return
        metrics = done[2]
        g = self._global_step(index, step)  # the numbering of checkpoint folders and TensorBoard
        record = {"stage": index, "stage_name": self.stages[index].name, "step": g, "stage_step": step, **metrics}
        self.results.append(record)
        if (tb := self._tb()) is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    tb.add_scalar(f"eval/{k}", v, g)
        with open(self.out / "results.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        self._log(f"eval after stage {index} step {step} (global step {g}): {shown}{describe_scored(metrics)}")

    def _save(self, plan: ResolvedStage, stage_step: int, optimizer, loader, stage_done: bool) -> Path | None:
        state = checkpoint.TrainState(
            stage=plan.index, stage_step=stage_step, stage_done=stage_done,
            global_step=self._global_step(plan.index, stage_step), config=to_dict(self.cfg),
            model=to_dict(self.model.cfg), loader=loader.state_dict(), results=self.results,
            skipped_steps=self._skipped_before + self._check_steps(stage_step).skipped,
        )
        path = self.checkpoints.save(state, self.wrapped, self.model, optimizer, checkpoint.rng_state(self.generator))
        if path is None:
            self._log(f"stage {plan.index} step {stage_step}: the weights are not finite (NaN or infinity); "
                      "no checkpoint written")
        else:
            self._log(f"checkpoint: {path}")
        return path

    # ------------------------------------------------------------------ run folder and stopping

    def _claim_folder(self, folder: ExitStack) -> None:
        """Rank 0: take the run folder's lock (released when ``folder`` closes) and apply its rules."""
        folder.enter_context(run_folder.locked(self.out, self._log))
        run_folder.prepare(self.out, self.cfg, self.resume, self._log)

    def _check_before_training(self) -> None:
        """What would otherwise fail after training started, checked before the first step
        (the stages themselves were resolved in ``__init__``): every stage's batch fits a
        built-in source, the evaluation set opens."""
        for plan in self.stages:
            builtin = built_in(plan.data.source)
            if builtin is not None and builtin.train_samples is not None and plan.batch_size > builtin.train_samples:
                raise ValueError(f"stages.{plan.index}.batch_size={plan.batch_size} is larger than the "
                                 f"{builtin.train_samples} training samples of data.source={builtin.name}: lower it")
        distributed.from_main(self._check_evaluation, self.dist)

    def _check_evaluation(self) -> None:
        """Open ``eval.data`` and read its first sample: a wrong path or layout fails before
        training starts rather than at the first evaluation, after a stage of work."""
        if self.cfg.eval.data is None:
            return
        from ..data.eval_sets import open_data

        evalset = open_data(self.cfg.eval.data, eval_transform(self.model), max_samples=self.cfg.eval.max_samples)
        if next(iter(evalset.dataset), None) is None:
            raise ValueError(f"eval.data={self.cfg.eval.data}: the evaluation set holds no samples")

    def _stop_signal(self) -> int:
        """The stop signal any rank has received (0: none): all ranks stop at the same step."""
        return distributed.max_over_ranks(self.stop.signum, self.dist)

    def _write_run_files(self) -> None:
        """``results.jsonl`` as the run's results so far (a resumed run's: its checkpoint's) and
        ``config.json``, the run's config."""
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.results))
        (self.out / run_folder.CONFIG_FILE).write_text(json.dumps(run_folder.run_record(self.cfg), indent=1))
        self._log(f"run folder: {self.out.resolve()} (config.json; results.jsonl, tb/ and checkpoints/ "
                  "as they are written)")

    def _log(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, flush=True)
