"""The training loop: fit, train an epoch, take an optimizer step, validate, test.

Read it top to bottom: ``Runner.__init__`` gets the run's parts from the assembly
(``trainkit.build``), ``fit`` runs epochs of ``train_epoch`` and ``validate``, ``test``
evaluates the best checkpoint. Everything a checkpoint must restore is in ``state_dict``.
The loop calls the other modules directly; nothing calls back into it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from trainkit import checkpoint, distributed, finetune
from trainkit.build import build
from trainkit.data import stop_workers
from trainkit.errors import UserError
from trainkit.losses import mean_over
from trainkit.reporting import RunLogger, chosen_hparams, log
from trainkit.schedulers import idle_warning
from trainkit.settings import logger_settings, trainer_settings
from trainkit.speed import Speed
from trainkit.tasks import Outputs, Task


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    task: Task,
    metrics,
    device: torch.device,
    prefix: str,
    keep_outputs: bool = False,
    limit_batches: int = 0,
    speed: Speed | None = None,
) -> tuple[dict[str, Any], Outputs | None]:
    """Metrics of ``model`` on one split; its outputs too when asked for."""
    speed = speed or Speed(device)
    model.eval()
    metrics.reset()
    kept: list[tuple[torch.Tensor, ...]] = []
    for inputs, targets, indices in itertools.islice(loader, limit_batches or None):
        inputs = speed.inputs(inputs.to(device, non_blocking=True))
        targets = targets.to(device, non_blocking=True)
        with speed.autocast():
            outputs = model(inputs)
            loss = task.compute_loss(loss_fn, outputs, targets)
        metrics.update(outputs, targets, loss, mean_over(loss_fn, targets))
        if keep_outputs:
            kept.append((indices, targets.cpu(), outputs.float().cpu()))
    values = metrics.compute(prefix, task.splits.class_names)  # summed over processes
    # Metrics come from float32 sums: their last digits are noise (an F1 of 1.0000001).
    values = {k: float(f"{v:.7g}") if isinstance(v, float) else v for k, v in values.items()}
    if not keep_outputs:
        return values, None
    # Under DDP each process saw its own shard of the split: the main process gets them all.
    shards = distributed.gather_to_main([part for batch in kept for part in batch])
    if shards is None:
        return values, None
    parts = [part for shard in shards for part in shard]
    index, targets, outputs = (torch.cat(parts[i::3]) for i in range(3))
    return values, Outputs(index, targets, outputs)


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a step; ``checkpoint`` is the resume point."""

    def __init__(self, signal_number: int, checkpoint_path: Path | None):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number, self.checkpoint_path = signal_number, checkpoint_path


class NonFinite(Exception):
    """A NaN or infinite loss or gradient norm at this step (handled per trainer.nonfinite)."""


@contextlib.contextmanager
def stop_on_signals(runner: Runner):
    """While training: the first SIGINT or SIGTERM asks the runner to stop after the current
    step; a second SIGINT stops at once. Only the main thread of a process can do this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signal_number, frame):
        if runner.stop_signal is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C
        runner.stop_signal = signal_number
        again = " (Ctrl-C again to quit at once)" if signal_number == signal.SIGINT else ""
        log.warning(
            f"{signal.Signals(signal_number).name}: stopping after this step and saving a "
            f"checkpoint{again}"
        )

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signal_number, handler in previous.items():
            signal.signal(signal_number, handler)


# --- one batch and one update, as training (and lr-find) takes them ------------------------
# ``run``: a Runner, or the assembly's Parts (the same names: model, task, loss_fn,
# regularizers, speed, optimizer).


def batch_loss(run, forward, inputs: torch.Tensor, targets: torch.Tensor):
    """The batch's outputs and loss (with the regularizers' penalties), in the run's
    precision; ``forward``: the model, or what wraps it (DDP, compiled)."""
    with run.speed.autocast():
        outputs = forward(inputs)
        loss = run.task.compute_loss(run.loss_fn, outputs, targets)
        for regularizer in run.regularizers:
            penalty = regularizer.penalty(run.model)
            if penalty is not None:
                loss = loss + penalty
    return outputs, loss


def apply_update(run) -> None:
    """The optimizer's step from the accumulated (unscaled) gradients, between the
    regularizers' hooks (clipping before, EMA after); the gradients are cleared."""
    for regularizer in run.regularizers:
        regularizer.before_optimizer_step(run.model)
    run.speed.scaler.step(run.optimizer)
    run.speed.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    for regularizer in run.regularizers:
        regularizer.after_optimizer_step(run.model)


