"""The trainer shared by every model: WebDataset pipelines from priors shards, the loop (SAM,
AMP, DDP, resume), checkpoints, presets, and the train stage.

Public API::

    from ferpipe.train import TrainParams, train_stage, run_train, fit, RunOptions
    from ferpipe.train import presets           # resolve(params), list_presets(), register_preset
    from ferpipe.train import data              # probe_shards, train_pipeline, eval_pipeline, ...
    from ferpipe.train.optim import SAM, build_optimizer, build_scheduler
"""

from __future__ import annotations

import importlib
from typing import Any

from .params import TrainParams

# The rest loads on first use: reading params.yaml (which needs only TrainParams) must not
# import torch and the models.
_WHERE = {"load_checkpoint": ("checkpoint", "load"), "NonFiniteLossError": ("loop", None),
          "RunOptions": ("loop", None), "TrainResult": ("loop", None), "evaluate": ("loop", None),
          "fit": ("loop", None), "TrainConfig": ("presets", None), "get_preset": ("presets", None),
          "list_presets": ("presets", None), "register_preset": ("presets", None), "resolve": ("presets", None),
          "TrainReport": ("stage", None), "run_train": ("stage", None), "train_stage": ("stage", None)}

__all__ = [
    "NonFiniteLossError", "RunOptions", "TrainConfig", "TrainParams", "TrainReport", "TrainResult",
    "evaluate", "fit", "get_preset", "list_presets", "load_checkpoint", "register_preset", "resolve",
    "run_train", "train_stage",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module, attr = _WHERE[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr or name)
    raise AttributeError(f"module 'ferpipe.train' has no attribute {name!r}")
