"""The trainer shared by every model: WebDataset pipelines from priors shards, the loop (SAM,
AMP, DDP, resume), checkpoints, presets, and the train stage.

Public API::

    from ferpipe.train import TrainParams, train_stage, run_train, fit, RunOptions
    from ferpipe.train import presets           # resolve(params), list_presets(), register_preset
    from ferpipe.train import data              # probe_shards, train_pipeline, eval_pipeline, ...
    from ferpipe.train.optim import SAM, build_optimizer, build_scheduler
"""

from ferpipe._lazy import lazy_exports

# Loaded on first use (ferpipe._lazy): reading params.yaml must not import this stage's dependencies.
_EXPORTS = {
    "NonFiniteLossError": "loop", "RunOptions": "loop", "TrainConfig": "presets", "TrainParams": "params",
    "TrainReport": "stage", "TrainResult": "loop", "evaluate": "loop", "fit": "loop", "get_preset": "presets",
    "list_presets": "presets", "load_checkpoint": "checkpoint:load", "register_preset": "presets",
    "resolve": "presets", "run_train": "stage", "train_stage": "stage",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
