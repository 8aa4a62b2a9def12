"""``tbkin train-detector``: train the small Faster R-CNN on a dataset's COCO boxes.

Used for the ``shapes`` dataset, the way bottom-up-attention trains its detector (with
attribute heads) on Visual Genome. Categories and attributes come from the instances
file. Writes the weights (safetensors, architecture in the metadata, plus a readable
JSON copy) and a metrics JSON with the COCO-style box mAP on the validation split.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tbkin.atomic import write_json
from tbkin.features.coco import DetectionData, load_detection_data
from tbkin.features.detector import (
    SMALL_ARCHITECTURE,
    DetectorArchitecture,
    anchor_sizes_for,
    build_small_detector,
    save_detector,
)
from tbkin.features.images import load_rgb
from tbkin.precision import PRECISIONS, autocast, resolve_precision

log = logging.getLogger(__name__)


@dataclass
class DetectionSample:
    image: torch.Tensor    # (3, H, W) uint8
    boxes: torch.Tensor    # (k, 4) float32 x1y1x2y2
    labels: torch.Tensor   # (k,) int64 detector class ids
    attributes: torch.Tensor  # (k, groups) int64, -1 unknown


@dataclass
class TrainingSettings:
    iterations: int = 400
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    seed: int = 0
    log_every: int = 50
    precision: str = "fp32"   # resolved (bf16 | fp32): see tbkin.precision


def load_samples(data: DetectionData, image_dir: str | os.PathLike) -> list[DetectionSample]:
    class_of = {cid: index + 1 for index, cid in enumerate(data.category_ids)}
    groups = list(data.attribute_names)
    value_index = {g: {v: i for i, v in enumerate(values)} for g, values in data.attribute_names.items()}
    samples = []
    for record in tqdm(data.images, desc="load images", unit="img", mininterval=5):
        array = load_rgb(Path(image_dir) / record.file_name)
        boxes = data.boxes_by_image[record.id]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (b.bbox for b in boxes)]
        attrs = [[value_index[g].get(b.attributes.get(g), -1) for g in groups] for b in boxes]
        samples.append(
            DetectionSample(
                image=torch.from_numpy(array).permute(2, 0, 1).contiguous(),
                boxes=torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4),
                labels=torch.tensor([class_of[b.category_id] for b in boxes], dtype=torch.int64),
                attributes=torch.tensor(attrs, dtype=torch.int64).reshape(len(boxes), len(groups)),
            )
        )
    return samples


def small_architecture(data: DetectionData, min_size: int, max_size: int) -> DetectorArchitecture:
    """Architecture for ``data``: its classes and attributes, anchors sized to its boxes."""
    median_side = float(np.median([r.width for r in data.images] + [r.height for r in data.images]))
    scale = min_size / median_side if median_side else 1.0
    return DetectorArchitecture(
        name=SMALL_ARCHITECTURE,
        label_names=data.label_names(),
        category_ids=[0, *data.category_ids],
        attribute_names=data.attribute_names,
        min_size=min_size,
        max_size=max_size,
        anchor_sizes=anchor_sizes_for(data.box_sides() * scale),
    )


def _lr_factor(step: int, settings: TrainingSettings) -> float:
    """Linear warm-up, then cosine decay to 5% of the base rate."""
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.iterations - settings.warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(samples: list[DetectionSample], arch: DetectorArchitecture, settings: TrainingSettings) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(settings.seed)
    model = build_small_detector(arch)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, settings))
    generator = torch.Generator().manual_seed(settings.seed)
    order: list[int] = []
    history = []
    progress = tqdm(range(settings.iterations), desc="train detector", unit="it", mininterval=10)
    for step in progress:
        if len(order) < settings.batch_size:
            order += torch.randperm(len(samples), generator=generator).tolist()
        batch = [samples[i] for i in order[: settings.batch_size]]
        del order[: settings.batch_size]
        images = [s.image.float().div_(255.0) for s in batch]
        targets = [{"boxes": s.boxes, "labels": s.labels, "attributes": s.attributes} for s in batch]
        with autocast("cpu", settings.precision):
            losses = model(images, targets)
        loss = sum(value.float() for value in losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        if step % settings.log_every == 0 or step == settings.iterations - 1:
            record = {"step": step, "loss": round(loss.item(), 4), **{k: round(v.item(), 4) for k, v in losses.items()}}
            history.append(record)
            log.info("step %d loss %.3f (%s)", step, record["loss"],
                     ", ".join(f"{k} {v:.3f}" for k, v in record.items() if k.startswith("loss_")))
    return model.eval(), history


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    arch: DetectorArchitecture,
    samples: list[DetectionSample],
    data: DetectionData,
    instances_path: str | os.PathLike,
    batch_size: int = 16,
    precision: str = "fp32",
) -> dict:
    """COCO box mAP (pycocotools) and attribute accuracy of the head on ground-truth boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from torchvision.models.detection.transform import resize_boxes

    model.eval()
    detections = []
    attr_correct = {g: 0 for g in arch.attribute_names}
    attr_total = {g: 0 for g in arch.attribute_names}
    head = model.roi_heads
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        records = data.images[start : start + batch_size]
        images = [s.image.float().div_(255.0) for s in chunk]
        with autocast("cpu", precision):
            outputs = model(images)
        for record, out in zip(records, outputs):
            for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
                x1, y1, x2, y2 = box
                detections.append({
                    "image_id": record.id, "category_id": arch.category_ids[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
                })
        if head.attribute_head is None:
            continue
        image_list, _ = model.transform(images)
        fmaps = {"0": model.backbone(image_list.tensors)}
        gt_boxes = [resize_boxes(s.boxes, tuple(s.image.shape[-2:]), size) for s, size in zip(chunk, image_list.image_sizes)]
        logits = head.attribute_head(head.box_head(head.box_roi_pool(fmaps, gt_boxes, image_list.image_sizes)))
        targets = torch.cat([s.attributes for s in chunk])
        for column, group in enumerate(head.attribute_head.groups):
            known = targets[:, column] >= 0
            attr_correct[group] += int((logits[group].argmax(1) == targets[:, column])[known].sum())
            attr_total[group] += int(known.sum())

    metrics: dict = {"val_images": len(samples), "detections": len(detections)}
    if detections:
        with contextlib.redirect_stdout(io.StringIO()) as coco_log:
            gt = COCO(str(instances_path))
            evaluator = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        log.info("COCO evaluation:\n%s", coco_log.getvalue())
        precision = evaluator.eval["precision"]  # (iou, recall, class, area, maxdets)
        per_class = {}
        for k, cat_id in enumerate(evaluator.params.catIds):
            p = precision[0, :, k, 0, -1]
            # null: the class has no validation boxes (NaN is not JSON)
            per_class[gt.cats[cat_id]["name"]] = float(p[p > -1].mean()) if (p > -1).any() else None
        metrics.update({
            "map_50": float(evaluator.stats[1]),
            "map_50_95": float(evaluator.stats[0]),
            "map_75": float(evaluator.stats[2]),
            "ap_50_per_category": per_class,
        })
    else:
        metrics.update({"map_50": 0.0, "map_50_95": 0.0, "map_75": 0.0, "ap_50_per_category": {}})
    metrics["attribute_accuracy_on_gt_boxes"] = {
        g: attr_correct[g] / attr_total[g] for g in attr_total if attr_total[g]
    }
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-instances", required=True)
    parser.add_argument("--train-images", required=True)
    parser.add_argument("--val-instances", required=True)
    parser.add_argument("--val-images", required=True)
    parser.add_argument("--weights", required=True, help="output .safetensors (a .json copy of the architecture is written beside it)")
    parser.add_argument("--metrics", required=True, help="output metrics JSON")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-size", type=int, default=128)
    parser.add_argument("--max-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="train.precision")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    train_data = load_detection_data(args.train_instances)
    val_data = load_detection_data(args.val_instances)
    arch = small_architecture(train_data, args.min_size, args.max_size)
    log.info("classes %s, attributes %s, anchors %s", arch.label_names[1:], arch.attribute_names, arch.anchor_sizes)
    settings = TrainingSettings(
        iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        warmup=min(50, max(1, args.iterations // 8)), precision=resolve_precision(args.precision, "cpu"),
    )
    started = time.perf_counter()
    model, history = train(load_samples(train_data, args.train_images), arch, settings)
    train_seconds = time.perf_counter() - started
    save_detector(model, arch, args.weights)
    metrics = evaluate(model, arch, load_samples(val_data, args.val_images), val_data, args.val_instances,
                       precision=settings.precision)
    metrics.update({"train_seconds": round(train_seconds, 1), "iterations": args.iterations, "threads": args.threads,
                    "precision": settings.precision, "loss_history": history})
    write_json(args.metrics, metrics)
    log.info("box mAP@0.5 %.3f, mAP@[.5:.95] %.3f, trained in %.0f s", metrics["map_50"], metrics["map_50_95"], train_seconds)
    return 0
