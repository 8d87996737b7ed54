"""Training and evaluation data from priors shards: one explicit WebDataset pipeline each.

Shards (written by the priors stage, :mod:`ferpipe.priors.stage`): ``<dir>/<split>-NNNNNN.tar`` and
``<split>_index.json``. A sample holds ``jpg`` (aligned face), ``cls`` (canonical label),
``json`` (metadata: ``priors`` {kind, input_size, mean, std, ...}, the label space) and the
cached priors of two views, index 0 = the image as stored, 1 = computed from its horizontal
mirror:

- kind ``features``: ``lmk.npy`` fp16 [2,C_l,g,g], ``seg.npy`` fp16 [2,C_s,g,g]
- kind ``maps``: ``landmarks.npy`` fp32 [2,68,2] (pixels), ``parsing.png`` / ``parsing_flip.png``
- kind ``none``: image only (models without priors).

The training pipeline, stage by stage (:func:`train_pipeline`)::

    shard list (seeded per-epoch shuffle)            SHARD_SHUFFLE
      -> split by node (rank) and by worker          disjoint slots; see _slot_filter
      -> tar -> samples
      -> rebalance: exact per-epoch draw counts      REBALANCE (ImbalancedDatasetSampler semantics)
      -> sample shuffle (seeded buffer)              SHUFFLE_BUFFER / SHUFFLE_INITIAL
      -> decode + flip (cached flipped view) + random erasing (after normalisation)
      -> batch (in the worker)  -> WebLoader

Augmentation randomness is a pure function of (seed, epoch, key, repeat), never of the worker
layout or of the global RNG, so a resumed run sees exactly the batches an uninterrupted one does.

**Class rebalancing** (``sampler: rebalance``). Exact mode (one process, the default): an
in-memory index of (shard, key, label) is built once from the ``.cls`` members; each epoch
draws len(dataset) samples with replacement, weights 1/class-count (seeded by seed and epoch),
exactly torchsampler's ImbalancedDatasetSampler; the stream then emits each sample as many
times as it was drawn (0 drops it) and the shuffle buffer mixes the repeats. Resampled mode
(DDP): shards are resampled with replacement (``wds.ResampledShards``) and each sample is
accepted with probability w_c / max(w) (buffered acceptance), which yields the same class
distribution in expectation; ``.with_epoch`` fixes every rank's batch count.

**DDP**. Every rank gets a disjoint pool of data: whole shards when there are at least as many
shards as ranks (shard ``i`` goes to rank ``i % world``), else every rank reads all shards and
keeps the samples whose stable key hash falls in its slot. With resampled shards and
``.with_epoch(nbatches)`` every rank yields the same number of batches, so no rank runs dry
and hangs the others' all-reduce.

**Random erasing, "clean-prior" variant** (``erase_priors: clean``, the default). The release
erases the image *before* the frozen prior nets see it, so both priors see the box. With cached
priors that is impossible: the box is erased in the image only and the priors stay clean
(computed from the unerased face). Occluded content therefore still reaches the model through
the prior path and erasing is a weaker augmentation than in the release. ``erase_priors: zero``
approximates the release: features priors have every grid cell that overlaps the box zeroed;
maps priors mark landmarks inside the box as missing (NaN, an empty heatmap) and parsing pixels
inside it as "no class" (255).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import itertools
import json
import math
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
import webdataset as wds
from PIL import Image

from ferpipe import shards as _shards
from ferpipe.errors import DataError
from ferpipe.labels import label_space_record
from ferpipe.orphans import exit_with

# --- named constants (the release's values) ---------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHARD_SHUFFLE = True            # shard order reshuffled every epoch (seeded)
SHUFFLE_BUFFER = 1000           # sample shuffle buffer (samples)
SHUFFLE_INITIAL = 100           # samples buffered before the first is emitted
FLIP_P = 0.5                    # RandomHorizontalFlip
ERASE_P = 0.5                   # RandomErasing, after normalisation, value 0
ERASE_SCALE = (0.02, 0.1)
ERASE_RATIO = (0.3, 3.3)
ERASE_VALUE = 0.0
PARSING_IGNORE = 255            # parsing value the models treat as "no class"
PRIOR_KINDS = ("features", "maps", "none")
SPLITS = ("train", "val", "test")


# --- what the shards hold -----------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSet:
    """One dataset's priors shards, probed once: kind, shapes, label space, counts, hashes."""

    root: Path
    prior_kind: str
    image_size: int
    label_space: dict[str, Any]
    counts: dict[str, int]
    index_sha256: dict[str, str]
    prior_meta: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # fill create_model kwargs (presets)

    @property
    def num_classes(self) -> int:
        return len(self.label_space["classes"])

    def urls(self, split: str) -> list[str]:
        return _shards.shard_urls(self.root, split)


