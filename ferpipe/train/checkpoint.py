"""Training checkpoints: atomic writes, everything a resume needs, compatibility checks.

A checkpoint (``last.pt`` every epoch, ``best.pt`` when val improves) is a dict:

``format``           "ferpipe-train/1"
``epoch``            epochs completed (1-based count)
``model``            state_dict (unwrapped from DDP / torch.compile)
``optimizer``        optimiser state (SAM: its base optimiser's)
``scheduler``        LR scheduler state
``scaler``           GradScaler state or None
``sampler``          {kind, seed, epoch, class_counts}: the rebalancing draws are a pure
                     function of (seed, epoch), so this is all the sampler needs
``rng``              {python, numpy, torch, cuda, generator}: global states and the trainer's
                     own torch.Generator
``label_space``      {name, classes}: the label map (evaluation refuses checkpoints without it)
``config``           the resolved TrainConfig (dict); ``params`` the train.* section as given
``model_kwargs``     the create_model(name, **kwargs) call that rebuilds the network
``data``             {root, prior_kind, index_sha256: {split: sha256 of <split>_index.json}}
``preprocess``       {format, align, priors, aligned, prior_meta}: how a raw photo becomes this
                     model's input (the align and priors params of the run, what the shards
                     record: crop size, margin, prior nets and their sha256); read by
                     :mod:`ferpipe.predict`. Absent in checkpoints written before it existed.
``best``             {metric, value, epoch}
``history``          per-epoch metrics so far
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferpipe.errors import FerpipeError

FORMAT = "ferpipe-train/1"
LAST, BEST = "last.pt", "best.pt"
PREPROCESS_FORMAT = "ferpipe-preprocess/1"
# Params that change speed only (never a shard byte): left out of the preprocessing record.
_SPEED_ONLY = {"align": ("threads", "decode_workers", "device", "batch_size", "samples_per_shard"),
               "priors": ("device", "threads", "batch_size", "gallery_size", "png_compression")}


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generator": generator.get_state() if generator is not None else None,
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same directory, fsync, rename: never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise FerpipeError(f"no checkpoint at {path}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FerpipeError(f"{path} is not a ferpipe training checkpoint (format {FORMAT!r})")
    if not ckpt.get("label_space"):
        raise FerpipeError(f"{path} has no label map; it cannot be evaluated or resumed")
    return ckpt


def incompatibilities(ckpt: dict[str, Any], config: dict[str, Any], index_sha256: dict[str, str],
                      free_fields=("epochs",)) -> list[str]:
    """Why ``ckpt`` cannot be resumed under ``config`` and data ``index_sha256`` (empty: it can)."""
    out = []
    old = ckpt.get("config", {})
    for k in sorted(set(old) | set(config)):
        if k in free_fields:
            continue
        if _norm(old.get(k)) != _norm(config.get(k)):
            out.append(f"config.{k}: checkpoint {old.get(k)!r}, now {config.get(k)!r}")
    old_sha = ckpt.get("data", {}).get("index_sha256", {})
    for split in ("train", "val"):
        if old_sha.get(split) != index_sha256.get(split):
            out.append(f"data: {split}_index.json changed since the checkpoint")
    if config.get("epochs") is not None and ckpt.get("epoch", 0) > config["epochs"]:
        out.append(f"checkpoint has {ckpt['epoch']} epochs, more than epochs={config['epochs']}")
    return out


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)      # torch.compile
    model = getattr(model, "module", model)         # DDP
    return getattr(model, "_orig_mod", model)


def preprocess_record(align: Any, priors: Any, shards: Any) -> dict[str, Any]:
    """The ``preprocess`` entry of a checkpoint: the run's ``align.*`` and ``priors.*`` params
    (pydantic models or dicts), and what the training shards themselves record (the aligned
    crop's size/margin/estimator from the first training sample, the priors' kind, backend and
    prior-net sha256s), so a predictor can redo exactly this preprocessing on a new photo and
    check that its params are the ones the shards were made with."""
    import json  # noqa: PLC0415

    from ferpipe import shards as _shards  # noqa: PLC0415

    def dump(section: Any, name: str) -> dict[str, Any]:
        d = section.model_dump(mode="json") if hasattr(section, "model_dump") else dict(section)
        return {k: v for k, v in d.items() if k not in _SPEED_ONLY[name]}

    aligned: dict[str, Any] = {}
    for name, data in _shards.iter_tar_members(shards.urls("train")[0]):
        if name.endswith(".json"):
            meta = json.loads(data)
            aligned = {k: meta.get(k) for k in ("output_size", "margin", "estimator")}
            break
    return {"format": PREPROCESS_FORMAT, "align": dump(align, "align"), "priors": dump(priors, "priors"),
            "aligned": aligned, "prior_kind": shards.prior_kind, "prior_meta": dict(shards.prior_meta)}
