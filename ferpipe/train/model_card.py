"""``MODEL_CARD.md`` beside every trained checkpoint: what was trained, on what, how well, and
where the method differs from its paper or its release.

The card is written from the checkpoint's own record (config, data index hash, metrics), so it
cannot drift from the weights it describes. The per-method notes are the facts a person
comparing against a paper needs before quoting a number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Per create_model name: the differences from the paper / the release a reader must know.
METHOD_NOTES: dict[str, list[str]] = {
    "orsanet": [
        "Priors come from the shards (the priors stage), not from frozen nets run inside every step; "
        "kind `maps` is the paper's (landmarks + parsing map), `features` the released code's.",
        "Random erasing hits the image only; the cached priors stay clean (`erase_priors: clean`); "
        "`erase_priors: zero` approximates the release.",
        "The release's quirks (raw 49x1024 view of the IR-50 map, queries without projection) are kept; "
        "`priors: none` is the no-priors ablation (learned constants in place of priors).",
    ],
    "ran": [
        "Regions are cut on the fly from the aligned face with the released AffectNet boxes and resized "
        "back to the input size (the face is resampled twice; the release cut from the original image).",
        "Attention weights are softmaxed across regions as released (`attention: softmax`); the paper's "
        "sigmoid weights are `attention: sigmoid`. Inputs in [0, 1], no mean/std, as released.",
    ],
    "dacl": [
        "The sparse center loss's centers move by the release's own rule at rate alpha, not scaled by "
        "lambda or 1/B.",
    ],
    "ada_df": [
        "A class whose mean probability stays under the threshold falls back to a row with the threshold "
        "on the diagonal and (1-threshold)/(C-1) elsewhere, so rows sum to 1; the release's hard-coded "
        "0.4/(C-1) is `fallback_off_diagonal: release`.",
        "Branch 2 is the prediction; the class-distribution table is stored in the checkpoint (criterion state).",
    ],
    "mfer": [
        "**Trained without the DSF loss.** The paper's Deep Smooth Feature loss was never released "
        "(its formula is not public), so ferpipe does not ship it: the loss is the sum of label-smoothed CE "
        "over the three heads. `feature_loss: center` adds a plain center loss, which is not DSF.",
        "The released self-supervised MS-Celeb ConvNeXt-B weights were never published; ImageNet "
        "ConvNeXt-B weights can be loaded with `model_kwargs.checkpoint`.",
    ],
    "resnet18": ["Plain ResNet-18 with cross-entropy: the baseline for RAN, DACL and Ada-DF."],
    "ir50_baseline": ["ORSANet's IR-50 trunk with global pooling and a linear head, plain cross-entropy: "
                      "the baseline that isolates what the priors and the attention add."],
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def model_card(*, model_name: str, preset: str, config: dict[str, Any], model_kwargs: dict[str, Any],
               num_params: int, dataset: str, label_space: dict[str, Any], index_sha256: dict[str, str],
               counts: dict[str, int], metrics: dict[str, Any], prior: dict[str, Any] | None = None) -> str:
    """The card's markdown text; ``prior`` is the shards' ``priors`` json object (kind, backend, domain)."""
    lines = [f"# {model_name} trained on `{dataset}` (preset `{preset}`)", ""]
    if prior:
        from ferpipe.priors.domain import mismatch_note  # noqa: PLC0415

        dom = prior.get("domain") or {}
        note = mismatch_note(prior)
        lines += ["## Priors", "", f"- kind `{prior.get('kind')}`, backend `{prior.get('backend')}`; "
                  f"prior nets trained on: {dom.get('detail') or dom.get('nets') or 'not recorded'}",
                  *([f"- {note}"] if note else []), ""]
    notes = METHOD_NOTES.get(model_name, [])
    if notes:
        lines += ["## Differences from the paper and the release", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Result (model selected on val; test read once)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(metrics.get(k))} |" for k in
              ("best_epoch", "val_acc", "test_acc", "test_macro_f1")]
    lines += ["", "## Model", "", f"- `create_model({model_name!r}, **model_kwargs)`, {num_params:,} parameters",
              f"- model_kwargs: `{model_kwargs}`", "", "## Recipe", "", "| field | value |", "|---|---|"]
    skip = {"model", "model_kwargs", "model_kwargs_from_data", "preset"}
    lines += [f"| {k} | `{v}` |" for k, v in config.items() if k not in skip]
    lines += ["", "## Data", "", f"- classes (in output order): {', '.join(label_space.get('classes', []))}",
              f"- samples: " + ", ".join(f"{s} {n}" for s, n in counts.items()),
              "- shard index sha256: " + ", ".join(f"{s} `{h[:16]}`" for s, h in index_sha256.items()), ""]
    return "\n".join(lines)


def write_model_card(path: str | Path, **fields) -> Path:
    path = Path(path)
    path.write_text(model_card(**fields))
    return path