def _first_sample(url: str) -> dict[str, bytes]:
    """{extension: bytes} of the shard's first sample (no member after it is read)."""
    with contextlib.closing(_shards.iter_tar_samples(url)) as samples:
        return next(samples, ("", {}))[1]


def probe_shards(root: str | Path, splits: Sequence[str] = SPLITS) -> ShardSet:
    """Read the split indexes and the first training sample; raise a clear error if unusable."""
    root = Path(root)
    counts, hashes = {}, {}
    for split in splits:
        p = _shards.index_path(root, split)
        if not p.is_file():
            raise DataError(f"no shard index {p}: run the priors stage for this dataset first "
                            f"(or point train.shards_dir at a directory holding {split}_index.json)")
        idx = json.loads(p.read_text())
        counts[split] = int(idx["totals"]["samples"])
        hashes[split] = _shards.sha256_file(p)
        if counts[split] == 0:
            raise DataError(f"{p}: split {split!r} has no samples")
    first = _first_sample(_shards.shard_urls(root, "train")[0])
    missing = [e for e in ("jpg", "cls", "json") if e not in first]
    if missing:
        raise DataError(f"{root}: training samples lack {missing}; expected jpg, cls, json + priors")
    meta = json.loads(first["json"])
    pri = dict(meta.get("priors") or {})
    kind = pri.get("kind") or ("features" if "lmk.npy" in first else "maps" if "landmarks.npy" in first
                               else "none")
    if kind not in PRIOR_KINDS:
        raise DataError(f"{root}: unknown priors kind {kind!r}; expected one of {PRIOR_KINDS}")
    need = {"features": ("lmk.npy", "seg.npy"), "maps": ("landmarks.npy", "parsing.png", "parsing_flip.png"),
            "none": ()}[kind]
    if [e for e in need if e not in first]:
        raise DataError(f"{root}: priors kind {kind!r} needs members {need}; first sample has {sorted(first)}")
    space = label_space_record(meta.get("label_space"))  # the align stage records a name ("basic7")
    if space is None:
        raise DataError(f"{root}: sample json has no label_space {{name, classes}}; a model without a "
                        f"label map cannot be evaluated")
    size = Image.open(io.BytesIO(first["jpg"])).size[0]
    facts: dict[str, Any] = {"prior_kind": kind, "image_size": size, "num_classes": len(space["classes"])}
    if kind == "features":
        lmk, seg = _shards.decode_npy(first["lmk.npy"]), _shards.decode_npy(first["seg.npy"])
        if lmk.ndim != 4 or seg.ndim != 4 or lmk.shape[0] != 2 or seg.shape[0] != 2:
            raise DataError(f"{root}: features priors must be [2,C,g,g] (two views), got lmk {lmk.shape} "
                            f"seg {seg.shape}")
        facts.update(lmk_channels=int(lmk.shape[1]), seg_channels=int(seg.shape[1]))
    return ShardSet(root=root, prior_kind=kind, image_size=size,
                    label_space=space,
                    counts=counts, index_sha256=hashes, prior_meta=pri, facts=facts)


# --- the in-memory index and the rebalancing draws --------------------------------------------


