"""Registry of dataset readers: ``get_reader(name)(root, **options) -> ReaderResult``.

The records types are re-exported here so callers need one import.
"""

from __future__ import annotations

from typing import Callable

from ferpipe._registry import Registry
from ferpipe.errors import DataError
from ferpipe.sources.affectnet import read_affectnet
from ferpipe.sources.ckplus import read_ckplus
from ferpipe.sources.expw import read_expw
from ferpipe.sources.ferplus import read_ferplus
from ferpipe.sources.imagefolder import read_imagefolder
from ferpipe.sources.occlufer import read_occlufer
from ferpipe.sources.rafdb import read_rafdb
from ferpipe.sources.records import Problem, RawRecord, ReaderResult
from ferpipe.sources.sfew import read_sfew

__all__ = ["READERS", "Problem", "RawRecord", "ReaderResult", "Reader", "get_reader"]

Reader = Callable[..., ReaderResult]

READERS: Registry[Reader] = Registry("dataset format", DataError, "download.format")
READERS.update(rafdb=read_rafdb, affectnet=read_affectnet, ferplus=read_ferplus, sfew=read_sfew,
               occlufer=read_occlufer, imagefolder=read_imagefolder, expw=read_expw, ckplus=read_ckplus)


def get_reader(name: str) -> Reader:
    return READERS.lookup(name)
