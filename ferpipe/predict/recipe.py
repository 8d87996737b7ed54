"""The preprocessing a model was trained with, read from its checkpoint (or an export's card).

A :class:`Recipe` is everything between a raw photo and the network's input: the align params
(detector settings, face choice, template, size, margin, estimator, JPEG quality), the priors
params (kind, backend, prior nets) with the prior nets' sha256 as the training shards recorded
them, the input size and normalisation (the training config), and the label map. It is built
from the ``preprocess`` entry the trainer writes (:func:`ferpipe.train.checkpoint.preprocess_record`)
and refuses checkpoints that cannot say how their inputs were made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ferpipe.errors import FerpipeError

RECIPE_FORMAT = "ferpipe-recipe/1"
# The prior checkpoints each backend's describe() lists -> the PriorsParams field holding the file.
_PRIOR_FILE_FIELDS = {"ferpipe": {"parser": "prior_nets_dir", "landmarks": "prior_nets_dir"},
                      "official": {"mobilefacenet": "mobilefacenet_checkpoint", "segface": "segface_checkpoint"},
                      "insightface": {"insightface_landmarks": "insightface_dir"}}


class RecipeError(FerpipeError):
    """A checkpoint (or exported model) does not record how its inputs were made, or the files it
    needs now differ from those it was trained with."""


@dataclass(frozen=True)
class Recipe:
    """See the module docstring. ``to_dict()`` is what an exported model card stores."""

    label_space: dict[str, Any]
    config: dict[str, Any]          # the training config (img_size, mean, std, priors, crops)
    data_prior_kind: str            # what the training shards held: features | maps | none
    preprocess: dict[str, Any]      # the checkpoint's ``preprocess`` entry
    model_name: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.label_space["classes"])

    @property
    def align(self):
        from ferpipe.align.params import AlignParams  # noqa: PLC0415

        return AlignParams(**self.preprocess["align"])

    @property
    def priors(self):
        from ferpipe.priors.params import PriorsParams  # noqa: PLC0415

        return PriorsParams(**self.preprocess["priors"])

    @property
    def prior_kind(self) -> str:
        """What the network consumes: the shards' kind, or none when it was trained without priors."""
        return self.data_prior_kind if self.config.get("priors", True) else "none"

    @property
    def prior_checkpoints(self) -> dict[str, dict[str, Any]]:
        return dict((self.preprocess.get("prior_meta") or {}).get("checkpoints") or {})

    @property
    def img_size(self) -> int:
        return int(self.config.get("img_size", 224))

    def augment(self):
        """The trainer's evaluation transform for this model (:func:`ferpipe.train.data.augment_for`)."""
        from ferpipe.train import data as D  # noqa: PLC0415

        return D.augment_for(self.config, self.data_prior_kind, train=False)

    def input_spec(self) -> dict[str, Any]:
        """Names, dtypes and shapes of the network's inputs (``B`` = any batch size)."""
        s = self.img_size
        spec = {"image": {"dtype": "float32", "shape": ["B", 3, s, s],
                          "layout": "NCHW, RGB, normalised: (x/255 - mean) / std"}}
        out = int(self.preprocess["aligned"].get("output_size") or self.align.output_size)
        if self.prior_kind == "maps":
            spec["landmarks"] = {"dtype": "float32", "shape": ["B", 68, 2],
                                 "meaning": f"iBUG-68 (x, y) in pixels of the {s}px model input; NaN = missing"}
            spec["parsing"] = {"dtype": "uint8", "shape": ["B", out, out],
                               "meaning": "LaPa 11-class parsing map of the aligned crop (255 = no class)"}
        elif self.prior_kind == "features":
            shapes = (self.preprocess.get("prior_meta") or {}).get("shapes") or {}
            spec["lmk"] = {"dtype": "float32", "shape": ["B", *shapes.get("lmk", ["?", "C", "g", "g"])[1:]],
                           "meaning": "landmark-net features (cached as float16)"}
            spec["seg"] = {"dtype": "float32", "shape": ["B", *shapes.get("seg", ["?", "C", "g", "g"])[1:]],
                           "meaning": "parser features (cached as float16)"}
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"format": RECIPE_FORMAT, "label_space": self.label_space, "config": self.config,
                "data_prior_kind": self.data_prior_kind, "preprocess": self.preprocess,
                "model_name": self.model_name}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "") -> Recipe:
        if d.get("format") != RECIPE_FORMAT:
            raise RecipeError(f"{source}: not a ferpipe recipe (format {d.get('format')!r}, "
                              f"expected {RECIPE_FORMAT!r})")
        r = cls(label_space=dict(d["label_space"]), config=dict(d["config"]),
                data_prior_kind=str(d["data_prior_kind"]), preprocess=dict(d["preprocess"]),
                model_name=str(d.get("model_name", "")), source=source)
        r.check()
        return r

    def check(self) -> None:
        """The align params must be the ones the training shards were aligned with."""
        a, got = self.preprocess.get("aligned") or {}, self.preprocess["align"]
        bad = [f"{k}: params {got.get(k)!r}, shards {a[k]!r}" for k in ("output_size", "margin", "estimator")
               if a.get(k) is not None and a[k] != got.get(k)]
        if bad:
            raise RecipeError(f"{self.source}: the align params recorded at training differ from what the "
                              f"training shards were aligned with ({'; '.join(bad)}); the model's "
                              f"preprocessing is unknown. Re-run align, priors and train together.")


