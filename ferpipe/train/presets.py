"""Named training recipes (registry style) and the resolved config a run uses.

A preset names the model (``create_model`` name + kwargs), the loss schedule, the optimiser,
scheduler, batch, epochs and augmentation. ``train.*`` params override fields
(:func:`resolve`). The trainer never looks at model names: what varies between methods lives
here, in ``model_kwargs``, ``model_kwargs_from_data`` (kwargs filled from what the shards hold,
e.g. the prior kind and channel counts), the ``loss`` (a criterion name, see
:mod:`ferpipe.losses.criterion`) with its ``loss_kwargs``, and the input recipe (``priors``,
crops, RandAugment). Preset names are ``<model>-cpu`` (the embedded default's CPU scale) and
``<model>-release`` / ``orsanet-large`` (the published recipe).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ferpipe._registry import Registry
from ferpipe.errors import ConfigError
from ferpipe.losses.criterion import create_criterion

from . import data as _data

def check_loss(name: str, num_classes: int = 7, loss_kwargs: dict[str, Any] | None = None) -> None:
    """Fail early (at config time) on an unknown loss name or a wrong loss kwarg."""
    create_criterion(name, num_classes, **(loss_kwargs or {}))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run's result (recorded in every checkpoint)."""

    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # create_model kwarg -> ShardSet.facts key (prior_kind, image_size, num_classes,
    # lmk_channels, seg_channels); facts absent from the shards are not passed.
    model_kwargs_from_data: dict[str, str] = field(default_factory=lambda: {"num_classes": "num_classes"})
    img_size: int = 224
    mean: tuple[float, float, float] = _data.IMAGENET_MEAN
    std: tuple[float, float, float] = _data.IMAGENET_STD
    loss: str = "ce"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adamw"        # sam-adam | adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9           # sgd only
    sam_rho: float = 0.05
    scheduler: str = "exponential"  # exponential | cosine | step | none
    gamma: float = 0.98             # exponential: per epoch; step: the factor at each milestone
    milestones: tuple[int, ...] = ()  # step: epochs after which lr *= gamma
    warmup_epochs: int = 0
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 64
    sampler: str = "rebalance"      # rebalance | shuffle
    flip_p: float = _data.FLIP_P
    erase_p: float = _data.ERASE_P
    erase_priors: str = "clean"     # clean | zero
    priors: bool = True             # feed the shards' cached priors to the model (if they hold any)
    resize_to: int | None = None    # decode at this size before cropping (DACL: 256 -> 224 crops)
    train_crop: str = "none"        # none | five | ten (see ferpipe.train.data.Augment)
    test_crop: str = "none"         # none | center | ten
    randaugment: str | None = None  # timm RandAugment config string (Ada-DF: rand-m5-n3-mstd0.5)
    drop_last: bool = False         # drop the last partial training batch (Ada-DF's rank regulariser)
    seed: int = 123
    shuffle_buffer: int = _data.SHUFFLE_BUFFER
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    max_steps_per_epoch: int | None = None
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"], d["milestones"] = list(self.mean), list(self.std), list(self.milestones)
        return d


# Fields that may differ between a checkpoint and the run resuming it (they do not change what
# the finished run computes, or only extend it).
RESUME_FREE_FIELDS = ("epochs",)

_PRESETS: Registry[TrainConfig] = Registry("preset", ConfigError, "train.preset")


def register_preset(name: str, cfg: TrainConfig) -> TrainConfig:
    # A fresh copy each time, so registering a name twice is always refused.
    return _PRESETS.register(name, dataclasses.replace(cfg, preset=name))


def list_presets() -> list[str]:
    return _PRESETS.names()


def get_preset(name: str) -> TrainConfig:
    return _PRESETS.lookup(name)


_ORSANET_FROM_DATA = {"num_classes": "num_classes", "priors": "prior_kind",
                      "lmk_dim": "lmk_channels", "seg_dim": "seg_channels", "img_size": "_img_size"}

