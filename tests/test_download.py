"""The downloader against a local HTTP server on 127.0.0.1 serving small archives."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tbkin.cli import main as tbkin_main
from tbkin.data.download import DownloadSpec, download
from tbkin.errors import DownloadError


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("refcoco/instances.json", json.dumps({"images": [], "annotations": []}))
        # incompressible payload so that a truncation hits the middle of the archive
        zf.writestr("refcoco/refs(unc).p", hashlib.sha256(b"x").digest() * 4000, zipfile.ZIP_STORED)
    return buf.getvalue()


def _evil_tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    return buf.getvalue()


def _tar_bytes() -> tuple[bytes, int]:
    """An uncompressed tar of two files, and the offset where its first member ends."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, size in (("refcoco/instances.json", 1000), ("refcoco/refs(unc).p", 3000)):
            info = tarfile.TarInfo(name)
            info.size = size
            tf.addfile(info, io.BytesIO(b"x" * size))
        first_member_end = 512 + 1024  # header block + 1000 bytes padded to 2 blocks
    return buf.getvalue(), first_member_end


ARCHIVE = _zip_bytes()
TAR, TAR_FIRST_MEMBER_END = _tar_bytes()
SHA = hashlib.sha256(ARCHIVE).hexdigest()
WEIGHTS = b"\x00weights" * 1000


