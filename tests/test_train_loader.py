"""The training input pipeline's fast paths give the reference results, and the persistent
loader gives every epoch the batches a loader made for that epoch alone would."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ferpipe import shards
from ferpipe.train import data as D
from ferpipe.train.fixtures import priors_from_synthetic_archive, write_random_priors

pytestmark = pytest.mark.usefixtures("one_thread_module")
SIZE = 56


@pytest.fixture(scope="module")
def feat(tmp_path_factory) -> D.ShardSet:
    root = write_random_priors(tmp_path_factory.mktemp("feat"), "features", counts=(60, 8, 8), size=SIZE,
                               samples_per_shard=16)
    return D.probe_shards(root)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Samples of GT-aligned synthetic faces (maps priors), as the trainer reads them."""
    from ferpipe.sources.synthetic import render_archive

    tmp = tmp_path_factory.mktemp("faces")
    res = render_archive(tmp / "synth", n_per_class=2, size=128, seed=5, workers=1, progress=False)
    root = priors_from_synthetic_archive(res.archive, res.groundtruth, tmp / "maps", size=112, val_fraction=0.0)
    return [dict(f, __key__=k) for k, f in shards.iter_tar_samples(shards.shard_urls(root, "train")[0])]


def test_jpeg_and_png_decode_equal_pil(faces):
    for s in faces:
        ref = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
        got, src = D._decode_image(s["jpg"], ref.shape[0])
        assert src == ref.shape[0] and np.array_equal(got, ref)
        # resized on the way (224 shards, 112 px preset): PIL's bilinear resize, as before
        small = np.asarray(Image.fromarray(ref).resize((56, 56), Image.BILINEAR))
        assert np.array_equal(D._decode_image(s["jpg"], 56)[0], small)
        for ext in ("parsing.png", "parsing_flip.png"):
            assert np.array_equal(D._png(s[ext]), np.asarray(Image.open(io.BytesIO(s[ext]))))


def test_erase_box_equals_torchvision_random_erasing():
    from torchvision.transforms import RandomErasing

    aug = D.Augment("features", 112)
    for seed in range(300):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        img = torch.empty(3, 112, 112)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng_a.integers(0, 2**63 - 1)))
            want = RandomErasing.get_params(img, scale=aug.erase_scale, ratio=aug.erase_ratio, value=[0.0])[:4]
        assert D._erase_box(rng_b, img, aug) == tuple(int(v) for v in want)


def test_normalisation_table_equals_the_per_pixel_formula():
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for mean, std in ((D.IMAGENET_MEAN, D.IMAGENET_STD), ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))):
        aug = D.Augment("none", 40, mean=mean, std=std, erase_p=0.0, flip_p=0.0)
        x, _, _ = D._augment_view(img, aug, np.random.default_rng(0))
        scale = np.float32(1.0 / 255.0) / np.asarray(std, np.float32)
        ref = img.astype(np.float32) * scale - (np.asarray(mean, np.float32) / np.asarray(std, np.float32))
        assert x.dtype == np.float32 and np.array_equal(x, ref.transpose(2, 0, 1))


def _batches(it):
    return [(b["key"], b["image"], b["priors"]) for b in it]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(ka == kb and torch.equal(ia, ib) and all(torch.equal(p, q) for p, q in zip(pa, pb))
                                    for (ka, ia, pa), (kb, ib, pb) in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_loader_gives_each_epoch_its_own_batches_with_persistent_workers(feat, workers):
    urls = feat.urls("train")
    index = D.build_index(urls)
    aug = D.Augment("features", SIZE, seed=4)
    kw = dict(urls=urls, aug=aug, batch_size=8, seed=4, index=index, num_classes=feat.num_classes,
              shuffle_buffer=16)
    loader = D.EpochLoader(functools.partial(D.train_epoch_pipeline, **kw), workers)
    got = {e: _batches(loader.epoch(e)) for e in (1, 2)}
    pids = [w.pid for w in loader._loader._iterator._workers] if workers else []
    got[3] = _batches(loader.epoch(3))
    if workers:  # the same processes served every epoch
        assert [w.pid for w in loader._loader._iterator._workers] == pids
    loader.close()
    for e in (1, 2, 3):
        draws = D.epoch_draws(index, feat.num_classes, 4, e)
        fresh = D.make_loader(D.train_pipeline(urls, D.Augment(**{**aug.__dict__, "epoch": e}), 8, seed=4, epoch=e,
                                               draws=draws, shuffle_buffer=16), workers)
        assert _same(got[e], _batches(fresh)), e
    assert [k for b in got[1] for k in b[0]] != [k for b in got[2] for k in b[0]]


def test_epoch_loader_cuts_resampled_epochs_and_resumes_after_a_break(feat):
    urls = feat.urls("train")
    aug = D.Augment("features", SIZE, seed=1)
    build = functools.partial(D.train_epoch_pipeline, urls=urls, aug=aug, batch_size=4, seed=1, resampled=True,
                              label_weights=D.class_weights(D.build_index(urls).labels, 7))
    loader = D.EpochLoader(build, 2, nbatches=5)
    first = _batches(loader.epoch(1))
    assert len(first) == 5
    next(iter(loader.epoch(2)))  # an epoch left early (max_steps_per_epoch, a stop) ...
    again = _batches(loader.epoch(1))  # ... does not leak into the next one
    loader.close()
    fresh = D.make_loader(build(1), 2, nbatches=5)
    assert _same(first, again) and _same(first, _batches(fresh))
