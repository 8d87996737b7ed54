"""Applying a trained model to new photos, folders and videos (``ferpipe predict``), and exporting it.

    import ferpipe
    model = ferpipe.load_model("models/train/synthetic/best.pt")
    df = model.predict(["photo.jpg", "folder/"])        # one row per face
    for row in model.predict_video("clip.mp4", fps=5):  # streamed, flat memory
        ...

The preprocessing (detection, face choice, 5-point warp, priors, normalisation) is the one the
model was trained with, read from its checkpoint (:mod:`.recipe`). Names load lazily: importing
this package imports neither torch nor OpenCV.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "load_model": "ferpipe.predict.model", "FERModel": "ferpipe.predict.model",
    "Recipe": "ferpipe.predict.recipe", "RecipeError": "ferpipe.predict.recipe",
    "export_model": "ferpipe.predict.export", "run_predict": "ferpipe.predict.run",
    "PredictReport": "ferpipe.predict.run",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'ferpipe.predict' has no attribute {name!r}")
