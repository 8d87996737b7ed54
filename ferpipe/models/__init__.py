"""Networks, built through one entry point: ``create_model(name, **cfg)``.

Importing this package imports every model module, which registers its factories.
``list_models()`` shows what is available.
"""

from __future__ import annotations

from torch import nn

from ._registry import is_model, list_models, model_entrypoint, register_model

# Model modules register themselves on import. Add new architectures here.
from . import ir50, mobilefacenet, segface, orsanet, resnet18, ran, dacl  # noqa: E402,F401  (registration)
from . import ada_df, mfer, ir50_baseline  # noqa: E402,F401  (registration)


def create_model(name: str, **cfg) -> nn.Module:
    """Build the registered model ``name`` with keyword config ``cfg``.

    ``checkpoint=<path>`` (where a factory accepts it) loads weights in that model's own
    checkpoint layout; see each factory's docstring.
    """
    return model_entrypoint(name)(**cfg)


__all__ = ["create_model", "list_models", "register_model", "is_model"]
