"""Safe extraction of dataset archives (zip, tar, tar.gz/tgz, tar.bz2, tar.xz).

Every member is checked before a byte of it is written, with a message naming the archive and
the member:

* absolute paths, drive letters, backslash paths and ``..`` components are refused;
* links are refused, all of them (symlinks and hardlinks, in tar and zip): FER datasets ship
  none, and refusing them means no check can be fooled by a link chain;
* device files, FIFOs and other special members are refused;
* the total unpacked size is limited: for zip the declared sizes are summed from the central
  directory before anything is written; for tar (a stream, whose headers can only be read by
  decompressing it) each member's declared size is added to the running total before its data
  is written. Actual bytes are counted while writing too, so a lying header cannot pass.

Extraction goes to a temporary sibling of the target, private to the process
(:mod:`ferpipe.tempfiles`), and is renamed into place only when every member is written, so a
failed or interrupted run leaves no tree that looks complete, two runs never write into one
temporary tree, and a rerun sweeps what a dead one left. Python's ``tarfile.data_filter`` runs as a second
layer after ferpipe's own checks.

Password-protected zips (Occlu-FER) are opened with pyzipper (ZipCrypto and WinZip AES); the
password comes from an environment variable whose *name* the caller passes, never from params.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import pyzipper

from ferpipe.errors import DataError, UnsafeArchiveError
from ferpipe.tempfiles import private_sibling, sweep_stale

__all__ = [
    "DEFAULT_MAX_TOTAL_BYTES",
    "ExtractResult",
    "archive_format",
    "extract_archive",
]

DEFAULT_MAX_TOTAL_BYTES = 200 * 1024**3  # AffectNet, the largest supported set, is ~120 GB
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExtractResult:
    target: Path
    format: str  # "zip" | "tar"
    files: int
    bytes: int


def archive_format(path: str | os.PathLike) -> str:
    """``"zip"`` or ``"tar"`` (any compression), from the file's leading bytes, not its name."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"archive {p} does not exist or is not a file")
    with open(p, "rb") as fh:
        head = fh.read(512)
    # Magic bytes first: zipfile.is_zipfile looks for a trailer anywhere near the end and says
    # yes to a tar whose last member happens to be a zip.
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "tar"  # a compressed tar; a compressed non-tar fails clearly in _extract_tar
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if zipfile.is_zipfile(p):
        return "zip"  # e.g. a zip with a prefix (self-extracting)
    raise DataError(
        f"{p} is not a supported archive (or is truncated): expected zip, tar, tar.gz/tgz, "
        f"tar.bz2 or tar.xz"
    )


