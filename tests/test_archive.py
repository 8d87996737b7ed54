"""Safe extraction: every test builds a real archive in tmp_path."""

import io
import os
import stat
import struct
import tarfile
import zipfile
import zlib

import pyzipper
import pytest

from ferpipe.errors import DataError, UnsafeArchiveError
from ferpipe.sources.archive import archive_format, extract_archive

FILES = {"basic/EmoLabel/list.txt": b"train_00001.jpg 5\n", "basic/Image/a.bin": os.urandom(3000)}


def _tar(path, members, mode="w:gz"):
    """members: list of (TarInfo, bytes | None)."""
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _zip(path, files):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name) if isinstance(name, str) else name
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _nothing_left(tmp_path, target):
    assert not target.exists()
    assert not (target.parent / f".{target.name}.partial").exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("mode,suffix", [("w:gz", "tar.gz"), ("w:bz2", "tar.bz2"),
                                         ("w:xz", "tar.xz"), ("w", "tar")])
def test_tar_roundtrip(tmp_path, mode, suffix):
    arc = _tar(tmp_path / f"a.{suffix}", [_file(n, d) for n, d in FILES.items()], mode)
    assert archive_format(arc) == "tar"
    res = extract_archive(arc, tmp_path / "out")
    assert res.files == 2 and res.bytes == sum(map(len, FILES.values()))
    for name, data in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == data


def test_zip_roundtrip_and_strip_single_root(tmp_path):
    arc = _zip(tmp_path / "a.zip", FILES)
    assert archive_format(arc) == "zip"
    extract_archive(arc, tmp_path / "raw" / "rafdb", strip_single_root=True)
    assert (tmp_path / "raw/rafdb/EmoLabel/list.txt").read_bytes() == FILES["basic/EmoLabel/list.txt"]
    assert sorted(os.listdir(tmp_path / "raw")) == ["rafdb"]


def test_existing_target_needs_replace(tmp_path):
    arc = _zip(tmp_path / "a.zip", FILES)
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="already exists"):
        extract_archive(arc, tmp_path / "out")
    extract_archive(arc, tmp_path / "out", replace=True)
    assert (tmp_path / "out/basic/Image/a.bin").exists()


def test_stale_partial_from_interrupted_run_is_discarded(tmp_path):
    arc = _zip(tmp_path / "a.zip", FILES)
    stale = tmp_path / ".out.partial"
    (stale / "junk").mkdir(parents=True)
    extract_archive(arc, tmp_path / "out")
    assert not stale.exists() and not (tmp_path / "out/junk").exists()


def test_tar_slip(tmp_path):
    arc = _tar(tmp_path / "a.tgz", [_file("ok.txt"), _file("../evil")])
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./evil'.*'\.\.'"):
        extract_archive(arc, tmp_path / "x" / "out")
    _nothing_left(tmp_path, tmp_path / "x" / "out")
    assert not (tmp_path / "x" / "evil").exists()


def test_tar_absolute_path(tmp_path):
    arc = _tar(tmp_path / "a.tar", [_file(str(tmp_path / "evil"))], "w")
    with pytest.raises(UnsafeArchiveError, match="absolute"):
        extract_archive(arc, tmp_path / "out")
    _nothing_left(tmp_path, tmp_path / "out")


def test_zip_slip_and_absolute(tmp_path):
    for bad in ("../evil.txt", "a/../../evil.txt", "/evil.txt", "C:/evil.txt", "a\\..\\..\\evil.txt"):
        arc = _zip(tmp_path / "a.zip", {"ok.txt": b"1", bad: b"2"})
        with pytest.raises(UnsafeArchiveError, match="member"):
            extract_archive(arc, tmp_path / "out")
        _nothing_left(tmp_path, tmp_path / "out")


