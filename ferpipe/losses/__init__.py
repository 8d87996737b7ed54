"""Losses: ORSANet's DARE and label-smoothing CE, and its epoch schedule."""

from .dare import DARELoss, dare_loss
from .label_smoothing import LabelSmoothingCE
from .schedule import orsanet_loss_schedule

__all__ = ["DARELoss", "dare_loss", "LabelSmoothingCE", "orsanet_loss_schedule"]
