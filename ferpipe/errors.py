"""Exceptions ferpipe raises on purpose. Each message says what was wrong and what to do."""

from __future__ import annotations


class FerpipeError(Exception):
    """Base class: an error ferpipe detected and explained (not a bug)."""


class ConfigError(FerpipeError):
    """params.yaml or a -S override is invalid; the message names the dotted key."""


class DataError(FerpipeError):
    """Input data is unusable as a whole: a wrong label file, an unsafe or corrupt archive."""


class UnsafeArchiveError(DataError):
    """An archive member would escape the target directory, is a device/link, or is too large."""


class ChecksumError(DataError):
    """A file's sha256 does not match the one given in params."""


class MissingCheckpointError(FerpipeError):
    """A model file named in params.yaml is absent."""

    def __init__(self, path, what: str, where: str = "models/pretrain/"):
        self.path = str(path)
        super().__init__(
            f"missing model file {self.path}: {what}. ferpipe never downloads weights; "
            f"obtain the file and place it at {self.path} (conventionally under {where}), "
            f"or point params.yaml at where it is."
        )
