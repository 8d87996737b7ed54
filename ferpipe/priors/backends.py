"""Prior backends: what turns aligned face crops into cached priors.

Every backend gets a batch of aligned RGB uint8 crops (one view: original or flipped image)
and returns, for ``features``, ``(lmk [B,C_l,7,7], seg [B,C_s,7,7])`` float16 arrays and, for
``maps``, ``(points [B,68,2] float32 pixels of the crop, parsing [B,H,W] uint8 LaPa)``.

The model input is always built the same way: the crop, PIL-bilinear resized to the model's
input side, ``ToTensor``, ImageNet mean/std (:func:`model_input`). :meth:`describe` says which
tensors were used, for the sample json.

- :class:`OfficialBackend`: MobileFaceNet (``mobilefacenet_model_best.pth.tar``, strict) and
  SegFace Swin-B LaPa (``model_299.pt``, strict). ORSANet's tensor: the crop at
  ``input_size`` (224); SegFace sees it whole, MobileFaceNet sees its nearest-neighbour 112
  subsample (even rows/columns, as ORSANet's ``F.interpolate``). ``features``: conv_6_sep
  [512,7,7] and Swin stage 4 before the final norm [1024,7,7]. ``maps``: SegFace's argmax
  (logits bilinear-resized to the crop size first when it is not 224) and MobileFaceNet's 136
  outputs read as 68 (x, y) pairs normalised to [0,1] of its input (cunjian's convention:
  pixel x = u * side - 0.5 here). Note the net was trained on square crops of the MTCNN box
  enlarged 1.2x, a looser framing than the ArcFace crop it gets here (as in ORSANet).
- :class:`FerpipeBackend`: ferpipe's own nets (:mod:`.nets`), input the crop PIL-bilinear
  resized to their 112; ``features`` are their encoders' last maps [192,7,7] each.
- :class:`InsightfaceBackend`: an insightface 106-point landmark ONNX model (``2d106det``),
  run with onnxruntime through insightface's own ``Landmark`` wrapper on the whole crop as the
  face box; 106 -> 68 by :mod:`.insightface106`, parsing rasterised from the 68 points
  (:func:`ferpipe.priors.conventions.parsing_from_68`; no hair class). ``maps`` only.
- :class:`Mtcnn5Backend`: facenet-pytorch's MTCNN O-Net (shipped in its wheel) gives 5 points
  on the crop; a mean face is bent onto them (:mod:`.five_point`). ``maps`` only; follows pose,
  eye and mouth-corner positions, not brows or an open mouth.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ferpipe.devices import resolve_device
from ferpipe.errors import ConfigError, MissingCheckpointError
from ferpipe.priors.conventions import IMAGENET_MEAN, IMAGENET_STD, NUM_POINTS, parsing_from_68
from ferpipe.priors.params import PriorsParams
from ferpipe.shards import sha256_file

RESIZE = "PIL-bilinear"
MOBILEFACENET_WHAT = ("MobileFaceNet 68-point landmark net (cunjian/pytorch_face_landmark, "
                      "mobilefacenet_model_best.pth.tar), ORSANet's landmark prior")
SEGFACE_WHAT = ("SegFace Swin-B LaPa 224 face parser (HF kartiknarayan/SegFace, "
                "swinb_lapa_224/model_299.pt), ORSANet's segmentation prior")


def model_input(crops: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """Aligned uint8 RGB crops -> [B,3,size,size]: PIL bilinear resize, /255, ImageNet norm."""
    arr = []
    for c in crops:
        im = Image.fromarray(np.ascontiguousarray(c))
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        arr.append(np.asarray(im))
    x = torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def resolve_model_path(models_dir: str | os.PathLike, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else Path(models_dir) / p


def _norm_desc(size: int) -> dict[str, Any]:
    return {"input_size": size, "resize": RESIZE,
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}


class PriorBackend:
    name = "base"
    kinds: tuple[str, ...] = ("features", "maps")

    def __init__(self, params: PriorsParams):
        if params.kind not in self.kinds:
            raise ConfigError(f"priors.backend={self.name} cannot produce priors.kind="
                              f"{params.kind!r}; it supports {list(self.kinds)}")
        self.params = params
        self.device = resolve_device(params.device, "priors.device")

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def features(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def maps(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def _logits_to_labels(logits: torch.Tensor, h: int, w: int) -> np.ndarray:
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    return logits.argmax(1).to(torch.uint8).cpu().numpy()


def _points_px(u: np.ndarray, w: int, h: int) -> np.ndarray:
    return (u * np.array([w, h], np.float32) - 0.5).astype(np.float32)


class OfficialBackend(PriorBackend):
    name = "official"

    def __init__(self, params: PriorsParams, models_dir: str | os.PathLike):
        super().__init__(params)
        from ferpipe.models import create_model  # noqa: PLC0415

        self.mfn_path = resolve_model_path(models_dir, params.mobilefacenet_checkpoint)
        self.seg_path = resolve_model_path(models_dir, params.segface_checkpoint)
        for path, what in ((self.mfn_path, MOBILEFACENET_WHAT), (self.seg_path, SEGFACE_WHAT)):
            if not path.is_file():
                raise MissingCheckpointError(path, what=what, where="models/pretrain/")
        self.mfn = create_model("mobilefacenet", checkpoint=self.mfn_path).eval().to(self.device)
        self.seg = create_model("segface_swin_b_lapa", checkpoint=self.seg_path).eval().to(self.device)
        self.sha = {"mobilefacenet": sha256_file(self.mfn_path), "segface": sha256_file(self.seg_path)}

    def describe(self) -> dict[str, Any]:
        s = self.params.input_size
        return {"backend": self.name, "checkpoints": {
                    "mobilefacenet": {"file": self.mfn_path.name, "sha256": self.sha["mobilefacenet"]},
                    "segface": {"file": self.seg_path.name, "sha256": self.sha["segface"]}},
                **_norm_desc(s),
                "models": {"lmk": {"net": "mobilefacenet", "input": f"nearest {s}->112 subsample",
                                   "input_size": 112, "output": "conv_6_sep", "channels": 512},
                           "seg": {"net": "segface_swin_b_lapa", "input_size": s,
                                   "output": "features[7] before norm", "channels": 1024}}}

    def _x(self, crops):
        x = model_input(crops, self.params.input_size).to(self.device)
        return x, F.interpolate(x, size=(112, 112), mode="nearest")

    @torch.inference_mode()
    def features(self, crops):
        x, x112 = self._x(crops)
        lmk = self.mfn(x112)[1]
        seg = self.seg.stage4(x)
        return lmk.half().cpu().numpy(), seg.half().cpu().numpy()

    @torch.inference_mode()
    def maps(self, crops):
        x, x112 = self._x(crops)
        h, w = crops[0].shape[:2]
        u = self.mfn(x112)[0].float().reshape(-1, NUM_POINTS, 2).cpu().numpy()
        return _points_px(u, w, h), _logits_to_labels(self.seg(x).logits, h, w)


class FerpipeBackend(PriorBackend):
    name = "ferpipe"

    def __init__(self, params: PriorsParams, models_dir: str | os.PathLike):
        super().__init__(params)
        from ferpipe.priors.nets import LANDMARK_ARCH, PARSER_ARCH, load_prior_net  # noqa: PLC0415
        from ferpipe.priors.training import LANDMARKS_FILE, PARSER_FILE  # noqa: PLC0415

        d = resolve_model_path(models_dir, params.prior_nets_dir)
        self.parser_path, self.lmk_path = d / PARSER_FILE, d / LANDMARKS_FILE
        self.parser = load_prior_net(self.parser_path, PARSER_ARCH).to(self.device)
        self.lmk = load_prior_net(self.lmk_path, LANDMARK_ARCH).to(self.device)
        self.sha = {"parser": sha256_file(self.parser_path), "landmarks": sha256_file(self.lmk_path)}

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "checkpoints": {
                    "parser": {"file": self.parser_path.name, "sha256": self.sha["parser"]},
                    "landmarks": {"file": self.lmk_path.name, "sha256": self.sha["landmarks"]}},
                **_norm_desc(self.parser.input_size),
                "models": {"lmk": {"net": "ferpipe_landmarks68", "input_size": self.lmk.input_size,
                                   "output": "encoder stage 4 (stride 16)",
                                   "channels": self.lmk.feature_channels},
                           "seg": {"net": "ferpipe_face_parser", "input_size": self.parser.input_size,
                                   "output": "encoder stage 4 (stride 16)",
                                   "channels": self.parser.feature_channels}}}

    @torch.inference_mode()
    def features(self, crops):
        lmk = self.lmk(model_input(crops, self.lmk.input_size).to(self.device))["features"]
        seg = self.parser(model_input(crops, self.parser.input_size).to(self.device))["features"]
        return lmk.half().cpu().numpy(), seg.half().cpu().numpy()

    @torch.inference_mode()
    def maps(self, crops):
        h, w = crops[0].shape[:2]
        u = self.lmk(model_input(crops, self.lmk.input_size).to(self.device))["points"]
        logits = self.parser(model_input(crops, self.parser.input_size).to(self.device))["logits"]
        return _points_px(u.float().cpu().numpy(), w, h), _logits_to_labels(logits, h, w)


class InsightfaceBackend(PriorBackend):
    name = "insightface"
    kinds = ("maps",)

    def __init__(self, params: PriorsParams, models_dir: str | os.PathLike):
        super().__init__(params)
        if not params.insightface_dir:
            raise ConfigError("priors.backend is 'insightface' but priors.insightface_dir is not "
                              "set: point it at an insightface model pack directory (e.g. "
                              "models/insightface/buffalo_l) holding priors.insightface_model")
        d = resolve_model_path(models_dir, params.insightface_dir)
        self.path = d / params.insightface_model
        if not self.path.is_file():
            raise MissingCheckpointError(self.path, what="insightface 106-point landmark model "
                                         "(2d106det.onnx from an insightface model pack)",
                                         where="models/insightface/<pack>/")
        import onnxruntime  # noqa: PLC0415
        from insightface.model_zoo.landmark import Landmark  # noqa: PLC0415

        so = onnxruntime.SessionOptions()
        if params.threads > 0:
            so.intra_op_num_threads = params.threads
        sess = onnxruntime.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        self.model = Landmark(model_file=str(self.path), session=sess)
        if self.model.lmk_num != 106 or self.model.lmk_dim != 2:
            raise ConfigError(f"{self.path}: a {self.model.lmk_num}-point {self.model.lmk_dim}D "
                              f"landmark model; the insightface backend needs 2D 106 points")
        self.sha = sha256_file(self.path)

    def describe(self) -> dict[str, Any]:
        s = int(self.model.input_size[0])
        return {"backend": self.name,
                "checkpoints": {"insightface_landmarks": {"file": self.path.name, "sha256": self.sha}},
                "input_size": s, "resize": "insightface face_align.transform (cv2.warpAffine "
                "bilinear), face box = the whole crop, 1.5x context",
                "normalisation": {"mean": [float(self.model.input_mean)] * 3,
                                  "std": [float(self.model.input_std)] * 3, "scale": "0-255 RGB"},
                "models": {"lmk": {"net": "insightface 2d106 -> iBUG 68 (geometric)"},
                           "seg": {"net": "polygons from the 68 points (no hair)"}}}

    def maps(self, crops):
        from insightface.app.common import Face  # noqa: PLC0415

        from ferpipe.priors.insightface106 import to_68  # noqa: PLC0415

        pts, maps = [], []
        for c in crops:
            h, w = c.shape[:2]
            face = Face(bbox=np.array([0, 0, w, h], np.float32))
            p106 = self.model.get(np.ascontiguousarray(c[:, :, ::-1]), face)  # it wants BGR
            p68 = to_68(np.asarray(p106, np.float64)[:, :2])
            pts.append(p68.astype(np.float32))
            maps.append(parsing_from_68(p68, (h, w)))
        return np.stack(pts), np.stack(maps)


class Mtcnn5Backend(PriorBackend):
    """facenet-pytorch's MTCNN O-Net (weights inside its wheel: works offline on real faces)
    on the whole aligned crop as the face box -> 5 points -> a mean face bent onto them
    (:func:`ferpipe.priors.five_point.face_from_5`) -> parsing from those 68 points. ``maps`` only;
    see :mod:`ferpipe.priors.five_point` for what 5 points can and cannot show."""

    name = "mtcnn5"
    kinds = ("maps",)
    ONET_SIDE = 48

    def __init__(self, params: PriorsParams, models_dir: str | os.PathLike):
        super().__init__(params)
        import facenet_pytorch  # noqa: PLC0415
        from facenet_pytorch.models.mtcnn import ONet  # noqa: PLC0415

        self.path = Path(facenet_pytorch.__file__).parent / "data" / "onet.pt"
        if not self.path.is_file():
            raise MissingCheckpointError(self.path, what="MTCNN O-Net weights shipped inside the "
                                         "facenet-pytorch wheel (reinstall facenet-pytorch)",
                                         where="site-packages/facenet_pytorch/data/")
        self.onet = ONet(pretrained=True).eval().to(self.device)
        self.sha = sha256_file(self.path)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name,
                "checkpoints": {"mtcnn_onet": {"file": "facenet_pytorch/data/onet.pt", "sha256": self.sha}},
                "input_size": self.ONET_SIDE, "resize": "torch area interpolation (as facenet-pytorch)",
                "normalisation": {"mean": [127.5] * 3, "std": [128.0] * 3, "scale": "0-255 RGB"},
                "models": {"lmk": {"net": "MTCNN O-Net 5 points -> mean face bent onto them (68)"},
                           "seg": {"net": "polygons from the 68 points (no hair)"}}}

    @torch.inference_mode()
    def five_points(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """[B,5,2] pixel points of the crops (the crop is the face box: x = u * W)."""
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().to(self.device)
        x = F.interpolate(x, size=(self.ONET_SIDE, self.ONET_SIDE), mode="area")
        _, lm, _ = self.onet((x - 127.5) * 0.0078125)
        u = lm.float().cpu().numpy()
        h, w = crops[0].shape[:2]
        return np.stack([u[:, :5] * w, u[:, 5:] * h], axis=-1)

    def maps(self, crops):
        from ferpipe.priors.five_point import face_from_5  # noqa: PLC0415

        h, w = crops[0].shape[:2]
        pts = [face_from_5(p5) for p5 in self.five_points(crops)]
        return (np.stack(pts).astype(np.float32),
                np.stack([parsing_from_68(p, (h, w)) for p in pts]))


def build_backend(params: PriorsParams, models_dir: str | os.PathLike) -> PriorBackend:
    cls = {"official": OfficialBackend, "ferpipe": FerpipeBackend,
           "insightface": InsightfaceBackend, "mtcnn5": Mtcnn5Backend}[params.backend]
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    return cls(params, models_dir)