@dataclass(frozen=True)
class SampleIndex:
    """(shard, key, label) of every sample of a split, from the ``.cls`` members only."""

    urls: tuple[str, ...]
    shard: np.ndarray   # int32, position in urls
    keys: tuple[str, ...]
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.keys)

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)


def build_index(urls: Sequence[str]) -> SampleIndex:
    shard, keys, labels = [], [], []
    for i, url in enumerate(urls):
        with tarfile.open(url, "r") as tar:
            for m in tar:
                if m.name.endswith(".cls"):
                    shard.append(i)
                    keys.append(m.name[:-4])
                    labels.append(int(tar.extractfile(m).read()))
    return SampleIndex(tuple(urls), np.asarray(shard, np.int32), tuple(keys), np.asarray(labels, np.int64))


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """1 / class count per class (0 for absent classes), ImbalancedDatasetSampler's weights."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.where(counts > 0, 1.0 / counts, 0.0)


def epoch_draws(index: SampleIndex, num_classes: int, seed: int, epoch: int) -> dict[str, int]:
    """Per-key draw counts for one epoch: len(index) weighted draws with replacement."""
    w = class_weights(index.labels, num_classes)[index.labels]
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0xBA1]))
    picks = rng.choice(len(index), size=len(index), replace=True, p=w / w.sum())
    counts = np.bincount(picks, minlength=len(index))
    return {index.keys[i]: int(counts[i]) for i in np.flatnonzero(counts)}


# --- pipeline pieces ------------------------------------------------------------------------------


def _key_hash(key: str) -> int:
    return zlib.crc32(key.encode("utf-8"))


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _EpochShards(torch.utils.data.IterableDataset):
    """This rank's and worker's shards for one epoch, in a seeded order (exact mode)."""

    def __init__(self, urls: Sequence[str], seed: int, epoch: int, rank: int, world: int, shuffle: bool):
        self.urls, self.seed, self.epoch, self.rank, self.world = list(urls), seed, epoch, rank, world
        self.shuffle = shuffle

    def __iter__(self):
        urls = list(self.urls)
        if self.shuffle:
            np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 0x5A2D])).shuffle(urls)
        worker, workers = _worker()
        slots, slot = self.world * workers, self.rank * workers + worker
        if len(urls) >= slots:
            urls = urls[slot::slots]
        for u in urls:
            yield {"url": u}


# Pipeline stages are module-level generators bound with functools.partial, never closures:
# DataLoader workers start by forkserver, which pickles the pipeline.


def _rank_worker_seed(rank: int) -> int:
    return rank * 1000 + _worker()[0]


def _slot_filter_stage(src, n_urls: int, rank: int, world: int, per_worker: bool):
    worker, workers = _worker() if per_worker else (0, 1)
    slots, slot = world * workers, rank * workers + worker
    if n_urls >= slots:
        yield from src
        return
    for s in src:
        if _key_hash(s["__key__"]) % slots == slot:
            yield s


def _slot_filter(n_urls: int, rank: int, world: int, per_worker: bool):
    """Keep a sample only in its slot when there are fewer shards than slots (disjoint split)."""
    return functools.partial(_slot_filter_stage, n_urls=n_urls, rank=rank, world=world, per_worker=per_worker)


def _repeat_by_draws_stage(src, draws: dict[str, int] | None):
    for s in src:
        n = 1 if draws is None else draws.get(s["__key__"], 0)
        for r in range(n):
            yield {**s, "__repeat__": r}


def _repeat_by_draws(draws: dict[str, int] | None):
    return functools.partial(_repeat_by_draws_stage, draws=draws)


def _accept_by_weight_stage(src, label_weights: np.ndarray | None, seed: int, epoch: int, rank: int):
    worker, _ = _worker()
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, worker, 0xACC]))
    top = None if label_weights is None else float(label_weights.max())
    for n, s in enumerate(src):
        if top is not None and rng.random() >= label_weights[int(s["cls"])] / top:
            continue
        yield {**s, "__repeat__": n}  # distinct augmentation for every accepted draw


def _accept_by_weight(label_weights: np.ndarray | None, seed: int, epoch: int, rank: int):
    return functools.partial(_accept_by_weight_stage, label_weights=label_weights, seed=seed, epoch=epoch,
                             rank=rank)


def _seeded_shuffle_stage(src, bufsize: int, initial: int, seed: int, epoch: int, rank: int):
    worker, _ = _worker()
    return wds.filters._shuffle(src, bufsize, min(initial, bufsize),
                                seed=wds.utils.make_seed(seed, epoch, rank, worker, 0x5F))


def _seeded_shuffle(bufsize: int, initial: int, seed: int, epoch: int, rank: int):
    return functools.partial(_seeded_shuffle_stage, bufsize=bufsize, initial=initial, seed=seed, epoch=epoch,
                             rank=rank)


@dataclass(frozen=True)
class Augment:
    """Per-sample transform settings (resolved from the preset)."""

    prior_kind: str
    img_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    flip_p: float = FLIP_P
    erase_p: float = ERASE_P
    erase_scale: tuple[float, float] = ERASE_SCALE
    erase_ratio: tuple[float, float] = ERASE_RATIO
    erase_value: float = ERASE_VALUE
    erase_priors: str = "clean"   # clean | zero
    train: bool = True
    seed: int = 0
    epoch: int = 0
    # Crops (methods without priors): decode at ``resize_to`` (default img_size), then take
    # img_size crops. train_crop: none | five (one of FiveCrop's five at random, DACL) | ten
    # (all ten, stacked; the batch is flattened and labels repeated, Ada-DF on SFEW).
    # test_crop: none | center | ten (logits averaged over the ten).
    resize_to: int | None = None
    train_crop: str = "none"
    test_crop: str = "none"
    randaugment: str | None = None  # a timm RandAugment config string, e.g. rand-m5-n3-mstd0.5

    @property
    def crop(self) -> str:
        return self.train_crop if self.train else self.test_crop


def augment_for(config: dict[str, Any], prior_kind: str, train: bool = True) -> Augment:
    """The :class:`Augment` a training config (``TrainConfig.to_dict()``, as stored in every
    checkpoint) prescribes; evaluation of a checkpoint rebuilds its inputs from this."""
    c = config
    return Augment(prior_kind=prior_kind if c.get("priors", True) else "none", img_size=int(c.get("img_size", 224)),
                   mean=tuple(c.get("mean", IMAGENET_MEAN)), std=tuple(c.get("std", IMAGENET_STD)),
                   flip_p=float(c.get("flip_p", FLIP_P)), erase_p=float(c.get("erase_p", ERASE_P)),
                   erase_priors=c.get("erase_priors", "clean"), train=train, seed=int(c.get("seed", 0)),
                   resize_to=c.get("resize_to"), train_crop=c.get("train_crop", "none"),
                   test_crop=c.get("test_crop", "none"), randaugment=c.get("randaugment"))


def _decode_image(data: bytes, size: int) -> tuple[np.ndarray, int]:
    # OpenCV's libjpeg-turbo decode gives the same pixels as PIL's for the stages' 3-channel
    # JPEGs (both ISLOW IDCT, fancy upsampling; checked in tests/test_train_loader.py) in about half
    # the time. Anything it cannot read takes PIL's path.
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    else:
        rgb = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        if rgb.shape[:2] == (size, size):
            return rgb, size
        img = Image.fromarray(rgb)
    src = img.size[0]
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)  # the release's PIL-bilinear Resize
    return np.asarray(img, dtype=np.uint8), src


def _png(data: bytes) -> np.ndarray:
    a = _shards.decode_png(data)  # lossless: the same values as PIL's, ~1.5x faster
    if a is None or a.ndim != 2:
        a = np.asarray(Image.open(io.BytesIO(data)), dtype=np.uint8)
    return a


def _erase_box(rng: np.random.Generator, img: torch.Tensor, aug: Augment):
    """torchvision's ``RandomErasing.get_params`` step for step, drawing from a generator
    seeded per sample instead of the global RNG: the same boxes as seeding the global RNG and
    calling it (tests/test_train_loader.py), without ``fork_rng``'s state save/restore (~9x faster)."""
    g = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    img_h, img_w = img.shape[-2], img.shape[-1]
    area = img_h * img_w
    log_ratio = torch.log(torch.tensor(aug.erase_ratio))
    for _ in range(10):
        erase_area = area * torch.empty(1).uniform_(aug.erase_scale[0], aug.erase_scale[1], generator=g).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)).item()
        h = int(round(math.sqrt(erase_area * aspect_ratio)))
        w = int(round(math.sqrt(erase_area / aspect_ratio)))
        if not (h < img_h and w < img_w):
            continue
        i = torch.randint(0, img_h - h + 1, size=(1,), generator=g).item()
        j = torch.randint(0, img_w - w + 1, size=(1,), generator=g).item()
        return int(i), int(j), int(h), int(w)
    return 0, 0, int(img_h), int(img_w)


