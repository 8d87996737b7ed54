"""Lazy package exports (PEP 562): a package's public names load their submodule on first use.

Reading params.yaml imports every stage's ``params`` module, and with it each package's
``__init__``; eager re-exports there pulled torch, torchvision, scikit-learn and the model zoo into
every command (seconds of start-up for ``ferpipe align``, which needs none of the model zoo).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to
    ``"submodule"`` (same name there) or ``"submodule:attr"``."""

    def __getattr__(name: str) -> Any:
        try:
            target = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(f"{package}.{module}"), attr or name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
