"""Download one http(s) URL to a file: resumable, retried, verified.

Bytes go to ``<dest>.part``; a retry continues it with an HTTP ``Range`` request. A server that
ignores ``Range`` (answers 200) or answers a different range restarts the file from zero. A
``.part`` is renamed to ``dest`` only after the whole body arrived and, when a sha256 is given,
matched it; a mismatching file is moved aside to ``<dest>.sha256-mismatch`` (never left where a
rerun would take it for good) and :class:`ChecksumError` names both hashes.

Retries: connection errors, timeouts, a body cut short, HTTP 408/429/5xx; the delay doubles
from ``backoff_s``. Other HTTP errors (404, 403, ...) fail at once: retrying will not help.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
from tqdm.auto import tqdm

from ferpipe.errors import ChecksumError, DataError
from ferpipe.shards import sha256_file  # re-exported: the one file hash

__all__ = ["DownloadError", "download", "sha256_file"]

# Small network reads: when a connection drops, the read in flight is lost, so this bounds what
# a resume has to fetch again.
_NET_CHUNK = 1 << 16
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(DataError):
    """A URL could not be fetched (HTTP error, or the retries ran out)."""


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    session: requests.Session | None = None,
) -> Path:
    """Fetch ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` is kept when it matches ``sha256`` (or when no hash is given); an
    existing ``dest`` that does not match is moved aside and fetched again. ``retries`` is the
    number of extra attempts after the first.
    """
    dest = Path(dest)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url!r}: only http(s) URLs are supported")
    want = sha256.lower().strip() if sha256 else None
    if dest.exists():
        if want is None or sha256_file(dest) == want:
            return dest
        _move_aside(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    own_session = session is None
    sess = session or requests.Session()
    try:
        last_error: str = ""
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            try:
                if _fetch_once(sess, url, part, timeout_s, progress):
                    break
                last_error = "the body ended before Content-Length bytes arrived"
            except _Retryable as exc:
                last_error = str(exc)
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
        else:
            raise DownloadError(
                f"download of {url} failed after {retries + 1} attempts: {last_error}; "
                f"the partial file {part} is kept and a rerun resumes it"
            )
    finally:
        if own_session:
            sess.close()

    if want is not None:
        got = sha256_file(part)
        if got != want:
            bad = _move_aside(part, dest)
            raise ChecksumError(
                f"sha256 mismatch for {url}: expected {want}, got {got}; the file was moved to "
                f"{bad}. Check the hash in params.yaml or the source."
            )
    os.replace(part, dest)
    return dest


class _Retryable(Exception):
    pass


def _fetch_once(sess: requests.Session, url: str, part: Path, timeout_s: float,
                progress: bool) -> bool:
    """One request; True when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    # identity: a Range offset counts bytes on the wire, so no transparent gzip.
    headers["Accept-Encoding"] = "identity"
    with sess.get(url, headers=headers, stream=True, timeout=timeout_s) as resp:
        if resp.status_code == 416 and offset:
            # Our .part is already as long as the file (or longer: stale). Ask for the size.
            total = _content_range_total(resp.headers.get("Content-Range", ""))
            if total is not None and total == offset:
                return True
            part.unlink()
            raise _Retryable(f"server refused range {offset}- (stale partial file discarded)")
        if resp.status_code in _RETRY_STATUS:
            raise _Retryable(f"HTTP {resp.status_code} from {url}")
        if resp.status_code >= 400:
            raise DownloadError(f"download of {url} failed: HTTP {resp.status_code} {resp.reason}")
        mode = "ab"
        if resp.status_code == 206:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != offset:  # a range we did not ask for: start over
                part.unlink(missing_ok=True)
                raise _Retryable(f"server answered range start {start}, asked {offset}")
        else:
            offset, mode = 0, "wb"  # 200: the server ignored Range; restart from zero
        length = resp.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else None
        got = offset
        with open(part, mode) as out, tqdm(
            total=expected, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name[:-5], disable=not progress, leave=False,
        ) as bar:
            for chunk in resp.iter_content(_NET_CHUNK):
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        return expected is None or got >= expected


def _content_range_start(value: str) -> int | None:
    # "bytes 100-199/1000"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _content_range_total(value: str) -> int | None:
    # "bytes */1000"
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def _move_aside(path: Path, like: Path | None = None) -> Path:
    like = like or path
    bad = like.with_name(like.name + ".sha256-mismatch")
    os.replace(path, bad)
    return bad
