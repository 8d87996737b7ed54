"""Loading the official checkpoints in their original layouts.

Rules (as the releases save them):
- a leading ``module.`` (DataParallel) is stripped from every key;
- IR-50 (``ir50.pth``): shape-matched partial load; the release reports 304 tensors loaded;
- MobileFaceNet (``mobilefacenet_model_best.pth.tar``): strict, from ``['state_dict']``;
- SegFace (``model_299.pt``): strict, from ``['state_dict_backbone']``;
- ORSANet (train.py output): ``{'iter', 'model_state_dict', 'optimizer_state_dict'}`` with
  ``module.``-prefixed keys. ferpipe's own files may hold the state dict under ``state_dict``
  or ``model``, or be a bare state dict.

Every loader takes a path or an already-loaded object. Files load with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ferpipe.errors import FerpipeError, MissingCheckpointError

log = logging.getLogger(__name__)


def read_checkpoint(source, what: str) -> Mapping[str, Any]:
    """Load a checkpoint file on the CPU, or pass an already-loaded mapping through."""
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise MissingCheckpointError(path, what=what)
    from ferpipe.safe_load import read_weights_only  # noqa: PLC0415

    return read_weights_only(path, what)


def strip_module_prefix(state: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    return OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in state.items())


def _pick(obj: Mapping[str, Any], keys: tuple[str, ...], what: str, source) -> Mapping[str, Any]:
    for k in keys:
        if k in obj and isinstance(obj[k], Mapping):
            return obj[k]
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj  # a bare state dict
    raise FerpipeError(
        f"{_name(source)} ({what}): expected the state dict under one of {list(keys)}; "
        f"found top-level keys {sorted(obj)[:10]}"
    )


def _name(source) -> str:
    return "<in-memory checkpoint>" if isinstance(source, Mapping) else os.fspath(source)


@dataclass
class LoadReport:
    """What a load did: how many tensors went in, and which keys were left out on either side."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped_shape: list[str] = field(default_factory=list)


def _strict_load(model: nn.Module, state: Mapping[str, Any], what: str, source) -> LoadReport:
    state = strip_module_prefix(state)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise FerpipeError(
            f"{_name(source)} ({what}) does not match the architecture: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:5]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:5]})"
        )
    return LoadReport(loaded=len(state))


def load_ir50(model: nn.Module, source) -> LoadReport:
    """Shape-matched partial load of POSTER's IR-50 weights (plain or under 'state_dict')."""
    what = "IR-50 face-recognition backbone (POSTER ir50.pth)"
    obj = read_checkpoint(source, what)
    state = strip_module_prefix(_pick(obj, ("state_dict",), what, source))
    own = model.state_dict()
    matched, skipped = OrderedDict(), []
    for k, v in state.items():
        if k in own and tuple(own[k].shape) == tuple(v.shape):
            matched[k] = v
        else:
            skipped.append(k)  # e.g. the unused fourth stage body.21-23
    model.load_state_dict(matched, strict=False)
    missing = [k for k in own if k not in matched]
    log.info("IR-50: loaded %d tensors by shape match, skipped %d", len(matched), len(skipped))
    return LoadReport(loaded=len(matched), missing=missing, skipped_shape=skipped)


def load_mobilefacenet(model: nn.Module, source) -> LoadReport:
    what = "MobileFaceNet 68-point landmark net (mobilefacenet_model_best.pth.tar)"
    obj = read_checkpoint(source, what)
    return _strict_load(model, _pick(obj, ("state_dict",), what, source), what, source)


def load_segface(model: nn.Module, source) -> LoadReport:
    what = "SegFace Swin-B LaPa 224 face parser (model_299.pt)"
    obj = read_checkpoint(source, what)
    return _strict_load(model, _pick(obj, ("state_dict_backbone",), what, source), what, source)


def orsanet_state_dict(source) -> "OrderedDict[str, Any]":
    """The ORSANet state dict of an official (``model_state_dict``) or ferpipe checkpoint."""
    what = "ORSANet checkpoint"
    obj = read_checkpoint(source, what)
    return strip_module_prefix(_pick(obj, ("model_state_dict", "state_dict", "model"), what, source))
