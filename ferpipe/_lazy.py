"""Lazy package exports (PEP 562), so that importing one light submodule of a package (its
``params``, say) does not import the package's heavy ones (torch, scikit-learn, OpenCV)."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping, Sequence

# submodule (relative to the package) -> the names it exports; a (public, attribute) pair
# exports an attribute under another name.
Exports = Mapping[str, Sequence["str | tuple[str, str]"]]


def lazy_exports(package: str, exports: Exports) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: each exported name imports its
    submodule on first use and is then cached on the package."""
    where: dict[str, tuple[str, str]] = {}
    for module, names in exports.items():
        for entry in names:
            public, attr = (entry, entry) if isinstance(entry, str) else entry
            where[public] = (module, attr)

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook PEP 562 names
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = where[name]
        value = getattr(importlib.import_module(f"{package}.{module}"), attr)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__, sorted(where)
