"""``ferpipe export``: a training checkpoint -> ONNX or TorchScript, with a model card beside it.

The exported network takes the image and its priors as inputs (``maps``: landmarks float32
[B,68,2] + parsing uint8 [B,H,W]; ``features``: lmk / seg float32 [B,C,g,g]) and returns logits
[B,C]; the batch dimension is dynamic. ``model_card.json`` (and ``MODEL_CARD.md``) states the
label map in output order, the input spec, normalisation, the preprocessing (the recipe), the
training params, the data index sha256 and the metrics. The prior nets the recipe names are
copied beside the model (sha256-checked), so ``ferpipe predict --model DIR/model.onnx`` needs
nothing else.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ferpipe.errors import FerpipeError
from ferpipe.predict.recipe import Recipe, RecipeError, prior_files, recipe_from_checkpoint
from ferpipe.shards import sha256_file

FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts"}
DEFAULT_OPSET = 17


def _logits_module(model):
    """``model`` wrapped so every export returns plain logits (methods with dict / tuple outputs)."""
    import torch  # noqa: PLC0415

    from ferpipe.losses.criterion import logits_of  # noqa: PLC0415

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, image, *priors):
            return logits_of(self.inner(image, *priors))

    return Logits(model).eval()


def example_inputs(recipe: Recipe, batch: int = 2, seed: int = 0):
    """Random inputs of the network's input spec (``batch`` rows), for tracing and checks."""
    import torch  # noqa: PLC0415

    g = torch.Generator().manual_seed(seed)
    s = recipe.img_size
    image = torch.randn(batch, 3, s, s, generator=g)
    spec = recipe.input_spec()
    if recipe.prior_kind == "maps":
        out = spec["parsing"]["shape"][1]
        pts = torch.rand(batch, 68, 2, generator=g) * s
        parsing = torch.randint(0, 11, (batch, out, out), generator=g).to(torch.uint8)
        return (image, pts, parsing)
    if recipe.prior_kind == "features":
        lmk = torch.randn(batch, *spec["lmk"]["shape"][1:], generator=g)
        seg = torch.randn(batch, *spec["seg"]["shape"][1:], generator=g)
        return (image, lmk, seg)
    return (image,)


def _copy_prior_nets(recipe: Recipe, models_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Copy the recipe's prior checkpoints under ``out_dir`` (same relative paths) after checking
    their sha256; returns the recipe's priors params unchanged (they are relative to models_dir,
    which for the export is ``out_dir``)."""
    copied = {}
    for name, (src, _field) in prior_files(recipe, models_dir).items():
        want = recipe.prior_checkpoints[name].get("sha256")
        if not src.is_file():
            raise FerpipeError(f"prior net {name!r} not found at {src}: the export bundles the prior nets the "
                               f"model was trained with (pass --models-dir to where they are)")
        have = sha256_file(src)
        if want and have != want:
            raise RecipeError(f"prior net {src} has sha256 {have[:16]}..., the model was trained with "
                              f"{want[:16]}...; refusing to export a model with different priors")
        rel = src.relative_to(models_dir) if src.is_relative_to(models_dir) else Path(src.name)
        dst = out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        copied[name] = {"file": str(rel), "sha256": have}
    return copied


def _metrics(ckpt_path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"best": ckpt.get("best"), "val_at_best": {k: v for k, v in (ckpt.get("val") or {}).items()
                                                                      if k != "confusion"}}
    # models/train/<dataset>/best.pt -> <root>/reports/train/metrics.json (test read once, by the trainer)
    for parent in ckpt_path.resolve().parents:
        if parent.name == "models":
            m = parent.parent / "reports" / "train" / "metrics.json"
            if m.is_file():
                out["train_report"] = json.loads(m.read_text())
            break
    return out


def model_card_markdown(card: dict[str, Any]) -> str:
    r = card["recipe"]
    pre = r["preprocess"]
    a = pre["align"]
    lines = [f"# {card['model_name']} ({card['format']}, {card['file']})", "",
             "## Label map (output order)", "", "| index | class |", "|---|---|"]
    lines += [f"| {i} | {c} |" for i, c in enumerate(card["label_map"])]
    lines += ["", "## Inputs (batch dimension dynamic)", "", "| name | dtype | shape | meaning |", "|---|---|---|---|"]
    for i in card["inputs"]:
        lines.append(f"| {i['name']} | {i['dtype']} | {i['shape']} | {i.get('meaning') or i.get('layout', '')} |")
    lines += ["", "Output: `logits` float32 [B, C]; softmax gives the class probabilities.", "",
              "## Normalisation", "", f"- {card['normalisation']}", "",
              "## Preprocessing expected (as at training)", ""]
    lines += [f"- {s}" for s in card["preprocessing"]]
    lines += ["", "## Data and metrics", "",
              "- data index sha256: " + ", ".join(f"{k} `{v[:16]}`" for k, v in card["data_index_sha256"].items()),
              f"- best: {card['metrics'].get('best')}"]
    tr = card["metrics"].get("train_report")
    if tr:
        lines.append(f"- test accuracy {tr.get('test_acc')}, macro-F1 {tr.get('test_macro_f1')} (n={tr.get('test_n')})")
    lines += ["", f"ONNX opset: {card.get('opset')}" if card["format"] == "onnx" else "",
              f"align: {json.dumps({k: a[k] for k in ('output_size', 'margin', 'estimator', 'min_score', 'choose')})}",
              ""]
    return "\n".join(lines)


def _write_export(model, args, names: list[str], fmt: str, target: Path, opset: int) -> None:
    """Trace ``model`` on ``args`` into ``target`` (written to a partial file, then renamed)."""
    import torch  # noqa: PLC0415

    tmp = target.with_name(f".{target.name}.partial")
    with torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(model, args, str(tmp), input_names=names, output_names=["logits"],
                              dynamic_axes={n: {0: "batch"} for n in names + ["logits"]},
                              opset_version=opset, dynamo=False)
        else:
            torch.jit.save(torch.jit.trace(model, args, check_trace=False), str(tmp))
    tmp.replace(target)


def _max_logit_diff(model, recipe: Recipe, names: list[str], fmt: str, target: Path) -> float:
    """Largest |exported - PyTorch| logit on random inputs of batch 3 (not the traced 2)."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    x = example_inputs(recipe, 3, seed=1)
    if recipe.prior_kind == "maps":
        x[1][0, :5] = float("nan")  # missing points must behave the same
    with torch.no_grad():
        ref = model(*x).numpy()
    if fmt == "onnx":
        import onnxruntime as ort  # noqa: PLC0415

        sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        got = sess.run(None, {n: t.numpy() for n, t in zip(names, x)})[0]
    else:
        with torch.no_grad():
            got = torch.jit.load(str(target))(*x).numpy()
    return float(np.abs(got - ref).max())


