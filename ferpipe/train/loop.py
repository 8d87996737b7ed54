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
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ferpipe.errors import ConfigError, FerpipeError
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


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


def macro_f1(conf: np.ndarray) -> float:
    tp = np.diag(conf).astype(float)
    denom = conf.sum(0) + conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    present = conf.sum(1) > 0
    return float(np.nanmean(f1[present])) if present.any() else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, urls: Sequence[str], aug: D.Augment, num_classes: int, batch_size: int,
             num_workers: int, device: torch.device, amp_dtype=None, channels_last: bool = False) -> dict[str, Any]:
    """Top-1 accuracy, macro-F1, mean CE loss and the confusion matrix over a whole split."""
    was_training = model.training
    model.eval()
    conf = np.zeros((num_classes, num_classes), np.int64)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    loader = D.make_loader(D.eval_pipeline(urls, aug, batch_size), D.eval_workers(urls, num_workers))
    for batch in loader:
        img, priors, y = _to_device(batch, device, channels_last, device.type == "cuda")
        with _autocast(device, amp_dtype):
            logits = predict_logits(model, img, priors)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        pred = logits.argmax(1).cpu().numpy()
        np.add.at(conf, (batch["label"].numpy(), pred), 1)
        n += len(pred)
    model.train(was_training)
    acc = float(np.trace(conf) / max(n, 1))
    return {"acc": acc, "macro_f1": macro_f1(conf), "loss": float(loss_sum.item() / max(n, 1)), "n": n,
            "confusion": conf.tolist()}


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


