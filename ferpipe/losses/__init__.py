"""Losses: ORSANet's DARE and label-smoothing CE, and its epoch schedule."""

from .dare import DARELoss, dare_loss
from .label_smoothing import LabelSmoothingCE
from .schedule import orsanet_loss_schedule
from .ran import RANCriterion, RegionBiasedLoss, region_biased_loss
from .dacl import DACLCriterion, center_update, sparse_center_loss
from .ada_df import AdaDFCriterion
from .mfer import MFERCriterion

__all__ = ["DARELoss", "dare_loss", "LabelSmoothingCE", "orsanet_loss_schedule",
           "RANCriterion", "RegionBiasedLoss", "region_biased_loss",
           "DACLCriterion", "center_update", "sparse_center_loss"]
__all__ += ["AdaDFCriterion", "MFERCriterion"]
