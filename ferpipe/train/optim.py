"""Optimisers and schedulers: SAM around a base optimiser (ORSANet's release), AdamW, SGD.

SAM (Foret et al., non-adaptive, as released): with rho and gradient g at w,

1. ``first_step``: e = rho * g / ||g||_2 (norm over all parameters), w <- w + e
2. the caller recomputes the loss on the same batch at w + e and backpropagates
3. ``second_step``: w <- w - e (restore), then the base optimiser's step with the gradient
   taken at w + e.

``restore`` + ``base_optimizer.step()`` is the same as ``second_step``; the loop calls them
separately under fp16 AMP so GradScaler can unscale and skip the base step on overflow.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ferpipe.errors import ConfigError


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer_cls, rho: float = 0.05, adaptive: bool = False, **kwargs):
        if rho <= 0:
            raise ValueError(f"SAM rho must be > 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one lr for the scheduler to move
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        # Plain SAM takes the gradient's norm as it is (no ``1.0 * grad`` copy of every tensor).
        norms = [
            (torch.abs(p) * p.grad if g["adaptive"] else p.grad).norm(p=2)
            for g in self.param_groups for p in g["params"] if p.grad is not None
        ]
        if not norms:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack(norms), 2)  # one host-free reduction

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        norm = self._grad_norm()
        for g in self.param_groups:
            scale = g["rho"] / (norm + 1e-12)
            for p in g["params"]:
                if p.grad is None:
                    continue
                e_w = (torch.pow(p, 2) * p.grad if g["adaptive"] else p.grad) * scale.to(p)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                e_w = self.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        self.restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None):
        """One full SAM step with a closure that does forward + backward and returns the loss."""
        if closure is None:
            raise ValueError("SAM.step needs a closure (or call first_step / second_step)")
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        loss = closure()
        self.second_step()
        return loss

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


def _fused_kw(device: torch.device) -> dict:
    # One fused kernel per step instead of a per-tensor loop (CUDA and, in torch >= 2.4, CPU).
    return {"foreach": None, "fused": True} if device.type in ("cuda", "cpu") else {}


def build_optimizer(name: str, params, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    sam_rho: float = 0.05, device: torch.device | str = "cpu", fused: bool = False):
    """``sam-adam`` (the release: SAM around Adam, wd as Adam's L2), ``adam``, ``adamw``, ``sgd``."""
    device = torch.device(device)
    kw = _fused_kw(device) if fused else {}
    if name == "sam-adam":
        return SAM(params, torch.optim.Adam, rho=sam_rho, lr=lr, weight_decay=weight_decay, **kw)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kw)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kw)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw)
    raise ConfigError(f"train.optimizer: unknown optimiser {name!r}; use sam-adam, adam, adamw or sgd")


def build_scheduler(name: str, optimizer, *, epochs: int, gamma: float = 0.98, warmup_epochs: int = 0,
                    milestones=()):
    """Stepped once per epoch. ``exponential``: lr * gamma^epoch (the release, gamma 0.98).
    ``cosine``: linear warm-up over ``warmup_epochs`` then cosine to 0 at ``epochs``.
    ``step``: lr * gamma after each epoch in ``milestones`` (RAN, DACL)."""
    opt = getattr(optimizer, "base_optimizer", optimizer)
    if name == "step":
        if not milestones:
            raise ConfigError("train.scheduler step needs milestones (epochs after which lr *= gamma)")
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    if name == "cosine":
        def factor(e: int) -> float:  # e = epochs completed
            if e < warmup_epochs:
                return (e + 1) / (warmup_epochs + 1)
            t = (e - warmup_epochs) / max(1, epochs - warmup_epochs)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if name == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    raise ConfigError(f"train.scheduler: unknown scheduler {name!r}; use exponential, cosine, step or none")


def trainable(model: nn.Module):
    return [p for p in model.parameters() if p.requires_grad]
