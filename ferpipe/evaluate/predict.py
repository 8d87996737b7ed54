"""Predictions of a trained model over shards, and the checkpoint's label-map check.

The interface the evaluate stage needs from any model::

    predictor.label_space            {"name": ..., "classes": [...]}
    predictor.predict(urls) -> Predictions(keys, y_true, y_pred, y_prob, features | None)

:class:`CheckpointPredictor` fulfils it for ferpipe training checkpoints
(:mod:`ferpipe.train.checkpoint`): it rebuilds the network with ``create_model`` from the
checkpoint's ``model_name`` / ``model_kwargs``, reads the shards through the trainer's own
evaluation pipeline (:func:`ferpipe.train.data.eval_pipeline`, no augmentation), and takes as
``features`` the input of the network's last ``nn.Linear`` (the classifier's embedding).
A checkpoint whose label map differs from an evaluation set's is refused
(:class:`LabelMapMismatchError`, showing both maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ferpipe import shards as _shards
from ferpipe.errors import FerpipeError
from ferpipe.labels import label_space_record


class LabelMapMismatchError(FerpipeError):
    """The model's classes (and their order) differ from the evaluation set's."""


@dataclass
class Predictions:
    keys: list[str]
    y_true: np.ndarray      # int64 [N]
    y_pred: np.ndarray      # int64 [N]
    y_prob: np.ndarray      # float32 [N, C]
    features: np.ndarray | None = None  # float32 [N, D]

    def subset(self, keys: Sequence[str]) -> "Predictions":
        pos = {k: i for i, k in enumerate(self.keys)}
        idx = np.array([pos[k] for k in keys if k in pos], int)
        return Predictions([self.keys[i] for i in idx], self.y_true[idx], self.y_pred[idx], self.y_prob[idx],
                           None if self.features is None else self.features[idx])


class Predictor(Protocol):
    label_space: dict[str, Any]

    def predict(self, urls: Sequence[str]) -> Predictions: ...


def shards_label_space(urls: Sequence[str]) -> dict[str, Any] | None:
    """The label space recorded in the first sample's json (dict, JSON text or a space name)."""
    meta = _shards.first_sample_json(urls)
    return None if meta is None else label_space_record(meta.get("label_space"))


def check_label_map(model_space: Any, data_space: Any, model_what: str = "checkpoint",
                    data_what: str = "evaluation set") -> None:
    """Raise :class:`LabelMapMismatchError` unless both spaces list the same classes in the same
    order; the message shows both maps index by index."""
    m, d = label_space_record(model_space), label_space_record(data_space)
    if m is None:
        raise LabelMapMismatchError(f"{model_what} has no label map; it cannot be evaluated")
    if d is None:
        raise LabelMapMismatchError(f"{data_what} records no label_space; cannot check the label map")
    if m["classes"] == d["classes"]:
        return
    n = max(len(m["classes"]), len(d["classes"]))
    rows = [f"  {i:>2}  {(m['classes'][i] if i < len(m['classes']) else '-'):<12} "
            f"{(d['classes'][i] if i < len(d['classes']) else '-'):<12}"
            + ("" if i < min(len(m['classes']), len(d['classes'])) and m['classes'][i] == d['classes'][i] else "  <-")
            for i in range(n)]
    raise LabelMapMismatchError(
        f"label map mismatch: {model_what} {m['name']!r} vs {data_what} {d['name']!r}\n"
        f"  idx {model_what[:12]:<12} {data_what[:12]:<12}\n" + "\n".join(rows))


class CheckpointPredictor:
    """A ferpipe training checkpoint as a :class:`Predictor`."""

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int = 64, num_workers: int = 0,
                 expected_label_space: Any = None):
        from ferpipe.train.checkpoint import load  # noqa: PLC0415

        self.path = Path(path)
        self.ckpt = load(self.path)
        self.label_space = label_space_record(self.ckpt["label_space"])
        if expected_label_space is not None:
            check_label_map(self.label_space, expected_label_space, f"checkpoint {self.path.name}")
        self.device_name, self.batch_size, self.num_workers = device, batch_size, num_workers
        self._model = None

    def describe(self) -> dict[str, Any]:
        c = self.ckpt
        return {"checkpoint": str(self.path), "model": c.get("model_name"), "epoch": c.get("epoch"),
                "best": c.get("best"), "index_sha256": c.get("data", {}).get("index_sha256"),
                "label_space": self.label_space}

    def _build(self):
        import torch  # noqa: PLC0415

        from ferpipe.models import create_model  # noqa: PLC0415
        from ferpipe.devices import resolve_device  # noqa: PLC0415
        from ferpipe.train.checkpoint import unwrap  # noqa: PLC0415

        self.device = resolve_device(self.device_name, "evaluate.device")
        model = create_model(self.ckpt["model_name"], **self.ckpt.get("model_kwargs", {}))
        unwrap(model).load_state_dict(self.ckpt["model"])
        model.to(self.device).eval()
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        self._feat: list[np.ndarray] = []
        if linears:
            linears[-1].register_forward_hook(
                lambda mod, inp, out: self._feat.append(inp[0].detach().float().flatten(1).cpu().numpy()))
        self._model = model

    def check(self, urls: Sequence[str], what: str = "evaluation set") -> None:
        check_label_map(self.label_space, shards_label_space(urls), f"checkpoint {self.path.name}", what)

    def predict(self, urls: Sequence[str]) -> Predictions:
        import torch  # noqa: PLC0415

        from ferpipe.train import data as D  # noqa: PLC0415

        if self._model is None:
            self._build()
        from ferpipe.train.loop import predict_logits  # noqa: PLC0415

        aug = D.augment_for(self.ckpt.get("config", {}), self.ckpt.get("data", {}).get("prior_kind", "none"),
                            train=False)
        loader = D.make_loader(D.eval_pipeline(list(urls), aug, self.batch_size),
                               D.eval_workers(list(urls), self.num_workers))
        keys, ys, probs = [], [], []
        self._feat.clear()
        with torch.no_grad():
            for batch in loader:
                img = batch["image"].to(self.device)
                priors = [p.to(self.device).float() if p.is_floating_point() else p.to(self.device)
                          for p in batch["priors"]]
                logits = predict_logits(self._model, img, priors)
                probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
                ys.append(batch["label"].numpy())
                keys.extend(batch["key"])
        if not keys:
            c = len(self.label_space["classes"])
            return Predictions([], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, c), np.float32))
        prob = np.concatenate(probs).astype(np.float32)
        feats = np.concatenate(self._feat).astype(np.float32) if len(self._feat) else None
        if feats is not None and len(feats) != len(keys):
            feats = None
        order = np.argsort(np.asarray(keys), kind="stable")   # workers interleave shards
        return Predictions([keys[i] for i in order], np.concatenate(ys)[order].astype(np.int64),
                           prob.argmax(1)[order].astype(np.int64), prob[order],
                           None if feats is None else feats[order])