@functools.lru_cache(maxsize=16)
def _normalise_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: every uint8 value of each channel normalised by the very float32
    operations a per-pixel ``x * (1/255/std) - mean/std`` does, so a table look-up gives the same
    bits in one pass instead of four."""
    scale = np.float32(1.0 / 255.0) / np.asarray(std, np.float32)
    lut = np.arange(256, dtype=np.float32)[:, None] * scale - (np.asarray(mean, np.float32) / np.asarray(std, np.float32))
    lut = np.ascontiguousarray(lut.T.astype(np.float32))
    lut.flags.writeable = False
    return lut


CROP_MODES = ("none", "center", "five", "ten")


def _crops(img: np.ndarray, size: int, mode: str, rng: np.random.Generator) -> list[np.ndarray]:
    """torchvision's FiveCrop / TenCrop order: tl, tr, bl, br, centre (then their mirrors)."""
    h, w = img.shape[:2]
    if mode == "none":
        return [img]
    if size > min(h, w):
        raise DataError(f"crop {size} is larger than the decoded image {w}x{h}; set resize_to >= img_size")
    top, left = (h - size) // 2, (w - size) // 2
    centre = img[top:top + size, left:left + size]
    if mode == "center":
        return [centre]
    five = [img[:size, :size], img[:size, w - size:], img[h - size:, :size], img[h - size:, w - size:], centre]
    if mode == "five":
        return [five[int(rng.integers(0, 5))]]
    if mode == "ten":
        return five + [c[:, ::-1] for c in five]
    raise DataError(f"unknown crop mode {mode!r}; use one of {CROP_MODES}")


