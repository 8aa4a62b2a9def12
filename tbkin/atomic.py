"""Write files so that a final output name never holds a half-written file.

Every writer in the package goes through these helpers: data is written to a
temporary sibling (same directory, so the rename is atomic on POSIX) and renamed
onto the final name only once it is complete. An exception removes the temporary;
a killed process leaves it behind, and :func:`remove_stale_partials` clears it.

JSON is written strictly: NaN and infinity are not JSON, so writing one is an error
naming the file and the key instead of a file other tools cannot read.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from tbkin.errors import TbkinError

PARTIAL_SUFFIX = ".partial"


class NonFiniteJsonError(TbkinError, ValueError):
    """A value to be written as JSON holds NaN or infinity."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(final), suffix=suffix + PARTIAL_SUFFIX, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the final file the mode a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _partial_prefix(final: Path) -> str:
    return f".{final.name}."


def remove_stale_partials(final: str | os.PathLike) -> list[Path]:
    """Delete temporaries of ``final`` left by a killed writer; returns what was removed.

    Call it only where one job at a time writes ``final`` (Snakemake runs one job per
    output), since a live writer's temporary looks the same.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    removed = []
    for stale in final.parent.glob(f"{glob.escape(_partial_prefix(final))}*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    return removed


def non_finite_key(obj: Any, where: str = "") -> str | None:
    """Key path (``a.b[2]``) of the first NaN / infinity in ``obj``, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "<value>")
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for key, value in items:
        found = non_finite_key(value, key)
        if found is not None:
            return found
    return None


def json_text(obj: Any, where: str | os.PathLike, indent: int | None = None) -> str:
    """``json.dumps`` that refuses NaN / infinity, naming ``where`` (a file) and the key."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        key = non_finite_key(obj)
        if key is None:
            raise
        raise NonFiniteJsonError(f"{where}: refusing to write a non-finite number (NaN or infinity) "
                                 f"at '{key}': it is not valid JSON") from None


def json_line(record: Any, where: str | os.PathLike) -> str:
    """One JSONL line (with its newline) of ``record``; NaN / infinity is an error (see json_text)."""
    return json_text(record, where) + "\n"


def write_json(final: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    text = json_text(obj, final, indent)  # before creating anything: a bad value leaves no file
    with atomic_path(final) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
