"""A trained model as a tool: ``load_model(checkpoint)`` -> :class:`FERModel`.

``FERModel.predict(images_or_paths)`` returns a pandas DataFrame with one row per face (or one
row saying why there is none); ``predict_video(path)`` yields the rows of a video frame by frame;
``iter_rows(paths)`` streams rows for files, folders and videos alike (what ``ferpipe predict``
writes). The network runs in PyTorch from a training checkpoint, or from an export
(``ferpipe export``): ONNX through onnxruntime, TorchScript through ``torch.jit.load``; either
way the preprocessing is the recipe the model was trained with (:mod:`ferpipe.predict.recipe`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ferpipe.errors import FerpipeError
from ferpipe.predict.preprocess import POINT_NAMES, Face, FrameFaces, Preprocessor
from ferpipe.predict.recipe import Recipe, RecipeError, recipe_from_checkpoint
from ferpipe.predict import video as V

CARD_JSON = "model_card.json"
# Row columns before the per-class probabilities (named by the label map) and the top class.
BASE_COLUMNS = (["source", "kind", "frame", "timestamp", "face", "status", "detail", "chosen", "method",
                 "box_x1", "box_y1", "box_x2", "box_y2", "score"]
                + [f"{n}_{a}" for n in POINT_NAMES for a in ("x", "y")])
_INT_COLUMNS = ("frame", "face")


# --- runners: (image, priors) -> logits -----------------------------------------------------------


class _TorchRunner:
    def __init__(self, model, device):
        self.model, self.device = model, device

    def __call__(self, image, priors) -> np.ndarray:
        import torch  # noqa: PLC0415

        from ferpipe.train.loop import predict_logits  # noqa: PLC0415

        with torch.inference_mode():
            pri = [p.to(self.device).float() if p.is_floating_point() else p.to(self.device) for p in priors]
            return predict_logits(self.model, image.to(self.device), pri).float().cpu().numpy()


class _OnnxRunner:
    def __init__(self, path: Path, input_names: Sequence[str], threads: int = 0):
        import onnxruntime as ort  # noqa: PLC0415

        so = ort.SessionOptions()
        if threads > 0:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.names = list(input_names)

    def __call__(self, image, priors) -> np.ndarray:
        feeds = {n: t.numpy() for n, t in zip(self.names, (image, *priors))}
        for n in list(feeds):
            if feeds[n].dtype == np.float16:
                feeds[n] = feeds[n].astype(np.float32)
        return self.session.run(None, feeds)[0]


def build_network(ckpt: dict[str, Any], device: str = "cpu"):
    """The checkpoint's network, eval mode. Pretrained-weight paths in ``model_kwargs`` are dropped:
    every weight comes from the checkpoint's state dict (loaded strictly)."""
    from ferpipe.models import create_model  # noqa: PLC0415
    from ferpipe.train.checkpoint import unwrap  # noqa: PLC0415
    from ferpipe.devices import resolve_device  # noqa: PLC0415

    kwargs = {k: v for k, v in (ckpt.get("model_kwargs") or {}).items()
              if not (k == "checkpoint" or k.endswith("_checkpoint"))}
    model = create_model(ckpt["model_name"], **kwargs)
    unwrap(model).load_state_dict(ckpt["model"])
    dev = resolve_device(device, "--device")
    return model.to(dev).eval(), dev


def _models_dir_for(path: Path) -> Path:
    """The ``models`` directory a checkpoint lives under (models/train/<dataset>/best.pt), else ./models."""
    for parent in path.resolve().parents:
        if parent.name == "models":
            return parent
    return Path("models")


# --- the model ----------------------------------------------------------------------------------


