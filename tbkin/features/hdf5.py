"""Region-feature HDF5 files: streamed writer, per-image reader, shard merger.

Layout (N images, m regions per image, D feature dims); rows past ``num_boxes`` are padding:

=============  ===========  ===================================================
dataset        shape        dtype / meaning
=============  ===========  ===================================================
image_id       (N,)         int64, sorted ascending
width, height  (N,)         int32 image size in pixels (after EXIF rotation)
num_boxes      (N,)         int32 valid regions (0..m)
features       (N, m, D)    float32 or float16 box-head features, chunks (1, m, D)
boxes          (N, m, 4)    float32 x1, y1, x2, y2 in pixels
position       (N, m, 5)    float32 x1/W, y1/H, x2/W, y2/H, area/(W*H)
labels         (N, m)       int32 detector class id, -1 for padding
scores         (N, m)       float32 detection confidence, 0 for padding
=============  ===========  ===================================================

File attributes: ``label_names`` (JSON list, index = class id), ``feature_dim``,
``num_regions``, ``skipped_images`` (JSON list of unreadable image files) and
``skipped_image_ids`` (their image ids: later stages leave out the questions and
expressions of these images).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from tbkin.atomic import atomic_path, remove_stale_partials, write_text
from tbkin.errors import TbkinError

log = logging.getLogger(__name__)

# Rows per chunk of the small per-image datasets; per-region datasets use one image per chunk.
_ROW_CHUNK = 256


class FeatureFileError(TbkinError):
    """A region-feature HDF5 file is missing, malformed or inconsistent with another."""


@dataclass
class Regions:
    """The regions of one image; arrays have m rows, those past ``num_boxes`` are padding."""

    image_id: int
    features: np.ndarray   # (m, D)
    boxes: np.ndarray      # (m, 4)
    position: np.ndarray   # (m, 5)
    labels: np.ndarray     # (m,)
    scores: np.ndarray     # (m,)
    num_boxes: int
    width: int
    height: int
    label_names: list[str]

    def valid(self) -> "Regions":
        """The same regions without padding rows."""
        n = self.num_boxes
        return Regions(
            self.image_id, self.features[:n], self.boxes[:n], self.position[:n], self.labels[:n],
            self.scores[:n], n, self.width, self.height, self.label_names,
        )


def position_features(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """ROSITA's 5-d box feature: normalised corners and relative area."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(width * height)
    return np.concatenate([boxes / scale, area[:, None]], axis=1).astype(np.float32)


def skipped_list_path(output: str | os.PathLike) -> Path:
    """Where the names of unreadable images are listed: next to the output file."""
    output = Path(output)
    return output.with_name(output.name + ".skipped.txt")


