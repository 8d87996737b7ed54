"""The prior-nets stage: train ferpipe's small parser and landmark net, evaluate, save.

Outputs (``models/prior_nets/``): ``parser.pt``, ``landmarks.pt`` (see :mod:`.nets`) and
``metrics.json`` (held-out mIoU, per-class IoU, NME normalised by the outer-eye-corner
distance, clean and with a random grey occluder, plus the training set-up).

Deterministic: weights are initialised under a forked, seeded global RNG (restored after),
batches come from a seeded ``torch.Generator`` and augmentations from ``default_rng``. Same
params and thread count give the same weights.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ferpipe.priors.conventions import (
    IBUG68_FLIP,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAPA_FLIP,
    NUM_CLASSES,
    inter_ocular,
)
from ferpipe.priors.data import FaceSet, lapa_faces, synthetic_faces
from ferpipe.priors.nets import PriorNet, save_prior_net
from ferpipe.priors.params import PriorNetsParams
from ferpipe.progress import Progress, as_progress
from ferpipe.report import Artifact, markdown, markdown_table, table

PARSER_FILE = "parser.pt"
LANDMARKS_FILE = "landmarks.pt"
METRICS_FILE = "metrics.json"


@dataclass
class PriorNetsReport:
    out_dir: str
    source: str
    n_train: int
    n_test: int
    metrics: dict[str, Any]
    seconds: float
    seconds_by_part: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        m = self.metrics
        return (f"prior-nets ({self.source}, {self.n_train} train / {self.n_test} held-out) "
                f"in {self.seconds:.0f}s -> {self.out_dir}\n"
                f"  parser mIoU {m['parser']['miou']:.3f} (occluded {m['parser_occluded']['miou']:.3f})\n"
                f"  landmarks NME {m['landmarks']['nme']:.4f} (occluded "
                f"{m['landmarks_occluded']['nme']:.4f}), inter-ocular")

    def artifacts(self) -> list[Artifact]:
        """The held-out metrics, clean and occluded, and the parser's per-class IoU."""
        m = self.metrics
        rows = [{"metric": "mIoU", "clean": round(m["parser"]["miou"], 4),
                 "occluded": round(m["parser_occluded"]["miou"], 4)},
                {"metric": "pixel accuracy", "clean": round(m["parser"]["pixel_accuracy"], 4),
                 "occluded": round(m["parser_occluded"]["pixel_accuracy"], 4)},
                {"metric": "NME (inter-ocular)", "clean": round(m["landmarks"]["nme"], 4),
                 "occluded": round(m["landmarks_occluded"]["nme"], 4)},
                {"metric": "landmark failures (NME > 0.10)", "clean": m["landmarks"]["failure_rate_0.10"],
                 "occluded": m["landmarks_occluded"]["failure_rate_0.10"]}]
        iou = [{"class": c, "iou": v, "iou_occluded": m["parser_occluded"]["iou"][c]}
               for c, v in m["parser"]["iou"].items()]
        return [table(("prior-nets", "metrics"), rows, f"held-out {self.source} faces ({self.n_test})"),
                markdown(("prior-nets", "per-class-iou"),
                         f"# Prior parser: per-class IoU\n\n{markdown_table(iou, ['class', 'iou', 'iou_occluded'])}\n",
                         "per-class IoU on held-out faces, clean and occluded")]


# --------------------------------------------------------------------------------------------
# tensors and augmentation


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,S,S,3] -> ImageNet-normalised float [N,3,S,S]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _augment(imgs: np.ndarray, labs: np.ndarray, pts: np.ndarray, rng: np.random.Generator):
    """Flip (p 0.5, with the flip convention), brightness/contrast/colour jitter."""
    imgs, labs, pts = imgs.copy(), labs.copy(), pts.copy()
    flip = rng.random(len(imgs)) < 0.5
    for i in np.flatnonzero(flip):
        imgs[i] = imgs[i][:, ::-1]
        labs[i] = LAPA_FLIP[labs[i][:, ::-1]]
        p = pts[i].copy()
        p[:, 0] = 1.0 - p[:, 0]  # normalised: x' = (S-1-px + 0.5)/S = 1 - x
        pts[i] = p[IBUG68_FLIP]
    gain = rng.uniform(0.7, 1.3, size=(len(imgs), 1, 1, 3)) * rng.uniform(0.8, 1.2, (len(imgs), 1, 1, 1))
    bias = rng.uniform(-25, 25, size=(len(imgs), 1, 1, 1))
    f = imgs.astype(np.float32)
    mean = f.mean(axis=(1, 2, 3), keepdims=True)
    f = (f - mean) * gain + mean + bias
    return np.clip(f, 0, 255).astype(np.uint8), labs, pts


