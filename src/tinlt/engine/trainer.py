"""The training loop: one readable function from a config to a run folder with metrics.

``train(cfg)`` builds the run (data, model, loss, loaders, optimizer), restores it when
resuming, loops over epochs (training pass, evaluation, checkpoint) and finishes with the
test split, scored once with the selected weights. Each step is a named method of
``_Run``; apps attach through hooks (engine/hooks.py). What a run folder holds and how it
is written is engine/run_folder.py's business.

Resumption is exact on CPU: the sample order and each sample's augmentation are pure
functions of (seed, epoch, position) (see ``sampling.py``), and the checkpoint carries the
optimizer, scheduler, scaler, loss (seesaw's online counts), RNG states and the position
inside the epoch.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig

from ..config import to_dict
from ..data.transforms import normalize_batch
from ..errors import Interrupted, TinltError
from ..models.adjust import apply_eval_adjustments
from ..models.tuning import describe_trainable, trainable_summary
from . import checkpoint as ckpt_io
from .device import (autocast_for, compiled_forward, cuda_speed_settings, is_convolutional, no_sync_unless,
                     training_devices, wrap_for_training)
from .distributed import all_reduce_sum, barrier, cleanup
from .feature_cache import feature_store_for
from .grad_ratio import GradientRatio
from .hooks import TrainContext, call_hooks
from .inference import CSV_CLASS_COLUMNS, banner, epoch_line, evaluate, scores_line
from .classifier_init import init_classifier
from .loaders import epoch_order, eval_loader, eval_transform, make_transforms, train_dataset, train_loader
from .optim import back_off, build_optimizer, build_scheduler, effective_lr, non_finite, step_counts
from .progress import LogTicker, echo, progress, quiet_while
from .resume import RETUNED, check_data, check_world, claim, load_resume, retune_optimizer
from .run_folder import RunFolder, RunLock
from .selection import record_selection, select_posthoc_tau, split_logits
from .signals import StopRequest


# checkpoint key -> attribute with state_dict() (the model's is ckpt_io.model_state); counters as they are
_STATEFUL = {"optimizer": "optimizer", "scheduler": "scheduler", "loss": "loss_fn", "grad_ratio": "grad_ratio"}
CHECK_EVERY = 50  # optimizer steps between host checks of the loss's finiteness (and at every save)
_COUNTERS = ("epoch", "batch_in_epoch", "global_step", "best_score", "history", "stale_evals")


class _Run:
    """One training run's state; ``train()`` calls its steps in order."""

    def __init__(self, cfg: DictConfig, hooks: Sequence[Any], command: Optional[list[str]]) -> None:
        self.cfg, self.hooks, self.command = cfg, list(hooks), command
        self.device, self.dist = training_devices(cfg.train.device)
        cuda_speed_settings(self.device, cfg.train.tf32, cfg.train.cudnn_benchmark)
        self.main = self.dist.is_main
        self.run = RunFolder(cfg.train.output_dir)
        self.epoch = self.batch_in_epoch = self.global_step = self.stale_evals = 0  # stale: evals since the best
        self.best_score, self.history = -1.0, []
        self.loss_sum, self.n_seen = 0.0, 0
        self.acc_dtype = torch.float64 if self.device.type != "mps" else torch.float32  # MPS has no float64
        self._bad_at = torch.full((2,), -1, dtype=torch.long, device=self.device)
        self._bad_loss = torch.zeros((), device=self.device)
        self.changes: set[str] = set()
        self.channels_last = False
        self.writer = ckpt_io.BackgroundWriter()  # rank 0's checkpoint writes, off the training thread
        self.log = echo if self.main else (lambda msg: None)  # set-up messages from the main process only

    # -- set-up ------------------------------------------------------------------------
    def build(self, ckpt: Optional[dict]) -> None:
        """Data, model, loss and loaders; the order matters: each step draws from the seeded RNGs."""
        from ..data.bundle import build_data
        from ..losses import build_loss
        from ..models.factory import create_model
        from .prepare import prepare_model

        cfg = self.cfg
        ckpt_io.seed_everything(cfg.train.seed + self.dist.rank)
        self.data = data = build_data(cfg)
        if ckpt is not None:
            check_data(ckpt, data.classnames, data.train_counts)
        model = create_model(cfg.model, data.classnames, image_size=cfg.data.image_size).to(self.device)
        prepare_model(model, cfg.model, classnames=data.classnames, resuming=ckpt is not None, log=self.log)
        apply_eval_adjustments(model, cfg.train, data.train_counts)  # train.tau_norm / posthoc_tau, eval mode only
        if self.device.type == "cuda" and cfg.train.channels_last and is_convolutional(model.image_tower):
            model = model.to(memory_format=torch.channels_last)
            self.channels_last = True  # and so are its inputs: a conversion inside every conv otherwise
        self.model = model
        self.train_tf, self.eval_tf = make_transforms(model, cfg)
        self.view_tf = eval_transform(model, cfg, views=False)  # cache, classifier init: one view per image
        if ckpt is None and (not cfg.model.init_from or cfg.model.reinit_head):
            init_classifier(model, data.train, self.view_tf, cfg, self.device, log=self.log)
        self.loss_fn = build_loss(cfg.loss, data.train_counts).to(self.device)
        self.train_ds = train_dataset(data.train, self.train_tf, cfg)
        self.order = epoch_order(data.train, cfg, self.dist)

    def build_optimization(self) -> None:
        cfg = self.cfg
        self.per_epoch_batches, self.steps_per_epoch, self.total_steps = step_counts(cfg, len(self.order.order()))
        self.global_batch = cfg.optim.batch_size * cfg.optim.accum_steps * self.dist.world_size
        self.optimizer = build_optimizer(self.model, cfg, self.global_batch)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.use_scaler = self.device.type == "cuda" and cfg.train.amp == "fp16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        self.grad_ratio = GradientRatio(len(self.data.classnames), self.device)
        self.reduce = all_reduce_sum if self.dist.world_size > 1 else None  # sums over ranks for logs
        self.ticker = LogTicker(self.total_steps)  # log lines with ETAs where no bar shows
        self.train_model = wrap_for_training(self.model, cfg, self.dist, self.device)

    def restore(self, ckpt: dict) -> None:
        check_world(ckpt, self.dist.world_size, self.global_batch)
        configured = [(g["lr"], g["weight_decay"]) for g in self.optimizer.param_groups]
        ckpt_io.load_model_state(self.model, ckpt, where="--resume")
        for key, attr in _STATEFUL.items():
            getattr(self, attr).load_state_dict(ckpt[key])
        if self.changes & set(RETUNED):  # a new lr takes effect at the schedule's current position
            retune_optimizer(self.optimizer, self.scheduler, configured)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        for key in _COUNTERS:
            setattr(self, key, ckpt.get(key, getattr(self, key)))
        self.loss_sum, self.n_seen = ckpt["epoch_loss"]
        ckpt_io.set_rng_state(ckpt["rng"][self.dist.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])

    def build_loaders(self) -> None:
        """A fixed image path reads its outputs from disk (train.feature_cache), for training only
        without random augmentation, for evaluation without test-time views (weights are final here)."""
        cfg = self.cfg
        self.features = feature_store_for(self.model, cfg, transform=self.view_tf, device=self.device,
                                          is_main=self.main, barrier=barrier)
        self.eval_features = self.features if cfg.data.get("tta", "none") == "none" else None
        train_ds, workers = self.train_ds, None
        if self.features is not None and cfg.data.augment == "none":
            train_ds, workers = self.features.dataset(self.data.train, desc="train"), 0  # nothing left to decode
        self.loader = train_loader(train_ds, self.order, cfg, self.device, num_workers=workers)

    def start(self, resumed: bool) -> None:
        """Write config.yaml and run.json, open the logger, tell the hooks."""
        from .loggers import make_logger

        cfg, data = self.cfg, self.data
        if self.main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.run.write_config(cfg)
            if resumed:  # the log holds what the checkpoint holds: a killed run's lost records go
                self.run.rewrite_log(self.history)
            lr = effective_lr(cfg.optim, self.global_batch)
            self.run.write_run_info({
                "command": self.command or sys.argv, "seed": cfg.train.seed, "versions": ckpt_io.versions(),
                "device": str(self.device), "world_size": self.dist.world_size, "per_device_batch": cfg.optim.batch_size,
                "global_batch": self.global_batch, "lr_effective": lr, "lr_scaling": cfg.optim.lr_scaling,
                "total_steps": self.total_steps, "trainable_params": trainable_summary(self.model)[0],
                "train_images": len(data.train), "eval_split": data.eval_name, **data.summary(),
                "held_out": None if data.held_out is None else data.held_out.tolist()})
            echo(describe_trainable(self.model))
            echo(banner(cfg, data, self.device, self.dist.world_size, self.global_batch, lr, self.total_steps, self.run))
            if data.selection_note(scores_test=not self.blind):
                print(f"tinlt: warning: {data.selection_note()}", file=sys.stderr)
        self.logger = make_logger(cfg, self.run.path, is_main=self.main)  # TensorBoard if train.tensorboard
        self.ctx = TrainContext(cfg=cfg, run=self.run, logger=self.logger, features=self.features)
        self.eval_dl = None if data.evaluation is None else eval_loader(
            data.evaluation, self.eval_tf, cfg, self.dist, self.device, features=self.eval_features, persistent=True)
        self.hook("on_start")

    def hook(self, event: str, **fields) -> None:
        if self.main:
            vars(self.ctx).update(fields, epoch=self.epoch, global_step=self.global_step)
            call_hooks(self.hooks, event, self.ctx)

    # -- checkpoints -------------------------------------------------------------------
    def state(self) -> dict:
        self.grad_ratio.fold(self.reduce)  # every rank saves: all join, and hold the same totals after
        return {
            **ckpt_io.model_entries(self.model, self.cfg),
            **{key: getattr(self, attr).state_dict() for key, attr in _STATEFUL.items()},
            **{key: getattr(self, key) for key in _COUNTERS},
            "scaler": self.scaler.state_dict() if self.use_scaler else None, "epoch_loss": (self.loss_sum, self.n_seen),
            "rng": ckpt_io.gather_rng_state(), "config": to_dict(self.cfg), "versions": ckpt_io.versions(),
            "world_size": self.dist.world_size, "global_batch": self.global_batch, **self.data.summary(),
        }

    def save(self, best: bool = False) -> Path:
        """last.pt (and best.pt first when ``best``: a kill between the two writes leaves
        last.pt behind best.pt, never ahead). Never replaces a good checkpoint with diverged weights."""
        self.check_loss()  # a non-finite loss names its own step, before the weights it spoilt are refused
        ckpt_io.check_finite(self.model, self.global_step, self.last_good())
        st = self.state()  # every rank joins the RNG gather
        if self.main:  # a host copy now, the disk on a thread: no rank waits for rank 0's write
            st, run = ckpt_io.snapshot(st), self.run

            def write() -> None:
                if best:
                    ckpt_io.save_atomic(st, run.best)
                    ckpt_io.copy_atomic(run.best, run.last)
                else:
                    ckpt_io.save_atomic(st, run.last)

            self.writer.submit(write)
        return self.run.last

    def last_good(self) -> Optional[Path]:
        """The checkpoint a resume would use, once any write in flight has landed."""
        self.writer.wait()
        return self.run.resume_checkpoint()

    def saved(self) -> Path:
        """Wait for rank 0's write (raising its error), then let every rank read the files."""
        self.writer.wait()
        barrier()
        return self.run.last

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> None:
        cfg = self.cfg
        if cfg.optim.epochs == 0:  # a head solved at set-up (model.classifier_init: logistic): evaluate and save it
            if not self.history:
                self.pass_time = (0.0, 0.0)
                self.end_epoch(True)
            self.saved()
            return
        done = self.global_step >= self.total_steps
        with StopRequest() as stop:
            while self.epoch < cfg.optim.epochs and not done:
                done = self.end_epoch(self.train_epoch(stop))  # the last epoch: planned, or stopped early
                if stop.signum is not None and not done:
                    raise Interrupted(stop.signum, self.saved())
        self.saved()  # finish() reads best.pt on every rank

    def train_epoch(self, stop: StopRequest) -> bool:
        """One pass over the training loader (from mid-epoch when resuming); True when the run's last step ran."""
        cfg, bs, accum = self.cfg, self.cfg.optim.batch_size, self.cfg.optim.accum_steps
        self.loss_fn.set_epoch(self.epoch)  # LDAM's deferred re-weighting; a no-op elsewhere
        self.order.set_epoch(self.epoch, start=self.batch_in_epoch * bs)
        self.train_model.train()
        if self.batch_in_epoch == 0:
            self.loss_sum, self.n_seen = 0.0, 0
        self.hook("on_epoch_start")
        self.t0, self.c0 = time.time(), time.process_time()
        it = progress(self.loader, desc=f"epoch {self.epoch + 1}/{cfg.optim.epochs}",
                      total=self.per_epoch_batches - self.batch_in_epoch, unit="batch")
        self.optimizer.zero_grad(set_to_none=True)
        done = False
        for images, targets, _ in it:
            loss = self.forward_backward(images, targets)
            if loss is None:  # fp16 overflow: step skipped
                continue
            if self.batch_in_epoch % accum and self.batch_in_epoch < self.per_epoch_batches:
                continue
            self.optimizer_step(loss, it)
            if self.global_step >= self.total_steps:
                done = True
                break
            if stop.signum is not None:
                self.save()
                raise Interrupted(stop.signum, self.saved())
            if cfg.train.save_every_steps and self.global_step % cfg.train.save_every_steps == 0:
                self.save()
        it.close()
        self.check_loss()
        self.pass_time = (round(time.time() - self.t0, 2), round(time.process_time() - self.c0, 2))
        return done

    def forward_backward(self, images, targets) -> Optional[torch.Tensor]:
        accum = self.cfg.optim.accum_steps
        images, targets = images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
        if isinstance(images, torch.Tensor):  # uint8 from the loader: a quarter of the bytes to copy
            images = normalize_batch(images, self.model.image_tower.image_mean, self.model.image_tower.image_std)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        b = self.batch_in_epoch + 1
        step_now = not (b % accum and b < self.per_epoch_batches)  # as train_epoch decides after this batch
        with no_sync_unless(step_now, self.train_model):
            return self._forward_backward(images, targets, self.order.real_mask(
                self.batch_in_epoch * self.cfg.optim.batch_size, len(targets)))

    def real_share(self, mask: torch.Tensor) -> tuple[torch.Tensor, int, float]:
        """For a batch holding stand-ins (the padded end of an epoch under N processes): the real
        rows, their count c, and the weight N * c / C (C: real samples in the whole global
        micro-batch) that makes DDP's mean over ranks the mean over those C samples, as one
        process computes it."""
        rows = mask.nonzero().squeeze(1)  # on the CPU: no device sync
        n, bs = self.dist.world_size, self.cfg.optim.batch_size
        global_real = min(bs * n, self.order.real_count - self.batch_in_epoch * bs * n)
        return rows.to(self.device, non_blocking=True), len(rows), n * len(rows) / global_real

    def _forward_backward(self, images, targets, mask: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        cfg, accum = self.cfg, self.cfg.optim.accum_steps
        with autocast_for(self.device, cfg.train.amp):
            logits = compiled_forward(self.train_model, images) if cfg.train.compile else self.train_model(images)
        logits = logits.float()
        logits.retain_grad()
        rows, count, weight = (None, len(targets), 1.0) if mask is None else self.real_share(mask)
        if rows is None:
            loss = self.loss_fn(logits, targets)
        else:
            targets = targets[rows]
            loss = self.loss_fn(logits[rows], targets)  # every rank joins the loss's own collectives
            if count == 0:  # stand-ins only: no loss, but a backward so DDP's all-reduce still meets
                loss = logits.sum() * 0.0
        if self.use_scaler:
            if not torch.isfinite(loss):  # fp16 overflow: skip the step and lower the scale, as AMP does
                back_off(self.scaler, loss, self.optimizer)
                self.batch_in_epoch += 1
                return None
        else:  # noted on the device, checked every CHECK_EVERY steps and before any save: no sync per step
            self.watch_loss(loss)
        self.scaler.scale(loss * weight / accum if weight != 1.0 else loss / accum).backward()
        if logits.grad is not None and count:
            grad = logits.grad if rows is None else logits.grad[rows]
            self.grad_ratio.update(grad * (accum / self.scaler.get_scale()), targets)  # unscaled (fp16)
        self.batch_in_epoch += 1
        part = loss.detach().to(self.acc_dtype) * count
        self._loss_dev = part if self._loss_dev is None else self._loss_dev + part
        self.n_seen += count
        return loss

    # the epoch's summed loss: a host float plus what is still on the device
    @property
    def loss_sum(self) -> float:
        if self._loss_dev is not None:
            self._loss_host, self._loss_dev = self._loss_host + float(self._loss_dev), None
        return self._loss_host

    @loss_sum.setter
    def loss_sum(self, value: float) -> None:
        self._loss_host, self._loss_dev = float(value), None

    def watch_loss(self, loss: torch.Tensor) -> None:
        """Remember, on the device, the first non-finite loss and its epoch and optimizer step."""
        first = ~torch.isfinite(loss.detach()) & (self._bad_at[1] < 0)
        here = torch.tensor([self.epoch, self.global_step], device=self._bad_at.device)
        self._bad_at = torch.where(first, here, self._bad_at)
        self._bad_loss = torch.where(first, loss.detach().float(), self._bad_loss)

    def check_loss(self) -> None:
        """One host sync: stop at the first non-finite loss seen, naming its step (weights after it
        are not saved; the last good checkpoint stays)."""
        epoch, step = self._bad_at.tolist()
        if step >= 0:
            raise non_finite(self._bad_loss, epoch, step, self.last_good())

    def optimizer_step(self, loss: torch.Tensor, it) -> None:
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        lr = self.scheduler.get_last_lr()[0]
        if self.global_step % CHECK_EVERY == 0:
            self.check_loss()
        if step_due(self.logger, self.global_step):  # loss.item() waits for the device: only when logged
            self.logger.log_step(self.global_step, {"loss": loss.item(), "lr": lr})
        if not it.disable and self.global_step % 10 == 0:
            it.set_postfix(loss=f"{self.loss_sum / max(self.n_seen, 1):.4f}", lr=f"{lr:.2e}")
        self.ticker.tick(self.global_step, epoch=self.epoch + 1, epochs=self.cfg.optim.epochs,
                         batch=self.batch_in_epoch, batches=self.per_epoch_batches, accum=self.cfg.optim.accum_steps)

    def end_epoch(self, done: bool) -> bool:
        """The epoch's record (loss, lr, time, evaluation), its log line and its checkpoint;
        True when this was the run's last epoch."""
        cfg, data = self.cfg, self.data
        if self.batch_in_epoch >= self.per_epoch_batches:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        last_epoch = done or self.epoch >= cfg.optim.epochs
        wall, cpu = self.pass_time
        loss_sum, n_seen = (self.reduce(torch.tensor([self.loss_sum, float(self.n_seen)], dtype=torch.float64, device=self.device)).tolist()
                            if self.reduce else (self.loss_sum, self.n_seen))  # every rank's shard, not rank 0's
        self.grad_ratio.fold(self.reduce)
        record = {"epoch": self.epoch, "step": self.global_step, "loss": loss_sum / max(n_seen, 1),
                  "lr": self.scheduler.get_last_lr()[0], "time_s": wall, "cpu_s": cpu}
        if not self.blind and ((cfg.train.eval_every and self.epoch % cfg.train.eval_every == 0) or last_epoch):
            m = evaluate(self.model, None, cfg, data, device=self.device, loader=self.eval_dl,
                         desc=f"eval ({data.eval_name})", per_image=False)
            record[data.eval_name] = {k: m[k] for k in ("overall", "instance_acc", "many", "medium", "few")}
            if cfg.train.get("save_val_predictions") and data.eval_name == "val" and self.main:
                self.keep_val_logits()
            improved = data.eval_name == "test" or m["overall"] > self.best_score  # without val, "best" is the last
            if improved:
                self.best_score, self.stale_evals = m["overall"], 0
            else:
                self.stale_evals += 1
            record["best"] = (improved or cfg.train.best_checkpoint == "last") or None
        elif self.blind:
            record["best"] = True  # nothing scored: the last epoch is the model
        if 0 < cfg.train.early_stopping <= self.stale_evals and not last_epoch:
            last_epoch = record["stopped_early"] = True
        record = {k: v for k, v in record.items() if v is not None}
        record["grad_ratio"] = self.grad_ratio.ratio().tolist()
        self.history.append(record)
        if self.main:
            self.run.rewrite_log(self.history)  # whole and atomic, so a kill never leaves half a line
            echo(epoch_line(record, data.eval_name, cfg.optim.epochs))
            self.logger.log_epoch(self.epoch, record)
        self.save(best=bool(record.get("best")))
        self.hook("on_epoch_end", record=record)
        return last_epoch

    def keep_val_logits(self) -> None:
        """This epoch's raw val logits, added to val_predictions.npz (resumes keep earlier epochs)."""
        import numpy as np

        logits, targets = split_logits(self.model, self.eval_dl, self.device)
        old = self.run.read_val_predictions() or {}
        keep = [i for i, e in enumerate(old.get("epochs", [])) if e < self.epoch]
        self.run.write_val_predictions({
            "origin": self.data.evaluation.origin, "target": targets,
            "epochs": np.asarray([*(old["epochs"][keep] if keep else []), self.epoch], dtype=np.int64),
            "logits": np.concatenate([old["logits"][keep], logits[None]]) if keep else logits[None].astype(np.float32)})

    @property
    def blind(self) -> bool:
        """Trains on everything and scores nothing (``train.final_test: false`` with no data.val):
        the test split is left untouched for ``tinlt eval`` (fit's refit)."""
        return not self.cfg.train.get("final_test", True) and self.data.eval_name != "val"

    def finish(self, start_time: float) -> dict:
        """Choices on the validation split (post-hoc tau), then the test split, scored once with the
        selected weights (best.pt); metrics.json."""
        if self.blind:
            metrics = {"split": None, "train_time_s": round(time.time() - start_time, 1),
                       "note": "trained on every training image; nothing scored (tinlt eval scores the test split)"}
            if self.main:
                self.run.write_metrics(metrics)
                echo(f"trained; nothing scored: tinlt eval --checkpoint {self.run.path} scores the test split")
                self.logger.close()
            return metrics
        best = ckpt_io.load_checkpoint(self.run.best) if self.run.best.is_file() else None
        if best is not None:
            ckpt_io.load_model_state(self.model, best, where=str(self.run.best))
        if (chosen := select_posthoc_tau(self.model, self.eval_dl, self.data, self.cfg, self.device)) and self.main:
            record_selection(self.run, best, self.cfg)
        final = self.data.final if self.cfg.train.get("final_test", True) else self.data.evaluation
        split = "test" if final is self.data.test else self.data.eval_name
        metrics = evaluate(self.model, final, self.cfg, self.data, device=self.device, dist_info=self.dist,
                           desc=split, features=self.eval_features, transform=self.eval_tf,
                           csv=self.run.predictions_path if self.main else None,
                           keep_scores_up_to=CSV_CLASS_COLUMNS)  # on every rank: they all join the score gather
        metrics.update(train_time_s=round(time.time() - start_time, 1), split=split,
                       **({"selection": chosen} if chosen else {}))
        if self.main:
            self.run.write_metrics(metrics)
            echo(f"{split}: {scores_line(metrics)} | metrics: {self.run.metrics_path}")
            self.hook("on_finish", metrics=metrics)
            self.logger.close()
        return metrics


def step_due(logger, step: int) -> bool:
    """Whether ``logger`` writes step scalars at ``step`` (a null logger never does)."""
    from .loggers import NullLogger

    if isinstance(logger, NullLogger):
        return False
    every = getattr(logger, "step_every", 1)
    return step == 1 or step % max(1, int(every)) == 0


def train(cfg: DictConfig, *, resume: Optional[str | bool] = None, command: Optional[list[str]] = None,
          hooks: Sequence[Any] = (), fresh: bool = False) -> dict:
    """Train TIN as configured; returns the final test metrics (also in ``metrics.json``).

    ``resume``: a checkpoint path, or "auto" for the run folder's last.pt; the caller passes
    the run's config (``run_folder.config_for_train``). ``fresh``: replace the results of a
    run already in ``train.output_dir`` (without it, such a folder is refused). ``hooks``:
    see engine/hooks.py. The main process holds the folder's lock throughout.
    """
    with quiet_while(cfg.train.quiet):
        run = _Run(cfg, hooks, command)
        with RunLock(run.run) if run.main else contextlib.nullcontext():
            try:
                ckpt = load_resume(resume, run.run, run.log)
                run.changes = claim(run.run, run.cfg, ckpt, fresh=fresh, main=run.main, log=run.log)
                run.build(ckpt)
                run.build_optimization()
                if ckpt is not None:
                    run.restore(ckpt)
                run.build_loaders()
                run.start(resumed=ckpt is not None)
                start_time = time.time()
                run.fit()
                metrics = run.finish(start_time)
            except OSError as e:  # the disk, a permission: the user's to fix, in one line
                with contextlib.suppress(TinltError, OSError):
                    run.writer.wait()  # the last good checkpoint may be the one in flight
                raise TinltError(f"{e.filename or run.run.path}: {e.strerror or e}; last good checkpoint: "
                                 f"{run.run.resume_checkpoint() or 'none yet'}") from None
    cleanup()
    return metrics
