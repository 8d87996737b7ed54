"""The training loop: epochs, SAM / plain steps, AMP, DDP, checkpoints, resume, selection on val.

:func:`fit` is model-agnostic: the network comes from ``create_model(cfg.model, **kwargs)``,
its inputs are ``model(image, *priors)`` with the priors the shards hold (none, features or
maps), and the loss from the preset's schedule. Val picks the best epoch; test is read once,
after the last epoch, with the best-val weights.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ferpipe.devices import resolve_device
from ferpipe.errors import ConfigError, FerpipeError
from ferpipe.heap import retain_freed_memory
from ferpipe.losses.criterion import Criterion, EpochContext, create_criterion, logits_of
from ferpipe.models import create_model
from ferpipe.models.memory_format import to_channels_last

from . import checkpoint as ckpt_io
from . import data as D
from .optim import SAM, build_optimizer, build_scheduler, trainable
from .presets import RESUME_FREE_FIELDS, TrainConfig, model_kwargs
from .progress import EpochProgress, StepCallback, steps_per_epoch

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, Any]], None]
SELECT_METRIC = "val_acc"


class NonFiniteLossError(FerpipeError):
    """The loss became NaN or infinite; training stopped (last.pt holds the previous epoch)."""


@dataclass
class RunOptions:
    """How to run (never what is computed)."""

    device: str = "auto"
    num_workers: int = 2
    resume: bool | str = "auto"
    threads: int = 0
    fused_optimizer: bool = True
    retain_heap: bool = True      # ferpipe.heap.retain_freed_memory for the process (glibc)
    record_keys: bool = False     # tests: remember the training keys each rank saw
    # Stop (as if interrupted) after this epoch: checkpoints are written, test is not read.
    stop_after_epoch: int | None = None
    callbacks: Sequence[EpochCallback] = ()
    progress: bool = True
    # Within an epoch (rank 0): a tqdm bar when stderr is a TTY (None: detect; False: never),
    # else a log line every log_every_s; step_callbacks every step_callback_every_s.
    progress_bar: bool | None = None
    log_every_s: float = 30.0
    step_callbacks: Sequence[StepCallback] = ()
    step_callback_every_s: float = 10.0


@dataclass
class TrainResult:
    model_dir: Path
    epochs: int
    best: dict[str, Any]
    history: list[dict[str, Any]]
    test: dict[str, Any]
    val_at_best: dict[str, Any]
    resumed_from: int | None
    seconds: float
    images: int
    label_space: dict[str, Any]
    model_kwargs: dict[str, Any]
    reads: list[tuple[int, str]] = field(default_factory=list)  # (epoch, split) of every evaluation
    seen_keys: list[str] = field(default_factory=list)
    weights_sha256: str = ""       # of the weights after the last epoch run (before best is loaded)
    num_params: int = 0
    completed: bool = True
    rank: int = 0
    world: int = 1

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


# --- helpers ----------------------------------------------------------------------------------------


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _to_device(batch: dict[str, Any], device, channels_last: bool, non_blocking: bool):
    img = batch["image"].to(device, non_blocking=non_blocking)
    if channels_last and img.ndim == 4:  # multi-crop batches [B,K,3,S,S] are flattened later
        img = img.contiguous(memory_format=torch.channels_last)
    priors = []
    for p in batch["priors"]:
        p = p.to(device, non_blocking=non_blocking)
        priors.append(p.float() if p.is_floating_point() else p)
    return img, priors, batch["label"].to(device, non_blocking=non_blocking)


def build_model(cfg: TrainConfig, shards: D.ShardSet, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    kwargs = model_kwargs(cfg, shards.facts)
    # Initial weights from the run's seed without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = create_model(cfg.model, **kwargs)
        except (TypeError, ValueError) as exc:  # an unknown or ill-typed keyword from params
            raise ConfigError(f"train.model_kwargs: create_model({cfg.model!r}, ...) refused {kwargs}: {exc}") from None
    return model, kwargs


@torch.no_grad()
def evaluate(model: nn.Module, urls: Sequence[str], aug: D.Augment, num_classes: int, batch_size: int,
             num_workers: int, device: torch.device, amp_dtype=None, channels_last: bool = False) -> dict[str, Any]:
    """Top-1 accuracy, macro-F1, mean CE loss and the confusion matrix over a whole split."""
    from sklearn.metrics import confusion_matrix  # noqa: PLC0415  (importing the loop stays lighter)

    from ferpipe.evaluate.metrics import macro_f1  # noqa: PLC0415

    was_training = model.training
    model.eval()
    truth, preds = [], []
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loader = D.make_loader(D.eval_pipeline(urls, aug, batch_size), D.eval_workers(urls, num_workers))
    for batch in loader:
        img, priors, y = _to_device(batch, device, channels_last, device.type == "cuda")
        with _autocast(device, amp_dtype):
            logits = predict_logits(model, img, priors)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        truth.append(batch["label"].numpy())
        preds.append(logits.argmax(1).cpu().numpy())
    model.train(was_training)
    y_true = np.concatenate(truth) if truth else np.zeros(0, np.int64)
    y_pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    n = len(y_true)
    conf = confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    return {"acc": float(np.trace(conf) / max(n, 1)), "macro_f1": macro_f1(y_true, y_pred),
            "loss": float(loss_sum.item() / max(n, 1)), "n": n, "confusion": conf.tolist()}


def predict_logits(model: nn.Module, img: torch.Tensor, priors: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """The model's prediction for a batch; a multi-crop batch [B,K,3,S,S] averages the K crops'
    logits (Ada-DF's ten-crop test on SFEW)."""
    if img.ndim == 5:
        b, k = img.shape[:2]
        return logits_of(model(img.flatten(0, 1), *priors)).reshape(b, k, -1).mean(1)
    return logits_of(model(img, *priors))


def _flatten_crops(img: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Ten-crop training: the crops are stacked into the batch and the labels repeated.
    if img.ndim == 5:
        k = img.shape[1]
        return img.flatten(0, 1), y.repeat_interleave(k)
    return img, y


def _autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- the loop ------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one :func:`fit` call builds once (:func:`_setup`) and the parts of the loop share and
    advance: the network and its optimisation state, the data, and the run's record so far."""

    cfg: TrainConfig
    shards: D.ShardSet
    opts: RunOptions
    model_dir: Path
    rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None
    model: nn.Module
    kwargs: dict[str, Any]
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    generator: torch.Generator
    config: dict[str, Any]
    index: D.SampleIndex
    base_aug: D.Augment
    t_start: float
    net: nn.Module | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"metric": SELECT_METRIC, "value": -math.inf, "epoch": 0})
    start_epoch: int = 1
    resumed_from: int | None = None
    reads: list[tuple[int, str]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    images: int = 0

    @property
    def num_classes(self) -> int:
        return self.shards.num_classes

    @property
    def resampled(self) -> bool:
        # DDP ranks draw from resampled shards so that every rank runs the same number of steps.
        return self.world > 1

    @property
    def last_path(self) -> Path:
        return self.model_dir / ckpt_io.LAST

    def aug_at(self, epoch: int) -> D.Augment:
        return D.Augment(**{**self.base_aug.__dict__, "epoch": epoch})

    def evaluate_on(self, urls: Sequence[str], aug: D.Augment) -> dict[str, Any]:
        return evaluate(self.model, urls, aug, self.num_classes, self.cfg.eval_batch_size, self.opts.num_workers,
                        self.device, self.amp_dtype, self.cfg.channels_last)

    def result(self, test: dict[str, Any], val_at_best: dict[str, Any], digest: str, **kw) -> TrainResult:
        return TrainResult(model_dir=self.model_dir, epochs=self.cfg.epochs, best=self.best, history=self.history,
                           test=test, val_at_best=val_at_best, resumed_from=self.resumed_from,
                           seconds=time.perf_counter() - self.t_start, images=self.images,
                           label_space=self.shards.label_space, model_kwargs=self.kwargs, reads=self.reads,
                           seen_keys=self.seen, weights_sha256=digest, rank=self.rank, world=self.world, **kw)


def fit(cfg: TrainConfig, shards: D.ShardSet, model_dir: str | Path, opts: RunOptions | None = None,
        params: dict[str, Any] | None = None, preprocess: dict[str, Any] | None = None) -> TrainResult:
    """Train ``cfg`` on ``shards``; checkpoints in ``model_dir``; returns the final metrics.
    ``preprocess`` (:func:`ferpipe.train.checkpoint.preprocess_record`) is stored as is."""
    run = _setup(cfg, shards, Path(model_dir), opts or RunOptions(), time.perf_counter())
    _resume(run)
    run.net = _wrap_for_training(run)
    loader = _train_loader(run)
    # The persistent workers stop here whatever happens (an early stop, a NaN loss), not when
    # the loader is garbage-collected: a long process (a test session) would pile them up.
    try:
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            aug = run.aug_at(epoch)
            n_seen, loss_sum, train_images_per_s = _train_epoch(run, loader, epoch)
            _end_epoch(run, epoch, aug)
            run.images += n_seen
            val, info = _validate(run, epoch, aug, t0, n_seen, float(loss_sum.item() / max(n_seen, 1)),
                                  train_images_per_s)
            if run.rank == 0:
                _save_checkpoints(run, epoch, val, info["improved"], params, preprocess)
            _after_epoch(run, info)
            if run.opts.stop_after_epoch is not None and run.opts.stop_after_epoch <= epoch < cfg.epochs:
                return run.result({}, {}, state_digest(run.model), completed=False)
    finally:
        loader.close()
    digest = state_digest(run.model)
    _check_ranks_agree(run, digest)
    return _final_test(run, digest)


def _setup(cfg: TrainConfig, shards: D.ShardSet, model_dir: Path, opts: RunOptions, t_start: float) -> _Run:
    """Device, model, loss, optimiser, scheduler, scaler, seeds and the training index, in the
    order (and so with the RNG draws) every checkpoint of this trainer was made with."""
    rank, world = _dist_info()
    device = resolve_device(opts.device, "train.device")
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.retain_heap:
        # Every step allocates and frees the same activations; glibc would unmap them on free and
        # fault them in again on the next step (0.25-0.35 s of system time per ORSANet-large step).
        retain_freed_memory()
    amp_dtype = resolve_amp(cfg.amp, device)
    if cfg.sampler not in ("rebalance", "shuffle"):
        raise ConfigError(f"train.sampler: {cfg.sampler!r}; use rebalance or shuffle")
    prior_kind = shards.prior_kind if cfg.priors else "none"
    if prior_kind != "none" and (cfg.train_crop != "none" or cfg.test_crop != "none"):
        raise ConfigError(f"train: crops ({cfg.train_crop}/{cfg.test_crop}) cannot be used with cached "
                          f"priors (computed on the whole face); set priors off in the preset")
    model, kwargs = build_model(cfg, shards, cfg.seed)
    model.to(device)
    if cfg.channels_last:
        to_channels_last(model)
    criterion = create_criterion(cfg.loss, shards.num_classes, **cfg.loss_kwargs).to(device)
    optimizer = build_optimizer(cfg.optimizer, trainable(model) + trainable(criterion), lr=cfg.lr,
                                weight_decay=cfg.weight_decay, momentum=cfg.momentum, sam_rho=cfg.sam_rho,
                                device=device, fused=opts.fused_optimizer)
    scheduler = build_scheduler(cfg.scheduler, optimizer, epochs=cfg.epochs, gamma=cfg.gamma,
                                warmup_epochs=cfg.warmup_epochs, milestones=cfg.milestones)
    use_scaler = amp_dtype == torch.float16 and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout / drop-path draw from the global RNG; saved in checkpoints
    # Python's and numpy's global RNGs are saved in checkpoints too (for code that draws from
    # them): seeded here, two runs of the same params write the same checkpoint bytes.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    return _Run(cfg=cfg, shards=shards, opts=opts, model_dir=model_dir, rank=rank, world=world, device=device,
                amp_dtype=amp_dtype, model=model, kwargs=kwargs, criterion=criterion, optimizer=optimizer,
                scheduler=scheduler, scaler=scaler, generator=generator, config=cfg.to_dict(),
                index=D.build_index(shards.urls("train")), base_aug=D.augment_for(cfg.to_dict(), prior_kind),
                t_start=t_start)