# --- the runner ----------------------------------------------------------------------------


class Runner:
    """One training run: built from a composed config, writing into ``run_dir``."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        # Join the process group first: the data is sharded by rank.
        distributed.setup(distributed.resolve_device(trainer_settings(cfg.trainer).device))
        parts = build(cfg, "train")
        self.cfg, self.settings, self.device, self.speed = (
            parts.cfg, parts.settings, parts.device, parts.speed,
        )  # fmt: skip
        self.splits, self.loaders, self.task = parts.splits, parts.loaders, parts.task
        self.model, self.loss_fn, self.optimizer = parts.model, parts.loss_fn, parts.optimizer
        self.regularizers, self.scheduler = parts.regularizers, parts.schedule
        self.monitor, self.mode = parts.monitor, parts.mode  # what "best" means
        self.train_batches, self.steps_per_epoch = parts.train_batches, parts.steps_per_epoch
        self.planned_lrs = parts.planned_lrs
        self.finetune = parts.finetune
        self.frozen = bool(self.finetune.freeze)
        self._wrap_model()

        # --- state: everything `state_dict` saves ---
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.epoch_progress: dict[str, Any] | None = None  # within an epoch: batches and sums
        self.epoch_start_lr = self.lr
        self.best_value: float | None = None
        self.best_record: dict[str, Any] = {}
        self.best_epochs: list[tuple[float, int]] = []  # (monitored value, epoch), best first
        # The epoch_N.pt / step_N.pt files this run wrote, oldest first: keep_last removes
        # only these (a file of that name the user put there is theirs).
        self.kept_checkpoints: list[str] = []
        self.ownership = checkpoint.Ownership()  # which of those files are still its own
        self.resumed_from: Path | None = None
        self.stop_signal: int | None = None
        self.skipped_steps = 0
        self.rollbacks = 0
        self.lr_scale = 1.0  # rollbacks multiply the planned lr by this
        self.earlier_train_time_s = 0.0  # of the run's earlier segments, when it was resumed
        # A search's pruner, asked after each epoch whether to go on (launch sets it in a
        # trial's job): (epoch, monitored value) -> stop now.
        self.prune: Callable[[int, float], bool] | None = None
        self.pruned_at_epoch: int | None = None
        self._segment_started = time.perf_counter()
        if self.cfg.get("resume"):
            self.resume(self.cfg.resume)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = RunLogger(
            self.run_dir,
            logger_settings(self.cfg.logger),
            distributed.is_main_process(),
            resume_epoch=self.epoch if self.resumed_from else None,
            resume_step=self.step if self.resumed_from else None,
        )

    def _wrap_model(self) -> None:
        """``train_model``: what the loop calls. DDP averages gradients across processes
        during backward (of the parameters that need one when it is made); one process: the
        model."""
        self.train_model = self.model
        if distributed.world_size() > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.model_ddp = self.train_model  # no_sync lives on the DDP wrapper, not the compiled one
        self.train_model = self.speed.compiled(self.train_model)

    def _unfreeze_if_due(self) -> None:
        """``finetune.unfreeze_at_epoch``: the frozen parameters train from that epoch on
        (a resumed run past it unfreezes before its first step)."""
        due = self.finetune.unfreeze_at_epoch
        if not (self.frozen and due and self.epoch + 1 >= due):
            return
        finetune.unfreeze(self.model)
        self.frozen = False
        self._wrap_model()  # DDP reduces only the parameters that needed a gradient when made
        log.info(
            f"epoch {self.epoch + 1}: unfroze {', '.join(self.finetune.freeze)}; "
            f"{finetune.trainable_summary(self.model)}"
        )

    # --- one epoch of training ---

    def train_epoch(self) -> dict[str, float]:
        self._unfreeze_if_due()
        self.train_model.train()
        if self.finetune.freeze_norm:
            finetune.keep_norm_statistics(self.model)
        loader = self.loaders["train"]
        loader.sampler.set_epoch(self.epoch)  # a different shuffle each epoch
        # A run resumed from a checkpoint taken within this epoch goes on from its next batch.
        accumulate, total = self.settings.accumulate, self.train_batches
        progress = self.epoch_progress or {"batches": 0, "loss_sum": 0.0, "correct": 0, "seen": 0}
        self.epoch_progress = progress
        loader.sampler.skip = progress["batches"] * loader.batch_size
        # Sums stay on the device: reading a loss back every step would wait for the GPU.
        self._loss_sum = torch.tensor(progress["loss_sum"], device=self.device)
        self._correct = torch.tensor(progress["correct"], device=self.device)
        self._seen = progress["seen"]
        started = time.perf_counter()
        batches = itertools.islice(loader, total - progress["batches"])
        self.optimizer.zero_grad(set_to_none=True)
        self._step_samples = 0  # (a checkpoint is taken between steps: none are half done)
        bad_update = False
        with self.logger.progress(f"epoch {self.epoch + 1}", total) as advance:
            advance(progress["batches"])
            for batch, (inputs, targets, _) in enumerate(batches, start=progress["batches"] + 1):
                inputs = self.speed.inputs(inputs.to(self.device, non_blocking=True))
                targets = targets.to(self.device, non_blocking=True)
                labels = targets  # before mixing, for the running accuracy
                for regularizer in self.regularizers:
                    inputs, targets = regularizer.mix_batch(
                        inputs, targets, self.splits.num_classes
                    )
                steps_now = batch % accumulate == 0 or batch == total
                # Between the optimizer steps of accumulation, DDP need not average gradients.
                no_sync = not steps_now and isinstance(self.model_ddp, DistributedDataParallel)
                with self.model_ddp.no_sync() if no_sync else contextlib.nullcontext():
                    outputs, loss = batch_loss(self, self.train_model, inputs, targets)
                    weighted = loss  # accumulated: by its share of a full step's samples
                    if accumulate > 1:
                        self._step_samples += labels.shape[0]
                        weighted = loss * (labels.shape[0] / (accumulate * loader.batch_size))
                    self.speed.scaler.scale(weighted).backward()
                if self.settings.nonfinite != "error" and not torch.isfinite(loss.detach()):
                    if self.settings.nonfinite == "rollback":
                        raise NonFinite(f"the loss is {loss.item()}")
                    bad_update = True  # skip: this step's update is dropped
                else:
                    self._loss_sum += loss.detach().float() * targets.shape[0]
                    hits = self.task.train_hits(outputs.detach(), labels)
                    if hits is not None:
                        self._correct += hits
                    self._seen += targets.shape[0]
                progress["batches"] = batch
                if steps_now:
                    skip, bad_update = bad_update, False
                    if not self._optimizer_step(skip):
                        advance()
                        continue  # a skipped non-finite update
                    if self.settings.checkpoint_every and (
                        self.step % self.settings.checkpoint_every == 0
                    ):
                        self.save_checkpoints(f"step_{self.step:07d}.pt")  # a resume point
                    if self.stop_signal is not None:
                        self.save_checkpoints(f"step_{self.step:07d}.pt")
                        raise Interrupted(self.stop_signal, self.checkpoint_dir / "last.pt")
                    logging_now = self.logger.should_log_step(self.step)
                    if logging_now or batch <= accumulate:  # (and an epoch's first step: the bar)
                        step_loss = loss.item()  # the one host-device sync, every N steps
                        if not math.isfinite(step_loss):
                            raise NonFinite(f"the loss is {step_loss}")
                        if logging_now:
                            self.logger.log_step(self.step, {"train/step_loss": step_loss})
                        rate = self._seen / (time.perf_counter() - started)
                        advance(0, loss=f"{step_loss:.4f}", throughput=f"{rate:,.0f} samples/s")
                advance()
        loader.sampler.skip = 0
        self.epoch_progress = None
        totals = torch.stack(
            [
                self._loss_sum,
                self._correct.to(self._loss_sum.dtype),
                torch.tensor(float(self._seen), device=self.device),
            ]
        )
        distributed.all_reduce_sum(totals)
        loss_total, correct_total, seen_total = totals.tolist()
        record = {"train/loss": loss_total / seen_total}
        if self.task.tracks_accuracy:
            record["train/acc"] = correct_total / seen_total
        return record

    def _optimizer_step(self, skip: bool = False) -> bool:
        """One update from the accumulated gradients; False if it was skipped (``skip``: the
        loss was not finite; the gradient norm is checked here)."""
        self.speed.scaler.unscale_(self.optimizer)  # clipping sees the true gradients
        samples, self._step_samples = self._step_samples, 0
        full = self.settings.accumulate * self.loaders["train"].batch_size
        if 0 < samples < full:  # accumulated: an epoch's last step, fewer batches or samples
            for parameter in self.model.parameters():  # (the mean over the samples it had)
                if parameter.grad is not None:
                    parameter.grad.mul_(full / samples)
        if self.settings.nonfinite != "error" and not self.speed.scaler.is_enabled():
            # (With fp16 the grad scaler skips non-finite steps itself: that is its job.)
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.model.parameters() if p.grad is not None]
            )
            if skip or not torch.isfinite(norm):
                if self.settings.nonfinite == "rollback":
                    raise NonFinite(f"the gradient norm is {norm.item()}")
                self.skipped_steps += 1
                if self.skipped_steps > self.settings.nonfinite_max_skips:
                    raise NonFinite(
                        f"{self.skipped_steps} non-finite updates, more than "
                        f"trainer.nonfinite_max_skips={self.settings.nonfinite_max_skips}"
                    )
                batch = (self.epoch_progress or {}).get("batches", 0)
                log.warning(
                    f"skipped a non-finite update at epoch {self.epoch + 1}, batch {batch} "
                    f"({self.skipped_steps} of at most {self.settings.nonfinite_max_skips})"
                )
                self.optimizer.zero_grad(set_to_none=True)
                return False
        apply_update(self)
        self.step += 1
        if self.logger.should_log_step(self.step):
            self.logger.log_step(self.step, {"train/lr": self.lr})  # the lr this step used
        self.scheduler.step_batch()
        return True

    def evaluation_model(self) -> nn.Module:
        """What validation and test evaluate: the model, or its EMA when one is kept."""
        model = self.model
        for regularizer in self.regularizers:
            model = regularizer.evaluation_model(model)
        return model

    @functools.cached_property
    def val_metrics(self):
        return self.task.metrics().to(self.device)

    def validate(self) -> dict[str, float]:
        values, _ = evaluate(
            self.evaluation_model(),
            self.loaders["val"],
            self.loss_fn,
            self.task,
            self.val_metrics,
            self.device,
            "val",
            limit_batches=self.settings.limit_eval_batches,
            speed=self.speed,
        )
        return values

    @property
    def train_time_s(self) -> float:
        """Seconds spent in ``fit`` so far, over every segment of a resumed run."""
        return self.earlier_train_time_s + time.perf_counter() - self._segment_started

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # --- the whole run ---

    def fit(self) -> dict[str, Any]:
        """Train for ``trainer.max_epochs`` (or until early stopping), then test the best."""
        if self.step == 0:  # the schedule planned before the first step, for TensorBoard
            self.logger.log_layout(self.monitor)
            if self.planned_lrs is not None:  # (not planned for a very long run)
                self.logger.log_curve("train/lr_planned", self.planned_lrs)
                lrs, epochs = self.planned_lrs, self.settings.max_epochs
                warning = idle_warning(self.cfg.scheduler, lrs, epochs)
                if warning:
                    log.warning(f"warning: {warning}")
        if self.resumed_from:
            log.info(f"resumed from {self.resumed_from}: epoch {self.epoch + 1}, step {self.step}")
        world = distributed.world_size()
        processes = f" in {world} processes (DDP)" if world > 1 else ""
        log.info(
            f"training {self.cfg.model.name} on {self.cfg.data.name} "
            f"({len(self.splits.train)} train / {len(self.splits.val)} val / "
            f"{len(self.splits.test)} test) on {self.device}{processes}"
        )
        self._segment_started = time.perf_counter()
        if self.settings.nonfinite == "rollback" and self.step == 0:
            self.save_checkpoints("step_0000000.pt")  # a good state before the first step
        with stop_on_signals(self):
            while self.epoch < self.settings.max_epochs:
                epoch_started = time.perf_counter()
                if self.epoch_progress is None:
                    self.epoch_start_lr = self.lr
                record = {"epoch": self.epoch + 1, "step": 0, "lr": self.epoch_start_lr}
                try:
                    record.update(self.train_epoch())
                    if not math.isfinite(record["train/loss"]):
                        raise NonFinite(f"the epoch's mean loss is {record['train/loss']}")
                except NonFinite as error:
                    self._recover(error)  # rolls back, or raises
                    continue
                record.update(self.validate())
                self.scheduler.step_epoch(record)
                self.epoch += 1
                record["step"] = self.step
                record["epoch_time_s"] = time.perf_counter() - epoch_started

                self._update_best(record)
                monitored = record[self.monitor]
                stop = any(r.should_stop(monitored, self.mode) for r in self.regularizers)
                self.logger.log_epoch(record)
                self.save_checkpoints(f"epoch_{self.epoch:04d}.pt", monitored)
                if stop:
                    log.info(f"early stopping: {self.monitor} has not improved for a while")
                    break
                if self.prune is not None and self.prune(self.epoch, monitored):
                    self.pruned_at_epoch = self.epoch
                    log.info(
                        f"pruned at epoch {self.epoch}: {self.monitor} {monitored:.4f} is behind "
                        "the search's other trials at this epoch"
                    )
                    break
        return self.test(train_time_s=self.train_time_s)

    def close(self) -> None:
        """The run is over, finished or not: its logger flushed and closed (TensorBoard's
        writer thread reopens its file by name, and would make it again after a failed run's
        directory is cleaned up) and its loaders' worker processes stopped."""
        self.logger.close()
        stop_workers(self.loaders)

    def _recover(self, error: NonFinite) -> None:
        """After a non-finite loss or gradient: roll back to last.pt with a lower lr (with
        trainer.nonfinite=rollback, a bounded number of times), or stop with where it was."""
        where = f"epoch {self.epoch + 1} after step {self.step} (lr {self.lr:.3g})"
        last = self.checkpoint_dir / "last.pt"
        if (
            self.settings.nonfinite == "rollback"
            and self.rollbacks < self.settings.nonfinite_max_rollbacks
            and last.exists()
        ):
            self.rollbacks += 1
            scale = self.lr_scale * self.settings.nonfinite_lr_factor
            state = checkpoint.load(last, map_location=self.device)
            spent = self.train_time_s  # the steps rolled back took time all the same
            self.load_state_dict(state)
            self.earlier_train_time_s = spent
            self.scheduler.scale(scale / state.get("lr_scale", 1.0))
            self.lr_scale = scale
            log.warning(
                f"{error} at {where}: rolled back to step {self.step} with the lr x{scale:g} "
                f"(rollback {self.rollbacks} of {self.settings.nonfinite_max_rollbacks})"
            )
            return
        # Say what else to try: not the setting that is on already.
        after, alternative = "", ", or set trainer.nonfinite=skip or rollback"
        if self.settings.nonfinite == "skip":
            alternative = ", or set trainer.nonfinite=rollback"
        elif self.settings.nonfinite == "rollback":
            limit = self.settings.nonfinite_max_rollbacks
            after = f" after {self.rollbacks} rollbacks (trainer.nonfinite_max_rollbacks={limit})"
            alternative = ""
        raise UserError(
            f"training diverged{after}: {error} at {where}; lower optimizer.lr or add "
            f"regularization=[grad_clip]{alternative}"
        )

    def _update_best(self, record: dict[str, Any]) -> bool:
        value = record[self.monitor]
        if self.best_value is None or (
            value > self.best_value if self.mode == "max" else value < self.best_value
        ):
            self.best_value, self.best_record = value, dict(record)
            return True
        return False

    def test(self, train_time_s: float) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split; write predictions and the summary."""
        distributed.barrier()  # best.pt is written by the main process
        best = checkpoint.load(self.checkpoint_dir / "best.pt", map_location=self.device)
        model = self.evaluation_model()
        model.load_state_dict(best["evaluation_model"])
        test_metrics = self.task.metrics(per_class=True).to(self.device)
        values, outputs = evaluate(
            model,
            self.loaders["test"],
            self.loss_fn,
            self.task,
            test_metrics,
            self.device,
            "test",
            keep_outputs=True,
            limit_batches=self.settings.limit_eval_batches,
            speed=self.speed,
        )
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": self.epoch,
            "steps": self.step,
            "train_time_s": round(train_time_s, 3),
            "monitor": self.monitor,
            "best_epoch": self.best_record["epoch"],
            **{k: v for k, v in self.best_record.items() if k.startswith(("val/", "train/"))},
            **values,
            **self.task.summary_extras(),
        }
        if self.pruned_at_epoch is not None:
            summary["pruned_at_epoch"] = self.pruned_at_epoch
        if distributed.is_main_process():
            self.task.write_predictions(self.run_dir / "predictions.csv", outputs)
            self.task.log_test(self.logger, values, outputs, self.step)
            checkpoint.save_json(summary, self.run_dir / "summary.json")
            scalars = {name: values[name] for name in test_metrics.scalar_names("test")}
            self.logger.log_final(
                self._hparams(), scalars, self._hparam_columns(summary), self.step
            )
        self.logger.close()
        return summary

    def _hparams(self) -> dict[str, Any]:
        """This run's row of TensorBoard's HParams table: what its overrides set (a sweep's
        job: what the sweep varies), and a fixed few. Read from the run's .hydra/."""
        import yaml

        def read(name: str, *keys: str) -> Any:
            # Files, and those of a resumed run may have been edited: whatever they hold, a
            # finished run is not failed for its HParams row.
            path = self.run_dir / ".hydra" / name
            try:
                value = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeError, yaml.YAMLError):
                return None
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            return value

        overrides = read("overrides.yaml")
        overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
        swept = None
        if str(read("hydra.yaml", "hydra", "mode")) == "MULTIRUN":  # the keys its sweep varied
            dirname = ("hydra", "job", "config", "override_dirname", "exclude_keys")
            fixed = read("hydra.yaml", *dirname)
            fixed = {str(key) for key in fixed} if isinstance(fixed, list) else set()
            keys = [o.lstrip("+~").partition("=")[0] for o in overrides]
            swept = [key for key in keys if key not in fixed]
        return chosen_hparams(OmegaConf.to_container(self.cfg, resolve=True), overrides, swept)

    def _hparam_columns(self, summary: dict[str, Any]) -> dict[str, float]:
        """The metric columns a sweep is judged by: the monitored metric at its best epoch,
        its test counterpart, and the time it took."""
        test = self.monitor.replace("val/", "test/", 1)
        columns = {f"{self.monitor}_best": summary[self.monitor]}  # (in the val/ group)
        if test != self.monitor and isinstance(summary.get(test), float):
            columns[test] = summary[test]
        columns["train/time_s"] = summary["train_time_s"]
        return columns

    # --- checkpoints ---

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            # The weights validation saw (the EMA's, when one is kept): what eval loads.
            "evaluation_model": self.evaluation_model().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.speed.scaler.state_dict(),
            "regularizers": [r.state_dict() for r in self.regularizers],
            "epoch": self.epoch,
            "step": self.step,
            "epoch_progress": self._progress_now(),
            "epoch_start_lr": self.epoch_start_lr,
            "lr_scale": self.lr_scale,
            "train_time_s": self.train_time_s,
            "best_value": self.best_value,
            "best_record": self.best_record,
            "best_epochs": self.best_epochs,
            "kept_checkpoints": self.kept_checkpoints,
            "rng": checkpoint.rng_state(),
            "train_generator": self.loaders["train"].generator.get_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "cwd": os.getcwd(),  # what the config's relative data paths are relative to
            # What the model needs of its data (shapes, classes, how a raw input becomes
            # one): predict and export rebuild it from this, without the data.
            "data": self.splits.description(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.speed.scaler.load_state_dict(state.get("grad_scaler", {}))
        for regularizer, regularizer_state in zip(
            self.regularizers, state["regularizers"], strict=True
        ):
            regularizer.load_state_dict(regularizer_state)
        self.epoch, self.step = state["epoch"], state["step"]
        self.epoch_progress = state.get("epoch_progress")
        self.epoch_start_lr = state.get("epoch_start_lr", self.lr)
        self.best_value, self.best_record = state["best_value"], state["best_record"]
        self.earlier_train_time_s = state.get("train_time_s", 0.0)
        self._segment_started = time.perf_counter()
        self.best_epochs = [tuple(pair) for pair in state.get("best_epochs", [])]
        self.kept_checkpoints = list(state.get("kept_checkpoints", []))
        checkpoint.set_rng_state(state["rng"])
        self.loaders["train"].generator.set_state(state["train_generator"].cpu())

    def _progress_now(self) -> dict[str, Any] | None:
        """How far the current epoch has come (None between epochs), with its running sums."""
        if self.epoch_progress is None:
            return None
        return {
            **self.epoch_progress,
            "loss_sum": self._loss_sum.item(),
            "correct": int(self._correct.item()),
            "seen": self._seen,
        }

    def resume(self, path: str | Path) -> None:
        """Continue the run saved in ``path`` (a checkpoint, or a run directory's last.pt):
        every piece of state, after checking that the config trains the same way."""
        path = checkpoint.find(path, "last.pt", "resume")
        state = checkpoint.load(path, map_location=self.device)
        checkpoint.check_resumable(state["config"], OmegaConf.to_container(self.cfg, resolve=True))
        checkpoint.load_weights(self.model, state["model"], path, "this run's model")
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise UserError(f"checkpoint {path} does not fit this run: {first}") from None
        self.resumed_from = path
        self.ownership.resumed_ns = path.stat().st_mtime_ns

    def save_checkpoints(self, name: str, monitored: float | None = None) -> None:
        """last.pt (the resume point), and ``name`` when the newest ``keep_last`` are kept;
        at an epoch's end (``monitored`` given) also best.pt and the ``keep_best`` best."""
        if not distributed.is_main_process():
            return
        dropped, own = [], self.ownership
        # A file of that name that the run did not write is someone's: kept as it is.
        keep_named = self.settings.keep_last and own.free(
            self.checkpoint_dir / name, name in self.kept_checkpoints
        )
        if keep_named:  # listed before the state is taken: the state lists it
            kept = [*(old for old in self.kept_checkpoints if old != name), name]
            dropped, self.kept_checkpoints = (
                kept[: -self.settings.keep_last],
                kept[-self.settings.keep_last :],
            )
        state = self.state_dict()
        if keep_named:  # before last.pt: no file that last.pt lists is newer than it
            own.save(state, self.checkpoint_dir / name)
        checkpoint.save(state, self.checkpoint_dir / "last.pt")
        if keep_named:
            own.remove(self.checkpoint_dir, dropped)
        if monitored is None:
            return
        if self.best_record.get("epoch") == self.epoch:
            checkpoint.save(state, self.checkpoint_dir / "best.pt")
        if self.settings.keep_best > 1:
            self.best_epochs = checkpoint.keep_best(
                state, self.checkpoint_dir, self.best_epochs, (monitored, self.epoch),
                self.settings.keep_best, self.mode, own,
            )  # fmt: skip