# The release (Wenyuzhy/ORSANet-master train.py): 224 input, SAM(rho 0.05) around Adam at 4e-5 (RAF-DB),
# ExponentialLR 0.98, batch 20 (val 50), the LSCE->DARE schedule, class rebalancing, erasing.
register_preset("orsanet-large", TrainConfig(
    model="orsanet", model_kwargs={"variant": "large"}, model_kwargs_from_data=_ORSANET_FROM_DATA,
    img_size=224, loss="orsanet", optimizer="sam-adam", lr=4e-5, weight_decay=0.0, sam_rho=0.05,
    scheduler="exponential", gamma=0.98, epochs=400, batch_size=20, eval_batch_size=50,
    sampler="rebalance", flip_p=0.5, erase_p=0.5, erase_priors="clean", seed=123, channels_last=True,
))

# The architecture's shape at CPU scale: 112 input, nearest-halved to 56 for a 3-stage IR trunk
# (as the release halves 224 -> 112; widths 24/48/96, units 1/2/2) giving the 7x7 map, 49
# tokens of width 96, a depth-2 pyramid, small prior encoders (widths 8/16/32). Plain AdamW (SAM would double the step cost) with cosine decay; the
# release's loss schedule, rebalancing, flip and erasing are kept. On the embedded synthetic set
# 16 epochs: with 10, on ferpipe's learned priors, val loss was still falling at the last epoch.
# (1,512 train / 168 val / 420 test, GT-aligned maps priors at 112) 10 epochs gave val 94.6%
# (best epoch 9), clean test 90.7%, in 980 s on 1 thread of a shared, heavily loaded 2-core box.
register_preset("orsanet-cpu", TrainConfig(
    model="orsanet",
    model_kwargs={"variant": "small", "depth": 2, "embed_dim": 96, "num_heads": 4, "ir_widths": (24, 48, 96),
                  "ir_units": (1, 2, 2), "ir_stem_width": 24, "ir_input_size": 56, "spade_hidden": 32,
                  "encoder_widths": (8, 16, 32), "drop_path_rate": 0.05},
    model_kwargs_from_data=_ORSANET_FROM_DATA,
    img_size=112, loss="orsanet", optimizer="adamw", lr=1e-3, weight_decay=0.05,
    scheduler="cosine", warmup_epochs=1, epochs=16, batch_size=32, eval_batch_size=128,
    sampler="rebalance", flip_p=0.5, erase_p=0.5, erase_priors="clean", seed=123, channels_last=True,
))


_OVERRIDABLE = ("epochs", "lr", "batch_size", "eval_batch_size", "optimizer", "weight_decay", "momentum",
                "sam_rho", "scheduler", "gamma", "warmup_epochs", "loss", "sampler", "flip_p", "erase_p",
                "erase_priors", "priors", "max_steps_per_epoch", "channels_last")
_RUN_FIELDS = ("seed", "shuffle_buffer", "amp", "compile")


def preset_name(params) -> str:
    """``train.preset``, or ``<train.model>-cpu`` when no preset is named."""
    return params.preset or f"{params.model}-cpu"


def resolve(params) -> TrainConfig:
    """The preset (``train.preset`` or ``<train.model>-cpu``) with every non-null override applied."""
    if not params.preset and preset_name(params) not in _PRESETS:
        models = sorted({c.model for c in _PRESETS.values()})
        raise ConfigError(f"train.model: no recipe for model {params.model!r} (no preset "
                          f"{preset_name(params)!r}); models with presets: {', '.join(models)}")
    cfg = get_preset(preset_name(params))
    if params.model and params.preset and cfg.model != params.model:
        raise ConfigError(f"train.preset {params.preset!r} trains model {cfg.model!r} but train.model is "
                          f"{params.model!r}; set one of them (presets: {', '.join(list_presets())})")
    changes = {k: getattr(params, k) for k in _OVERRIDABLE if getattr(params, k) is not None}
    changes.update({k: getattr(params, k) for k in _RUN_FIELDS})
    if params.model_kwargs:
        changes["model_kwargs"] = {**cfg.model_kwargs, **params.model_kwargs}
    if params.loss_kwargs:
        changes["loss_kwargs"] = {**(cfg.loss_kwargs if changes.get("loss", cfg.loss) == cfg.loss else {}),
                                  **params.loss_kwargs}
    cfg = dataclasses.replace(cfg, **changes)
    check_loss(cfg.loss, loss_kwargs=cfg.loss_kwargs)
    return cfg


