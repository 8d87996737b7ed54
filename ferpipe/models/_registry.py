"""Model registry, timm style: each architecture registers a factory under a name.

The trainer and the CLI build every network through :func:`ferpipe.models.create_model`, so
nothing outside this package branches on model names.
"""

from __future__ import annotations

from typing import Callable

from ferpipe._registry import Registry
from ferpipe.errors import ConfigError

_MODELS: Registry[Callable] = Registry("model", ConfigError)


def register_model(fn: Callable | None = None, *, name: str | None = None):
    """Register a factory ``fn(**cfg) -> nn.Module`` under ``name`` (default: its __name__).

    Usable bare (``@register_model``) or with a name (``@register_model(name="orsanet")``).
    """

    def _add(f: Callable) -> Callable:
        return _MODELS.register(name or f.__name__, f)

    return _add(fn) if fn is not None else _add


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return _MODELS.names(pattern)


def is_model(name: str) -> bool:
    return name in _MODELS


def model_entrypoint(name: str) -> Callable:
    return _MODELS.lookup(name)
