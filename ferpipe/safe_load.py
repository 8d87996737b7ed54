"""Reading any torch file ferpipe is given: ``torch.load(weights_only=True)`` only.

A checkpoint is data, never code. Every way a file can be bad (missing, empty, truncated, not a
pickle, a pickle that asks for a callable) becomes a :class:`FerpipeError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferpipe.errors import FerpipeError


def _numpy_globals() -> list[Any]:
    # Checkpoints written before save_atomic went plain hold numpy's RNG state as an ndarray:
    # array/scalar reconstructors and dtypes only, which build data and call nothing else.
    from numpy import dtypes  # noqa: PLC0415
    from numpy._core import multiarray  # noqa: PLC0415

    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            *(getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType"))]


def read_weights_only(path: str | os.PathLike, what: str, map_location="cpu") -> Any:
    """``torch.load(weights_only=True)`` with every way a file can be bad made a FerpipeError
    that names it; a file whose pickle asks for code is refused without running it."""
    path = Path(path)
    if not path.is_file():
        raise FerpipeError(f"no {what} at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise FerpipeError(f"{what} {path} is empty (0 bytes); was its write interrupted? "
                           f"Delete it, or rerun the stage that writes it")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        wanted = re.search(r"GLOBAL (\S+)", str(exc))
        if wanted is None:  # not a refusal: bytes that are no pickle at all
            raise FerpipeError(f"{what} {path} is corrupt or not a torch checkpoint ({first_line(exc)}); "
                               f"delete it, or rerun the stage that writes it") from exc
        raise FerpipeError(f"{what} {path} was refused: loading it would call {wanted.group(1)}, which is "
                           f"neither a tensor nor plain data. ferpipe loads checkpoints with "
                           f"torch.load(weights_only=True) and never runs code from one; use a checkpoint "
                           f"ferpipe wrote") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError,
            ImportError, TypeError, KeyError, IndexError) as exc:
        raise FerpipeError(f"{what} {path} is truncated or not a torch checkpoint ({first_line(exc)}); "
                           f"delete it, or rerun the stage that writes it") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