def test_tar_symlink_out_and_hardlink(tmp_path):
    link = tarfile.TarInfo("data/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    arc = _tar(tmp_path / "a.tgz", [_file("data/a"), (link, None)])
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        extract_archive(arc, tmp_path / "out")
    _nothing_left(tmp_path, tmp_path / "out")

    hard = tarfile.TarInfo("data/hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "data/a"
    arc = _tar(tmp_path / "b.tgz", [_file("data/a"), (hard, None)])
    with pytest.raises(UnsafeArchiveError, match="hardlink"):
        extract_archive(arc, tmp_path / "out")


def test_zip_symlink(tmp_path):
    info = zipfile.ZipInfo("link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    arc = _zip(tmp_path / "a.zip", {info: b"/etc/passwd"})
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        extract_archive(arc, tmp_path / "out")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_device_and_fifo(tmp_path, kind):
    dev = tarfile.TarInfo("dev/null2")
    dev.type, dev.devmajor, dev.devminor = kind, 1, 3
    arc = _tar(tmp_path / "a.tgz", [(dev, None)])
    with pytest.raises(UnsafeArchiveError, match="device file or FIFO"):
        extract_archive(arc, tmp_path / "out")
    _nothing_left(tmp_path, tmp_path / "out")


def test_zip_bomb_refused_before_writing(tmp_path):
    arc = _zip(tmp_path / "bomb.zip", {"a": b"\0" * 600_000, "b": b"\0" * 600_000})
    assert arc.stat().st_size < 10_000
    with pytest.raises(UnsafeArchiveError, match="exceeds the limit of 1000000"):
        extract_archive(arc, tmp_path / "out", max_total_bytes=1_000_000)
    _nothing_left(tmp_path, tmp_path / "out")


def test_tar_bomb(tmp_path):
    arc = _tar(tmp_path / "bomb.tgz", [_file("a", b"\0" * 600_000), _file("b", b"\0" * 600_000)])
    with pytest.raises(UnsafeArchiveError, match="limit"):
        extract_archive(arc, tmp_path / "out", max_total_bytes=1_000_000)
    _nothing_left(tmp_path, tmp_path / "out")


def test_zip_lying_size_header(tmp_path):
    data = os.urandom(5000)
    raw = bytearray(_zip(tmp_path / "a.zip", {"a.bin": data}).read_bytes())
    # Declare 100 bytes in both the local header and the central directory.
    size = struct.pack("<I", len(data))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.index(sig) + off
        assert raw[at:at + 4] == size
        raw[at:at + 4] = struct.pack("<I", 100)
    (tmp_path / "a.zip").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="a.bin"):
        extract_archive(tmp_path / "a.zip", tmp_path / "out")
    _nothing_left(tmp_path, tmp_path / "out")


def test_corrupt_zip_member(tmp_path):
    arc = tmp_path / "a.zip"
    with zipfile.ZipFile(arc, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("good.txt", b"hello")
        zf.writestr("bad.bin", b"A" * 4000)
    raw = bytearray(arc.read_bytes())
    at = raw.index(b"A" * 4000) + 2000
    raw[at:at + 8] = b"BBBBBBBB"
    arc.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"'bad.bin' is corrupt.*CRC"):
        extract_archive(arc, tmp_path / "out")
    _nothing_left(tmp_path, tmp_path / "out")


def test_truncated_tar_gz(tmp_path):
    arc = _tar(tmp_path / "a.tar.gz", [_file("a.bin", os.urandom(200_000)), _file("b", b"1")])
    raw = arc.read_bytes()
    arc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        extract_archive(arc, tmp_path / "out")
    _nothing_left(tmp_path, tmp_path / "out")
    # After fixing (a complete archive in place), a rerun starts clean and succeeds.
    arc.write_bytes(raw)
    extract_archive(arc, tmp_path / "out")
    assert (tmp_path / "out/b").read_bytes() == b"1"


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not a supported archive"):
        extract_archive(tmp_path / "x.zip", tmp_path / "out")


# ---------------------------------------------------------------- password-protected zips


def _aes_zip(path, files, password):
    with pyzipper.AESZipFile(path, "w", compression=pyzipper.ZIP_DEFLATED,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(password)
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _crc_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


class _ZipCrypto:
    """Traditional PKWARE encryption (APPNOTE 6.1), written here because no installed library
    writes it; pyzipper reads it."""

    def __init__(self, password: bytes):
        self.k = [0x12345678, 0x23456789, 0x34567890]
        for b in password:
            self._update(b)

    def _update(self, b):
        k0, k1, k2 = self.k
        k0 = (k0 >> 8) ^ _TABLE[(k0 ^ b) & 0xFF]
        k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k2 = (k2 >> 8) ^ _TABLE[(k2 ^ (k1 >> 24)) & 0xFF]
        self.k = [k0, k1, k2]

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            t = (self.k[2] | 2) & 0xFFFF
            out.append(b ^ (((t * (t ^ 1)) >> 8) & 0xFF))
            self._update(b)
        return bytes(out)


def _zipcrypto_zip(path, name: str, data: bytes, password: bytes):
    crc = zlib.crc32(data)
    body = _ZipCrypto(password).encrypt(b"\x07" * 11 + bytes([crc >> 24]) + data)
    fname = name.encode()
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 1, 0, 0, 0x21, crc, len(body),
                        len(data), len(fname), 0) + fname
    central = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 1, 0, 0, 0x21, crc, len(body),
                          len(data), len(fname), 0, 0, 0, 0, 0, 0) + fname
    eocd = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 1, 1, len(central),
                       len(local) + len(body), 0)
    path.write_bytes(local + body + central + eocd)
    return path


