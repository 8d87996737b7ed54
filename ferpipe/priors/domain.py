"""What faces a prior backend learned from, and whether that suits the dataset it is run on.

ferpipe's own prior nets record their training domain in their checkpoints (``"domain"``:
``synthetic`` for the embedded rendered faces, ``lapa`` for LaPa). Checkpoints written before
the domain was recorded are read as ``synthetic``: ``prior-nets`` could only train on rendered
faces then (its LaPa path was untested), and assuming otherwise would hide exactly the mismatch
this check exists for. The ``official`` (MobileFaceNet on 300W-style photos, SegFace on LaPa)
and ``insightface`` backends are real-face models.

A dataset is ``synthetic`` when ``download.source`` is ``synthetic`` (the embedded renderer),
``real`` otherwise. Computing priors for a real dataset with nets that only ever saw rendered
faces gives near-constant, template-like priors (see docs/priors.md); the priors stage refuses
unless ``priors.allow_domain_mismatch`` is true, and then records the mismatch in every
sample's json, the stage report, and (through the shards) the trained model's card.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from ferpipe.errors import ConfigError
from ferpipe.priors.params import PriorsParams

SYNTHETIC = "synthetic"
REAL = "real"
LAPA = "lapa"
#: What a prior-net checkpoint without a recorded domain is taken to be (see the module doc).
LEGACY_DOMAIN = SYNTHETIC

_REAL_BACKENDS = {
    "official": "real faces (MobileFaceNet: 300W-style 68-point photos; SegFace: LaPa)",
    "insightface": "real faces (insightface 2d106det)",
    "mtcnn5": "real faces (facenet-pytorch MTCNN O-Net 5 points; the 68 are a mean face bent onto them)",
}


class DomainMismatchError(ConfigError):
    """Priors for real faces from nets trained only on rendered faces, without the opt-in."""


def dataset_domain(download: Any) -> str:
    """``synthetic`` for the embedded rendered dataset (``download.source: synthetic``), else ``real``."""
    return SYNTHETIC if str(getattr(download, "source", "")) == SYNTHETIC else REAL


def backend_domain(params: PriorsParams, models_dir: str | os.PathLike) -> dict[str, Any]:
    """``{"nets": <domain>, "recorded": bool, "detail": str}`` for ``params.backend``.

    For ``ferpipe`` this reads both checkpoints (MissingCheckpointError when absent); the nets
    count as synthetic-only when either of them is.
    """
    if params.backend in _REAL_BACKENDS:
        return {"nets": REAL, "recorded": True, "detail": _REAL_BACKENDS[params.backend]}
    from ferpipe.priors.backends import resolve_model_path  # noqa: PLC0415
    from ferpipe.priors.nets import LANDMARK_ARCH, PARSER_ARCH, load_prior_net  # noqa: PLC0415
    from ferpipe.priors.training import LANDMARKS_FILE, PARSER_FILE  # noqa: PLC0415

    d = resolve_model_path(models_dir, params.prior_nets_dir)
    nets = [load_prior_net(d / PARSER_FILE, PARSER_ARCH), load_prior_net(d / LANDMARKS_FILE, LANDMARK_ARCH)]
    domains = {n.domain for n in nets}
    recorded = all(n.domain_recorded for n in nets)
    nets_domain = SYNTHETIC if SYNTHETIC in domains else sorted(domains)[0]
    detail = f"ferpipe prior nets trained on {', '.join(sorted(domains))}"
    if not recorded:
        detail += " (no domain recorded in the checkpoint: read as synthetic)"
    return {"nets": nets_domain, "recorded": recorded, "detail": detail}


def check_domain(params: PriorsParams, models_dir: str | os.PathLike, data_domain: str | None,
                 dataset: str = "") -> dict[str, Any]:
    """The domain record for the shards; raises :class:`DomainMismatchError` on a refused run.

    ``data_domain`` None means the caller does not know the dataset (a bare library call on
    an aligned directory): recorded as ``unknown`` and not checked.
    """
    nets = backend_domain(params, models_dir)
    mismatch = data_domain not in (None, SYNTHETIC) and nets["nets"] == SYNTHETIC
    if mismatch and not params.allow_domain_mismatch:
        name = f"dataset {dataset!r}" if dataset else "this dataset"
        raise DomainMismatchError(
            f"refusing to compute priors for {name} (real photos: download.source is not "
            f"'synthetic') with priors.backend={params.backend}: {nets['detail']}. Nets trained "
            f"only on rendered faces return an average-looking face on real photos, so the priors "
            f"would carry almost nothing. Do one of: (1) train the nets on LaPa: `ferpipe prior-nets "
            f"-S prior_nets.source=lapa -S prior_nets.lapa_dir=<LaPa root>`; (2) use the official "
            f"checkpoints: -S priors.backend=official (see `ferpipe weights` for the files); (3) use "
            f"an insightface model pack: -S priors.backend=insightface -S priors.insightface_dir=<pack>; "
            f"or (4) proceed knowingly with -S priors.allow_domain_mismatch=true (recorded in the "
            f"shards and the trained model's card)")
    return {"dataset": data_domain or "unknown", "nets": nets["nets"], "nets_recorded": nets["recorded"],
            "detail": nets["detail"], "mismatch": bool(mismatch),
            "allow_domain_mismatch": bool(params.allow_domain_mismatch)}


def mismatch_note(prior: Mapping[str, Any] | None) -> str | None:
    """A sentence for reports and model cards when the priors were computed across domains."""
    dom = (prior or {}).get("domain") or {}
    if not dom.get("mismatch"):
        return None
    return (f"**Priors computed on {dom.get('dataset')} faces by nets trained only on "
            f"{dom.get('nets')} (rendered) faces** (`priors.allow_domain_mismatch: true`; "
            f"{dom.get('detail')}). On real photos such priors are close to an average face: "
            f"treat any gain from them as unproven.")
