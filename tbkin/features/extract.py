"""``tbkin extract-features``: top-m region features of one shard of a split, to HDF5.

Shard i of n takes a contiguous slice of the split's images sorted by id. Slice
boundaries fall on multiples of the batch size, so every image is run in the same
batch, with the same companions, whether the split is extracted in one job or in n:
merged shards are bit-identical to an unsharded extraction.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from tbkin.data.check import read_image_list
from tbkin.data.loaders import CocoImage
from tbkin.errors import BadImageError, TbkinError
from tbkin.features.detector import RegionDetector, RegionSelection, load_region_detector
from tbkin.features.hdf5 import RegionFeatureWriter
from tbkin.features.images import load_rgb
from tbkin.precision import PRECISIONS

log = logging.getLogger(__name__)


@dataclass
class ExtractionSummary:
    images: int
    skipped: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def shard_slice(num_items: int, shard: int, num_shards: int, batch_size: int) -> slice:
    """Items of shard ``shard`` of ``num_shards``: whole batches, spread evenly."""
    if not 0 <= shard < num_shards:
        raise TbkinError(f"shard {shard} is out of range for {num_shards} shards")
    num_batches = -(-num_items // batch_size)
    first = shard * num_batches // num_shards
    last = (shard + 1) * num_batches // num_shards
    return slice(min(first * batch_size, num_items), min(last * batch_size, num_items))


@dataclass
class _LoadedBatch:
    records: list[CocoImage]
    arrays: list[np.ndarray]
    bad: list[tuple[CocoImage, BadImageError]]


def _load_batch(records: Sequence[CocoImage], image_dir: Path) -> _LoadedBatch:
    batch = _LoadedBatch([], [], [])
    for record in records:
        try:
            batch.arrays.append(load_rgb(image_dir / record.file_name))
            batch.records.append(record)
        except BadImageError as exc:
            batch.bad.append((record, exc))
    return batch


def extract_features(
    detector: RegionDetector,
    images: Sequence[CocoImage],
    image_dir: str | os.PathLike,
    output: str | os.PathLike,
    selection: RegionSelection,
    batch_size: int,
    float16: bool = False,
    skip_bad_images: bool = False,
) -> ExtractionSummary:
    """Detect and write the regions of ``images`` (sorted by id) to ``output``, batch by batch."""
    image_dir = Path(image_dir)
    images = sorted(images, key=lambda r: r.id)
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    started = time.perf_counter()
    writer = RegionFeatureWriter(output, selection.num_regions, detector.feature_dim, detector.label_names, float16)
    with writer, ThreadPoolExecutor(max_workers=1) as pool:
        # Decode the next batch while the detector runs on this one.
        pending = pool.submit(_load_batch, batches[0], image_dir) if batches else None
        for index in tqdm(range(len(batches)), desc=f"regions {Path(output).name}", unit="batch", mininterval=5):
            batch = pending.result()
            pending = pool.submit(_load_batch, batches[index + 1], image_dir) if index + 1 < len(batches) else None
            for record, error in batch.bad:
                if not skip_bad_images:
                    raise error
                log.warning("skipping %s", error)
                writer.skip(record.file_name, record.id)
            for record, regions in zip(batch.records, detector.detect(batch.arrays, selection)):
                writer.append(
                    record.id, regions.width, regions.height,
                    regions.boxes, regions.scores, regions.labels, regions.features,
                )
            writer.flush()
    seconds = time.perf_counter() - started
    return ExtractionSummary(images=writer.count, skipped=len(writer.skipped), seconds=seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="detector weights (.safetensors from train-detector, or a torchvision state dict)")
    parser.add_argument("--backend", default="torchvision", choices=["torchvision", "detectron2"])
    parser.add_argument("--label-map", default=None, help="JSON list of class names for a torchvision state dict")
    parser.add_argument("--architecture", default="fasterrcnn_resnet50_fpn", help="torchvision builder (or detectron2 config file) for --weights")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--image-list", required=True,
                        help="the split's image list: the marker `tbkin check-data --part SPLIT` writes (any JSON with a COCO `images` list, an instances file included)")
    parser.add_argument("--images", required=True, help="folder holding the split's image files")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-regions", type=int, default=36)
    parser.add_argument("--min-score", type=float, default=0.2)
    parser.add_argument("--nms-iou", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--float16", action="store_true", help="store features as float16")
    parser.add_argument("--skip-bad-images", action="store_true", help="list unreadable images instead of failing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="train.precision (torchvision backend)")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    records = read_image_list(args.image_list)
    part = records[shard_slice(len(records), args.shard, args.num_shards, args.batch_size)]
    detector = load_region_detector(
        args.weights, args.backend, args.label_map, args.architecture, args.min_size, args.max_size, args.device,
        args.precision,
    )
    log.info("shard %d/%d: %d of %d images on %s", args.shard, args.num_shards, len(part), len(records), detector.device)
    summary = extract_features(
        detector, part, args.images, args.output,
        RegionSelection(args.num_regions, args.min_score, args.nms_iou),
        args.batch_size, args.float16, args.skip_bad_images,
    )
    log.info(
        "wrote %d images (%d skipped) to %s: %.1f images/s",
        summary.images, summary.skipped, args.output, summary.images_per_second,
    )
    return 0
