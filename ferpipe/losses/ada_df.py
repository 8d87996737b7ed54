"""Ada-DF's objective: CE on the auxiliary branch, KL to a fused target on the main branch, and
SCN's rank regularisation of the attention weights (as the release, taylor-xy0827/Ada-DF, computes them).

Per batch, with ``outputs`` from :class:`ferpipe.models.ada_df.AdaDF` (out1, out2, weights w)::

    CE  = cross_entropy(out1, y)
    RR  = max(0, margin - (mean(top k of w) - mean(the other B - k))),  k = floor(rr_ratio * B)
    w~  = w min-max normalised within the batch to [min_weight, max_weight]
    t   = (1 - w~) * softmax(out1) + w~ * LD[y]           (softmax(out1) is not detached)
    KL  = sum t * (log t - log_softmax(out2)) / B
    loss = a2 * CE + a1 * KL + RR
    warm-up: e <= beta: a1 = exp(-(1 - e/beta)^2), a2 = 1;  else a1 = 1, a2 = exp(-(1 - beta/e)^2)

``LD`` ([C,C], row c = the label distribution of class c) is a buffer, so it is checkpointed and
restored with the criterion. It starts at ``threshold`` on the diagonal and the rest spread
evenly; after every epoch (:meth:`AdaDFCriterion.end_epoch`) each row becomes branch 1's mean
softmax over the training samples of that class, when that mean puts at least ``threshold`` on
the class itself, and a fallback row otherwise.

The release computes the RR group sizes and the KL's divisor from the *configured* batch size, so
with ``batch_size=None`` (the actual batch size) this matches it only when every batch is full:
presets need ``drop_last=True``. ``batch_size=<int>`` reproduces the release exactly even on other
batches, e.g. SFEW's ten-crop training (16 images, 160 crops, yet 11/5 RR groups and KL / 16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .criterion import Criterion, EpochContext, register_criterion

FALLBACKS = ("fixed", "release")


def warmup_alphas(epoch: int, beta: float) -> tuple[float, float]:
    """(alpha1 weighting KL, alpha2 weighting CE) at 1-based ``epoch``: KL ramps up, then CE decays."""
    if epoch <= beta:
        return math.exp(-((1.0 - epoch / beta) ** 2)), 1.0
    return 1.0, math.exp(-((1.0 - beta / epoch) ** 2))


def initial_distributions(num_classes: int, threshold: float) -> torch.Tensor:
    """``threshold`` on the diagonal, (1 - threshold) / (C - 1) elsewhere: rows sum to 1."""
    ld = torch.full((num_classes, num_classes), (1.0 - threshold) / (num_classes - 1))
    ld.fill_diagonal_(threshold)
    return ld


def rank_regularization(weights: torch.Tensor, ratio: float = 0.7, margin: float = 0.07,
                        batch_size: int | None = None) -> torch.Tensor:
    """SCN's margin between the mean of the top ``floor(ratio * n)`` weights and the rest.

    ``n`` is ``batch_size`` (the release's configured size) or the actual number of weights. The
    top group is the ``k`` largest, the low group the ``n - k`` smallest; they partition the batch
    when n equals it.
    """
    w = weights.reshape(-1)
    n = w.numel() if batch_size is None else int(batch_size)
    if n > w.numel():
        raise ValueError(
            f"Ada-DF rank regularisation: batch of {w.numel()} is smaller than batch_size={n}; "
            f"train with drop_last=True"
        )
    k = int(n * ratio)
    if k == 0 or k == n:
        return w.new_zeros(())  # one group is empty: nothing to rank
    high = torch.topk(w, k).values.mean()
    low = torch.topk(w, n - k, largest=False).values.mean()
    return F.relu(margin - (high - low))


def fuse_targets(out1: torch.Tensor, weights: torch.Tensor, ld: torch.Tensor, target: torch.Tensor,
                 min_weight: float = 0.2, max_weight: float = 1.0) -> torch.Tensor:
    """t = (1 - w~) softmax(out1) + w~ LD[y], w~ = weights min-max scaled to [min, max] in the batch.

    Nothing is detached, as released: the KL on branch 2 also pulls branch 1 and the alpha heads.
    """
    w = weights.reshape(-1, 1)
    # Equal weights (e.g. a batch of one) would divide 0 by 0; they map to min_weight instead.
    span = (w.max() - w.min()).clamp_min(torch.finfo(w.dtype).tiny)
    w = (w - w.min()) / span * (max_weight - min_weight) + min_weight
    return (1.0 - w) * F.softmax(out1, dim=1) + w * ld[target]


def kl_to_target(out2: torch.Tensor, t: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """sum t * (log t - log_softmax(out2)) / B (0 log 0 = 0), B the actual or given batch size."""
    n = out2.shape[0] if batch_size is None else int(batch_size)
    return F.kl_div(F.log_softmax(out2, dim=1), t, reduction="sum") / n


class AdaDFCriterion(Criterion):
    """Ada-DF loss with its class-distribution table ``LD`` (a buffer) and epoch warm-up.

    Args:
        threshold: tau, the minimum own-class mean probability for a learned LD row; also the
            initial and fallback diagonal. 0.7 RAF-DB, 0.5 AffectNet / SFEW.
        beta: warm-up length in epochs (3 RAF-DB, 5 AffectNet / SFEW).
        max_weight, min_weight: range of the normalised fusion weights w~.
        rr_margin, rr_ratio: rank regularisation margin and top-group fraction.
        fallback_off_diagonal: off-diagonal value of a fallback row. ``"fixed"`` (default):
            (1 - tau) / (C - 1), so rows sum to 1. ``"release"``: the release's hard-coded
            0.4 / (C - 1), whose rows sum to tau + 0.4 (1 only when tau = 0.6).
        sharpen: None (off, as in the recipes) or a temperature T (release flag, T = 1.2): LD rows
            become LD^(1/T), renormalised. The release divides by the row sums broadcast along
            the wrong axis (column j by row j's sum); here each row is normalised by its own sum.
        alpha: fixed weights instead of the warm-up (release ``--alpha``): a1 = alpha, a2 = 1 - alpha.
        batch_size: the configured batch size, for the release's RR groups and KL divisor
            (see the module docstring); None uses each batch's own size.
    """

    def __init__(self, num_classes: int, threshold: float = 0.7, beta: float = 3, max_weight: float = 1.0,
                 min_weight: float = 0.2, rr_margin: float = 0.07, rr_ratio: float = 0.7,
                 fallback_off_diagonal: str = "fixed", sharpen: float | None = None,
                 alpha: float | None = None, batch_size: int | None = None):
        super().__init__(num_classes)
        if fallback_off_diagonal not in FALLBACKS:
            raise ValueError(f"fallback_off_diagonal must be one of {FALLBACKS}, got {fallback_off_diagonal!r}")
        if self.num_classes < 2:
            raise ValueError("Ada-DF needs at least 2 classes")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.threshold = float(threshold)
        self.beta = beta
        self.max_weight = float(max_weight)
        self.min_weight = float(min_weight)
        self.rr_margin = float(rr_margin)
        self.rr_ratio = float(rr_ratio)
        self.fallback_off_diagonal = fallback_off_diagonal
        self.sharpen = sharpen
        self.alpha = alpha
        self.batch_size = batch_size
        self.register_buffer("LD", self._sharpened(initial_distributions(self.num_classes, self.threshold)))
        self.last_terms: dict[str, torch.Tensor] = {}

    def alphas(self) -> tuple[float, float]:
        """(a1, a2) at the current epoch."""
        if self.alpha is not None:
            return float(self.alpha), 1.0 - float(self.alpha)
        return warmup_alphas(self.epoch, self.beta)

    def forward(self, outputs, target):
        out1, out2 = outputs["out1"].float(), outputs["out2"].float()
        weights = outputs["weights"].float()
        ce = F.cross_entropy(out1, target)
        rr = rank_regularization(weights, self.rr_ratio, self.rr_margin, self.batch_size)
        t = fuse_targets(out1, weights, self.LD.to(out1.device), target, self.min_weight, self.max_weight)
        kl = kl_to_target(out2, t, self.batch_size)
        a1, a2 = self.alphas()
        self.last_terms = {"ce": ce.detach(), "kl": kl.detach(), "rr": rr.detach()}
        return a2 * ce + a1 * kl + rr

    def _fallback_row(self, c: int) -> torch.Tensor:
        off = 0.4 if self.fallback_off_diagonal == "release" else 1.0 - self.threshold
        row = torch.full((self.num_classes,), off / (self.num_classes - 1))
        row[c] = self.threshold
        return row

    def _sharpened(self, ld: torch.Tensor) -> torch.Tensor:
        if self.sharpen is None:
            return ld
        ld = ld.pow(1.0 / float(self.sharpen))
        return ld / ld.sum(dim=1, keepdim=True)

    @torch.no_grad()
    def update_distributions(self, probs_sum: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """New LD from per-class sums of branch-1 softmax ([C,C]) and sample counts ([C])."""
        ld = torch.empty(self.num_classes, self.num_classes)
        for c in range(self.num_classes):
            mean = probs_sum[c] / counts[c] if counts[c] > 0 else None  # an absent class falls back
            if mean is not None and mean[c] >= self.threshold:
                ld[c] = mean
            else:
                ld[c] = self._fallback_row(c)
        return self._sharpened(ld)

    @torch.no_grad()
    def end_epoch(self, ctx: EpochContext) -> None:
        """Re-estimate LD from branch 1 over the training split (training augmentations), in eval mode."""
        model = ctx.model
        was_training = model.training
        model.eval()
        probs_sum = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64, device=ctx.device)
        counts = torch.zeros(self.num_classes, dtype=torch.float64, device=ctx.device)
        try:
            for image, priors, target in ctx.train_batches():
                if image.dim() == 5:  # stacked crops [B,n,3,H,W]: every crop is a sample, as released
                    n = image.shape[1]
                    image = image.flatten(0, 1)
                    target = target.repeat_interleave(n)
                probs = F.softmax(model(image, *priors)["out1"].double(), dim=1)
                probs_sum.index_add_(0, target, probs)
                counts += torch.bincount(target, minlength=self.num_classes).to(counts)
        finally:
            model.train(was_training)
        new = self.update_distributions(probs_sum.cpu(), counts.cpu())
        self.LD.copy_(new.to(self.LD))


register_criterion("ada_df", AdaDFCriterion)
