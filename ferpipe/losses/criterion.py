"""The trainer's view of a method's loss: a :class:`Criterion` module, built by name.

Every method's training objective is a ``Criterion``: an ``nn.Module`` called as
``criterion(outputs, target)`` where ``outputs`` is whatever the model's forward returned (a
logits tensor, or a dict holding ``"logits"`` plus the method's extra tensors). A criterion may
carry state the trainer must not know about (DACL's class centers, Ada-DF's class-distribution
table): it lives in the module's buffers / parameters, so it is checkpointed with
``state_dict()`` and restored on resume. Trainable parameters (``requires_grad``) are optimised
with the model's; hand-updated state is changed in :meth:`Criterion.after_step`.

The trainer calls, per epoch::

    criterion.set_epoch(epoch)                      # 1-based; schedules read self.epoch
    for batch: loss = criterion(model(x), y); backward; optimiser step; criterion.after_step()
    criterion.end_epoch(ctx)                        # ctx: EpochContext (e.g. a pass over train)

Criteria are registered by name (``register_criterion``) and built with
``create_criterion(name, num_classes=C, **loss_kwargs)``; presets name them in ``loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ferpipe._registry import Registry
from ferpipe.errors import ConfigError

from .schedule import orsanet_loss_schedule


def logits_of(outputs: Any) -> torch.Tensor:
    """The prediction a model's forward returned: the tensor itself, or ``outputs["logits"]``."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and "logits" in outputs:
        return outputs["logits"]
    raise TypeError(f"a model must return logits or a dict with 'logits'; got {type(outputs).__name__}")


@dataclass
class EpochContext:
    """What :meth:`Criterion.end_epoch` may use: the model and a fresh pass over train."""

    epoch: int
    model: nn.Module
    device: torch.device
    num_classes: int
    # A fresh iterator of (image, priors tuple, target) batches on ``device`` over the training
    # split, with the training augmentations, in a fixed (seeded) order, each sample once.
    train_batches: Callable[[], Iterator[tuple[torch.Tensor, tuple, torch.Tensor]]]


class Criterion(nn.Module):
    """Base class: ``forward(outputs, target) -> scalar``; override the hooks as needed."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        if epoch < 1:
            raise ValueError(f"epochs are 1-based, got {epoch}")
        self.epoch = int(epoch)

    def after_step(self) -> None:
        """Called after every optimiser step (hand-written state updates go here)."""

    def end_epoch(self, ctx: EpochContext) -> None:
        """Called after each training epoch, before validation."""


class ScheduleCriterion(Criterion):
    """A stateless ``epoch -> loss(logits, target)`` schedule (ORSANet's, plain CE)."""

    def __init__(self, num_classes: int, schedule: Callable[..., Callable], **schedule_kwargs):
        super().__init__(num_classes)
        self._schedule = schedule
        self._kwargs = schedule_kwargs
        self._fn = schedule(1, **schedule_kwargs)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._fn = self._schedule(self.epoch, **self._kwargs)

    def forward(self, outputs, target):
        return self._fn(logits_of(outputs).float(), target)


def _ce_schedule(epoch: int, label_smoothing: float = 0.0):
    return lambda logits, target: F.cross_entropy(logits, target, label_smoothing=label_smoothing)


_CRITERIA: Registry[Callable[..., Criterion]] = Registry("loss", ConfigError, "train.loss")


def register_criterion(name: str, factory: Callable[..., Criterion]) -> Callable[..., Criterion]:
    """Register ``factory(num_classes, **loss_kwargs) -> Criterion`` under ``name``."""
    return _CRITERIA.register(name, factory)


def list_criteria() -> list[str]:
    return _CRITERIA.names()


def create_criterion(name: str, num_classes: int, **loss_kwargs) -> Criterion:
    factory = _CRITERIA.lookup(name)
    try:
        return factory(num_classes, **loss_kwargs)
    except TypeError as exc:
        raise ConfigError(f"train.loss_kwargs for {name!r}: {exc}") from None


register_criterion("orsanet", lambda num_classes, **kw: ScheduleCriterion(num_classes, orsanet_loss_schedule, **kw))
register_criterion("ce", lambda num_classes, **kw: ScheduleCriterion(num_classes, _ce_schedule, **kw))
