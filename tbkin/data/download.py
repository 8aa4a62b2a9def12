"""Fetch, verify and extract one real-data archive (or weights file).

The file is downloaded to ``<dest-dir>/<file>.part``; an interrupted transfer is
resumed from where it stopped with an HTTP ``Range`` request (automatically up to
``--retries`` times, and on the next run). Only after the size and sha256 match is
the file renamed to its final name. Archives are then extracted into a hidden
folder next to their destination and moved into place file by file (each move an
atomic rename), and a marker JSON records what was verified. So no final name ever
holds an unverified or half-written file.

A null ``sha256`` means "not pinned yet": the computed hash is logged and recorded
in the marker so that it can be pinned in the config. Without a pinned hash, the
size (from the config or the server's ``Content-Length``) and the archive's own
structure are the checks: a zip must have its central directory and every member its
CRC; a tar must end with its end-of-archive marker (two zero blocks), since a tar cut
exactly between two members otherwise reads as a complete, shorter archive.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from tbkin.atomic import write_json
from tbkin.errors import DownloadError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass(frozen=True)
class DownloadSpec:
    name: str
    url: str
    sha256: Optional[str] = None  # full hex digest or a prefix of >= 8 hex digits
    size: Optional[int] = None
    extract_to: Optional[Path] = None  # None = keep the downloaded file as it is

    @property
    def file_name(self) -> str:
        name = Path(urllib.parse.unquote(urllib.parse.urlparse(self.url).path)).name
        if not name:
            raise DownloadError(f"download '{self.name}': cannot tell a file name from URL {self.url}")
        return name


class _Interrupted(Exception):
    """The transfer stopped early; the .part file keeps what arrived."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _total_from_headers(response, offset: int) -> Optional[int]:
    content_range = response.headers.get("Content-Range")
    if content_range:
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range)
        if match and match.group(3) != "*":
            return int(match.group(3))
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _fetch_once(spec: DownloadSpec, part: Path, timeout: float, progress: bool) -> Optional[int]:
    """One HTTP request appending to ``part``; returns the total size the server announced."""
    offset = part.stat().st_size if part.exists() else 0
    if spec.size is not None and offset >= spec.size:
        if offset == spec.size:
            return spec.size
        part.unlink()  # longer than expected: cannot be a prefix of the right file
        offset = 0
    headers = {"User-Agent": "tbkin-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(spec.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return offset  # nothing left to send: the part is complete, verification decides
        raise DownloadError(f"download '{spec.name}': {spec.url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _Interrupted(f"cannot connect: {getattr(exc, 'reason', exc)}") from None
    with response:
        if offset and response.status == 206:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != offset:
                raise DownloadError(f"download '{spec.name}': server resumed at the wrong offset "
                                    f"({response.headers.get('Content-Range')!r}, wanted {offset})")
            mode = "ab"
        else:
            if offset:
                log.info("%s: server ignored the range request; starting over", spec.name)
            offset, mode = 0, "wb"
        total = _total_from_headers(response, offset)
        received = offset
        with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                          desc=spec.name, disable=not progress, mininterval=2) as bar:
            try:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as exc:
                raise _Interrupted(f"transfer stopped at {received} bytes: {exc!r}") from None
    if total is not None and received < total:
        raise _Interrupted(f"transfer stopped at {received} of {total} bytes")
    return total


def _verify(spec: DownloadSpec, path: Path, announced: Optional[int]) -> str:
    """Check size and hash of ``path``; on a mismatch delete it and raise."""
    size = path.stat().st_size
    expected = spec.size if spec.size is not None else announced
    problem = None
    if expected is not None and size != expected:
        problem = f"size {size} bytes, expected {expected} (truncated or wrong file)"
    digest = sha256_of(path) if problem is None else ""
    if problem is None and spec.sha256 is not None and not digest.startswith(spec.sha256.lower()):
        problem = f"sha256 {digest}, expected {spec.sha256}"
    if problem:
        path.unlink()
        raise DownloadError(f"download '{spec.name}' from {spec.url} failed verification: {problem}; "
                            "the file was deleted, rerun to fetch it again")
    if spec.sha256 is None:
        log.warning("download '%s': sha256 not pinned in the config; computed sha256 = %s "
                    "(size %d bytes). Pin it: downloads.%s.sha256", spec.name, digest, size, spec.name)
    return digest


def _safe_members_zip(archive: zipfile.ZipFile, dest: Path) -> None:
    root = dest.resolve()
    for member in archive.namelist():
        target = (dest / member).resolve()
        if target != root and root not in target.parents:
            raise DownloadError(f"{archive.filename}: member {member!r} would be written outside {dest}")


def _check_tar_end(spec: DownloadSpec, archive: Path, tf: tarfile.TarFile) -> None:
    """A tar whose members were all read must continue with its end-of-archive marker."""
    tf.fileobj.seek(tf.offset)
    if tf.fileobj.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
        raise DownloadError(
            f"download '{spec.name}': {archive} has no tar end-of-archive marker after its last member "
            f"({len(tf.getmembers())} members): it is truncated")


def _extract(spec: DownloadSpec, archive: Path, dest: Path) -> list[str]:
    """Extract into a hidden sibling folder, then move every file into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".{spec.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        name = archive.name.lower()
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                _safe_members_zip(zf, staging)
                zf.extractall(staging)
        elif name.endswith(ARCHIVE_SUFFIXES):
            with tarfile.open(archive) as tf:
                tf.extractall(staging, filter="data")  # refuses absolute paths, '..', devices
                _check_tar_end(spec, archive, tf)  # before any file is moved into place
        else:
            raise DownloadError(f"download '{spec.name}': {archive.name} is not a known archive type "
                                f"({', '.join(ARCHIVE_SUFFIXES)}); set extract_to: null to keep it as is")
        top_level = sorted(os.listdir(staging))
        for folder, _dirs, files in os.walk(staging):
            target_dir = dest / Path(folder).relative_to(staging)
            target_dir.mkdir(parents=True, exist_ok=True)
            for file in files:
                os.replace(Path(folder) / file, target_dir / file)
        return top_level
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(f"download '{spec.name}': cannot extract {archive}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(spec: DownloadSpec, dest_dir: str | os.PathLike, marker: str | os.PathLike,
             retries: int = 3, timeout: float = 60.0, backoff: float = 2.0, progress: bool = True) -> dict:
    """Fetch (resuming), verify, extract; write ``marker`` last. Returns the marker's record."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / spec.file_name
    part = final.with_name(final.name + ".part")
    if final.exists():
        log.info("%s: %s exists; verifying it again", spec.name, final)
        digest = _verify(spec, final, None)
    else:
        announced = None
        for attempt in range(retries + 1):
            try:
                announced = _fetch_once(spec, part, timeout, progress)
                break
            except _Interrupted as exc:
                if attempt == retries:
                    raise DownloadError(
                        f"download '{spec.name}' from {spec.url} interrupted: {exc}; the partial file "
                        f"{part} is kept, rerun to resume") from None
                log.warning("%s: %s; resuming (attempt %d of %d)", spec.name, exc, attempt + 1, retries)
                time.sleep(backoff * (attempt + 1))
        digest = _verify(spec, part, announced)
        os.replace(part, final)
    record = {"name": spec.name, "url": spec.url, "file": str(final), "size": final.stat().st_size,
              "sha256": digest, "sha256_pinned": spec.sha256 is not None, "extracted_to": None, "extracted": []}
    if spec.extract_to is not None:
        try:
            record["extracted"] = _extract(spec, final, spec.extract_to)
        except DownloadError:
            if spec.sha256 is None:  # nothing vouches for the archive: do not keep it
                final.unlink(missing_ok=True)
            raise
        record["extracted_to"] = str(spec.extract_to)
    write_json(marker, record)
    return record


# ---- CLI: tbkin download -------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="download name (config downloads.<name>)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--sha256", default=None, help="expected sha256 (or a prefix of >= 8 hex digits)")
    parser.add_argument("--size", type=int, default=None, help="expected size in bytes")
    parser.add_argument("--dest-dir", required=True, help="where the downloaded file is kept")
    parser.add_argument("--extract-to", default=None, help="folder to extract the archive into")
    parser.add_argument("--marker", required=True, help="JSON written once everything is verified")
    parser.add_argument("--retries", type=int, default=3, help="automatic resumes of an interrupted transfer")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    spec = DownloadSpec(args.name, args.url, args.sha256 or None, args.size,
                        Path(args.extract_to) if args.extract_to else None)
    record = download(spec, args.dest_dir, args.marker, retries=args.retries, timeout=args.timeout,
                      progress=not args.no_progress)
    log.info("%s: %s verified (sha256 %s)", spec.name, record["file"], record["sha256"])
    return 0
