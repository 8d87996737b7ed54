"""Downloads against a real HTTP server on 127.0.0.1."""

import hashlib
import http.server
import os
import threading

import pytest

from ferpipe.errors import ChecksumError
from ferpipe.sources.fetch import DownloadError, download, sha256_file

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: dict = {}

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        st = self.server.state
        st["requests"].append((self.path, self.headers.get("Range")))
        if self.path == "/missing":
            self.send_error(404, "Not Found")
            return
        if self.path == "/flaky503" and len(st["requests"]) == 1:
            self.send_error(503, "busy")
            return
        body, start = PAYLOAD, 0
        rng = self.headers.get("Range")
        honours_range = self.path != "/norange"
        if rng and honours_range:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        drop = self.path in ("/drop", "/norange") and not st["dropped"]
        if drop:
            st["dropped"] = True
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.state = {"requests": [], "dropped": False}
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


FAST = dict(retries=3, backoff_s=0.001, timeout_s=10, progress=False)


def test_sha256_file(tmp_path):
    (tmp_path / "f").write_bytes(PAYLOAD)
    assert sha256_file(tmp_path / "f") == SHA


def test_plain_download_with_hash(server, tmp_path):
    srv, base = server
    out = download(f"{base}/ok", tmp_path / "d" / "a.zip", sha256=SHA, **FAST)
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "d" / "a.zip.part").exists()
    # A second call finds the verified file and does not fetch again.
    download(f"{base}/ok", out, sha256=SHA, **FAST)
    assert len(srv.state["requests"]) == 1


def test_resume_after_dropped_connection(server, tmp_path):
    srv, base = server
    out = download(f"{base}/drop", tmp_path / "a.zip", sha256=SHA, **FAST)
    assert out.read_bytes() == PAYLOAD
    reqs = srv.state["requests"]
    assert len(reqs) == 2 and reqs[0][1] is None
    start = int(reqs[1][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= len(PAYLOAD) // 2  # resumed near the drop, not from zero


def test_server_ignoring_range_restarts(server, tmp_path):
    srv, base = server
    out = download(f"{base}/norange", tmp_path / "a.zip", sha256=SHA, **FAST)
    assert out.read_bytes() == PAYLOAD
    assert srv.state["requests"][1][1] is not None  # we asked for a range, got 200, restarted


def test_retry_on_503(server, tmp_path):
    srv, base = server
    download(f"{base}/flaky503", tmp_path / "a", **FAST)
    assert (tmp_path / "a").read_bytes() == PAYLOAD and len(srv.state["requests"]) == 2


def test_checksum_mismatch_moves_file_aside(server, tmp_path):
    _, base = server
    with pytest.raises(ChecksumError, match=f"expected {'0' * 64}, got {SHA}"):
        download(f"{base}/ok", tmp_path / "a.zip", sha256="0" * 64, **FAST)
    assert not (tmp_path / "a.zip").exists() and not (tmp_path / "a.zip.part").exists()
    assert (tmp_path / "a.zip.sha256-mismatch").read_bytes() == PAYLOAD


def test_existing_bad_file_is_replaced(server, tmp_path):
    _, base = server
    (tmp_path / "a.zip").write_bytes(b"old garbage")
    download(f"{base}/ok", tmp_path / "a.zip", sha256=SHA, **FAST)
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD
    assert (tmp_path / "a.zip.sha256-mismatch").read_bytes() == b"old garbage"


def test_404_is_clear_and_not_retried(server, tmp_path):
    srv, base = server
    with pytest.raises(DownloadError, match=r"/missing failed: HTTP 404"):
        download(f"{base}/missing", tmp_path / "a", **FAST)
    assert len(srv.state["requests"]) == 1
    assert not (tmp_path / "a").exists()


def test_unreachable_gives_up_after_retries(tmp_path):
    with pytest.raises(DownloadError, match="after 3 attempts"):
        download("http://127.0.0.1:9/x", tmp_path / "a", retries=2, backoff_s=0.001,
                 timeout_s=2, progress=False)


def test_non_http_url_refused(tmp_path):
    with pytest.raises(DownloadError, match="only http"):
        download("ftp://example.org/x", tmp_path / "a", progress=False)
