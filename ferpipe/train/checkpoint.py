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

Checkpoints are data, never code: :func:`save_atomic` writes only plain containers, strings,
numbers and tensors (numpy values become tensors or Python numbers, paths become strings), and
:func:`load` reads with ``torch.load(weights_only=True)``, allowing on top of that only numpy's
array and scalar reconstructors (which checkpoints written before this rule hold in their RNG
state). A file that needs anything else is refused, and its pickle never runs.
"""

from __future__ import annotations

import dataclasses
import errno
from collections import OrderedDict
import os
import random
import tempfile
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from ferpipe.errors import FerpipeError
from ferpipe.safe_load import first_line as _first_line
from ferpipe.safe_load import read_weights_only

FORMAT = "ferpipe-train/1"
LAST, BEST = "last.pt", "best.pt"
PREPROCESS_FORMAT = "ferpipe-preprocess/1"
# Params that change speed only (never a shard byte): left out of the preprocessing record.
_SPEED_ONLY = {"align": ("threads", "decode_workers", "device", "batch_size", "samples_per_shard"),
               "priors": ("device", "threads", "batch_size", "gallery_size", "png_compression")}


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        # numpy's state as a tensor and numbers: loadable with weights_only=True.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generator": generator.get_state() if generator is not None else None,
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(_as_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same directory, fsync, rename: never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp: a name no other process (or thread) writing the same checkpoint can collide with.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                torch.save(plain(obj), f)
            except RuntimeError as exc:  # torch's zip writer reports a full disk as RuntimeError
                raise OSError(errno.EIO, f"cannot write the checkpoint ({_first_line(exc)}); is the disk "
                                         f"full? The previous {path.name} is kept", str(path)) from exc
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plain(obj: Any) -> Any:
    """``obj`` with numpy values, paths and dataclasses turned into what ``weights_only`` loads."""
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, OrderedDict):
        out = OrderedDict((k, plain(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # state_dict versions: load_state_dict reads them
            out._metadata = plain(obj._metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, (set, frozenset)):
        return sorted(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return plain(dataclasses.asdict(obj))
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return obj  # on weights_only's own allow-list
    raise FerpipeError(f"cannot put a {type(obj).__module__}.{type(obj).__qualname__} in a checkpoint: "
                       f"only containers, numbers, strings and tensors are saved")


def _as_tuples(v: Any) -> Any:
    # random.setstate wants tuples; a state that went through a list-only format comes back as lists.
    return tuple(_as_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


def load(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    path = Path(path)
    ckpt = read_weights_only(path, "training checkpoint", map_location=map_location)
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
    from ferpipe import shards as _shards  # noqa: PLC0415

    def dump(section: Any, name: str) -> dict[str, Any]:
        d = section.model_dump(mode="json") if hasattr(section, "model_dump") else dict(section)
        return {k: v for k, v in d.items() if k not in _SPEED_ONLY[name]}

    meta = _shards.first_sample_json([shards.urls("train")[0]])
    aligned = {} if meta is None else {k: meta.get(k) for k in ("output_size", "margin", "estimator")}
    return {"format": PREPROCESS_FORMAT, "align": dump(align, "align"), "priors": dump(priors, "priors"),
            "aligned": aligned, "prior_kind": shards.prior_kind, "prior_meta": dict(shards.prior_meta)}
