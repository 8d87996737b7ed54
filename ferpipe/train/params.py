"""The ``train.*`` section of params.yaml.

A run names a preset (:mod:`ferpipe.train.presets`) and may override any of its fields; a field
left at ``null`` keeps the preset's value. :func:`ferpipe.train.presets.resolve` merges the two
into the :class:`~ferpipe.train.presets.TrainConfig` the loop runs (and every checkpoint records).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ferpipe._schema import StrictModel


class TrainParams(StrictModel):
    """Training of one model on one dataset's priors shards (see :mod:`ferpipe.train.stage`)."""

    # data/priors/<dataset> -> models/train/<dataset>; None: download.dataset, like every stage.
    dataset: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]*$")  # a name, never a path
    # The method: a create_model name (orsanet, ran, dacl, ada_df, mfer, resnet18, ir50_baseline).
    # Its recipe is train.preset, or ``<model>-cpu`` when preset is null.
    model: str = "orsanet"
    preset: str | None = None           # a name from ferpipe.train.presets.list_presets()
    # Where the shards are (default data/priors/<dataset>) and where checkpoints go
    # (default models/train/<dataset>); relative paths are under the project root.
    shards_dir: str | None = None
    model_dir: str | None = None

    # Overrides of preset fields (null: the preset's value).
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    optimizer: Literal["sam-adam", "adam", "adamw", "sgd"] | None = None
    weight_decay: float | None = Field(None, ge=0)
    momentum: float | None = Field(None, ge=0, le=1)
    sam_rho: float | None = Field(None, gt=0)
    scheduler: Literal["exponential", "cosine", "step", "none"] | None = None
    gamma: float | None = Field(None, gt=0, le=1)          # ExponentialLR, per epoch
    warmup_epochs: int | None = Field(None, ge=0)         # cosine: linear warm-up epochs
    loss: str | None = None                               # a criterion name (ferpipe.losses.criterion)
    sampler: Literal["rebalance", "shuffle"] | None = None
    flip_p: float | None = Field(None, ge=0, le=1)
    erase_p: float | None = Field(None, ge=0, le=1)
    erase_priors: Literal["clean", "zero"] | None = None  # see ferpipe.train.data
    priors: bool | None = None                            # false: ignore the shards' priors (ablation)
    model_kwargs: dict[str, Any] = {}                     # extra create_model kwargs, merged over the preset's
    loss_kwargs: dict[str, Any] = {}                      # extra criterion kwargs, merged over the preset's

    # Run settings (never change the result, except seed / amp / channels_last / compile).
    seed: int = Field(123, ge=0)
    num_workers: int = Field(2, ge=0)
    shuffle_buffer: int = Field(1000, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on cuda when supported, off on cpu
    # Channels-last tensors: null = the preset's choice (on for ORSANet, whose logits match NCHW's to
    # float rounding, tests/test_train_fast_defaults.py, and whose CPU step is 1.2-1.5x faster).
    channels_last: bool | None = None
    compile: bool = False                                 # torch.compile the model (falls back to eager on failure)
    fused_optimizer: bool = True                          # fused Adam/AdamW/SGD kernels (same math to float rounding, one kernel; 1.3x the CPU step)
    threads: int = Field(0, ge=0)                         # torch intra-op threads on the CPU; 0 = default
    # glibc keeps freed memory for the next step instead of handing it back (ferpipe.heap): no page
    # faults on every step's big tensors; the resident size stays at its peak. Same numbers.
    retain_heap: bool = True
    # Resume from <model_dir>/last.pt: true = must resume (error if impossible); "auto" = resume
    # when last.pt exists and its config is compatible, else start fresh; false = always fresh.
    resume: bool | Literal["auto"] = "auto"
    max_steps_per_epoch: int | None = Field(None, ge=1)   # smoke runs only
