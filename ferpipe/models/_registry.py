"""Model registry, timm style: each architecture registers a factory under a name.

The trainer and the CLI build every network through :func:`ferpipe.models.create_model`, so
nothing outside this package branches on model names.
"""

from __future__ import annotations

import fnmatch
from typing import Callable

from ferpipe.errors import ConfigError

_MODELS: dict[str, Callable] = {}


def register_model(fn: Callable | None = None, *, name: str | None = None):
    """Register a factory ``fn(**cfg) -> nn.Module`` under ``name`` (default: its __name__).

    Usable bare (``@register_model``) or with a name (``@register_model(name="orsanet")``).
    """

    def _add(f: Callable) -> Callable:
        key = name or f.__name__
        if key in _MODELS and _MODELS[key] is not f:
            raise ValueError(f"model {key!r} is registered twice")
        _MODELS[key] = f
        return f

    return _add(fn) if fn is not None else _add


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODELS


def model_entrypoint(name: str) -> Callable:
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}"
        ) from None