class Server:
    """Serves files with Range support; '/interrupted/...' drops the first transfer midway;
    '/nolength/...' is sent without a Content-Length (the end of the connection ends it)."""

    def __init__(self):
        self.files = {"/good.zip": ARCHIVE, "/truncated.zip": ARCHIVE[: len(ARCHIVE) // 2],
                      "/interrupted/data.zip": ARCHIVE, "/interrupted/norange.zip": ARCHIVE,
                      "/evil.tar.gz": _evil_tar_bytes(),
                      "/weights-1234abcd.pth": WEIGHTS,
                      "/nolength/whole.tar": TAR, "/nolength/cut.tar": TAR[:TAR_FIRST_MEMBER_END]}
        self.requests: list[tuple[str, str | None]] = []
        self.interrupt_next = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range") and not self.path.endswith("norange.zip"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                if not self.path.startswith("/nolength/"):
                    self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if self.path.startswith("/interrupted/") and server.interrupt_next:
                    server.interrupt_next = False
                    payload = payload[: len(payload) // 3]  # then the connection drops
                    self.close_connection = True
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _fetch(server, path, tmp_path, retries=0, **spec):
    spec.setdefault("extract_to", tmp_path / "data")
    marker = tmp_path / "dl" / "x.done.json"
    record = download(DownloadSpec(name="x", url=server.url + path, **spec), tmp_path / "dl", marker,
                      retries=retries, timeout=5, backoff=0, progress=False)
    return record, marker


def _nothing_final(tmp_path, name):
    assert not (tmp_path / "dl" / name).exists()
    assert not (tmp_path / "dl" / "x.done.json").exists()
    assert not list(tmp_path.glob("data/**/*.json")) and not list(tmp_path.glob("data/**/*.p"))


def test_good_archive_is_verified_extracted_and_marked(server, tmp_path):
    record, marker = _fetch(server, "/good.zip", tmp_path, sha256=SHA, size=len(ARCHIVE))
    assert (tmp_path / "dl" / "good.zip").read_bytes() == ARCHIVE
    assert (tmp_path / "data" / "refcoco" / "instances.json").is_file()
    assert record["extracted"] == ["refcoco"] and record["sha256"] == SHA and record["sha256_pinned"]
    assert json.loads(marker.read_text()) == record
    assert not list(tmp_path.rglob("*.part")) and not list((tmp_path / "data").glob(".*"))
    # a second run re-verifies the file in place instead of fetching it again
    n = len(server.requests)
    _fetch(server, "/good.zip", tmp_path, sha256=SHA, size=len(ARCHIVE))
    assert len(server.requests) == n


def test_truncated_archive_is_rejected_by_size(server, tmp_path):
    with pytest.raises(DownloadError, match=r"size \d+ bytes, expected %d" % len(ARCHIVE)):
        _fetch(server, "/truncated.zip", tmp_path, sha256=SHA, size=len(ARCHIVE))
    _nothing_final(tmp_path, "truncated.zip")
    assert not list(tmp_path.rglob("*.part"))  # a wrong file is not kept for resuming


def test_truncated_archive_without_pins_fails_extraction_and_is_not_kept(server, tmp_path):
    with pytest.raises(DownloadError, match="cannot extract"):
        _fetch(server, "/truncated.zip", tmp_path)
    _nothing_final(tmp_path, "truncated.zip")


def test_wrong_checksum_is_rejected(server, tmp_path):
    with pytest.raises(DownloadError, match=f"sha256 {SHA}, expected {'0' * 64}"):
        _fetch(server, "/good.zip", tmp_path, sha256="0" * 64)
    _nothing_final(tmp_path, "good.zip")
    assert not (tmp_path / "data" / "refcoco").exists()


def test_interrupted_transfer_resumes_on_the_next_run(server, tmp_path):
    with pytest.raises(DownloadError, match="interrupted.*rerun to resume"):
        _fetch(server, "/interrupted/data.zip", tmp_path, sha256=SHA, size=len(ARCHIVE))
    part = tmp_path / "dl" / "data.zip.part"
    kept = part.stat().st_size
    assert 0 < kept < len(ARCHIVE)
    _nothing_final(tmp_path, "data.zip")
    record, _ = _fetch(server, "/interrupted/data.zip", tmp_path, sha256=SHA, size=len(ARCHIVE))
    assert server.requests[-1] == ("/interrupted/data.zip", f"bytes={kept}-")
    assert record["sha256"] == SHA and not part.exists()
    assert (tmp_path / "data" / "refcoco" / "refs(unc).p").is_file()


def test_interrupted_transfer_resumes_within_one_run(server, tmp_path):
    record, _ = _fetch(server, "/interrupted/data.zip", tmp_path, retries=2, sha256=SHA)
    assert record["sha256"] == SHA
    (_, first_range), (_, second_range) = server.requests
    assert first_range is None and second_range.startswith("bytes=") and second_range != "bytes=0-"


def test_server_ignoring_range_restarts_from_scratch(server, tmp_path):
    record, _ = _fetch(server, "/interrupted/norange.zip", tmp_path, retries=1, sha256=SHA)
    assert record["sha256"] == SHA and len(server.requests) == 2 and server.requests[1][1]


def test_unpinned_hash_is_logged_and_recorded(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        record, _ = _fetch(server, "/weights-1234abcd.pth", tmp_path, extract_to=None)
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    assert record["sha256"] == digest and not record["sha256_pinned"] and record["extracted_to"] is None
    assert digest in caplog.text and "Pin it" in caplog.text
    assert (tmp_path / "dl" / "weights-1234abcd.pth").read_bytes() == WEIGHTS


def test_sha256_prefix_pins_like_torchvision(server, tmp_path):
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    record, _ = _fetch(server, "/weights-1234abcd.pth", tmp_path, extract_to=None, sha256=digest[:8])
    assert record["sha256_pinned"]
    (tmp_path / "dl" / "weights-1234abcd.pth").write_bytes(b"tampered")
    with pytest.raises(DownloadError, match="failed verification"):
        _fetch(server, "/weights-1234abcd.pth", tmp_path, extract_to=None, sha256=digest[:8])
    assert not (tmp_path / "dl" / "weights-1234abcd.pth").exists()


def test_archive_escaping_its_folder_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="cannot extract"):
        _fetch(server, "/evil.tar.gz", tmp_path / "a")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_http_error_and_cli(server, tmp_path, capsys):
    args = ["download", "--name", "missing", "--url", server.url + "/missing.zip", "--dest-dir",
            str(tmp_path / "dl"), "--marker", str(tmp_path / "m.json"), "--retries", "0", "--no-progress"]
    assert tbkin_main(args) == 2
    assert "HTTP 404" in capsys.readouterr().err
    args[4] = server.url + "/good.zip"
    assert tbkin_main(args + ["--sha256", SHA, "--extract-to", str(tmp_path / "data")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["sha256"] == SHA


def test_unpinned_tar_cut_at_a_member_boundary_is_refused(server, tmp_path):
    """Without a pinned size or hash, and without a Content-Length, only the tar's own
    end-of-archive marker tells that its second member is missing."""
    record, _ = _fetch(server, "/nolength/whole.tar", tmp_path / "whole")
    assert record["extracted"] == ["refcoco"] and (tmp_path / "whole" / "data" / "refcoco" / "refs(unc).p").is_file()
    with pytest.raises(DownloadError, match="cut.tar has no tar end-of-archive marker"):
        _fetch(server, "/nolength/cut.tar", tmp_path)
    _nothing_final(tmp_path, "cut.tar")
    assert not (tmp_path / "data" / "refcoco").exists()