def extract_archive(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    password_env: str | None = None,
    strip_single_root: bool = False,
    keep_root_names: frozenset[str] = frozenset(),
    replace: bool = False,
) -> ExtractResult:
    """Extract ``archive`` into the directory ``target`` (which must not exist, unless ``replace``).

    ``password_env`` names the environment variable holding a zip password. With
    ``strip_single_root``, an archive whose members all sit under one top-level folder is
    extracted with that folder removed (``basic/EmoLabel/...`` → ``EmoLabel/...``), unless the
    folder's name is in ``keep_root_names`` (case-insensitive: a lone ``train/`` is data, not a
    wrapper).
    Raises :class:`UnsafeArchiveError` for unsafe members or size, :class:`DataError` for
    corrupt or truncated archives and password problems.
    """
    archive = Path(archive)
    target = Path(target)
    if target.exists() and not replace:
        raise DataError(
            f"extraction target {target} already exists; remove it or pass replace=True"
        )
    fmt = archive_format(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    _rmtree(target.parent / f".{target.name}.partial")  # the fixed name older versions used
    sweep_stale(target)  # leftovers of interrupted runs
    partial = private_sibling(target)
    keep = {n.lower() for n in keep_root_names}
    try:
        if fmt == "zip":
            files, nbytes = _extract_zip(archive, partial, max_total_bytes, password_env)
        else:
            files, nbytes = _extract_tar(archive, partial, max_total_bytes)
        root = partial
        if strip_single_root:
            entries = list(partial.iterdir())
            if len(entries) == 1 and entries[0].is_dir() and entries[0].name.lower() not in keep:
                root = entries[0]
        if target.exists():
            _rmtree(target)
        os.replace(root, target)
    finally:
        _rmtree(partial)
    return ExtractResult(target=target, format=fmt, files=files, bytes=nbytes)


# --------------------------------------------------------------------------- member checks


def _safe_relpath(archive: Path, name: str) -> PurePosixPath:
    """The member's path relative to the target, or UnsafeArchiveError."""
    where = f"archive {archive}: member {name!r}"
    if "\x00" in name:
        raise UnsafeArchiveError(f"{where} has a NUL byte in its name")
    if "\\" in name:
        # Windows separators: "..\\x" would escape on Windows and is ambiguous everywhere.
        raise UnsafeArchiveError(f"{where} uses backslashes in its path; refusing it")
    if name.startswith("/") or (len(name) >= 2 and name[1] == ":"):
        raise UnsafeArchiveError(f"{where} has an absolute path; only relative paths are allowed")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{where} has a '..' component and would escape the target")
    if not parts:
        raise UnsafeArchiveError(f"{where} has an empty path")
    return PurePosixPath(*parts)


def _dest_for(archive: Path, base: Path, rel: PurePosixPath, name: str) -> Path:
    dest = base / rel
    # base is freshly created and we never create links, so resolve() cannot be redirected;
    # this is a belt-and-braces check that the path stays inside.
    base_r = base.resolve()
    dest_r = dest.resolve()
    if dest_r != base_r and base_r not in dest_r.parents:
        raise UnsafeArchiveError(f"archive {archive}: member {name!r} resolves outside the target")
    return dest


def _count_limit(archive: Path, total: int, limit: int, name: str) -> None:
    if total > limit:
        raise UnsafeArchiveError(
            f"archive {archive}: unpacked size exceeds the limit of {limit} bytes "
            f"({limit / 2**30:.3g} GiB) at member {name!r} (a zip/tar bomb; if the archive is "
            f"genuine, raise download.max_unpacked_gb)"
        )


def _copy_counted(
    archive: Path, src: IO[bytes], dest: Path, name: str, declared: int, total: int, limit: int
) -> int:
    """Stream src to dest; returns the new running total. Stops as soon as a limit is passed."""
    written = 0
    _mkdir(archive, name, dest.parent)
    try:
        out = open(dest, "wb")
    except OSError as exc:
        raise _write_error(archive, name, dest, exc) from None
    with out:
        while True:
            chunk = src.read(_CHUNK)  # read errors are the archive's: callers report them
            if not chunk:
                break
            written += len(chunk)
            total += len(chunk)
            if written > declared:
                raise UnsafeArchiveError(
                    f"archive {archive}: member {name!r} unpacks to more than its declared "
                    f"{declared} bytes (lying header)"
                )
            _count_limit(archive, total, limit, name)
            try:
                out.write(chunk)
            except OSError as exc:
                raise _write_error(archive, name, dest, exc) from None
    if written != declared:
        raise DataError(
            f"archive {archive}: member {name!r} is truncated ({written} of {declared} bytes)"
        )
    return total


def _write_error(archive: Path, name: str, dest: Path, exc: OSError) -> DataError:
    # Not the archive's fault necessarily (disk full), but also e.g. a member "a" followed by
    # "a/b": say which.
    return DataError(f"archive {archive}: cannot write member {name!r} to {dest}: {exc}")


def _mkdir(archive: Path, name: str, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(archive, name, path, exc) from None


# ----------------------------------------------------------------------------------- zip


def _zip_password(archive: Path, password_env: str | None) -> bytes:
    if not password_env:
        raise DataError(
            f"archive {archive} is password-protected; set download.password_env to the name of "
            f"an environment variable holding its password"
        )
    value = os.environ.get(password_env)
    if not value:
        raise DataError(
            f"archive {archive} is password-protected and the environment variable "
            f"{password_env} is not set (or empty); export {password_env}=<password>"
        )
    return value.encode("utf-8")


def _extract_zip(
    archive: Path, base: Path, limit: int, password_env: str | None
) -> tuple[int, int]:
    try:
        zf = pyzipper.AESZipFile(archive)
    except (zipfile.BadZipFile, pyzipper.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"archive {archive} is not a readable zip ({exc})") from None
    with zf:
        infos = zf.infolist()
        declared_total = 0
        checked: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        encrypted = False
        for info in infos:
            rel = _safe_relpath(archive, info.filename)
            mode = info.external_attr >> 16
            ftype = stat.S_IFMT(mode)
            if ftype == stat.S_IFLNK:
                raise UnsafeArchiveError(
                    f"archive {archive}: member {info.filename!r} is a symlink; links are refused"
                )
            if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(
                    f"archive {archive}: member {info.filename!r} is a special file "
                    f"(mode {oct(mode)}); only regular files and directories are allowed"
                )
            if info.file_size < 0:
                raise DataError(f"archive {archive}: member {info.filename!r} has a bad size")
            declared_total += info.file_size
            encrypted |= bool(info.flag_bits & 0x1)
            checked.append((info, rel))
        _count_limit(archive, declared_total, limit, "<declared total>")
        if encrypted:
            zf.setpassword(_zip_password(archive, password_env))

        total = files = 0
        for info, rel in checked:
            dest = _dest_for(archive, base, rel, info.filename)
            if info.is_dir():
                _mkdir(archive, info.filename, dest)
                continue
            try:
                with zf.open(info) as src:
                    total = _copy_counted(
                        archive, src, dest, info.filename, info.file_size, total, limit
                    )
            except RuntimeError as exc:
                # pyzipper/zipfile raise RuntimeError for a bad password.
                if "password" in str(exc).lower():
                    raise DataError(
                        f"archive {archive}: wrong password for member {info.filename!r} "
                        f"(from environment variable {password_env})"
                    ) from None
                raise DataError(f"archive {archive}: member {info.filename!r}: {exc}") from None
            except (zipfile.BadZipFile, pyzipper.BadZipFile, zlib.error, EOFError, lzma.LZMAError,
                    OSError,
                    NotImplementedError, ValueError) as exc:
                hint = (
                    f"; or the password in {password_env} is wrong"
                    if info.flag_bits & 0x1 else ""
                )
                raise DataError(
                    f"archive {archive}: member {info.filename!r} is corrupt ({exc}){hint}"
                ) from None
            files += 1
    return files, total


# ----------------------------------------------------------------------------------- tar


def _extract_tar(archive: Path, base: Path, limit: int) -> tuple[int, int]:
    declared_total = total = files = 0
    try:
        # "r|*": one streaming pass. A random-access open would decompress a 100 GB .tar.gz
        # twice (once to list headers, once to extract).
        with tarfile.open(archive, mode="r|*") as tf:
            for member in tf:
                name = member.name
                rel = _safe_relpath(archive, name)
                if member.issym() or member.islnk():
                    raise UnsafeArchiveError(
                        f"archive {archive}: member {name!r} is a "
                        f"{'symlink' if member.issym() else 'hardlink'} to "
                        f"{member.linkname!r}; links are refused"
                    )
                if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
                    raise UnsafeArchiveError(
                        f"archive {archive}: member {name!r} is a device file or FIFO; "
                        f"only regular files and directories are allowed"
                    )
                if not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(
                        f"archive {archive}: member {name!r} has unsupported type "
                        f"{member.type!r}"
                    )
                try:
                    tarfile.data_filter(member, str(base))
                except tarfile.FilterError as exc:
                    raise UnsafeArchiveError(f"archive {archive}: member {name!r}: {exc}") from None
                dest = _dest_for(archive, base, rel, name)
                if member.isdir():
                    _mkdir(archive, name, dest)
                    continue
                declared_total += member.size
                _count_limit(archive, declared_total, limit, name)
                src = tf.extractfile(member)
                assert src is not None  # regular file
                total = _copy_counted(archive, src, dest, name, member.size, total, limit)
                files += 1
    except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error,
            lzma.LZMAError, OSError) as exc:
        raise DataError(
            f"archive {archive} is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from None
    except tarfile.StreamError as exc:
        raise DataError(f"archive {archive} is unreadable as a stream ({exc})") from None
    return files, total


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)