def recipe_from_checkpoint(ckpt: Mapping[str, Any], source: str | Path = "") -> Recipe:
    """The recipe of a ferpipe training checkpoint (already loaded by
    :func:`ferpipe.train.checkpoint.load`, which refuses checkpoints without a label map)."""
    source = str(source)
    space = ckpt.get("label_space")
    if not space or not space.get("classes"):
        raise RecipeError(f"{source} has no label map; a model whose class order is unknown is refused")
    pre = ckpt.get("preprocess")
    if not pre:
        raise RecipeError(
            f"{source} does not record its preprocessing (align and priors params; checkpoints written "
            f"before ferpipe recorded them). Retrain it with this version (`ferpipe train -S "
            f"train.resume=false`: a finished run would otherwise be resumed, not rewritten), so the "
            f"prediction redoes exactly the alignment and priors the model was trained on.")
    data = ckpt.get("data") or {}
    r = Recipe(label_space={"name": space.get("name", ""), "classes": list(space["classes"])},
               config=dict(ckpt.get("config") or {}),
               data_prior_kind=str(data.get("prior_kind") or pre.get("prior_kind") or "none"),
               preprocess=dict(pre), model_name=str(ckpt.get("model_name", "")), source=source)
    r.check()
    return r


def check_prior_checkpoints(recipe: Recipe, described: Mapping[str, Any]) -> None:
    """Refuse prior nets whose sha256 differs from the ones the training shards were made with.

    ``described``: the backend's ``describe()`` (its ``checkpoints``: name -> {file, sha256})."""
    want = recipe.prior_checkpoints
    have = dict(described.get("checkpoints") or {})
    if recipe.preprocess["priors"].get("backend") != described.get("backend"):
        raise RecipeError(f"{recipe.source}: prior backend {described.get('backend')!r}, but the model was "
                          f"trained on {recipe.preprocess['priors'].get('backend')!r} priors")
    for name, w in want.items():
        h = have.get(name)
        if h is None or h.get("sha256") != w.get("sha256"):
            raise RecipeError(
                f"{recipe.source}: prior net {name!r} ({w.get('file')}) has sha256 "
                f"{(h or {}).get('sha256', 'missing')[:16]}..., but the model was trained on priors from "
                f"sha256 {str(w.get('sha256'))[:16]}...; use the prior nets it was trained with "
                f"(models_dir / --models-dir), or retrain.")


def prior_files(recipe: Recipe, models_dir: str | Path) -> dict[str, tuple[Path, str]]:
    """name -> (path of the prior checkpoint under ``models_dir``, the PriorsParams field naming it)."""
    from ferpipe.priors.backends import resolve_model_path  # noqa: PLC0415

    p = recipe.preprocess["priors"]
    fields = _PRIOR_FILE_FIELDS.get(p.get("backend"), {})
    out = {}
    for name, meta in recipe.prior_checkpoints.items():
        fld = fields.get(name)
        if fld is None:
            continue
        rel = p.get(fld)
        path = resolve_model_path(models_dir, rel)
        if fld.endswith("_dir"):
            path = path / str(meta.get("file"))
        out[name] = (path, fld)
    return out
