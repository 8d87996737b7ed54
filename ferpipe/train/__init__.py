"""The trainer shared by every model: WebDataset pipelines from priors shards, the loop (SAM,
AMP, DDP, resume), checkpoints, presets, and the train stage.

Public API::

    from ferpipe.train import TrainParams, train_stage, TRAIN, fit, RunOptions
    from ferpipe.train import presets           # resolve(params), list_presets(), register_preset
    from ferpipe.train import data              # probe_shards, train_pipeline, eval_pipeline, ...
    from ferpipe.train.optim import SAM, build_optimizer, build_scheduler
"""

from ferpipe._lazy import lazy_exports

# Loaded on first use: importing ferpipe.train.params (params validation) must not import torch.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "checkpoint": [("load_checkpoint", "load")],
    "loop": ["NonFiniteLossError", "RunOptions", "TrainResult", "evaluate", "fit"],
    "params": ["TrainParams"],
    "presets": ["TrainConfig", "get_preset", "list_presets", "register_preset", "resolve"],
    "stage": ["TRAIN", "TrainReport", "train_stage"],
})