def fit(cfg: TrainConfig, shards: D.ShardSet, model_dir: str | Path, opts: RunOptions | None = None,
        params: dict[str, Any] | None = None, preprocess: dict[str, Any] | None = None) -> TrainResult:
    """Train ``cfg`` on ``shards``; checkpoints in ``model_dir``; returns the final metrics.
    ``preprocess`` (:func:`ferpipe.train.checkpoint.preprocess_record`) is stored as is."""
    opts = opts or RunOptions()
    t_start = time.perf_counter()
    model_dir = Path(model_dir)
    rank, world = _dist_info()
    device = resolve_device(opts.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    if opts.threads:
        torch.set_num_threads(opts.threads)
    amp_dtype = resolve_amp(cfg.amp, device)
    num_classes = shards.num_classes
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
    criterion = create_criterion(cfg.loss, num_classes, **cfg.loss_kwargs).to(device)
    params_list = trainable(model) + trainable(criterion)
    optimizer = build_optimizer(cfg.optimizer, params_list, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                momentum=cfg.momentum, sam_rho=cfg.sam_rho, device=device,
                                fused=opts.fused_optimizer)
    scheduler = build_scheduler(cfg.scheduler, optimizer, epochs=cfg.epochs, gamma=cfg.gamma,
                                warmup_epochs=cfg.warmup_epochs, milestones=cfg.milestones)
    use_scaler = amp_dtype == torch.float16 and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout / drop-path draw from the global RNG; saved in checkpoints

    config = cfg.to_dict()
    train_urls, val_urls, test_urls = shards.urls("train"), shards.urls("val"), shards.urls("test")
    index = D.build_index(train_urls)
    class_counts = index.class_counts(num_classes)
    history: list[dict[str, Any]] = []
    best = {"metric": SELECT_METRIC, "value": -math.inf, "epoch": 0}
    start_epoch, resumed_from = 1, None

    last_path = model_dir / ckpt_io.LAST
    if opts.resume not in (False, "false") and last_path.exists():
        state = ckpt_io.load(last_path, map_location=device)
        why = ckpt_io.incompatibilities(state, config, shards.index_sha256, RESUME_FREE_FIELDS)
        if why and opts.resume is True:
            raise FerpipeError(f"cannot resume from {last_path}: " + "; ".join(why))
        if why:
            log.warning("not resuming from %s (%s); starting fresh", last_path, "; ".join(why))
        else:
            model.load_state_dict(state["model"])
            if state.get("criterion"):
                criterion.load_state_dict(state["criterion"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            ckpt_io.set_rng_state(state["rng"], generator)
            history, best = list(state["history"]), dict(state["best"])
            start_epoch = int(state["epoch"]) + 1
            resumed_from = int(state["epoch"])
            log.info("resumed from %s at epoch %d", last_path, resumed_from)
    elif opts.resume is True:
        raise FerpipeError(f"train.resume is true but there is no {last_path} to resume from")

    net: nn.Module = model
    if world > 1:
        # find_unused_parameters: some architectures own parameters a given loss never reaches
        # (ORSANet's landmark-half scale in its last block); the trainer must not know which.
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=True)
    if cfg.compile:
        try:
            net = torch.compile(net)
        except Exception as exc:  # noqa: BLE001 - compile is an optimisation, never a requirement
            warnings.warn(f"torch.compile failed ({exc}); training uncompiled")

    base_aug = D.augment_for(cfg.to_dict(), prior_kind)
    reads: list[tuple[int, str]] = []
    seen: list[str] = []
    images = 0
    resampled = world > 1
    label_w = D.class_weights(index.labels, num_classes) if cfg.sampler == "rebalance" else None
    nbatches = math.ceil(len(index) / (world * cfg.batch_size)) if resampled else None
    if cfg.max_steps_per_epoch and nbatches:
        nbatches = min(nbatches, cfg.max_steps_per_epoch)

    # One loader for the whole run: its workers persist across epochs and build each epoch's
    # pipeline (augmentation epoch, rebalancing draws) themselves.
    loader = D.EpochLoader(functools.partial(
        D.train_epoch_pipeline, urls=train_urls, aug=base_aug, batch_size=cfg.batch_size, seed=cfg.seed,
        index=index if cfg.sampler == "rebalance" and not resampled else None, num_classes=num_classes,
        label_weights=label_w, rank=rank, world=world, resampled=resampled, shuffle_buffer=cfg.shuffle_buffer,
        drop_last=cfg.drop_last), opts.num_workers, nbatches=nbatches, pin_memory=device.type == "cuda",
        generator=generator)
    # The persistent workers stop here whatever happens (an early stop, a NaN loss), not when
    # the loader is garbage-collected: a long process (a test session) would pile them up.
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            criterion.set_epoch(epoch)
            aug = D.Augment(**{**base_aug.__dict__, "epoch": epoch})
            net.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            n_seen = 0
            # Rebalancing draws len(index) samples per epoch too, so this is each rank's share either way.
            samples = len(index) // world
            progress = _epoch_progress(opts, rank, epoch, cfg.epochs,
                                       nbatches or steps_per_epoch(samples, cfg.batch_size, cfg.drop_last,
                                                                   cfg.max_steps_per_epoch))
            for step, batch in enumerate(loader.epoch(epoch), start=1):
                if cfg.max_steps_per_epoch and step > cfg.max_steps_per_epoch:
                    break
                img, priors, y = _to_device(batch, device, cfg.channels_last, device.type == "cuda")
                img, y = _flatten_crops(img, y)
                loss = _train_step(net, optimizer, scaler, criterion, img, priors, y, device, amp_dtype,
                                   epoch, step, batch["key"])
                loss_sum += loss.detach().double() * len(y)
                n_seen += len(y)
                if progress is not None:
                    progress.update(len(y), loss_sum)
                if opts.record_keys:
                    seen.extend(batch["key"])
            if progress is not None:
                progress.close()
            # The training steps alone (loader waits included, validation not): what the loader
            # benchmark's step figure is compared with.
            train_images_per_s = n_seen / max(time.perf_counter() - t0, 1e-9)
            scheduler.step()
            criterion.end_epoch(EpochContext(
                epoch=epoch, model=model, device=device, num_classes=num_classes,
                train_batches=functools.partial(_plain_train_batches, train_urls, aug, cfg, opts.num_workers, device,
                                                rank, world)))
            if world > 1:
                # DDP broadcasts buffers at the start of each forward, so after the last step every
                # rank holds BN running statistics of its own last batch: take rank 0's, as the
                # next forward would, so evaluation and checkpoints agree on every rank.
                with torch.no_grad():
                    for b in model.buffers():
                        dist.broadcast(b, 0)
            images += n_seen
            train_loss = float(loss_sum.item() / max(n_seen, 1))
            val = evaluate(model, val_urls, aug, num_classes, cfg.eval_batch_size, opts.num_workers, device,
                           amp_dtype, cfg.channels_last)
            reads.append((epoch, "val"))
            improved = val["acc"] > best["value"]
            if improved:
                best = {"metric": SELECT_METRIC, "value": val["acc"], "epoch": epoch}
            info = {"epoch": epoch, "epochs": cfg.epochs, "train_loss": train_loss, "val_acc": val["acc"],
                    "val_macro_f1": val["macro_f1"], "val_loss": val["loss"],
                    "lr": float(scheduler.get_last_lr()[0]), "seconds": time.perf_counter() - t0,
                    "images_per_s": n_seen / max(time.perf_counter() - t0, 1e-9),
                    "train_images_per_s": train_images_per_s, "best_epoch": best["epoch"],
                    "best_val_acc": best["value"], "improved": improved}
            history.append({k: v for k, v in info.items() if k != "epochs"})
            if rank == 0:
                state = {
                    "format": ckpt_io.FORMAT, "epoch": epoch, "model": ckpt_io.unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "criterion": criterion.state_dict(),
                    "sampler": {"kind": cfg.sampler, "seed": cfg.seed, "epoch": epoch,
                                "mode": "resampled" if resampled else "exact",
                                "class_counts": class_counts.tolist()},
                    "rng": ckpt_io.rng_state(generator), "label_space": shards.label_space, "config": config,
                    "params": params or {}, "model_name": cfg.model, "model_kwargs": kwargs,
                    "data": {"root": str(shards.root), "prior_kind": shards.prior_kind,
                             "index_sha256": shards.index_sha256, "counts": shards.counts},
                    "best": best, "history": history, "val": val,
                }
                if preprocess is not None:
                    state["preprocess"] = preprocess
                if improved:
                    ckpt_io.save_atomic(state, model_dir / ckpt_io.BEST)
                ckpt_io.save_atomic(state, last_path)  # last: a crash mid-write never loses best
            if world > 1:
                dist.barrier()
            for cb in opts.callbacks:
                cb(info)
            if opts.progress and rank == 0:
                log.info("epoch %d/%d loss %.4f val acc %.4f (best %.4f @%d) %.1fs", epoch, cfg.epochs, train_loss,
                         val["acc"], best["value"], best["epoch"], info["seconds"])
            if opts.stop_after_epoch is not None and epoch >= opts.stop_after_epoch and epoch < cfg.epochs:
                return TrainResult(model_dir=model_dir, epochs=cfg.epochs, best=best, history=history, test={},
                                   val_at_best={}, resumed_from=resumed_from,
                                   seconds=time.perf_counter() - t_start, images=images,
                                   label_space=shards.label_space, model_kwargs=kwargs, reads=reads, seen_keys=seen,
                                   weights_sha256=state_digest(model), completed=False, rank=rank, world=world)
    finally:
        loader.close()
    digest = state_digest(model)
    if world > 1:
        # Every rank must end with the same weights (DDP all-reduces gradients; BN buffers are
        # broadcast above): a divergence means a rank saw a different step count or a bug.
        digests: list[str] = [""] * world
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise FerpipeError(f"DDP ranks ended with different weights (digests {digests}); "
                               f"the checkpoint in {model_dir} is rank 0's")

    # Test: once, at the end, with the best-val weights.
    best_path = model_dir / ckpt_io.BEST
    if best_path.exists():
        best_state = ckpt_io.load(best_path, map_location=device)
        model.load_state_dict(best_state["model"])
        val_at_best = best_state.get("val", {})
    else:
        val_at_best = {}
    aug = D.Augment(**{**base_aug.__dict__, "epoch": cfg.epochs})
    test = evaluate(model, test_urls, aug, num_classes, cfg.eval_batch_size, opts.num_workers, device,
                    amp_dtype, cfg.channels_last)
    reads.append((cfg.epochs, "test"))
    return TrainResult(model_dir=model_dir, epochs=cfg.epochs, best=best, history=history, test=test,
                       val_at_best=val_at_best, resumed_from=resumed_from,
                       seconds=time.perf_counter() - t_start, images=images, label_space=shards.label_space,
                       model_kwargs=kwargs, reads=reads, seen_keys=seen, weights_sha256=digest,
                       rank=rank, world=world, num_params=sum(p.numel() for p in model.parameters()))


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