def model_kwargs(cfg: TrainConfig, facts: dict[str, Any]) -> dict[str, Any]:
    """create_model kwargs: the preset's, plus those the shards determine."""
    facts = {**facts, "_img_size": cfg.img_size}
    if not cfg.priors:
        facts["prior_kind"] = "none"
    out = dict(cfg.model_kwargs)
    for kwarg, fact in cfg.model_kwargs_from_data.items():
        if facts.get(fact) is not None and kwarg not in out:
            out[kwarg] = facts[fact]
    return out


# --- the other methods (RAN, DACL, Ada-DF, MFER), and the plain-CE baselines ----------------------------
# "<model>-release" is the published recipe; "<model>-cpu" keeps the method (architecture, loss,
# input recipe) at the embedded default's CPU scale: from scratch (no pretrained trunk on the
# machine), 112 px (RAN 64 px: it runs its trunk on 8 crops), a few epochs: each -cpu preset trains in
# about 5-9 minutes on 2 cores (see the README's method table).
# Pretrained trunks are passed as train.model_kwargs.checkpoint (see each model's docstring).
_IMAGE_ONLY = {"num_classes": "num_classes"}
_IMAGE_SIZE = {"num_classes": "num_classes", "img_size": "_img_size"}
_RAFDB_MEAN, _RAFDB_STD = (0.5752, 0.4495, 0.4012), (0.2086, 0.1911, 0.1827)
_UNIT_MEAN, _UNIT_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # ToTensor only: inputs in [0, 1]

# RAN, the AffectNet on-the-fly script: 7 released boxes + the whole face through one ResNet-18,
# softmaxed attention, CE + region-biased loss (delta 0.02); [0,1] inputs, no flip or erasing
# (CaffeCrop only resizes). SGD 0.015 m 0.9 wd 1e-4, batch 256, 20 epochs, lr x0.1 after 30/50/80%
# of the epochs, oversampling. (FERPlus script: lr 0.1, batch 128, 60 epochs, delta 0.1.)
register_preset("ran-release", TrainConfig(
    model="ran", model_kwargs={"crops": "affectnet", "attention": "softmax"}, model_kwargs_from_data=_IMAGE_ONLY,
    priors=False, img_size=224, mean=_UNIT_MEAN, std=_UNIT_STD, loss="ran", loss_kwargs={"delta": 0.02},
    optimizer="sgd", lr=0.015, momentum=0.9, weight_decay=1e-4, scheduler="step", gamma=0.1, milestones=(6, 10, 16),
    epochs=20, batch_size=256, eval_batch_size=64, sampler="rebalance", flip_p=0.0, erase_p=0.0,
))
register_preset("ran-cpu", TrainConfig(
    model="ran", model_kwargs={"crops": "affectnet", "attention": "softmax"}, model_kwargs_from_data=_IMAGE_ONLY,
    priors=False, img_size=64, mean=_UNIT_MEAN, std=_UNIT_STD, loss="ran", loss_kwargs={"delta": 0.02},
    optimizer="adamw", lr=1e-3, weight_decay=0.05, scheduler="cosine", warmup_epochs=1,
    epochs=4, batch_size=32, eval_batch_size=64, sampler="rebalance", flip_p=0.0, erase_p=0.0,
))