class RegionFeatureWriter:
    """Append images to a new HDF5 file as they are extracted; memory stays flat.

    Writes to a temporary sibling and renames it onto ``path`` on ``close()`` (or at the
    end of a ``with`` block without error), so a crash never leaves a partial file.
    Temporaries of ``path`` left by a killed earlier run are deleted first.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_regions: int,
        feature_dim: int,
        label_names: Sequence[str],
        float16: bool = False,
    ):
        self.path = Path(path)
        self.num_regions = int(num_regions)
        self.feature_dim = int(feature_dim)
        self.skipped: list[str] = []
        self.skipped_ids: list[int] = []
        self.count = 0
        self._pending: list[dict] = []
        self._last_id: int | None = None
        for stale in remove_stale_partials(self.path):
            log.info("removed %s, left by an interrupted run", stale)
        self._atomic = atomic_path(self.path, suffix=".h5")
        tmp = self._atomic.__enter__()
        self._file = h5py.File(tmp, "w")
        m, d = self.num_regions, self.feature_dim
        feature_dtype = np.float16 if float16 else np.float32
        specs = {
            "image_id": ((), np.int64),
            "width": ((), np.int32),
            "height": ((), np.int32),
            "num_boxes": ((), np.int32),
            "features": ((m, d), feature_dtype),
            "boxes": ((m, 4), np.float32),
            "position": ((m, 5), np.float32),
            "labels": ((m,), np.int32),
            "scores": ((m,), np.float32),
        }
        self._datasets = {}
        for name, (tail, dtype) in specs.items():
            chunk_rows = 1 if tail else _ROW_CHUNK
            self._datasets[name] = self._file.create_dataset(
                name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype, chunks=(chunk_rows, *tail)
            )
        self._file.attrs["label_names"] = json.dumps(list(label_names))
        self._file.attrs["feature_dim"] = d
        self._file.attrs["num_regions"] = m

    def append(
        self,
        image_id: int,
        width: int,
        height: int,
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        features: np.ndarray,
    ) -> None:
        """Add one image; k <= m regions, padded here to m rows."""
        image_id = int(image_id)
        if self._last_id is not None and image_id <= self._last_id:
            raise FeatureFileError(f"{self.path}: image ids must be written in increasing order ({image_id})")
        m, k = self.num_regions, len(boxes)
        if k > m:
            raise FeatureFileError(f"{self.path}: image {image_id} has {k} regions, more than m = {m}")
        row = {
            "image_id": image_id,
            "width": width,
            "height": height,
            "num_boxes": k,
            "features": np.zeros((m, self.feature_dim), np.float32),
            "boxes": np.zeros((m, 4), np.float32),
            "position": np.zeros((m, 5), np.float32),
            "labels": np.full((m,), -1, np.int32),
            "scores": np.zeros((m,), np.float32),
        }
        if k:
            row["features"][:k] = features
            row["boxes"][:k] = boxes
            row["position"][:k] = position_features(boxes, width, height)
            row["labels"][:k] = labels
            row["scores"][:k] = scores
        self._write_row(row)
        self._last_id = image_id

    def _write_row(self, row: dict) -> None:
        self._pending.append(row)
        self.count += 1
        if len(self._pending) >= _ROW_CHUNK:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows (at most a few hundred images are ever held in memory)."""
        if not self._pending:
            return
        start = self.count - len(self._pending)
        for name, dataset in self._datasets.items():
            dataset.resize(self.count, axis=0)
            dataset[start : self.count] = np.stack([np.asarray(row[name]) for row in self._pending])
        self._pending = []

    def copy_row(self, source: h5py.File, index: int) -> None:
        """Append row ``index`` of another feature file unchanged (used to merge shards)."""
        image_id = int(source["image_id"][index])
        if self._last_id is not None and image_id <= self._last_id:
            raise FeatureFileError(f"{self.path}: image id {image_id} occurs twice or out of order")
        self._write_row({name: source[name][index] for name in self._datasets})
        self._last_id = image_id

    def skip(self, file_name: str, image_id: int | None = None) -> None:
        self.skipped.append(file_name)
        if image_id is not None:
            self.skipped_ids.append(int(image_id))

    def close(self) -> None:
        self.flush()
        self._file.attrs["skipped_images"] = json.dumps(self.skipped)
        self._file.attrs["skipped_image_ids"] = json.dumps(sorted(self.skipped_ids))
        self._file.close()
        self._atomic.__exit__(None, None, None)
        if self.skipped:
            write_text(skipped_list_path(self.path), "".join(f"{name}\n" for name in self.skipped))
        else:  # a list from an earlier run of this output would be stale
            skipped_list_path(self.path).unlink(missing_ok=True)

    def abort(self, exc: BaseException) -> None:
        self._file.close()
        self._atomic.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> "RegionFeatureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


