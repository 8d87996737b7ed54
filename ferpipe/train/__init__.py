"""The trainer shared by every model: WebDataset pipelines from priors shards, the loop (SAM,
AMP, DDP, resume), checkpoints, presets, and the train stage.

Public API::

    from ferpipe.train import TrainParams, train_stage, run_train, fit, RunOptions
    from ferpipe.train import presets           # resolve(params), list_presets(), register_preset
    from ferpipe.train import data              # probe_shards, train_pipeline, eval_pipeline, ...
    from ferpipe.train.optim import SAM, build_optimizer, build_scheduler
"""

from .checkpoint import load as load_checkpoint
from .loop import NonFiniteLossError, RunOptions, TrainResult, evaluate, fit
from .params import TrainParams
from .presets import TrainConfig, get_preset, list_presets, register_preset, resolve
from .stage import TrainReport, run_train, train_stage

__all__ = [
    "NonFiniteLossError", "RunOptions", "TrainConfig", "TrainParams", "TrainReport", "TrainResult",
    "evaluate", "fit", "get_preset", "list_presets", "load_checkpoint", "register_preset", "resolve",
    "run_train", "train_stage",
]