class FERModel:
    """A trained expression model with its exact preprocessing. See the module docstring."""

    def __init__(self, recipe: Recipe, runner: Callable, preprocessor: Preprocessor, source: str,
                 batch_size: int = 16, card: dict[str, Any] | None = None):
        self.recipe, self.runner, self.pre = recipe, runner, preprocessor
        self.source, self.batch_size = source, batch_size
        self.card = card or {}

    @property
    def classes(self) -> list[str]:
        return self.recipe.classes

    @property
    def columns(self) -> list[str]:
        return BASE_COLUMNS + self.classes + ["top_class", "top_prob"]

    def __repr__(self) -> str:
        return (f"FERModel({self.recipe.model_name or 'model'} from {self.source}; classes {self.classes}; "
                f"priors {self.recipe.prior_kind})")

    # -- core ------------------------------------------------------------------------------------

    def probabilities(self, faces: Sequence[Face]) -> np.ndarray:
        """Softmax over the classes for aligned faces [N, C]."""
        if not faces:
            return np.zeros((0, len(self.classes)), np.float32)
        image, priors = self.pre.tensors(faces)
        logits = np.asarray(self.runner(image, priors), np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    def _rows_for(self, items: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """items: {source, kind, frame, timestamp, rgb | None, error}; each item's rows, in order."""
        ok = [it for it in items if it.get("rgb") is not None]
        found: list[FrameFaces] = self.pre.faces([it["rgb"] for it in ok]) if ok else []
        by_id = {id(it): ff for it, ff in zip(ok, found)}
        faces = [f for ff in found for f in ff.faces if f.crop is not None]
        probs = dict(zip(map(id, faces), self.probabilities(faces)))
        out = []
        for it in items:
            base = {"source": it["source"], "kind": it["kind"], "frame": it.get("frame"),
                    "timestamp": it.get("timestamp")}
            if it.get("rgb") is None:
                out.append([self._row(base, status="error", detail=it.get("error", ""))])
                continue
            ff = by_id[id(it)]
            if not any(f.crop is not None for f in ff.faces):
                out.append([self._row(base, status="no_face", detail=ff.detail)])
                continue
            rows = []
            for f in ff.faces:
                p = probs.get(id(f))
                # A centre-cropped image (no_face: center_crop) is predicted, and says why.
                detail = ff.detail if (p is None or f.method == "center_crop") else ""
                rows.append(self._row(base, face=f, prob=p, status="ok" if p is not None else "error",
                                      detail=detail))
            out.append(rows)
        return out

    def _row(self, base: dict[str, Any], face: Face | None = None, prob: np.ndarray | None = None,
             status: str = "ok", detail: str = "") -> dict[str, Any]:
        row = {c: None for c in self.columns}
        row.update(base)
        row.update(status=status, detail=detail)
        if face is not None:
            row.update(face=face.index, chosen=bool(face.chosen), method=face.method)
            if face.box is not None:
                row.update(zip(("box_x1", "box_y1", "box_x2", "box_y2"), (round(float(v), 2) for v in face.box)))
                row["score"] = round(float(face.score), 5)
            if face.points is not None:
                for n, (x, y) in zip(POINT_NAMES, face.points):
                    row[f"{n}_x"], row[f"{n}_y"] = round(float(x), 2), round(float(y), 2)
        if prob is not None:
            for c, v in zip(self.classes, prob):
                row[c] = float(v)
            k = int(np.argmax(prob))
            row["top_class"], row["top_prob"] = self.classes[k], float(prob[k])
        return row

    # -- public API ------------------------------------------------------------------------------

    def iter_results(self, inputs: Iterable[Any], every: int = 1,
                     fps: float | None = None) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """(frame item with its ``rgb``, that frame's rows) for every image / sampled video frame,
        in order; frames go through the model ``batch_size`` at a time."""
        for batch in V.batched(self._items(inputs, every, fps), self.batch_size):
            yield from zip(batch, self._rows_for(batch))

    def iter_rows(self, inputs: Iterable[Any], every: int = 1, fps: float | None = None) -> Iterator[dict[str, Any]]:
        """Rows for paths (files, folders: recursive; images and videos), numpy RGB arrays or PIL
        images, in order."""
        for _, rows in self.iter_results(inputs, every, fps):
            yield from rows

    def predict(self, inputs: Any, every: int = 1, fps: float | None = None):
        """A DataFrame with one row per face (per image, or per sampled video frame)."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray)) or hasattr(inputs, "getexif"):
            inputs = [inputs]
        return self.frame(self.iter_rows(inputs, every, fps))

    def predict_video(self, path: str | os.PathLike, every: int = 1,
                      fps: float | None = None) -> Iterator[dict[str, Any]]:
        """Rows of a video, streamed: memory stays flat with its length."""
        if V.kind_of(path) != "video" and not V.video_info(path)["ok"]:
            raise FerpipeError(f"{path} is not a video OpenCV can open")
        yield from self.iter_rows([_AsVideo(path)], every, fps)

    def frame(self, rows: Iterable[dict[str, Any]]):
        import pandas as pd  # noqa: PLC0415

        df = pd.DataFrame(list(rows), columns=self.columns)
        for c in _INT_COLUMNS:
            df[c] = df[c].astype("Int64")
        return df

    # -- inputs ----------------------------------------------------------------------------------

    def _items(self, inputs: Iterable[Any], every: int, fps: float | None) -> Iterator[dict[str, Any]]:
        from ferpipe.align import decode  # noqa: PLC0415

        max_px = self.recipe.align.max_image_pixels
        n = 0
        for x in inputs:
            if isinstance(x, np.ndarray) or hasattr(x, "getexif"):
                rgb = _array_rgb(x)
                yield {"source": f"<array {n}>", "kind": "image", "frame": 0, "timestamp": None, "rgb": rgb,
                       "error": "" if rgb is not None else "not an HxWx3 / HxW uint8 image array"}
                n += 1
                continue
            forced_video = isinstance(x, _AsVideo)
            paths = [Path(x.path)] if forced_video else V.expand_paths([x])
            for path in paths:
                kind = "video" if forced_video else V.kind_of(path)
                src = str(path)
                if kind == "video":
                    yield from self._video_items(path, every, fps)
                    continue
                try:
                    rgb, _ = decode.load_rgb(path, max_px)
                except decode.DecodeSkip as e:
                    if kind == "other" and e.reason == "corrupt_image" and V.video_info(path)["ok"]:
                        yield from self._video_items(path, every, fps)
                        continue
                    if kind == "other" and e.reason == "corrupt_image":
                        why = "not_image_or_video: neither an image PIL decodes nor a video OpenCV opens"
                    else:
                        why = f"{e.reason}: {e.detail}"[:300]
                    yield {"source": src, "kind": kind, "frame": None, "timestamp": None, "rgb": None, "error": why}
                    continue
                yield {"source": src, "kind": "image", "frame": 0, "timestamp": None, "rgb": rgb}

    def _video_items(self, path: Path, every: int, fps: float | None) -> Iterator[dict[str, Any]]:
        src = str(path)
        try:
            for fr in V.iter_frames(path, every, fps):
                yield {"source": src, "kind": "video", "frame": fr.index, "timestamp": round(fr.timestamp, 4),
                       "rgb": fr.rgb, "error": fr.error}
        except OSError as e:
            yield {"source": src, "kind": "video", "frame": None, "timestamp": None, "rgb": None,
                   "error": f"unreadable_video: {e}"}


class _AsVideo:
    def __init__(self, path):
        self.path = path


def _array_rgb(x) -> np.ndarray | None:
    if hasattr(x, "getexif"):
        from PIL import ImageOps  # noqa: PLC0415

        from ferpipe.align.decode import _to_rgb8  # noqa: PLC0415

        return np.ascontiguousarray(_to_rgb8(ImageOps.exif_transpose(x)))
    a = np.asarray(x)
    if a.dtype != np.uint8:
        return None
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        return None
    return np.ascontiguousarray(a[..., :3])


# --- loading ------------------------------------------------------------------------------------


def load_model(checkpoint: str | os.PathLike | None = None, *, model: str | os.PathLike | None = None,
               models_dir: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 16,
               threads: int = 0) -> FERModel:
    """Load a trained model for prediction.

    ``checkpoint``: a ferpipe training checkpoint (``models/train/<dataset>/best.pt``). Or
    ``model``: an exported ``model.onnx`` (run by onnxruntime) or ``model.ts`` (TorchScript),
    with its ``model_card.json`` beside it. ``models_dir`` holds the prior nets (default: the
    ``models`` directory the checkpoint is under; an export's own directory); their sha256 must
    equal those the model was trained with. ``device``: cpu | cuda | auto (PyTorch parts).
    """
    if (checkpoint is None) == (model is None):
        raise FerpipeError("load_model: give a training checkpoint or an exported model (model=...), one of them")
    if threads > 0:
        import torch  # noqa: PLC0415

        torch.set_num_threads(threads)
    if checkpoint is not None:
        from ferpipe.train.checkpoint import load  # noqa: PLC0415

        path = Path(checkpoint)
        ckpt = load(path)
        recipe = recipe_from_checkpoint(ckpt, path)
        net, dev = build_network(ckpt, device)
        runner = _TorchRunner(net, dev)
        mdir = Path(models_dir) if models_dir is not None else _models_dir_for(path)
        return FERModel(recipe, runner, Preprocessor(recipe, mdir, device), str(path), batch_size)
    path = Path(model)
    card_path = path.parent / CARD_JSON
    if not path.is_file():
        raise FerpipeError(f"no exported model at {path}")
    if not card_path.is_file():
        raise RecipeError(f"{path}: no {CARD_JSON} beside it; an exported model is used with the card "
                          f"`ferpipe export` writes (label map and preprocessing)")
    card = json.loads(card_path.read_text())
    recipe = Recipe.from_dict(card["recipe"], str(card_path))
    names = [i["name"] for i in card["inputs"]]
    fmt = card.get("format")
    if path.suffix == ".onnx" or fmt == "onnx":
        runner = _OnnxRunner(path, names, threads)
    else:
        import torch  # noqa: PLC0415

        from ferpipe.devices import resolve_device  # noqa: PLC0415

        dev = resolve_device(device, "--device")
        runner = _TorchRunner(torch.jit.load(str(path), map_location=dev).eval(), dev)
    mdir = Path(models_dir) if models_dir is not None else path.parent
    return FERModel(recipe, runner, Preprocessor(recipe, mdir, device), str(path), batch_size, card)