@functools.lru_cache(maxsize=8)
def _rand_augment(config: str, img_size: int):
    from timm.data.auto_augment import rand_augment_transform

    # The release's hparams: translate_const 117 (of 224) and the fill colour (124, 116, 104).
    return rand_augment_transform(config, {"translate_const": int(round(img_size * 117 / 224)),
                                           "img_mean": (124, 116, 104)})


def _apply_rand_augment(img: np.ndarray, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    import random

    # timm draws from Python's and numpy's global RNGs (op choice: np.random.choice): seed both
    # from the sample's own stream and put the caller's states back, so the result depends on
    # (seed, epoch, key, repeat) only.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        seed = int(rng.integers(0, 2**32 - 1))
        random.seed(seed)
        np.random.seed(seed)
        out = _rand_augment(aug.randaugment, aug.img_size)(Image.fromarray(np.ascontiguousarray(img)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return np.asarray(out, dtype=np.uint8)


def _augment_view(img: np.ndarray, aug: Augment, rng: np.random.Generator):
    """One uint8 crop -> normalised float [3,S,S], whether it was flipped, the erased box."""
    if aug.train and aug.randaugment:
        img = _apply_rand_augment(img, aug, rng)
    flip = aug.train and rng.random() < aug.flip_p
    erase = aug.train and rng.random() < aug.erase_p
    if flip:
        img = img[:, ::-1]
    # numpy, not torch: per-sample tensor ops pay torch's intra-op thread start-up on every call.
    lut = _normalise_lut(tuple(aug.mean), tuple(aug.std))
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    x = np.empty(chw.shape, np.float32)
    for c in range(chw.shape[0]):
        np.take(lut[c], chw[c], out=x[c])
    box = None
    if erase:
        i, j, h, w = box = _erase_box(rng, torch.empty(3, aug.img_size, aug.img_size), aug)
        x[:, i:i + h, j:j + w] = aug.erase_value
    return x, flip, box


def transform_sample(s: dict[str, Any], aug: Augment) -> tuple:
    """Raw sample -> (image float [3,S,S] or [10,3,S,S] for ten-crop, priors tuple, label, key).

    See the module docstring. Priors are only fed with whole-image views (crop ``none``).
    """
    key = s["__key__"]
    crop = aug.crop
    img, src = _decode_image(s["jpg"], (aug.resize_to or aug.img_size) if crop != "none" else aug.img_size)
    rng = np.random.default_rng(np.random.SeedSequence(
        [aug.seed, aug.epoch, _key_hash(key), int(s.get("__repeat__", 0)), 0xA06]))
    views = [_augment_view(c, aug, rng) for c in _crops(img, aug.img_size, crop, rng)]
    if crop == "ten":
        return torch.from_numpy(np.stack([v[0] for v in views])), (), int(s["cls"]), key
    x_np, flip, box = views[0]
    view = 1 if flip else 0
    x = torch.from_numpy(x_np)
    if crop != "none" and aug.prior_kind != "none":
        raise DataError(f"crop {crop!r} cannot be used with cached priors (computed on the whole face); "
                        f"train a model without priors")

    if aug.prior_kind == "features":
        lmk = torch.from_numpy(np.array(_shards.decode_npy(s["lmk.npy"])[view]))
        seg = torch.from_numpy(np.array(_shards.decode_npy(s["seg.npy"])[view]))
        if box is not None and aug.erase_priors == "zero":
            for t in (lmk, seg):
                t[:, _cells(box, aug.img_size, t.shape[-2], axis=0)[:, None],
                  _cells(box, aug.img_size, t.shape[-1], axis=1)[None, :]] = 0
        priors = (lmk, seg)
    elif aug.prior_kind == "maps":
        pts = np.array(_shards.decode_npy(s["landmarks.npy"])[view], dtype=np.float32)
        if src != aug.img_size:
            pts *= aug.img_size / src
        parsing = _png(s["parsing_flip.png" if flip else "parsing.png"]).copy()
        if box is not None and aug.erase_priors == "zero":
            i, j, h, w = box
            inside = (pts[:, 0] >= j) & (pts[:, 0] < j + w) & (pts[:, 1] >= i) & (pts[:, 1] < i + h)
            pts[inside] = np.nan
            r = parsing.shape[0] / aug.img_size
            parsing[int(i * r):math.ceil((i + h) * r), int(j * r):math.ceil((j + w) * r)] = PARSING_IGNORE
        priors = (torch.from_numpy(pts), torch.from_numpy(parsing))
    else:
        priors = ()
    return x, priors, int(s["cls"]), key


def _cells(box, img_size: int, grid: int, axis: int) -> torch.Tensor:
    i, j, h, w = box
    lo, n = (i, h) if axis == 0 else (j, w)
    cell = img_size / grid
    return torch.arange(int(lo // cell), min(grid, math.ceil((lo + n) / cell)))


def collate(samples: Sequence[tuple]) -> dict[str, Any]:
    images, priors, labels, keys = zip(*samples)
    return {  # np.stack: see transform_sample
        "image": torch.from_numpy(np.stack([t.numpy() for t in images])),
        "priors": tuple(torch.from_numpy(np.stack([t.numpy() for t in p])) for p in zip(*priors)),
        "label": torch.tensor(labels, dtype=torch.long),
        "key": list(keys),
    }


def _decoded_stage(src, aug: Augment):
    for s in src:
        yield transform_sample(s, aug)


def _decoded(aug: Augment):
    return functools.partial(_decoded_stage, aug=aug)


# --- the pipelines --------------------------------------------------------------------------------


def train_pipeline(urls: Sequence[str], aug: Augment, batch_size: int, *, seed: int, epoch: int,
                   draws: dict[str, int] | None = None, label_weights: np.ndarray | None = None,
                   rank: int = 0, world: int = 1, resampled: bool = False,
                   shuffle_buffer: int = SHUFFLE_BUFFER, shuffle_initial: int = SHUFFLE_INITIAL,
                   drop_last: bool = False) -> wds.DataPipeline:
    """The training stream for one epoch (see the module docstring for the stages).

    ``resampled=False`` (exact): every sample of this rank's slot once, or as often as ``draws``
    says. ``resampled=True`` (DDP): an endless stream of resampled shards from this rank's pool,
    rebalanced by acceptance with ``label_weights``; cut it with ``.with_epoch`` on the loader.
    """
    urls = list(urls)
    if not urls:
        raise DataError("no training shards")
    if resampled:
        pool = urls[rank::world] if len(urls) >= world else urls
        shards = wds.ResampledShards(pool, seed=wds.utils.make_seed(seed, epoch), deterministic=True,
                                     worker_seed=functools.partial(_rank_worker_seed, rank))
        node_split = _slot_filter(len(urls), rank, world, per_worker=False)
        rebalance = _accept_by_weight(label_weights, seed, epoch, rank)
    else:
        shards = _EpochShards(urls, seed, epoch, rank, world, shuffle=SHARD_SHUFFLE)
        node_split = _slot_filter(len(urls), rank, world, per_worker=True)
        rebalance = _repeat_by_draws(draws)
    return wds.DataPipeline(
        shards,
        wds.tarfile_to_samples(),
        node_split,
        rebalance,
        _seeded_shuffle(shuffle_buffer, shuffle_initial, seed, epoch, rank),
        _decoded(aug),
        wds.batched(batch_size, collation_fn=collate, partial=not (resampled or drop_last)),
    )


class _OrderedShards(torch.utils.data.IterableDataset):
    def __init__(self, urls: Sequence[str]):
        self.urls = list(urls)

    def __iter__(self):
        worker, workers = _worker()
        for u in self.urls[worker::workers]:
            yield {"url": u}


def eval_pipeline(urls: Sequence[str], aug: Augment, batch_size: int) -> wds.DataPipeline:
    """Every sample of a split once, in index order per worker, no augmentation."""
    aug = Augment(**{**aug.__dict__, "train": False})
    return wds.DataPipeline(
        _OrderedShards(urls), wds.tarfile_to_samples(), _decoded(aug),
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )


WORKER_START_METHOD = "forkserver"
# Imported once by the forkserver, so each worker forks with torch, webdataset and this module
# loaded instead of importing them itself (seconds per worker on a busy 2-core machine).
_FORKSERVER_PRELOAD = ["__main__", __name__]


def _worker_context(num_workers: int):
    if num_workers <= 0:
        return None
    import multiprocessing as mp  # noqa: PLC0415

    ctx = mp.get_context(WORKER_START_METHOD)
    if WORKER_START_METHOD == "forkserver":
        ctx.set_forkserver_preload(_FORKSERVER_PRELOAD)  # only acts before the server starts
    return ctx


def make_loader(pipeline: wds.DataPipeline, num_workers: int, *, nbatches: int | None = None,
                pin_memory: bool = False, generator: torch.Generator | None = None) -> wds.WebLoader:
    """Batches are formed in the workers (batch_size=None here). ``nbatches`` fixes the epoch
    length (resampled/DDP mode)."""
    # forkserver, not fork: a training process often runs threads already (Prefect's engine and
    # its ephemeral API server, DVCLive); forking a threaded process killed workers on start.
    # A forkserver's workers are not our children, so torch's parent watchdog cannot see us die.
    init = functools.partial(exit_with, os.getpid()) if num_workers > 0 else None
    loader = wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=num_workers,
                           pin_memory=pin_memory, persistent_workers=False, generator=generator,
                           multiprocessing_context=_worker_context(num_workers), worker_init_fn=init)
    if nbatches is not None:
        loader = loader.with_epoch(nbatches)
    return loader


def train_epoch_pipeline(epoch: int, urls: Sequence[str], aug: Augment, batch_size: int, *, seed: int,
                         index: SampleIndex | None = None, num_classes: int = 0, **kwargs) -> wds.DataPipeline:
    """:func:`train_pipeline` of one epoch: ``aug`` at that epoch and, given the sample
    ``index``, the epoch's exact rebalancing draws (:func:`epoch_draws`). ``kwargs`` go to
    :func:`train_pipeline`."""
    draws = epoch_draws(index, num_classes, seed, epoch) if index is not None else None
    return train_pipeline(urls, dataclasses.replace(aug, epoch=epoch), batch_size, seed=seed, epoch=epoch,
                          draws=draws, **kwargs)


class _Epoch:
    """The epoch number, where workers read it (num_workers 0: a plain attribute)."""

    def __init__(self, ctx):
        self._v = ctx.RawValue("q", 0) if ctx is not None else None
        self._local = 0

    @property
    def value(self) -> int:
        return int(self._v.value) if self._v is not None else self._local

    @value.setter
    def value(self, epoch: int) -> None:
        if self._v is not None:
            self._v.value = int(epoch)
        self._local = int(epoch)


class _EpochStream(torch.utils.data.IterableDataset):
    """Each ``iter()`` (in a worker: at the start of every epoch) builds the pipeline of the
    epoch the main process set last and runs it."""

    def __init__(self, build: Callable[[int], Any], epoch: _Epoch):
        self.build, self.epoch = build, epoch

    def __iter__(self):
        return iter(self.build(self.epoch.value))


class EpochLoader:
    """A training loader whose workers live for the whole run (``persistent_workers``).

    ``build(epoch)`` (picklable: e.g. ``functools.partial(train_epoch_pipeline, urls=..., ...)``)
    gives an epoch's pipeline; ``loader.epoch(e)`` iterates epoch ``e``'s batches: the workers
    read ``e`` from shared memory and build that pipeline themselves, so an epoch yields the
    same batches as a loader made for it alone, without starting workers again.
    """

    def __init__(self, build: Callable[[int], Any], num_workers: int, *, nbatches: int | None = None,
                 pin_memory: bool = False, generator: torch.Generator | None = None):
        ctx = _worker_context(num_workers)
        self._epoch = _Epoch(ctx)
        self.nbatches = nbatches
        self._loader = torch.utils.data.DataLoader(
            _EpochStream(build, self._epoch), batch_size=None, shuffle=False, num_workers=num_workers,
            pin_memory=pin_memory, persistent_workers=num_workers > 0, generator=generator,
            multiprocessing_context=ctx,
            # forkserver workers are not our children: they exit by themselves when we die
            worker_init_fn=functools.partial(exit_with, os.getpid()) if num_workers > 0 else None)

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        self._epoch.value = epoch  # set before iter(): the workers build their pipeline on resume
        it = iter(self._loader)
        return itertools.islice(it, self.nbatches) if self.nbatches is not None else it

    def close(self) -> None:
        """Stop the workers now (they also stop when the loader is garbage-collected)."""
        it, self._loader._iterator = self._loader._iterator, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()  # now, not whenever the last reference goes


def eval_workers(urls: Sequence[str], num_workers: int) -> int:
    return min(num_workers, len(urls))