def occlude(images: np.ndarray, seed: int) -> np.ndarray:
    """A seeded grey box over 20-35% of each crop's area, centred on the inner face."""
    rng = np.random.default_rng(seed)
    out = images.copy()
    s = images.shape[1]
    for i in range(len(out)):
        area = rng.uniform(0.2, 0.35) * s * s
        ar = rng.uniform(0.5, 2.0)
        w = int(min(s, math.sqrt(area * ar)))
        h = int(min(s, area / max(w, 1)))
        cx, cy = rng.uniform(0.3, 0.7) * s, rng.uniform(0.35, 0.8) * s
        x0, y0 = int(max(0, cx - w / 2)), int(max(0, cy - h / 2))
        out[i, y0:y0 + h, x0:x0 + w] = rng.integers(60, 200)
    return out


# --------------------------------------------------------------------------------------------
# metrics


def confusion(pred: np.ndarray, target: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """Pixel confusion matrix, rows = ground truth, columns = prediction."""
    from sklearn.metrics import confusion_matrix  # noqa: PLC0415

    return confusion_matrix(target.ravel(), pred.ravel(), labels=np.arange(n))


def parsing_metrics(conf: np.ndarray) -> dict[str, Any]:
    """mIoU over the classes present in the ground truth (LaPa's usual convention keeps
    background in the mean), per-class IoU and pixel accuracy."""
    from ferpipe.models.segface import LAPA_CLASSES  # noqa: PLC0415

    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {"miou": float(np.nanmean(np.where(present, iou, np.nan))),
            "iou": {c: (None if not present[i] else round(float(iou[i]), 4))
                    for i, c in enumerate(LAPA_CLASSES)},
            "pixel_accuracy": float(tp.sum() / max(conf.sum(), 1))}


def nme(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean point error / outer-eye-corner distance, per image then averaged."""
    err = np.linalg.norm(pred - target, axis=-1).mean(-1) / np.maximum(inter_ocular(target), 1e-6)
    return {"nme": float(err.mean()), "nme_median": float(np.median(err)),
            "failure_rate_0.10": float((err > 0.10).mean())}


@torch.inference_mode()
def predict(net: PriorNet, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Parser: uint8 labels [N,S,S]; landmark net: normalised points [N,68,2]."""
    net.eval()
    outs = []
    for i in range(0, len(images), batch):
        o = net(to_input(images[i:i + batch]))
        outs.append(o["logits"].argmax(1).to(torch.uint8).numpy() if net.task == "parser"
                    else o["points"].numpy())
    return np.concatenate(outs)


def evaluate(parser: PriorNet, lmk: PriorNet, test: FaceSet, occlusion_seed: int) -> dict:
    s = test.images.shape[1]
    out = {}
    for tag, imgs in (("", test.images), ("_occluded", occlude(test.images, occlusion_seed))):
        out["parser" + tag] = parsing_metrics(confusion(predict(parser, imgs), test.parsing))
        out["landmarks" + tag] = nme(predict(lmk, imgs) * s, test.points * s)
    return out


# --------------------------------------------------------------------------------------------
# training


def _init_net(task: str, p: PriorNetsParams, seed: int) -> PriorNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PriorNet(task, p.widths, p.input_size)


def train_net(task: str, train: FaceSet, p: PriorNetsParams,
              log: Callable[[str], None] = print) -> tuple[PriorNet, dict[str, Any]]:
    """Train one net (AdamW, one-cycle LR) and return it with its loss history."""
    seed = p.seed + (0 if task == "parser" else 1)
    net = _init_net(task, p, seed)
    opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    steps_per_epoch = max(1, len(train) // p.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=p.epochs * steps_per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA06]))
    # Rare small classes (eyes, brows, inner mouth) would vanish under plain CE: weight by
    # inverse sqrt frequency, capped.
    freq = np.bincount(train.parsing.ravel(), minlength=NUM_CLASSES).astype(np.float64) + 1
    cw = torch.tensor(np.clip((freq.sum() / freq) ** 0.5, 1, 10) / 3.0, dtype=torch.float32)
    history = []
    t0 = time.perf_counter()
    for epoch in range(p.epochs):
        net.train()
        order = torch.randperm(len(train), generator=gen).numpy()
        total, n = 0.0, 0
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * p.batch_size:(b + 1) * p.batch_size])
            imgs, labs, pts = _augment(train.images[idx], train.parsing[idx], train.points[idx], rng)
            out = net(to_input(imgs))
            if task == "parser":
                target = torch.from_numpy(labs.astype(np.int64))
                loss = F.cross_entropy(out["logits"], target, weight=cw)
            else:
                loss = F.l1_loss(out["points"], torch.from_numpy(pts)) * p.input_size
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        history.append(round(total / max(n, 1), 5))
        log(f"prior-nets {task}: epoch {epoch + 1}/{p.epochs} loss {history[-1]:.4f} "
            f"({time.perf_counter() - t0:.0f}s)")
    return net.eval(), {"loss_history": history, "seconds": round(time.perf_counter() - t0, 2),
                        "steps": p.epochs * steps_per_epoch,
                        "images_per_second": round(p.epochs * steps_per_epoch * p.batch_size
                                                   / max(time.perf_counter() - t0, 1e-9), 1)}


def load_faces(p: PriorNetsParams, work_dir: Path, root: Path,
               log: Callable[[str], None] = print) -> tuple[FaceSet, FaceSet, dict[str, Any]]:
    jit = (p.jitter_scale, p.jitter_rotate_deg, p.jitter_shift)
    if p.source == "lapa":
        if not p.lapa_dir:
            from ferpipe.errors import ConfigError  # noqa: PLC0415

            raise ConfigError("prior_nets.source is 'lapa' but prior_nets.lapa_dir is not set")
        lapa = Path(p.lapa_dir) if Path(p.lapa_dir).is_absolute() else root / p.lapa_dir
        train = lapa_faces(lapa, "train", p.aligned_size, p.margin, p.input_size, p.seed, jit)
        test = lapa_faces(lapa, "test", p.aligned_size, p.margin, p.input_size, p.seed, (0, 0, 0))
        return train, test, {"lapa_dir": str(lapa)}
    from ferpipe.sources.synthetic import render_archive  # noqa: PLC0415

    t0 = time.perf_counter()
    res = render_archive(work_dir, n_per_class=p.synthetic_n_per_class, size=p.synthetic_size,
                         seed=p.synthetic_seed, test_fraction=p.synthetic_test_fraction,
                         workers=p.workers, name="prior_nets_synthetic",
                         difficulty=p.synthetic_difficulty, progress=False)
    log(f"prior-nets: rendered {res.n_images} synthetic faces in {time.perf_counter() - t0:.0f}s")
    train = synthetic_faces(res.archive, res.groundtruth, p.aligned_size, p.margin, p.input_size,
                            p.seed, jit, "train")
    test = synthetic_faces(res.archive, res.groundtruth, p.aligned_size, p.margin, p.input_size,
                           p.seed, (0, 0, 0), "test")
    return train, test, {"synthetic_seed": p.synthetic_seed, "n_per_class": p.synthetic_n_per_class,
                         "difficulty": p.synthetic_difficulty}


def prior_nets_stage(params: PriorNetsParams, out_dir: str | Path, root: str | Path = ".",
                     log: Callable[[str], None] = print) -> PriorNetsReport:
    """Train both nets on ``params.source`` and write parser.pt, landmarks.pt, metrics.json."""
    t0 = time.perf_counter()
    out_dir, root = Path(out_dir), Path(root)
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    parts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ferpipe-prior-nets-") as tmp:
        train, test, data_info = load_faces(params, Path(tmp), root, log)
    parts["data"] = round(time.perf_counter() - t0, 2)
    log(f"prior-nets: {len(train)} train / {len(test)} held-out faces at {params.input_size}px")
    parser, ptrain = train_net("parser", train, params, log)
    lmk, ltrain = train_net("landmarks", train, params, log)
    parts["train_parser"], parts["train_landmarks"] = ptrain["seconds"], ltrain["seconds"]
    t1 = time.perf_counter()
    metrics = evaluate(parser, lmk, test, occlusion_seed=params.seed + 17)
    parts["evaluate"] = round(time.perf_counter() - t1, 2)
    setup = {"source": params.source, "domain": params.source, **data_info,
             "n_train": len(train), "n_test": len(test),
             "input_size": params.input_size, "aligned_size": params.aligned_size,
             "margin": params.margin, "threads": torch.get_num_threads(),
             "params": params.model_dump(mode="json")}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_prior_net(parser, out_dir / PARSER_FILE, {"parser": metrics["parser"],
                   "parser_occluded": metrics["parser_occluded"]}, {**setup, **ptrain},
                   domain=params.source)
    save_prior_net(lmk, out_dir / LANDMARKS_FILE, {"landmarks": metrics["landmarks"],
                   "landmarks_occluded": metrics["landmarks_occluded"]}, {**setup, **ltrain},
                   domain=params.source)
    doc = {**metrics, "setup": setup, "train": {"parser": ptrain, "landmarks": ltrain},
           "nme_normaliser": "outer eye corners (iBUG 36-45)",
           "miou_resolution": params.input_size, "seconds_by_part": parts}
    from ferpipe.timings import write_report  # noqa: PLC0415

    # Timings to reports/timings/: metrics.json is a DVC metric, the same bytes on a rerun.
    write_report(out_dir / METRICS_FILE, doc, timings=root / "reports" / "timings" / "prior-nets" / METRICS_FILE)
    report = PriorNetsReport(out_dir=str(out_dir), source=params.source, n_train=len(train),
                             n_test=len(test), metrics=metrics,
                             seconds=round(time.perf_counter() - t0, 2), seconds_by_part=parts)
    log(report.summary())
    return report


class PriorNetsStage:
    """``ferpipe prior-nets``: train the parser and landmark nets into ``models/prior_nets``."""

    name = "prior-nets"

    def run(self, params, layout, progress: Progress | None = None) -> PriorNetsReport:
        return prior_nets_stage(params.prior_nets, layout.models / "prior_nets", root=layout.root,
                                log=as_progress(progress).message)


PRIOR_NETS = PriorNetsStage()
