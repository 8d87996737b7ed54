"""``ferpipe weights``: every weight file ferpipe can use, where it goes, and whether the file
there is the right one.

Each entry names the params.yaml key that points at the file, its conventional path, who
publishes it (the project, never a URL: ferpipe downloads nothing), the size and sha256 the
owners state (none of them states one: "not published"), and how the file must load. A present
file is checked by loading it the way ferpipe does (``torch.load(weights_only=True)``; ONNX
through ``onnx``) and comparing its tensors' names and shapes with the expected ones: the key
manifests in ``manifests/`` (facts read from the official files' layouts) or, for torchvision's
ResNet-18 and timm's ConvNeXt-B, the library's own architecture built on the meta device.

Status: ``ok``; ``missing``; ``truncated`` (an incomplete archive or pickle: the download or
copy stopped early); ``wrong`` (a complete file that is not this checkpoint; when its tensors
match another entry, that entry is named).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ferpipe.models._checkpoint import strip_module_prefix

MANIFESTS = Path(__file__).with_name("manifests")
NOT_PUBLISHED = "not published"

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class WeightFile:
    id: str
    what: str
    param: str  # the params.yaml key that names the file
    default: str  # conventional path, relative to the project root
    publisher: str  # who publishes it (project / repository), never fetched at run time
    published_name: str
    expected: str  # how it must load, in words
    check: str  # torch | onnx | prior_net
    containers: tuple[str, ...] = ()  # where the state dict may sit ('' = a bare state dict)
    strip_module: bool = False
    optional_prefixes: tuple[str, ...] = ()  # expected keys the file may lack or hold differently
    optional_suffixes: tuple[str, ...] = ()
    allow_extra: bool = False  # keys beyond the expected ones are fine (e.g. unused IR-50 stage 4)
    sha256: str | None = None  # as stated by the owners; None: they publish none
    size: int | None = None
    notes: str = ""


def _manifest(name: str) -> Callable[[], Shapes]:
    def load() -> Shapes:
        d = json.loads((MANIFESTS / f"{name}.json").read_text())
        return {k: tuple(v) for k, v in d["keys"].items()}

    load.__name__ = f"manifest_{name}"
    return load


def _meta_shapes(build: Callable[[], torch.nn.Module]) -> Shapes:
    with torch.device("meta"):
        m = build()
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _resnet18() -> Shapes:
    from torchvision.models import resnet18  # noqa: PLC0415

    return _meta_shapes(lambda: resnet18(weights=None))


def _convnext_b() -> Shapes:
    import timm  # noqa: PLC0415

    return _meta_shapes(lambda: timm.create_model("convnext_base", pretrained=False))


def _convnext_filter(state: Mapping[str, Any]) -> dict[str, Any]:
    """facebookresearch ConvNeXt names -> timm names (timm's own remap); timm files pass through."""
    if not any(k.startswith(("downsample_layers.", "stages.0.0.dwconv")) for k in state):
        return dict(state)
    import timm  # noqa: PLC0415
    from timm.models.convnext import checkpoint_filter_fn  # noqa: PLC0415

    with torch.device("meta"):
        model = timm.create_model("convnext_base", pretrained=False)
    return checkpoint_filter_fn(dict(state), model)


EXPECTED: dict[str, Callable[[], Shapes]] = {
    "mobilefacenet": _manifest("mobilefacenet"),
    "segface": _manifest("segface_swin_base_lapa"),
    "ir50": _manifest("ir50"),
    "orsanet": _manifest("orsanet_large_7classes"),
    "resnet18_msceleb": _resnet18,
    "resnet18_ijba": _resnet18,
    "convnext_b": _convnext_b,
}

CATALOGUE: tuple[WeightFile, ...] = (
    WeightFile(
        "mobilefacenet", "MobileFaceNet 68-point landmark net (ORSANet's landmark prior)",
        "priors.mobilefacenet_checkpoint", "models/pretrain/mobilefacenet_model_best.pth.tar",
        "cunjian/pytorch_face_landmark (GitHub; linked from its README)", "mobilefacenet_model_best.pth.tar",
        "333 tensors under 'state_dict', strict", "torch", ("state_dict",)),
    WeightFile(
        "segface", "SegFace Swin-B LaPa 224 face parser (ORSANet's segmentation prior)",
        "priors.segface_checkpoint", "models/pretrain/model_299.pt",
        "Hugging Face model repo kartiknarayan/SegFace (code: Kartik-3004/SegFace)",
        "swinb_lapa_224/model_299.pt", "466 tensors under 'state_dict_backbone', strict", "torch",
        ("state_dict_backbone",),
        notes="Hugging Face lists an LFS sha256 on the file's page; ferpipe has no copy of it, so "
              "compare it with the sha256 printed here by hand"),
    WeightFile(
        "ir50", "IR-50 face-recognition trunk (ORSANet / POSTER image backbone)",
        "train.model_kwargs.ir_checkpoint (model orsanet)", "models/pretrain/ir50.pth",
        "POSTER / POSTER V2 releases (zczcwh/POSTER, Talented-Q/POSTER_V2; face.evoLVe lineage)",
        "ir50.pth", "the 304 trunk tensors (plain or under 'state_dict'); unused stage-4 keys allowed",
        "torch", ("state_dict", ""), strip_module=True, allow_extra=True),
    WeightFile(
        "orsanet", "ORSANet release checkpoint (large, 7 classes)",
        "train.model_kwargs.checkpoint (model orsanet)", "models/pretrain/orsanet_release.pth",
        "Wenyuzhy/ORSANet-master (GitHub release; per-dataset file names)", "<dataset>_<acc>.pth",
        "1533 tensors under 'model_state_dict', 'module.'-prefixed, strict", "torch",
        ("model_state_dict", "state_dict", "model"), strip_module=True,
        notes="an 8-class (AffectNet-8) release differs in the head's shape and is reported wrong"),
    WeightFile(
        "resnet18_msceleb", "MS-Celeb-1M face-recognition ResNet-18 (DACL, Ada-DF, resnet18 baseline)",
        "train.model_kwargs.checkpoint (models dacl, ada_df, resnet18)", "models/pretrain/resnet18_msceleb.pth",
        "amirhfarzaneh/dacl and taylor-xy0827/Ada-DF (GitHub READMEs link it)", "resnet18_msceleb.pth",
        "torchvision ResNet-18 names under 'state_dict'; fc optional", "torch", ("state_dict", ""),
        strip_module=True, optional_prefixes=("fc.",), optional_suffixes=("num_batches_tracked",)),
    WeightFile(
        "resnet18_ijba", "RAN's face-recognition ResNet-18 (MS-Celeb-1M lineage)",
        "train.model_kwargs.checkpoint (model ran, checkpoint_layout ijba)",
        "models/pretrain/ijba_res18_naive.pth.tar",
        "kaiwang960112/Challenge-condition-FER-dataset (RAN release)", "ijba_res18_naive.pth.tar",
        "torchvision ResNet-18 names, 'module.'-prefixed, under 'state_dict'; fc optional", "torch",
        ("state_dict", ""), strip_module=True, optional_prefixes=("fc.",),
        optional_suffixes=("num_batches_tracked",)),
    WeightFile(
        "convnext_b", "ImageNet ConvNeXt-B (MFER backbone; the paper's MS-Celeb weights were never released)",
        "train.model_kwargs.checkpoint (model mfer)", "models/pretrain/convnext_base_1k_224_ema.pth",
        "facebookresearch/ConvNeXt (ImageNet-1K ConvNeXt-B 224), or timm's convnext_base",
        "convnext_base_1k_224_ema.pth", "ConvNeXt-B tensors under 'model' (facebookresearch names) or "
        "a timm state dict; the ImageNet classifier optional", "torch", ("model", "state_dict", ""),
        strip_module=True, optional_prefixes=("head.fc.",)),
    WeightFile(
        "insightface_2d106", "insightface 106-point landmark model (priors.backend=insightface)",
        "priors.insightface_dir + priors.insightface_model", "models/insightface/buffalo_l/2d106det.onnx",
        "deepinsight/insightface model zoo (model packs, e.g. buffalo_l)", "2d106det.onnx",
        "ONNX, input [N,3,192,192], output 212 values (106 x,y)", "onnx"),
    WeightFile(
        "prior_parser", "ferpipe's own 11-class LaPa face parser (priors.backend=ferpipe)",
        "priors.prior_nets_dir", "models/prior_nets/parser.pt",
        "ferpipe itself: written by `ferpipe prior-nets` (synthetic or LaPa)", "parser.pt",
        "ferpipe-prior-net/1 checkpoint, strict", "prior_net"),
    WeightFile(
        "prior_landmarks", "ferpipe's own 68-point landmark net (priors.backend=ferpipe)",
        "priors.prior_nets_dir", "models/prior_nets/landmarks.pt",
        "ferpipe itself: written by `ferpipe prior-nets` (synthetic or LaPa)", "landmarks.pt",
        "ferpipe-prior-net/1 checkpoint, strict", "prior_net"),
)


@dataclass
class WeightStatus:
    id: str
    what: str
    status: str  # ok | missing | truncated | wrong
    path: str
    param: str
    publisher: str
    published_name: str
    expected_size: str
    expected_sha256: str
    expected: str
    size: int | None = None
    sha256: str | None = None
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# where each file is, from params


def _from_params(params: Any, root: Path) -> dict[str, Path]:
    """The path params.yaml gives each entry (conventional ones where params name none)."""
    out = {w.id: root / w.default for w in CATALOGUE}
    pri = getattr(params, "priors", None)
    if pri is not None:
        models = root / "models"

        def rel(p: str) -> Path:
            return Path(p) if Path(p).is_absolute() else models / p

        out["mobilefacenet"] = rel(pri.mobilefacenet_checkpoint)
        out["segface"] = rel(pri.segface_checkpoint)
        out["prior_parser"] = rel(pri.prior_nets_dir) / "parser.pt"
        out["prior_landmarks"] = rel(pri.prior_nets_dir) / "landmarks.pt"
        if pri.insightface_dir:
            out["insightface_2d106"] = rel(pri.insightface_dir) / pri.insightface_model
    train = getattr(params, "train", None)
    kw = dict(getattr(train, "model_kwargs", None) or {})
    model = getattr(train, "model", None)
    by_model = {"orsanet": "orsanet", "dacl": "resnet18_msceleb", "ada_df": "resnet18_msceleb",
                "resnet18": "resnet18_msceleb", "mfer": "convnext_b",
                "ran": "resnet18_ijba" if kw.get("checkpoint_layout", "ijba") in ("ijba", "ran")
                else "resnet18_msceleb"}
    if kw.get("checkpoint") and model in by_model:
        p = Path(kw["checkpoint"])
        out[by_model[model]] = p if p.is_absolute() else root / p
    if kw.get("ir_checkpoint"):
        p = Path(kw["ir_checkpoint"])
        out["ir50"] = p if p.is_absolute() else root / p
    return out


# --------------------------------------------------------------------------------------------
# checks


def _is_truncation(path: Path, exc: BaseException) -> bool:
    msg = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in msg or "ran out of input" in msg:
        return True
    with open(path, "rb") as f:
        zip_magic = f.read(4) == b"PK\x03\x04"
    # A torch zip that starts right but has no central directory stopped early.
    return zip_magic and not zipfile.is_zipfile(path)


def _pick_state(obj: Any, w: WeightFile) -> tuple[Mapping[str, Any] | None, str]:
    if not isinstance(obj, Mapping):
        return None, f"a {type(obj).__name__}, not a dict"
    for key in w.containers:
        if key == "":
            if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
                return obj, "a bare state dict"
        elif isinstance(obj.get(key), Mapping):
            return obj[key], f"under {key!r}"
    return None, f"no state dict under {[c for c in w.containers if c]} (top-level keys {sorted(map(str, obj))[:8]})"


def _compare(state: Mapping[str, Any], expected: Shapes, w: WeightFile) -> dict[str, list[str]]:
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    opt = lambda k: k.startswith(w.optional_prefixes) or k.endswith(w.optional_suffixes)  # noqa: E731
    req = {k: s for k, s in expected.items() if not opt(k)}
    missing = [k for k in req if k not in shapes]
    wrong = [f"{k}: {list(shapes[k])} (expected {list(s)})" for k, s in expected.items()
             if k in shapes and shapes[k] != s and not k.startswith(w.optional_prefixes)]
    extra = [k for k in shapes if k not in expected]
    return {"missing": missing, "shape": wrong, "extra": extra}


@lru_cache(maxsize=None)
def _expected(entry_id: str) -> Shapes:
    return EXPECTED[entry_id]()


def _identify(state: Mapping[str, Any], exclude: str) -> str | None:
    """The catalogue entry whose tensors this state matches (>= 95% of names and shapes)."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    for w in CATALOGUE:
        if w.id == exclude or w.id not in EXPECTED:
            continue
        exp = _expected(w.id)
        cand = strip_module_prefix(shapes)
        hit = sum(1 for k, s in exp.items() if cand.get(k) == s)
        if hit >= 0.95 * len(exp) and len(cand) <= 1.3 * len(exp):
            return f"{w.id} ({w.what})"
    return None


def _check_torch(path: Path, w: WeightFile) -> tuple[str, str, dict[str, Any]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure mode gets classified below
        if _is_truncation(path, exc):
            return "truncated", f"incomplete file (cannot be read to the end: {str(exc).splitlines()[0][:160]})", {}
        return "wrong", f"not loadable with torch.load(weights_only=True): {str(exc).splitlines()[0][:200]}", {}
    state, where = _pick_state(obj, w)
    if state is None:
        nested = [v for v in (obj.values() if isinstance(obj, Mapping) else ())
                  if isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values())]
        other = next((o for o in map(lambda v: _identify(v, w.id), nested) if o), None)
        return "wrong", (f"another checkpoint: this is {other}, not {w.id}; " if other else "") + where, {}
    if w.strip_module:
        state = strip_module_prefix(state)
    if w.id == "convnext_b":
        try:
            state = _convnext_filter(state)
        except Exception as exc:  # noqa: BLE001 - timm's remap reshapes: another variant fails here
            return "wrong", f"not a ConvNeXt-B state dict ({type(exc).__name__}: {exc})", {}
    diff = _compare(state, _expected(w.id), w)
    n = sum(1 for v in state.values() if isinstance(v, torch.Tensor))
    info = {"tensors": n, "found": where}
    bad = diff["missing"] or diff["shape"] or (diff["extra"] and not w.allow_extra)
    if bad:
        other = _identify(state, w.id)
        parts = [f"{len(diff['missing'])} expected tensors absent (e.g. {diff['missing'][:3]})" if diff["missing"] else "",
                 f"{len(diff['shape'])} of another shape (e.g. {diff['shape'][:2]})" if diff["shape"] else "",
                 f"{len(diff['extra'])} unexpected (e.g. {diff['extra'][:3]})"
                 if diff["extra"] and not w.allow_extra else ""]
        msg = "another checkpoint: " + "; ".join(p for p in parts if p)
        if other:
            msg = f"another checkpoint: this is {other}, not {w.id}; " + "; ".join(p for p in parts if p)
        return "wrong", msg, info
    if diff["extra"]:
        info["extra_ignored"] = len(diff["extra"])
    return "ok", f"{n} tensors {where}; every required one of the {len(_expected(w.id))} expected names and shapes matches", info


def _check_onnx(path: Path, w: WeightFile) -> tuple[str, str, dict[str, Any]]:
    import onnx  # noqa: PLC0415
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except DecodeError as exc:
        return "truncated", f"incomplete or corrupt ONNX file ({exc})", {}
    except Exception as exc:  # noqa: BLE001
        return "wrong", f"not a valid ONNX model: {str(exc).splitlines()[0][:200]}", {}

    def dims(v):
        return [d.dim_value or d.dim_param or "?" for d in v.type.tensor_type.shape.dim]

    inits = {i.name for i in model.graph.initializer}
    ins = [dims(i) for i in model.graph.input if i.name not in inits]
    outs = [dims(o) for o in model.graph.output]
    info = {"inputs": ins, "outputs": outs}
    ok_in = len(ins) == 1 and ins[0][1:] == [3, 192, 192]
    ok_out = len(outs) >= 1 and outs[0][-1] == 212
    if not (ok_in and ok_out):
        return "wrong", f"another ONNX model: input {ins}, outputs {outs} (a 2d106det has [N,3,192,192] -> 212)", info
    return "ok", "ONNX model checks; input [N,3,192,192], output 212 (106 x,y)", info


def _check_prior_net(path: Path, w: WeightFile) -> tuple[str, str, dict[str, Any]]:
    from ferpipe.errors import FerpipeError  # noqa: PLC0415
    from ferpipe.priors.nets import LANDMARK_ARCH, PARSER_ARCH, load_prior_net  # noqa: PLC0415

    arch = PARSER_ARCH if w.id == "prior_parser" else LANDMARK_ARCH
    try:
        net = load_prior_net(path, arch)
    except FerpipeError as exc:
        cause = exc.__cause__
        if cause is not None and _is_truncation(path, cause):
            return "truncated", f"incomplete file ({str(cause).splitlines()[0][:160]})", {}
        return "wrong", str(exc)[:300], {}
    except RuntimeError as exc:  # load_state_dict: another architecture
        return "wrong", f"does not fit {arch}: {str(exc).splitlines()[0][:200]}", {}
    dom = net.domain + ("" if net.domain_recorded else " (not recorded: read as synthetic)")
    return "ok", f"trained on {dom}", {"domain": net.domain, "domain_recorded": net.domain_recorded}


_CHECKS = {"torch": _check_torch, "onnx": _check_onnx, "prior_net": _check_prior_net}


def check_file(w: WeightFile, path: Path, root: Path, sha: bool = True) -> WeightStatus:
    try:
        shown = str(path.relative_to(root))
    except ValueError:
        shown = str(path)
    st = WeightStatus(id=w.id, what=w.what, status="missing", path=shown, param=w.param,
                      publisher=w.publisher, published_name=w.published_name,
                      expected_size=str(w.size) if w.size else NOT_PUBLISHED,
                      expected_sha256=w.sha256 or NOT_PUBLISHED, expected=w.expected)
    if w.check == "prior_net":
        st.expected_size = st.expected_sha256 = "n/a (ferpipe's own output)"
    if not path.is_file():
        st.detail = (f"no file at {shown}; run `ferpipe prior-nets` to write it" if w.check == "prior_net"
                     else f"no file at {shown}; ferpipe never downloads it: obtain it from {w.publisher}")
        return st
    st.size = path.stat().st_size
    if sha:
        from ferpipe.shards import sha256_file  # noqa: PLC0415

        st.sha256 = sha256_file(path)
    if st.size == 0:
        st.status, st.detail = "truncated", "empty file (0 bytes)"
        return st
    if w.size and st.size < w.size:
        st.status, st.detail = "truncated", f"{st.size} bytes, the owners state {w.size}"
        return st
    st.status, st.detail, st.info = _CHECKS[w.check](path, w)
    if st.status == "ok" and w.sha256 and st.sha256 and st.sha256 != w.sha256:
        st.status, st.detail = "wrong", f"loads, but its sha256 differs from the published {w.sha256}"
    return st


def check_weights(params: Any = None, root: str | os.PathLike = ".", sha: bool = True) -> list[WeightStatus]:
    """Every catalogue entry's status, at the paths ``params`` (a :class:`Params` or None) gives."""
    root = Path(root)
    paths = _from_params(params, root)
    return [check_file(w, paths[w.id], root, sha) for w in CATALOGUE]


def format_report(rows: list[WeightStatus]) -> str:
    """Plain text, one block per file."""
    lines = []
    for r in rows:
        lines.append(f"[{r.status}] {r.id}: {r.what}")
        lines.append(f"    path       {r.path}   ({r.param})")
        lines.append(f"    published  {r.publisher}; file {r.published_name}")
        lines.append(f"    expected   {r.expected}; size {r.expected_size}, sha256 {r.expected_sha256}")
        if r.size is not None:
            lines.append(f"    found      {r.size:,} bytes" + (f", sha256 {r.sha256}" if r.sha256 else ""))
        lines.append(f"    {'check' if r.status != 'missing' else 'note'}      {r.detail}")
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "missing", "truncated", "wrong")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
