"""The one shape of ferpipe's registries of named things that params pick: models, dataset
readers, losses, presets.

Each is a :class:`Registry`: a ``{name: entry}`` dict with registration that refuses a name
taken by another entry, a sorted (pattern-filtered) list of names, and a look-up whose unknown
name is the user's error, naming the setting and every choice.
"""

from __future__ import annotations

import fnmatch
from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """Named entries of one ``kind``; an unknown name in :meth:`lookup` raises ``error`` (a
    :class:`~ferpipe.errors.ConfigError` or :class:`~ferpipe.errors.DataError`) prefixed with
    ``setting`` (the param that holds the name). A dict, so tests can ``monkeypatch.setitem``."""

    def __init__(self, kind: str, error: type[Exception], setting: str = ""):
        super().__init__()
        self.kind, self.error, self.setting = kind, error, setting

    def register(self, name: str, entry: T) -> T:
        # Registering the same entry again is harmless (a module imported twice under two names).
        if name in self and self[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self[name] = entry
        return entry

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching the shell-style ``pattern``, sorted."""
        return sorted(n for n in self if fnmatch.fnmatch(n, pattern))

    def lookup(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            where = f"{self.setting}: " if self.setting else ""
            raise self.error(f"{where}unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None
