"""The download stage end to end on small RAF-DB-layout sets built here."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferpipe.config import params_from_dict
from ferpipe.errors import ChecksumError, DataError, UnsafeArchiveError
from ferpipe.layout import Layout
from ferpipe.manifest import STATUS_OK, read_manifest
from ferpipe.sources.download import download_stage, url_cache_path


def _jpeg(path: Path, seed: int, size: int = 48) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)


def make_rafdb_tree(root: Path, per_class: int = 4) -> dict[str, str]:
    """A RAF-DB basic layout: 7 classes, train and test, plus bad files. Returns name → problem."""
    lines = []
    n = 0
    for label in range(1, 8):
        for i in range(per_class):
            n += 1
            name = f"train_{n:05d}.jpg"
            _jpeg(root / "Image/original" / name, seed=n)
            lines.append(f"{name} {label}")
        name = f"test_{label:04d}.jpg"
        _jpeg(root / "Image/original" / name, seed=1000 + label)
        lines.append(f"{name} {label}")
    bad = {}
    # a truncated JPEG, a text file named .jpg, a zero-byte file
    good = (root / "Image/original/train_00001.jpg").read_bytes()
    (root / "Image/original/train_00101.jpg").write_bytes(good[: len(good) // 2])
    lines.append("train_00101.jpg 4")
    bad["train_00101.jpg"] = "corrupt"
    (root / "Image/original/train_00102.jpg").write_text("not an image at all")
    lines.append("train_00102.jpg 4")
    bad["train_00102.jpg"] = "not an image"
    (root / "Image/original/train_00103.jpg").write_bytes(b"")
    lines.append("train_00103.jpg 4")
    bad["train_00103.jpg"] = "corrupt"
    # leakage: a test image that is byte-identical to a train image
    (root / "Image/original/test_0100.jpg").write_bytes(good)
    lines.append("test_0100.jpg 1")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel/list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return bad


def _params(source: str, **extra):
    return params_from_dict({"download": {"dataset": "tiny", "format": "rafdb", "source": source,
                                          "workers": 1, **extra}}).download


def test_directory_source_builds_a_complete_manifest(tmp_path):
    bad = make_rafdb_tree(tmp_path / "src")
    layout = Layout(tmp_path / "proj")
    report = download_stage(_params(str(tmp_path / "src")), layout, log=lambda _: None)

    manifest = read_manifest(layout.manifest("tiny"))
    frame = manifest.frame
    assert list(frame.columns)[:10] == ["key", "dataset", "split", "path", "sha256", "width", "height",
                                        "native_label", "label", "status"]
    # every listed image is in the manifest, bad ones with their reason, none silently dropped
    assert len(frame) == 7 * 4 + 7 + 3 + 1
    rejected = {Path(r["path"]).name: r["reason"] for r in report.rejected}
    for name, reason in bad.items():
        assert rejected[name].startswith(reason), rejected[name]
    assert (frame["status"] != STATUS_OK).sum() == len(bad)
    # RAF-DB native 1 (Surprise) → canonical 0; 7 (Neutral) → 6
    row = frame[frame["path"].str.endswith("test_0007.jpg")].iloc[0]
    assert (row["native_label"], row["label"]) == ("7", 6)
    assert manifest.label_space["name"] == "basic7"
    # val carved from train, stratified; test untouched
    assert report.val_split and report.val_split["total"] == 7
    assert set(frame[frame["split"] == "test"]["path"].map(lambda p: Path(p).name)) == \
        {f"test_{i:04d}.jpg" for i in (1, 2, 3, 4, 5, 6, 7, 100)}
    assert sorted(manifest.split("val")["label"]) == list(range(7))
    # leakage reported
    assert len(report.leakage) == 1
    assert {s["split"] for s in report.leakage[0]["samples"]} == {"train", "test"} or \
        {s["split"] for s in report.leakage[0]["samples"]} == {"val", "test"}
    assert layout.stage_report("download", "tiny").exists()


def test_rerun_gives_identical_manifest_bytes(tmp_path):
    make_rafdb_tree(tmp_path / "src")
    layout = Layout(tmp_path / "proj")
    download_stage(_params(str(tmp_path / "src")), layout, log=lambda _: None)
    first = layout.manifest("tiny").read_bytes()
    download_stage(_params(str(tmp_path / "src")), layout, log=lambda _: None)
    assert layout.manifest("tiny").read_bytes() == first


def _zip_tree(src: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(src).as_posix())


def test_archive_source_with_checksum(tmp_path):
    make_rafdb_tree(tmp_path / "src")
    archive = tmp_path / "rafdb.zip"
    _zip_tree(tmp_path / "src", archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    layout = Layout(tmp_path / "proj")
    report = download_stage(_params(str(archive), sha256=digest), layout, log=lambda _: None)
    assert report.archive_sha256 == digest
    assert report.n_usable == 7 * 4 + 7 + 1
    with pytest.raises(ChecksumError):
        download_stage(_params(str(archive), sha256="0" * 64), layout, log=lambda _: None)


def test_unsafe_archive_is_refused_and_nothing_escapes(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("EmoLabel/list_patition_label.txt", "train_00001.jpg 1\n")
        zf.writestr("../../escaped.txt", "gotcha")
    layout = Layout(tmp_path / "proj")
    with pytest.raises(UnsafeArchiveError):
        download_stage(_params(str(archive)), layout, log=lambda _: None)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not layout.raw("tiny").exists()


def test_wrong_format_and_missing_source_are_clear_errors(tmp_path):
    make_rafdb_tree(tmp_path / "src")
    layout = Layout(tmp_path / "proj")
    with pytest.raises(DataError, match="no such file"):
        download_stage(_params(str(tmp_path / "absent")), layout, log=lambda _: None)
    (tmp_path / "src/EmoLabel/list_patition_label.txt").write_text("train_00001.jpg surprise\n")
    with pytest.raises(DataError, match="list_patition_label.txt"):
        download_stage(_params(str(tmp_path / "src")), layout, log=lambda _: None)


def test_url_source_from_a_local_server(tmp_path):
    make_rafdb_tree(tmp_path / "src")
    served = tmp_path / "www"
    served.mkdir()
    _zip_tree(tmp_path / "src", served / "rafdb.zip")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/rafdb.zip"
        layout = Layout(tmp_path / "proj")
        report = download_stage(_params(url, retries=1), layout, log=lambda _: None)
        # kept under a folder keyed by the full URL (never by the bare file name)
        assert url_cache_path(layout, url).read_bytes() == (served / "rafdb.zip").read_bytes()
        assert url_cache_path(layout, url).name == "rafdb.zip"
        assert report.n_usable == 7 * 4 + 7 + 1
    finally:
        server.shutdown()