@pytest.fixture
def pw_env(monkeypatch):
    monkeypatch.setenv("FERPIPE_TEST_ZIP_PW", "s3cret")
    return "FERPIPE_TEST_ZIP_PW"


@pytest.mark.parametrize("kind", ["aes", "zipcrypto"])
def test_password_zip_right(tmp_path, pw_env, kind):
    data = b"occluded face" * 50
    if kind == "aes":
        arc = _aes_zip(tmp_path / "o.zip", {"train/AN/1.jpg": data}, b"s3cret")
    else:
        arc = _zipcrypto_zip(tmp_path / "o.zip", "train/AN/1.jpg", data, b"s3cret")
    with zipfile.ZipFile(arc) as zf:  # sanity: really encrypted
        assert zf.infolist()[0].flag_bits & 1
    extract_archive(arc, tmp_path / "out", password_env=pw_env)
    assert (tmp_path / "out/train/AN/1.jpg").read_bytes() == data


@pytest.mark.parametrize("kind", ["aes", "zipcrypto"])
def test_password_zip_wrong(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("FERPIPE_TEST_ZIP_PW", "wrong")
    if kind == "aes":
        arc = _aes_zip(tmp_path / "o.zip", {"a.jpg": b"x" * 100}, b"s3cret")
    else:
        arc = _zipcrypto_zip(tmp_path / "o.zip", "a.jpg", b"x" * 100, b"s3cret")
    with pytest.raises(DataError, match="FERPIPE_TEST_ZIP_PW") as err:
        extract_archive(arc, tmp_path / "out", password_env="FERPIPE_TEST_ZIP_PW")
    assert "password" in str(err.value)
    _nothing_left(tmp_path, tmp_path / "out")


def test_password_zip_missing_env(tmp_path, monkeypatch):
    monkeypatch.delenv("FERPIPE_OCCLU_PW", raising=False)
    arc = _aes_zip(tmp_path / "o.zip", {"a.jpg": b"x"}, b"s3cret")
    with pytest.raises(DataError, match="environment variable FERPIPE_OCCLU_PW is not set"):
        extract_archive(arc, tmp_path / "out", password_env="FERPIPE_OCCLU_PW")
    with pytest.raises(DataError, match="password-protected.*password_env"):
        extract_archive(arc, tmp_path / "out")
    _nothing_left(tmp_path, tmp_path / "out")