def _preprocessing_lines(recipe: Recipe, bundled: dict[str, Any]) -> list[str]:
    """The card's plain-words account of what happens to an image before the network."""
    a = recipe.preprocess["align"]
    pm = recipe.preprocess.get("prior_meta") or {}
    return [
        f"MTCNN (facenet-pytorch) on a copy with longest side <= {a['detect_max_side']} and shortest >= "
        f"{a['detect_min_side']}, thresholds {a['thresholds']}, min_face_frac {a['min_face_frac']}, faces with "
        f"score >= {a['min_score']}; the face the trainer kept: choose={a['choose']}",
        f"5-point similarity ({a['estimator']}) onto the ArcFace template at {a['output_size']}px, margin "
        f"{a['margin']}; no face: {a['no_face']}",
        f"the crop JPEG-encoded (quality {a['jpeg_quality']}) and decoded again, as stored in the shards",
        f"priors: kind {recipe.prior_kind}, backend {recipe.preprocess['priors'].get('backend')}, "
        f"input {pm.get('input_size')} {pm.get('resize', '')}; prior nets bundled: "
        + (", ".join(f"{k} {v['file']} sha256 {v['sha256'][:16]}" for k, v in bundled.items()) or "none"),
        "then the image resized and normalised as below; use `ferpipe predict --model` (or "
        "ferpipe.load_model(model=...)) to get all of this done exactly",
    ]


def export_model(checkpoint: str | Path, fmt: str, out_dir: str | Path, *, opset: int = DEFAULT_OPSET,
                 models_dir: str | Path | None = None, overwrite: bool = False, check: bool = True) -> dict[str, Any]:
    """Export ``checkpoint`` as ``fmt`` (onnx | torchscript) into ``out_dir``; returns the card.

    With ``check``, the exported model's logits on random inputs (batch 3, not the traced 2) are
    compared with PyTorch's; the max absolute difference is in the card."""
    from ferpipe.predict.model import CARD_JSON, _models_dir_for, build_network  # noqa: PLC0415
    from ferpipe.train.checkpoint import load  # noqa: PLC0415

    if fmt not in FORMATS:
        raise FerpipeError(f"--format {fmt!r}: use one of {sorted(FORMATS)}")
    ckpt_path = Path(checkpoint)
    out_dir = Path(out_dir)
    target = out_dir / FORMATS[fmt]
    if (target.exists() or (out_dir / CARD_JSON).exists()) and not overwrite:
        raise FerpipeError(f"{out_dir} already holds an export; refusing to overwrite it (pass --overwrite)")
    ckpt = load(ckpt_path)
    recipe = recipe_from_checkpoint(ckpt, ckpt_path)
    net, _ = build_network(ckpt, "cpu")
    model = _logits_module(net)
    spec = recipe.input_spec()
    names = list(spec)
    args = example_inputs(recipe, 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    mdir = Path(models_dir) if models_dir is not None else _models_dir_for(ckpt_path)
    bundled = _copy_prior_nets(recipe, mdir, out_dir) if recipe.prior_kind != "none" else {}
    _write_export(model, args, names, fmt, target, opset)
    max_diff = _max_logit_diff(model, recipe, names, fmt, target) if check else None
    card = {
        "format": fmt, "file": target.name, "sha256": sha256_file(target),
        "opset": opset if fmt == "onnx" else None, "model_name": recipe.model_name,
        "model_kwargs": {k: v for k, v in (ckpt.get("model_kwargs") or {}).items()},
        "label_map": recipe.classes, "label_space": recipe.label_space,
        "inputs": [{"name": n, **v} for n, v in spec.items()],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["B", len(recipe.classes)]}],
        "normalisation": {"mean": list(recipe.config.get("mean", ())), "std": list(recipe.config.get("std", ())),
                          "scale": "x / 255 then (x - mean) / std", "resize": f"PIL bilinear to {recipe.img_size}",
                          "color": "RGB"},
        "preprocessing": _preprocessing_lines(recipe, bundled),
        "recipe": recipe.to_dict(),
        "params": ckpt.get("config"),
        "data_index_sha256": dict((ckpt.get("data") or {}).get("index_sha256") or {}),
        "metrics": _metrics(ckpt_path, ckpt),
        "checkpoint": {"file": ckpt_path.name, "sha256": sha256_file(ckpt_path), "epoch": ckpt.get("epoch")},
        "check": {"inputs": "random, batch 3", "max_abs_logit_diff_vs_pytorch": max_diff},
    }
    (out_dir / CARD_JSON).write_text(json.dumps(card, indent=1, default=str))
    (out_dir / "MODEL_CARD.md").write_text(model_card_markdown(card))
    return card
