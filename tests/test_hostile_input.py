"""Hostile and careless input: no code runs from a checkpoint, nothing is silently lost, nothing is
written outside the project, and every bad input is a clear error or a listed rejection.

The corpus is built here, in a temporary directory holding the project (``proj/``) and siblings
that stand for "the rest of the disk" (``outside/``, the source directories): every case snapshots
everything outside ``proj/`` before and after and requires it unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ferpipe import cli
from ferpipe.lock import holder_info, project_lock
from ferpipe.manifest import STATUS_OK, inspect_image, read_manifest

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
MARKER = "pwned.txt"


# --- the corpus -------------------------------------------------------------------------------------


def _jpeg(path: Path, seed: int, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90)


def imagefolder(root: Path, per_class: int = 2, seed: int = 0) -> int:
    """``<split>/<class>/*.jpg``; returns the number of images written."""
    n = 0
    for split in ("train", "test"):
        for c in CLASSES:
            for i in range(per_class):
                n += 1
                _jpeg(root / split / c / f"{c}{i}.jpg", seed * 1000 + n)
    return n


class _Evil:
    """A pickle payload: loading it with weights_only=False would write the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    from ferpipe.train.checkpoint import FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "label_space": {"name": "basic7", "classes": list(CLASSES)},
                "payload": _Evil(marker)}, path)
    return path


def snapshot(base: Path, skip: Path) -> dict[str, str]:
    """Every file and link under ``base`` except under ``skip``: path → content hash / link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        d = Path(dirpath)
        if d == skip or skip in d.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            if p == skip:
                continue
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir"
    return out


@pytest.fixture
def world(tmp_path):
    """``proj/`` (the project) and ``outside/`` (its neighbour, with a file in it)."""
    proj, outside = tmp_path / "proj", tmp_path / "outside"
    proj.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("untouched")
    return tmp_path, proj, outside


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def params_file(proj: Path, **sections) -> Path:
    base = {"download": {"dataset": "hostile", "format": "imagefolder", "workers": 1, "val_fraction": 0.0}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    p = proj / "params.yaml"
    p.write_text(yaml.safe_dump(base))
    return p


def stage(capsys, proj: Path, name: str, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, name, "--no-flow", "--params", str(proj / "params.yaml"), "--root", str(proj), *extra)


def clear_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "error:" in err, err
    for n in needles:
        assert n in err, (n, err)


# --- 1. checkpoints are data, never code --------------------------------------------------------------


@pytest.fixture
def trained_world(world):
    """A project with clean priors-format shards (train/val/test) under data/priors/hostile."""
    from ferpipe.train.fixtures import write_random_priors

    tmp, proj, outside = world
    write_random_priors(proj / "data/priors/hostile", "none", counts=(14, 7, 7), size=32, samples_per_shard=8)
    params_file(proj, evaluate={"device": "cpu", "batch_size": 8, "sets": ["clean"]},
                train={"model": "resnet18", "device": "cpu", "num_workers": 0, "epochs": 1, "batch_size": 7,
                       "eval_batch_size": 7, "priors": False})
    return tmp, proj, outside


def test_a_crafted_pickle_is_refused_and_never_runs(trained_world, capsys):
    tmp, proj, outside = trained_world
    marker = outside / MARKER
    before = snapshot(tmp, proj)
    # as evaluate.checkpoint
    evil_checkpoint(proj / "models/evil.pt", marker)
    code, _, err = stage(capsys, proj, "evaluate", "-S", "evaluate.checkpoint=models/evil.pt")
    clear_error(code, err, "models/evil.pt", "refused", "weights_only=True", "call exec")
    # as last.pt, which train resumes from
    evil_checkpoint(proj / "models/train/hostile/last.pt", marker)
    code, _, err = stage(capsys, proj, "train")
    clear_error(code, err, "last.pt", "refused")
    assert not marker.exists(), "the pickle's payload ran"
    assert snapshot(tmp, proj) == before


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "text"])
def test_broken_checkpoints_are_clear_errors(trained_world, capsys, kind):
    import torch

    tmp, proj, _ = trained_world
    path = proj / "models/bad.pt"
    path.parent.mkdir(parents=True)
    good = io.BytesIO()
    torch.save({"format": "ferpipe-train/1", "w": torch.zeros(1000)}, good)
    path.write_bytes({"empty": b"", "truncated": good.getvalue()[: len(good.getvalue()) // 2],
                      "random": np.random.default_rng(1).bytes(5000), "text": b"hello\n"}[kind])
    code, _, err = stage(capsys, proj, "evaluate", "-S", "evaluate.checkpoint=models/bad.pt")
    clear_error(code, err, "models/bad.pt", "rerun")


def test_checkpoints_ferpipe_writes_load_weights_only(tmp_path):
    """What the trainer saves (RNG states, numpy values, paths) loads with weights_only=True and
    restores the RNGs."""
    import random

    import torch

    from ferpipe.train import checkpoint as ck

    np.random.seed(5)
    random.seed(5)
    state = {"format": ck.FORMAT, "label_space": {"name": "basic7", "classes": list(CLASSES)},
             "rng": ck.rng_state(torch.Generator().manual_seed(3)), "n": np.int64(3), "acc": np.float32(0.5),
             "where": tmp_path, "arr": np.arange(4), "model": torch.nn.Linear(2, 2).state_dict()}
    ck.save_atomic(state, tmp_path / "last.pt")
    expect = (np.random.rand(), random.random())
    back = ck.load(tmp_path / "last.pt")
    assert back["n"] == 3 and back["where"] == str(tmp_path) and back["arr"].tolist() == [0, 1, 2, 3]
    ck.set_rng_state(back["rng"])
    assert (np.random.rand(), random.random()) == expect
    assert not list(tmp_path.glob(".*partial*"))


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import argparse

    import torch

    from ferpipe.train import checkpoint as ck

    ck.save_atomic({"format": ck.FORMAT, "epoch": 1}, tmp_path / "last.pt")

    def full(*a, **k):  # what torch's zip writer raises on ENOSPC
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as info:
        ck.save_atomic({"format": ck.FORMAT, "epoch": 2}, tmp_path / "last.pt")
    message, code = cli._explain(info.value, argparse.Namespace(command="train"))
    assert code == 2 and "last.pt" in message and "disk" in message and "resume" in message
    monkeypatch.undo()
    assert ck.read_weights_only(tmp_path / "last.pt", "checkpoint")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# --- 2. one run per project ---------------------------------------------------------------------------


def _ferpipe(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ferpipe.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _both(proj: Path, *args: str, wait: str = "0") -> list[tuple[int, str]]:
    procs = [_ferpipe(*args, "--no-flow", "--wait", wait, cwd=proj) for _ in range(2)]
    return [(p.wait(timeout=300), p.communicate()[1]) for p in procs]


def _check_runs(results: list[tuple[int, str]]) -> int:
    """Each run either succeeded or was refused naming the holder; returns the successes."""
    ok = 0
    for code, err in results:
        if code == 0:
            ok += 1
        else:
            assert code == 2 and "is busy" in err and "pid" in err and "Traceback" not in err, err
    assert ok >= 1, results
    return ok


@pytest.mark.slow
def test_two_concurrent_downloads_never_lose_images(world):
    tmp, proj, _ = world
    n = imagefolder(tmp / "src", per_class=3)
    params_file(proj, download={"source": str(tmp / "src"), "workers": 1})
    for trial in range(3):
        results = _both(proj, "download", wait="120" if trial == 2 else "0")
        ok = _check_runs(results)
        if trial == 2:
            assert ok == 2, results  # with --wait, the second queues behind the first
        m = read_manifest(proj / "data/manifests/hostile.parquet")
        assert len(m.usable) == n
        report = json.loads((proj / "reports/download/hostile.json").read_text())
        assert sum(r["total"] for r in report["counts"]) == n and report["rejected"] == []
        assert sorted(p.name for p in (proj / "data/raw").iterdir()) == ["hostile"]


@pytest.mark.slow
def test_two_concurrent_aligns_end_complete_or_refused(world, capsys):
    tmp, proj, _ = world
    n = imagefolder(tmp / "src", per_class=2)
    params_file(proj, download={"source": str(tmp / "src")},
                align={"method": "passthrough", "points": "dataset", "output_size": 32, "decode_workers": 0,
                       "no_face": "center_crop", "device": "cpu", "samples_per_shard": 8})
    assert stage(capsys, proj, "download")[0] == 0
    for _ in range(2):
        _check_runs(_both(proj, "align"))
        index = json.loads((proj / "data/aligned/hostile/index.json").read_text())
        assert sum(s["totals"]["samples"] for s in index["splits"].values()) == n
        assert not list((proj / "data/aligned/hostile").glob(".*partial*"))


def test_a_held_lock_is_a_refusal_naming_the_holder(world, capsys):
    tmp, proj, _ = world
    imagefolder(tmp / "src", per_class=1)
    params_file(proj, download={"source": str(tmp / "src")})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ferpipe.lock import project_lock\n"
                               "with project_lock(sys.argv[1], 'align'):\n print('held', flush=True); time.sleep(60)",
         str(proj)], env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = stage(capsys, proj, "download")
        clear_error(code, err, "is busy", f"pid {holder.pid}", socket.gethostname(), "ferpipe align", "--wait")
        code, _, err = stage(capsys, proj, "download", "--wait", "0.3")
        clear_error(code, err, "after waiting 0.3s")
        assert not (proj / "data/manifests/hostile.parquet").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel frees the lock, no stale lock file to clean by hand
        holder.wait()
    assert stage(capsys, proj, "download")[0] == 0


def test_the_lock_re_enters_in_one_process_and_records_its_holder(tmp_path):
    with project_lock(tmp_path, "pipeline"):
        with project_lock(tmp_path, "download"):  # a pipeline running its stages in-process
            pass
        info = holder_info(tmp_path)
        assert info["stage"] == "pipeline" and info["pid"] == os.getpid()
    assert holder_info(tmp_path) is None


# --- 3. nothing outside the project -------------------------------------------------------------------


@pytest.mark.parametrize("override,key", [
    ("train.dataset=../../../outside", "train.dataset"),
    ("train.model_dir=../outside/m", "train.model_dir"),
    ("train.model_dir={abs}/outside/m", "train.model_dir"),
    ("train.shards_dir=/etc", "train.shards_dir"),
    ("evaluate.checkpoint=../outside/best.pt", "evaluate.checkpoint"),
    ("evaluate.shards_dir={abs}", "evaluate.shards_dir"),
    ("evaluate.split=../../x", "evaluate.split"),
    ("download.dataset=../outside", "download.dataset"),
])
def test_paths_from_params_stay_inside_the_root(trained_world, capsys, override, key):
    tmp, proj, _ = trained_world
    before = snapshot(tmp, proj)
    name = "evaluate" if override.startswith("evaluate") else "train"
    code, _, err = stage(capsys, proj, name, "-S", override.format(abs=tmp))
    clear_error(code, err, key)
    assert snapshot(tmp, proj) == before
    assert not (proj / "models/train").exists()


def test_layout_refuses_names_that_are_paths(tmp_path):
    from ferpipe.errors import ConfigError
    from ferpipe.layout import Layout

    layout = Layout(tmp_path)
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(ConfigError):
            layout.raw(bad)
    with pytest.raises(ConfigError, match="train.model_dir"):
        layout.param_path("train.model_dir", "/tmp", layout.models)
    assert layout.param_path("train.model_dir", str(tmp_path / "models/x"), layout.models) == tmp_path / "models/x"


# --- 4. downloads keyed by URL ------------------------------------------------------------------------


def _tar_dir(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, p.relative_to(src).as_posix(), recursive=False)


def test_same_file_name_at_two_urls_is_fetched_twice(world):
    from ferpipe.config import params_from_dict
    from ferpipe.layout import Layout
    from ferpipe.sources.download import download_stage, url_cache_path

    tmp, proj, _ = world
    www = tmp / "www"
    imagefolder(tmp / "a", per_class=1, seed=1)
    imagefolder(tmp / "b", per_class=2, seed=2)
    _tar_dir(tmp / "a", www / "a/data.tar.gz")
    _tar_dir(tmp / "b", www / "b/data.tar.gz")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(www)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        layout = Layout(proj)
        counts = {}
        for which in ("a", "b"):
            p = params_from_dict({"download": {"dataset": "hostile", "format": "imagefolder", "workers": 1,
                                               "source": f"{base}/{which}/data.tar.gz", "retries": 0}}).download
            counts[which] = download_stage(p, layout, log=lambda _: None).n_usable
        assert counts == {"a": 14, "b": 28}
        a, b = (url_cache_path(layout, f"{base}/{w}/data.tar.gz") for w in "ab")
        assert a != b and a.read_bytes() == (www / "a/data.tar.gz").read_bytes()
        sha = hashlib.sha256(b.read_bytes()).hexdigest()
        assert url_cache_path(layout, f"{base}/b/data.tar.gz", sha) != b  # the hash is part of the key
    finally:
        srv.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# --- 5. clear errors, never a traceback ---------------------------------------------------------------


def test_bad_params_files_and_values(world, capsys):
    tmp, proj, _ = world
    params = proj / "params.yaml"
    params.write_bytes(b"download:\n  dataset: caf\xe9\n")
    clear_error(*run_cli(capsys, "params", "--params", str(params))[::2], "not UTF-8", "line 2")
    params.write_text("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    clear_error(*run_cli(capsys, "params", "--params", str(params))[::2], "'lr' is given twice", "lines 2 and 4")
    params.write_text("train: {}\n")
    code, _, err = run_cli(capsys, "params", "--params", str(params), "-S", "train.seed=-5")
    clear_error(code, err, "train.seed")
    code, _, err = run_cli(capsys, "params", "--params", str(params), "-S", "download.source=http://h/a/..")
    clear_error(code, err, "download.source", "'..'")
    params.chmod(0)
    try:
        if os.access(params, os.R_OK):  # root reads anything
            return
        clear_error(*run_cli(capsys, "params", "--params", str(params))[::2], "cannot read")
    finally:
        params.chmod(0o644)


def test_missing_split_and_bad_model_kwargs(trained_world, capsys):
    tmp, proj, _ = trained_world
    code, _, err = stage(capsys, proj, "evaluate", "-S", "evaluate.split=holdout")
    clear_error(code, err, "evaluate.split", "holdout", "test, train, val")
    code, _, err = stage(capsys, proj, "train", "-S", "train.model_kwargs={bogus: 1}")
    clear_error(code, err, "train.model_kwargs", "bogus")
    assert not (proj / "models/train/hostile/last.pt").exists()


def test_os_errors_are_one_paragraph_and_debug_shows_the_traceback(world, capsys, monkeypatch):
    import ferpipe.sources.download as dl

    tmp, proj, _ = world
    imagefolder(tmp / "src", per_class=1)
    params_file(proj, download={"source": str(tmp / "src")})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(proj / "data/raw/hostile/x.jpg"))

    monkeypatch.setattr(dl, "build_manifest_rows", full)
    code, _, err = stage(capsys, proj, "download")
    clear_error(code, err, "the disk is full", "data/raw/hostile/x.jpg", "rerun the same command to resume")
    assert len(err.strip().splitlines()) == 1
    code, _, err = stage(capsys, proj, "download", "--debug")
    assert code == 2 and "Traceback" in err and "the disk is full" in err


@pytest.mark.parametrize("source", ["root", "parent", "devzero", "dangling", "url-dotdot"])
def test_impossible_sources(world, capsys, source):
    tmp, proj, _ = world
    value = {"root": str(proj), "parent": str(tmp), "devzero": "/dev/zero",
             "dangling": str(tmp / "link"), "url-dotdot": "http://127.0.0.1:9/data/.."}[source]
    (tmp / "link").symlink_to(tmp / "nothing")
    params_file(proj, download={"source": value})
    before = snapshot(tmp, proj)
    t0 = time.monotonic()
    code, _, err = stage(capsys, proj, "download")
    clear_error(code, err, "download.source")
    assert time.monotonic() - t0 < 30
    assert snapshot(tmp, proj) == before
    assert not (proj / "data/raw").exists() or not any((proj / "data/raw").iterdir())


# --- 6. the smaller items, and manifest + rejected = input ---------------------------------------------


def test_a_messy_source_directory_is_fully_accounted_for(world, capsys):
    tmp, proj, outside = world
    src = tmp / "src"
    n = imagefolder(src, per_class=2)
    secret = outside / "secret.jpg"
    _jpeg(secret, 99)
    palette = Image.fromarray(np.random.default_rng(3).integers(0, 255, (24, 24, 3), np.uint8)).convert("P")
    palette.save(src / "train/anger/palette.gif")                      # decodable: kept
    (src / "train/fear/escape.jpg").symlink_to(secret)                 # leads outside: rejected
    (src / "train/fear/dangling.jpg").symlink_to(src / "nowhere.jpg")  # dangling: rejected
    (src / "train/fear/inside.jpg").symlink_to(src / "train/fear/fear0.jpg")  # inside: followed
    (src / "train/sadness/.hidden.jpg").write_bytes((src / "train/sadness/sadness0.jpg").read_bytes())
    (src / "train/.DS_Store").write_bytes(b"\0\1")
    (src / "test/happiness/notes.txt").write_text("not an image")
    os.mkfifo(src / "train/neutral/pipe.jpg")                          # special file: rejected
    params_file(proj, download={"source": str(src)})
    before = snapshot(tmp, proj)
    code, out, err = stage(capsys, proj, "download")
    assert code == 0, err
    assert snapshot(tmp, proj) == before
    report = json.loads((proj / "reports/download/hostile.json").read_text())
    rejected = {r["path"]: r["reason"] for r in report["rejected"]}
    assert "outside the source" in rejected["train/fear/escape.jpg"]
    assert "dangling" in rejected["train/fear/dangling.jpg"]
    assert "FIFO" in rejected["train/neutral/pipe.jpg"]
    assert "hidden" in rejected["train/sadness/.hidden.jpg"] and "hidden" in rejected["train/.DS_Store"]
    assert "extension" in rejected["test/happiness/notes.txt"]
    m = read_manifest(proj / "data/manifests/hostile.parquet").frame
    assert (m["status"] == STATUS_OK).sum() == n + 2  # + the GIF + the link inside
    assert "train/anger/palette.gif" in set(m["path"])
    assert not (proj / "data/raw/hostile/train/fear/escape.jpg").exists()
    # manifest + rejected = every entry of the source
    entries = {p.relative_to(src).as_posix() for p in src.rglob("*") if not p.is_dir() or p.is_symlink()}
    assert set(m["path"]) | set(rejected) == entries


def test_an_archive_holding_only_train_is_not_unwrapped(world, capsys):
    tmp, proj, _ = world
    imagefolder(tmp / "tree", per_class=1)
    for p in sorted((tmp / "tree/test").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (tmp / "tree/test").rmdir()
    _tar_dir(tmp / "tree", tmp / "only-train.tar.gz")
    params_file(proj, download={"source": str(tmp / "only-train.tar.gz")})
    code, out, err = stage(capsys, proj, "download")
    assert code == 0, err
    assert (proj / "data/raw/hostile/train").is_dir() and "7 usable" in out


def test_unpack_limit_names_the_real_key(world, capsys):
    tmp, proj, _ = world
    imagefolder(tmp / "tree", per_class=2)
    _tar_dir(tmp / "tree", tmp / "big.tar.gz")
    params_file(proj, download={"source": str(tmp / "big.tar.gz"), "max_unpacked_gb": 1e-6})
    code, _, err = stage(capsys, proj, "download")
    clear_error(code, err, "download.max_unpacked_gb")
    assert "max_unpacked_bytes" not in err


def test_max_image_pixels_above_pillows_limit_is_honoured(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # stands for Pillow's default, below what params allow
    try:
        assert inspect_image(path, max_pixels=10_000).status == STATUS_OK
        assert inspect_image(path, max_pixels=2_000).status.startswith("too large")
    finally:
        Image.MAX_IMAGE_PIXELS = saved


_OWNER = """
import os, sys, time
sys.path.insert(0, {root!r})


def forever():
    while True:
        time.sleep(0.01)
        yield {{"x": 1}}


if __name__ == "__main__":  # spawned and forkserver children import this file: keep its top light
    import webdataset as wds

    from ferpipe.train.data import make_loader

    loader = make_loader(wds.DataPipeline(forever), 1)
    it = iter(loader)
    next(it)
    print("ready", flush=True)
    time.sleep(300)
"""


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            out.add(k)
            todo.append(k)
    return out


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_workers_do_not_outlive_a_killed_stage(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(_OWNER.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        kids = _descendants(proc.pid)
        assert len(kids) >= 2  # forkserver, its loader worker (+ resource tracker)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    alive = kids
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = {k for k in kids if Path(f"/proc/{k}").exists()
                 and Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}
    assert not alive, f"left running after the owner was killed: {sorted(alive)}"


@pytest.mark.slow
def test_serve_stops_on_sigint_even_when_started_ignoring_it(tmp_path):
    """A shell starts background jobs with SIGINT ignored; `ferpipe serve` must still stop on it.
    The API here accepts connections and never answers, so serve is busy talking to it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": f"http://127.0.0.1:{listener.getsockname()[1]}/api",
           "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ferpipe.cli", "serve", "--root", str(ROOT)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout.readline().startswith("ferpipe serve: project"), proc.stderr.read()
        time.sleep(2)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        err = proc.stderr.read()
        assert code == 0 and "stopped" in err and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        listener.close()