def _resume(run: _Run) -> None:
    """Continue from ``last.pt`` when ``opts.resume`` asks and the checkpoint is compatible
    (``auto``: an incompatible one is a warning and a fresh start; ``True``: an error)."""
    last_path, resume = run.last_path, run.opts.resume
    if resume in (False, "false") or not last_path.exists():
        if resume is True:
            raise FerpipeError(f"train.resume is true but there is no {last_path} to resume from")
        return
    state = ckpt_io.load(last_path, map_location=run.device)
    why = ckpt_io.incompatibilities(state, run.config, run.shards.index_sha256, RESUME_FREE_FIELDS)
    if why and resume is True:
        raise FerpipeError(f"cannot resume from {last_path}: " + "; ".join(why))
    if why:
        log.warning("not resuming from %s (%s); starting fresh", last_path, "; ".join(why))
        return
    run.model.load_state_dict(state["model"])
    if state.get("criterion"):
        run.criterion.load_state_dict(state["criterion"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    ckpt_io.set_rng_state(state["rng"], run.generator)
    run.history, run.best = list(state["history"]), dict(state["best"])
    run.start_epoch = int(state["epoch"]) + 1
    run.resumed_from = int(state["epoch"])
    log.info("resumed from %s at epoch %d", last_path, run.resumed_from)


def _wrap_for_training(run: _Run) -> nn.Module:
    """The module the steps call: the model, in DDP across ranks, compiled when asked."""
    net: nn.Module = run.model
    if run.world > 1:
        # find_unused_parameters: some architectures own parameters a given loss never reaches
        # (ORSANet's landmark-half scale in its last block); the trainer must not know which.
        net = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=True)
    if run.cfg.compile:
        try:
            net = torch.compile(net)
        except Exception as exc:  # noqa: BLE001 - compile is an optimisation, never a requirement
            warnings.warn(f"torch.compile failed ({exc}); training uncompiled")
    return net


def _steps_per_epoch(run: _Run) -> int | None:
    """Every rank's batch count when shards are resampled (DDP), else None (the data decides)."""
    if not run.resampled:
        return None
    nbatches = math.ceil(len(run.index) / (run.world * run.cfg.batch_size))
    if run.cfg.max_steps_per_epoch and nbatches:
        nbatches = min(nbatches, run.cfg.max_steps_per_epoch)
    return nbatches


def _train_loader(run: _Run) -> D.EpochLoader:
    """One loader for the whole run: its workers persist across epochs and build each epoch's
    pipeline (augmentation epoch, rebalancing draws) themselves."""
    cfg = run.cfg
    rebalance = cfg.sampler == "rebalance"
    label_w = D.class_weights(run.index.labels, run.num_classes) if rebalance else None
    return D.EpochLoader(functools.partial(
        D.train_epoch_pipeline, urls=run.shards.urls("train"), aug=run.base_aug, batch_size=cfg.batch_size,
        seed=cfg.seed, index=run.index if rebalance and not run.resampled else None, num_classes=run.num_classes,
        label_weights=label_w, rank=run.rank, world=run.world, resampled=run.resampled,
        shuffle_buffer=cfg.shuffle_buffer, drop_last=cfg.drop_last), run.opts.num_workers,
        nbatches=_steps_per_epoch(run), pin_memory=run.device.type == "cuda", generator=run.generator)


def _train_epoch(run: _Run, loader: D.EpochLoader, epoch: int) -> tuple[int, torch.Tensor, float]:
    """One epoch of optimiser steps: (samples seen, summed loss, training images per second)."""
    t0 = time.perf_counter()
    cfg, device = run.cfg, run.device
    run.criterion.set_epoch(epoch)
    run.net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_seen = 0
    # Rebalancing draws len(index) samples per epoch too, so this is each rank's share either way.
    samples = len(run.index) // run.world
    progress = _epoch_progress(run.opts, run.rank, epoch, cfg.epochs,
                               _steps_per_epoch(run) or steps_per_epoch(samples, cfg.batch_size, cfg.drop_last,
                                                                        cfg.max_steps_per_epoch))
    for step, batch in enumerate(loader.epoch(epoch), start=1):
        if cfg.max_steps_per_epoch and step > cfg.max_steps_per_epoch:
            break
        img, priors, y = _to_device(batch, device, cfg.channels_last, device.type == "cuda")
        img, y = _flatten_crops(img, y)
        loss = _train_step(run.net, run.optimizer, run.scaler, run.criterion, img, priors, y, device,
                           run.amp_dtype, epoch, step, batch["key"])
        loss_sum += loss.detach().double() * len(y)
        n_seen += len(y)
        if progress is not None:
            progress.update(len(y), loss_sum)
        if run.opts.record_keys:
            run.seen.extend(batch["key"])
    if progress is not None:
        progress.close()
    # The training steps alone (loader waits included, validation not): what the loader
    # benchmark's step figure is compared with.
    return n_seen, loss_sum, n_seen / max(time.perf_counter() - t0, 1e-9)


def _end_epoch(run: _Run, epoch: int, aug: D.Augment) -> None:
    """The scheduler's step, the criterion's end-of-epoch pass, and (DDP) one set of BN buffers."""
    run.scheduler.step()
    run.criterion.end_epoch(EpochContext(
        epoch=epoch, model=run.model, device=run.device, num_classes=run.num_classes,
        train_batches=functools.partial(_plain_train_batches, run.shards.urls("train"), aug, run.cfg,
                                        run.opts.num_workers, run.device, run.rank, run.world)))
    if run.world > 1:
        # DDP broadcasts buffers at the start of each forward, so after the last step every
        # rank holds BN running statistics of its own last batch: take rank 0's, as the
        # next forward would, so evaluation and checkpoints agree on every rank.
        with torch.no_grad():
            for b in run.model.buffers():
                dist.broadcast(b, 0)


def _validate(run: _Run, epoch: int, aug: D.Augment, t0: float, n_seen: int, train_loss: float,
              train_images_per_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate on val, move the best epoch, and record the epoch in the history:
    (val metrics, the epoch's info for callbacks)."""
    val = run.evaluate_on(run.shards.urls("val"), aug)
    run.reads.append((epoch, "val"))
    improved = val["acc"] > run.best["value"]
    if improved:
        run.best = {"metric": SELECT_METRIC, "value": val["acc"], "epoch": epoch}
    info = {"epoch": epoch, "epochs": run.cfg.epochs, "train_loss": train_loss, "val_acc": val["acc"],
            "val_macro_f1": val["macro_f1"], "val_loss": val["loss"],
            "lr": float(run.scheduler.get_last_lr()[0]), "seconds": time.perf_counter() - t0,
            "images_per_s": n_seen / max(time.perf_counter() - t0, 1e-9),
            "train_images_per_s": train_images_per_s, "best_epoch": run.best["epoch"],
            "best_val_acc": run.best["value"], "improved": improved}
    run.history.append({k: v for k, v in info.items() if k != "epochs"})
    return val, info


def _save_checkpoints(run: _Run, epoch: int, val: dict[str, Any], improved: bool,
                      params: dict[str, Any] | None, preprocess: dict[str, Any] | None) -> None:
    """``last.pt`` every epoch and ``best.pt`` when val improved (rank 0 only), both written atomically."""
    cfg, shards = run.cfg, run.shards
    state = {
        "format": ckpt_io.FORMAT, "epoch": epoch, "model": ckpt_io.unwrap(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "criterion": run.criterion.state_dict(),
        "sampler": {"kind": cfg.sampler, "seed": cfg.seed, "epoch": epoch,
                    "mode": "resampled" if run.resampled else "exact",
                    "class_counts": run.index.class_counts(run.num_classes).tolist()},
        "rng": ckpt_io.rng_state(run.generator), "label_space": shards.label_space, "config": run.config,
        "params": params or {}, "model_name": cfg.model, "model_kwargs": run.kwargs,
        "data": {"root": str(shards.root), "prior_kind": shards.prior_kind,
                 "index_sha256": shards.index_sha256, "counts": shards.counts},
        "best": run.best, "history": run.history, "val": val,
    }
    if preprocess is not None:
        state["preprocess"] = preprocess
    if improved:
        ckpt_io.save_atomic(state, run.model_dir / ckpt_io.BEST)
    ckpt_io.save_atomic(state, run.last_path)  # last: a crash mid-write never loses best


def _after_epoch(run: _Run, info: dict[str, Any]) -> None:
    """Wait for rank 0's checkpoints, then tell the callbacks and the log."""
    if run.world > 1:
        dist.barrier()
    for cb in run.opts.callbacks:
        cb(info)
    if run.opts.progress and run.rank == 0:
        log.info("epoch %d/%d loss %.4f val acc %.4f (best %.4f @%d) %.1fs", info["epoch"], run.cfg.epochs,
                 info["train_loss"], info["val_acc"], run.best["value"], run.best["epoch"], info["seconds"])


def _check_ranks_agree(run: _Run, digest: str) -> None:
    """Every rank must end with the same weights (DDP all-reduces gradients; BN buffers are
    broadcast each epoch): a divergence means a rank saw a different step count or a bug."""
    if run.world == 1:
        return
    digests: list[str] = [""] * run.world
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise FerpipeError(f"DDP ranks ended with different weights (digests {digests}); "
                           f"the checkpoint in {run.model_dir} is rank 0's")


def _final_test(run: _Run, digest: str) -> TrainResult:
    """Test: once, at the end, with the best-val weights."""
    best_path = run.model_dir / ckpt_io.BEST
    if best_path.exists():
        best_state = ckpt_io.load(best_path, map_location=run.device)
        run.model.load_state_dict(best_state["model"])
        val_at_best = best_state.get("val", {})
    else:
        val_at_best = {}
    test = run.evaluate_on(run.shards.urls("test"), run.aug_at(run.cfg.epochs))
    run.reads.append((run.cfg.epochs, "test"))
    return run.result(test, val_at_best, digest, num_params=sum(p.numel() for p in run.model.parameters()))


def _epoch_progress(opts: RunOptions, rank: int, epoch: int, epochs: int, steps: int) -> EpochProgress | None:
    if rank != 0 or not (opts.progress or opts.step_callbacks):
        return None
    shown = opts.progress
    return EpochProgress(epoch, epochs, steps, bar=opts.progress_bar if shown else False,
                         log_every_s=opts.log_every_s if shown else math.inf, callbacks=opts.step_callbacks,
                         callback_every_s=opts.step_callback_every_s)


def state_digest(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): equal weights, equal digest."""
    import hashlib

    h = hashlib.sha256()
    for k, v in ckpt_io.unwrap(model).state_dict().items():
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_finite(loss: torch.Tensor, epoch: int, step: int, keys, what: str = "loss") -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite {what} ({loss.item()}) at epoch {epoch}, step {step} (first keys of the batch: "
            f"{list(keys)[:4]}); training stopped. last.pt holds epoch {epoch - 1}. Lower train.lr, "
            f"check the shards, or try train.amp=off.")


def _plain_train_batches(urls, aug: D.Augment, cfg: TrainConfig, num_workers: int, device, rank: int,
                         world: int):
    """Every training sample once, in a seeded order, with the training augmentations (no
    rebalancing): what Ada-DF's end-of-epoch class-distribution pass reads."""
    pipe = D.train_pipeline(urls, aug, cfg.eval_batch_size, seed=cfg.seed, epoch=aug.epoch, rank=rank, world=world,
                            shuffle_buffer=1, shuffle_initial=1)
    for batch in D.make_loader(pipe, num_workers):
        img, priors, y = _to_device(batch, device, cfg.channels_last, device.type == "cuda")
        img, y = _flatten_crops(img, y)
        yield img, priors, y


def _train_step(net, optimizer, scaler, criterion: Criterion, img, priors, y, device, amp_dtype, epoch, step, keys):
    """One optimiser step; SAM takes two forward/backward passes on the same batch."""
    def forward_backward():
        with _autocast(device, amp_dtype):
            outputs = net(img, *priors)
        loss = criterion(_float_outputs(outputs), y)
        _check_finite(loss, epoch, step, keys)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return loss

    optimizer.zero_grad(set_to_none=True)
    loss = forward_backward()
    if isinstance(optimizer, SAM):
        if scaler is not None:
            # Unscale the first-pass gradient by hand; GradScaler's own unscale_ is kept for the
            # base step. An overflow skips the perturbation (the base step is then skipped too).
            inv = 1.0 / scaler.get_scale()
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch._foreach_mul_(grads, inv)
            if not torch.isfinite(optimizer._grad_norm()):  # fp16 overflow: no perturbation
                optimizer.zero_grad(set_to_none=True)
        optimizer.first_step(zero_grad=True)
        forward_backward()  # same batch, perturbed weights; gradient used by the base step
        optimizer.restore()
        if scaler is not None:
            scaler.step(optimizer.base_optimizer)
            scaler.update()
        else:
            optimizer.base_optimizer.step()
    elif scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    criterion.after_step()
    return loss


def _float_outputs(outputs):
    # Losses are computed in fp32 whatever the autocast dtype of the forward.
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _float_outputs(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_float_outputs(v) for v in outputs)
    return outputs