# DACL: Resize 256 -> one of FiveCrop's 224 crops -> flip, RAF-DB statistics; test Resize 256 ->
# CenterCrop 224. CE + 0.01 sparse center loss, centers moved at alpha 0.5 by the criterion.
# SGD 0.01 m 0.9 wd 5e-4, StepLR(20, 0.1), 60 epochs, batch 64.
register_preset("dacl-release", TrainConfig(
    model="dacl", model_kwargs={"attention_hidden": (3584, 512, 64)}, model_kwargs_from_data=_IMAGE_SIZE,
    priors=False, img_size=224, resize_to=256, train_crop="five", test_crop="center", mean=_RAFDB_MEAN,
    std=_RAFDB_STD, loss="dacl", loss_kwargs={"lamb": 0.01, "alpha": 0.5}, optimizer="sgd", lr=0.01,
    momentum=0.9, weight_decay=5e-4, scheduler="step", gamma=0.1, milestones=(20, 40), epochs=60,
    batch_size=64, eval_batch_size=64, sampler="shuffle", flip_p=0.5, erase_p=0.0,
))
register_preset("dacl-cpu", TrainConfig(  # drop_last: the attention's BatchNorm1d fails on a batch of 1
    model="dacl", model_kwargs={}, model_kwargs_from_data=_IMAGE_SIZE, priors=False, img_size=112, resize_to=128,
    train_crop="five", test_crop="center", mean=_RAFDB_MEAN, std=_RAFDB_STD, loss="dacl",
    loss_kwargs={"lamb": 0.01, "alpha": 0.5}, optimizer="adamw", lr=1e-3, weight_decay=0.05, scheduler="cosine",
    warmup_epochs=1, epochs=8, batch_size=32, eval_batch_size=128, sampler="shuffle", flip_p=0.5, erase_p=0.0,
    drop_last=True,
))

# Ada-DF, RAF-DB: Resize -> RandAugment rand-m5-n3-mstd0.5 -> flip -> normalise -> erasing;
# tau 0.7, beta 3; Adam 1e-3, ExponentialLR 0.9, 75 epochs, batch 64 with full batches only (the
# rank regulariser's groups come from the configured batch size). AffectNet-7: tau 0.5, beta 5 and
# a class-balanced down-sampler (not "rebalance"). SFEW: see ada_df-sfew.
register_preset("ada_df-release", TrainConfig(
    model="ada_df", model_kwargs={}, model_kwargs_from_data=_IMAGE_ONLY, priors=False, img_size=224,
    loss="ada_df", loss_kwargs={"threshold": 0.7, "beta": 3}, optimizer="adam", lr=1e-3, scheduler="exponential",
    gamma=0.9, epochs=75, batch_size=64, eval_batch_size=64, sampler="shuffle", flip_p=0.5, erase_p=0.5,
    randaugment="rand-m5-n3-mstd0.5", drop_last=True,
))
# SFEW: Resize 256 -> TenCrop 224, each crop RandAugment rand-m3-n5-mstd0.5, crops stacked into the
# batch (16 images -> 160 crops; the criterion's groups and KL divisor use 16, as released), logits
# averaged over the ten crops at test.
register_preset("ada_df-sfew", TrainConfig(
    model="ada_df", model_kwargs={}, model_kwargs_from_data=_IMAGE_ONLY, priors=False, img_size=224, resize_to=256,
    train_crop="ten", test_crop="ten", loss="ada_df", loss_kwargs={"threshold": 0.5, "beta": 5, "batch_size": 16},
    optimizer="adam", lr=1e-3, scheduler="exponential", gamma=0.9, epochs=75, batch_size=16, eval_batch_size=16,
    sampler="shuffle", flip_p=0.5, erase_p=0.5, randaugment="rand-m3-n5-mstd0.5", drop_last=True,
))
register_preset("ada_df-cpu", TrainConfig(  # freeze_stem off: the release freezes a pretrained stem
    model="ada_df", model_kwargs={"freeze_stem": False}, model_kwargs_from_data=_IMAGE_ONLY, priors=False,
    img_size=112, loss="ada_df", loss_kwargs={"threshold": 0.7, "beta": 3}, optimizer="adam", lr=1e-3,
    scheduler="exponential", gamma=0.9, epochs=6, batch_size=32, eval_batch_size=128, sampler="shuffle",
    flip_p=0.5, erase_p=0.5, randaugment="rand-m5-n3-mstd0.5", drop_last=True,
))