class RegionFeatureReader:
    """Regions of a feature file, by image id.

    :meth:`get` reads the regions of one image (``features`` in the file's dtype, float16
    too); :meth:`get_many` reads chosen datasets of many images at once (the graph builder
    takes boxes, labels and scores of a batch, never the large ``features``). Only the
    image-id index is held in memory unless ``cache=True``: then every image :meth:`get`
    reads is kept (a few MB for ``shapes``), for training and evaluation, which read the
    same images again every epoch.

    Safe to use from DataLoader worker processes: the file is reopened after a fork.
    """

    def __init__(self, path: str | os.PathLike, cache: bool = False):
        self.path = Path(path)
        self._file = None
        self._pid = None
        self._cache: dict[int, Regions] | None = {} if cache else None
        handle = self._handle()
        try:
            self.image_ids = handle["image_id"][:]
            self.label_names: list[str] = json.loads(handle.attrs["label_names"])
            self.num_regions = int(handle.attrs["num_regions"])
            self.feature_dim = int(handle.attrs["feature_dim"])
            self.skipped_images: list[str] = json.loads(handle.attrs.get("skipped_images", "[]"))
            self.skipped_image_ids: set[int] = set(json.loads(handle.attrs.get("skipped_image_ids", "[]")))
        except KeyError as exc:
            raise FeatureFileError(f"{self.path}: not a region-feature file (missing {exc})") from None
        self._row = {int(i): r for r, i in enumerate(self.image_ids)}

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise FeatureFileError(f"cannot open region features {self.path}: {exc}") from None
            self._pid = os.getpid()
        return self._file

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._row

    def get(self, image_id: int) -> Regions:
        image_id = int(image_id)
        if self._cache is not None and image_id in self._cache:
            return self._cache[image_id]
        try:
            row = self._row[image_id]
        except KeyError:
            raise FeatureFileError(f"{self.path}: no regions for image id {image_id}") from None
        h = self._handle()
        regions = Regions(
            image_id=image_id,
            features=h["features"][row],
            boxes=h["boxes"][row],
            position=h["position"][row],
            labels=h["labels"][row],
            scores=h["scores"][row],
            num_boxes=int(h["num_boxes"][row]),
            width=int(h["width"][row]),
            height=int(h["height"][row]),
            label_names=self.label_names,
        )
        if self._cache is not None:
            self._cache[image_id] = regions
        return regions

    def get_many(self, image_ids: Sequence[int], names: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Datasets ``names`` of the distinct images among ``image_ids`` that the file has
        (in file order), and per given id the index of its image in them (-1: not in the file)."""
        rows = np.fromiter((self._row.get(int(i), -1) for i in image_ids), np.int64, len(image_ids))
        wanted, index = np.unique(rows[rows >= 0], return_inverse=True)
        image_index = np.full(len(rows), -1, np.int64)
        image_index[rows >= 0] = index
        h = self._handle()
        if len(wanted) == 0:
            return {name: h[name][0:0] for name in names}, image_index
        lo, hi = int(wanted[0]), int(wanted[-1]) + 1
        # one contiguous read when the rows are close together, else a point selection
        contiguous = hi - lo <= 4 * len(wanted) + 256
        return {name: h[name][lo:hi][wanted - lo] if contiguous else h[name][wanted] for name in names}, image_index

    def feature_statistics(self, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and standard deviation over every real region (not padding)."""
        h = self._handle()
        total = np.zeros(self.feature_dim, np.float64)
        squares = np.zeros(self.feature_dim, np.float64)
        count = 0
        for start in range(0, len(self.image_ids), chunk):
            features = h["features"][start : start + chunk].astype(np.float64)
            real = np.arange(self.num_regions)[None, :] < h["num_boxes"][start : start + chunk][:, None]
            rows = features[real]
            total += rows.sum(axis=0)
            squares += (rows**2).sum(axis=0)
            count += len(rows)
        if count == 0:
            raise FeatureFileError(f"{self.path}: no detected regions at all, cannot compute feature statistics")
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        return mean.astype(np.float32), std.astype(np.float32)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "RegionFeatureReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def combine_shards(shards: Iterable[str | os.PathLike], output: str | os.PathLike) -> int:
    """Merge shard files into one file in image-id order; returns the number of images."""
    handles = []
    try:
        for path in shards:
            try:
                handles.append((Path(path), h5py.File(path, "r")))
            except OSError as exc:
                raise FeatureFileError(f"cannot open feature shard {path}: {exc}") from None
        if not handles:
            raise FeatureFileError("combine-features: no shards given")
        first_path, first = handles[0]
        keys = ("label_names", "num_regions", "feature_dim")
        for path, handle in handles[1:]:
            for key in keys:
                if handle.attrs[key] != first.attrs[key]:
                    raise FeatureFileError(f"{path}: attribute '{key}' differs from {first_path}")
            if handle["features"].dtype != first["features"].dtype:
                raise FeatureFileError(f"{path}: feature dtype differs from {first_path}")
        order = sorted(
            (int(image_id), shard, row)
            for shard, (_, handle) in enumerate(handles)
            for row, image_id in enumerate(handle["image_id"][:])
        )
        skipped = [name for _, h in handles for name in json.loads(h.attrs.get("skipped_images", "[]"))]
        skipped_ids = [i for _, h in handles for i in json.loads(h.attrs.get("skipped_image_ids", "[]"))]
        writer = RegionFeatureWriter(
            output,
            int(first.attrs["num_regions"]),
            int(first.attrs["feature_dim"]),
            json.loads(first.attrs["label_names"]),
            float16=first["features"].dtype == np.float16,
        )
        with writer:
            for _, shard, row in order:
                writer.copy_row(handles[shard][1], row)
            for name in skipped:
                writer.skip(name)
            writer.skipped_ids.extend(int(i) for i in skipped_ids)
        return len(order)
    finally:
        for _, handle in handles:
            handle.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", help="shard HDF5 files")
    parser.add_argument("--output", required=True, help="merged HDF5 file")


def run(args: argparse.Namespace) -> int:
    count = combine_shards(args.shards, args.output)
    log.info("wrote %d images to %s", count, args.output)
    return 0
