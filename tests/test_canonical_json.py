"""shards.canonical_json's fast paths (exact builtin types first) give the bytes of the plain
recursive normalisation: every shard's metadata goes through it, and shards must stay byte-identical."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from ferpipe import shards


def _reference(x: Any) -> Any:
    if x is None or isinstance(x, (str, bool, int)):
        return x
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, Mapping):
        return {str(k): _reference(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_reference(v) for v in x]
    if hasattr(x, "tolist"):
        return _reference(x.tolist())
    return str(x)


def test_canonical_json_equals_the_plain_normalisation():
    cases = [
        {"boxes": [[1.25, 2.0, float("nan"), 4.0]], "scores": (0.99, np.float32(0.5)), "n": np.int64(3),
         "points": np.arange(6, dtype=np.float32).reshape(3, 2), 7: "seven", "ok": True, "none": None,
         "nested": OrderedDict(a=[float("nan"), {"b": (1, 2.5)}]), "big": 1e-300, "neg": -0.0},
        [float("nan")] * 3, (np.float64(2.5), np.float64("nan")), [], {},
    ]
    for c in cases:
        want = json.dumps(_reference(c), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()
        assert shards.canonical_json(c) == want