# MFER: Resize 224 + ImageNet normalisation only (no flip, no erasing); sum of LSCE(0.1) over the
# three heads (the DSF loss was never released and is not shipped); AdamW 1e-3 (torch's default
# wd 0.01), ExponentialLR 0.95, 100 epochs, batch 32.
register_preset("mfer-release", TrainConfig(
    model="mfer", model_kwargs={"variant": "base", "drop_path_rate": 0.25}, model_kwargs_from_data=_IMAGE_ONLY,
    priors=False, img_size=224, loss="mfer", loss_kwargs={"smoothing": 0.1}, optimizer="adamw", lr=1e-3,
    weight_decay=0.01, scheduler="exponential", gamma=0.95, epochs=100, batch_size=32, eval_batch_size=64,
    sampler="shuffle", flip_p=0.0, erase_p=0.0,
))
register_preset("mfer-cpu", TrainConfig(
    model="mfer", model_kwargs={"variant": "tiny", "drop_path_rate": 0.1}, model_kwargs_from_data=_IMAGE_ONLY,
    priors=False, img_size=112, loss="mfer", loss_kwargs={"smoothing": 0.1}, optimizer="adamw", lr=1e-3,
    weight_decay=0.01, scheduler="cosine", warmup_epochs=1, epochs=10, batch_size=32, eval_batch_size=128,
    sampler="shuffle", flip_p=0.0, erase_p=0.0,
))

# Baselines with plain CE, each on the input recipe of the method it is a baseline for: ResNet-18
# (RAN / DACL / Ada-DF's trunk) and IR-50 (ORSANet's trunk; the CPU one is orsanet-cpu's trunk and
# recipe, so the pair isolates what the priors and attention add).
register_preset("resnet18-release", TrainConfig(
    model="resnet18", model_kwargs={}, model_kwargs_from_data=_IMAGE_ONLY, priors=False, img_size=224,
    loss="ce", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, scheduler="step", gamma=0.1,
    milestones=(20, 40), epochs=60, batch_size=64, eval_batch_size=64, sampler="shuffle", flip_p=0.5, erase_p=0.0,
))
register_preset("resnet18-cpu", TrainConfig(
    model="resnet18", model_kwargs={}, model_kwargs_from_data=_IMAGE_ONLY, priors=False, img_size=112, loss="ce",
    optimizer="adamw", lr=1e-3, weight_decay=0.05, scheduler="cosine", warmup_epochs=1, epochs=8, batch_size=32,
    eval_batch_size=128, sampler="rebalance", flip_p=0.5, erase_p=0.5,
))
register_preset("ir50_baseline-release", TrainConfig(
    model="ir50_baseline", model_kwargs={"input_size": 112}, model_kwargs_from_data=_IMAGE_ONLY, priors=False,
    img_size=224, loss="ce", optimizer="sam-adam", lr=4e-5, sam_rho=0.05, scheduler="exponential", gamma=0.98,
    epochs=400, batch_size=20, eval_batch_size=50, sampler="rebalance", flip_p=0.5, erase_p=0.5,
))
register_preset("ir50_baseline-cpu", TrainConfig(
    model="ir50_baseline", model_kwargs={"widths": (24, 48, 96), "units": (1, 2, 2), "stem_width": 24,
                                         "input_size": 56},
    model_kwargs_from_data=_IMAGE_ONLY, priors=False, img_size=112, loss="ce", optimizer="adamw", lr=1e-3,
    weight_decay=0.05, scheduler="cosine", warmup_epochs=1, epochs=16, batch_size=32, eval_batch_size=128,
    sampler="rebalance", flip_p=0.5, erase_p=0.5,
))
