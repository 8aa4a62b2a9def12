"""Faster R-CNN detectors that turn images into bottom-up-attention style regions.

One interface, :class:`RegionDetector`, with backends:

* ``torchvision`` (always available): either the small from-scratch detector that the
  workflow trains on a dataset's own boxes (``shapes``), saved as safetensors with its
  architecture in the file's metadata, or a torchvision model builder loaded from a
  local state dict (e.g. the COCO ``fasterrcnn_resnet50_fpn`` checkpoint).
* ``detectron2`` (only where detectron2 is importable): see :mod:`tbkin.features.detectron2_backend`.

Region selection (``detect``) follows bottom-up-attention: every RPN proposal gets its
most likely foreground class and that class's refined box; per-class NMS; then the
top-m boxes over all classes by confidence (class-agnostic selection). The region's
feature is the box head's output pooled at the *final* box, so feature and box describe
the same pixels.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from tbkin.atomic import atomic_path, write_json
from tbkin.errors import TbkinError
from tbkin.precision import autocast, resolve_precision

BACKGROUND = "__background__"
SMALL_ARCHITECTURE = "small_fasterrcnn"
METADATA_KEY = "tbkin_detector"


class DetectorError(TbkinError):
    """A detector weights file, label map or architecture is missing or inconsistent."""


@dataclass
class DetectorArchitecture:
    """Everything needed to rebuild a detector before loading its weights."""

    name: str                                   # SMALL_ARCHITECTURE or a torchvision builder name
    label_names: list[str]                      # index = detector class id; 0 is the background
    category_ids: list[int] = field(default_factory=list)  # dataset category id per class id (0: background)
    attribute_names: dict[str, list[str]] = field(default_factory=dict)  # e.g. {"color": [...], "size": [...]}
    min_size: int = 800
    max_size: int = 1333
    # small architecture only
    channels: list[int] = field(default_factory=lambda: [32, 32, 64, 64, 128, 128])
    strides: list[int] = field(default_factory=lambda: [1, 2, 1, 2, 1, 2])
    anchor_sizes: list[float] = field(default_factory=lambda: [8.0, 16.0, 32.0, 64.0])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    representation_size: int = 256
    pool_size: int = 7
    sampling_ratio: int = 1                     # RoIAlign samples per bin side (objects span few cells)

    @property
    def stride(self) -> int:
        return int(np.prod(self.strides))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DetectorArchitecture":
        return cls(**json.loads(text))


@dataclass
class DetectedRegions:
    """Top regions of one image, sorted by decreasing score; boxes in original pixels."""

    boxes: np.ndarray      # (k, 4) float32 x1, y1, x2, y2
    scores: np.ndarray     # (k,) float32
    labels: np.ndarray     # (k,) int32 detector class ids (>= 1)
    features: np.ndarray   # (k, D) float32 box-head features
    width: int
    height: int


@dataclass
class RegionSelection:
    """Bottom-up-attention selection: confidence threshold, per-class NMS, top-m."""

    num_regions: int
    min_score: float = 0.2
    nms_iou: float = 0.3


class RegionDetector(Protocol):
    label_names: list[str]
    feature_dim: int
    device: torch.device

    def detect(self, images: Sequence[np.ndarray], selection: RegionSelection) -> list[DetectedRegions]:
        """Regions of each (H, W, 3) uint8 image."""
        ...


# --------------------------------------------------------------------------- small detector


class SmallBackbone(nn.Sequential):
    """A few 3x3 conv layers with one output feature map (stride = product of strides)."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int]):
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch, stride in zip(channels, strides):
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
        super().__init__(*layers)
        self.out_channels = in_ch


class GridSampleRoIPool(nn.Module):
    """RoIAlign on one feature map built on ``F.grid_sample``.

    Same sampling as ``torchvision.ops.roi_align(aligned=True)`` with a fixed sampling
    ratio, but several times faster forward + backward on CPU, where the small
    detector trains. Same call signature as ``MultiScaleRoIAlign``.
    """

    def __init__(self, output_size: int, stride: int, sampling_ratio: int = 2, feature_name: str = "0"):
        super().__init__()
        self.output_size = output_size
        self.stride = stride
        self.sampling_ratio = sampling_ratio
        self.feature_name = feature_name

    def _grid(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        samples = self.output_size * self.sampling_ratio
        steps = (torch.arange(samples, dtype=boxes.dtype, device=boxes.device) + 0.5) / samples
        x1, y1, x2, y2 = (boxes / self.stride).unbind(1)          # feature-map coordinates
        xs = x1[:, None] + (x2 - x1)[:, None] * steps               # (K, S)
        ys = y1[:, None] + (y2 - y1)[:, None] * steps
        gx = (2.0 * xs / width - 1.0)[:, None, :].expand(-1, samples, -1)
        gy = (2.0 * ys / height - 1.0)[:, :, None].expand(-1, -1, samples)
        return torch.stack((gx, gy), dim=-1).reshape(1, -1, samples, 2)   # (1, K*S, S, 2)

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes=None) -> torch.Tensor:
        fmap = features[self.feature_name]
        channels, height, width = fmap.shape[1:]
        samples = self.output_size * self.sampling_ratio
        pooled = []
        for index, image_boxes in enumerate(boxes):
            count = image_boxes.shape[0]
            if count == 0:
                pooled.append(fmap.new_zeros((0, channels, self.output_size, self.output_size)))
                continue
            grid = self._grid(image_boxes.to(fmap.dtype), height, width)
            sampled = F.grid_sample(fmap[index : index + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
            sampled = sampled.view(channels, count, samples, samples).transpose(0, 1)
            pooled.append(F.avg_pool2d(sampled, self.sampling_ratio) if self.sampling_ratio > 1 else sampled)
        return torch.cat(pooled, dim=0)


class AttributeHead(nn.Module):
    """One linear classifier per attribute group (colour, size) on the box feature.

    Trained alongside the detector (as bottom-up-attention trains attribute heads on
    Visual Genome) so that region features carry attribute information.
    """

    def __init__(self, in_features: int, attribute_names: dict[str, list[str]]):
        super().__init__()
        self.groups = list(attribute_names)
        self.classifiers = nn.ModuleDict({g: nn.Linear(in_features, len(v)) for g, v in attribute_names.items()})

    def forward(self, box_features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {g: self.classifiers[g](box_features) for g in self.groups}


class AttributeRoIHeads(RoIHeads):
    """torchvision RoIHeads plus an attribute loss on foreground proposals while training.

    Targets carry ``attributes``: (num_boxes, num_groups) int64, -1 where unknown.
    """

    def __init__(self, *args, attribute_head: AttributeHead | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.attribute_head = attribute_head

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training or self.attribute_head is None:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

        foreground = torch.cat(labels) > 0
        attribute_targets = torch.cat(
            [t["attributes"][m.clamp(min=0)] for t, m in zip(targets, matched_idxs)]
        )[foreground]
        logits = self.attribute_head(box_features[foreground])
        loss_attr = box_features.new_zeros(())
        for column, group in enumerate(self.attribute_head.groups):
            group_targets = attribute_targets[:, column]
            if (group_targets >= 0).any():
                loss_attr = loss_attr + F.cross_entropy(logits[group], group_targets, ignore_index=-1)
        losses["loss_attributes"] = loss_attr
        return [], losses


def build_small_detector(arch: DetectorArchitecture) -> GeneralizedRCNN:
    """The from-scratch detector: conv backbone, one feature map, anchors sized to the data."""
    backbone = SmallBackbone(arch.channels, arch.strides)
    anchors = AnchorGenerator(sizes=(tuple(arch.anchor_sizes),), aspect_ratios=(tuple(arch.aspect_ratios),))
    rpn = RegionProposalNetwork(
        anchors,
        RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=64,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 600, "testing": 300},
        post_nms_top_n={"training": 200, "testing": 100},
        nms_thresh=0.7,
    )
    box_head = TwoMLPHead(backbone.out_channels * arch.pool_size**2, arch.representation_size)
    attribute_head = AttributeHead(arch.representation_size, arch.attribute_names) if arch.attribute_names else None
    roi_heads = AttributeRoIHeads(
        GridSampleRoIPool(arch.pool_size, arch.stride, arch.sampling_ratio),
        box_head,
        FastRCNNPredictor(arch.representation_size, len(arch.label_names)),
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=64,
        positive_fraction=0.25,
        bbox_reg_weights=None,
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_img=100,
        attribute_head=attribute_head,
    )
    transform = GeneralizedRCNNTransform(arch.min_size, arch.max_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return GeneralizedRCNN(backbone, rpn, roi_heads, transform)


def build_torchvision_detector(arch: DetectorArchitecture) -> GeneralizedRCNN:
    """A torchvision model builder (e.g. fasterrcnn_resnet50_fpn) without downloading weights."""
    from torchvision.models import detection

    builder = getattr(detection, arch.name, None)
    if builder is None or not arch.name.startswith("fasterrcnn"):
        raise DetectorError(f"unknown torchvision Faster R-CNN builder '{arch.name}'")
    return builder(
        weights=None,
        weights_backbone=None,
        num_classes=len(arch.label_names),
        min_size=arch.min_size,
        max_size=arch.max_size,
    )


def build_detector(arch: DetectorArchitecture) -> GeneralizedRCNN:
    if arch.name == SMALL_ARCHITECTURE:
        return build_small_detector(arch)
    return build_torchvision_detector(arch)


def anchor_sizes_for(box_sides: np.ndarray, count: int = 4) -> list[float]:
    """Anchor sizes spread geometrically over the objects' sides (sqrt of box area)."""
    lo, hi = np.percentile(box_sides, [2, 98]) if len(box_sides) else (8.0, 64.0)
    lo, hi = max(float(lo), 2.0), max(float(hi), float(lo) + 1.0)
    return [round(float(s), 2) for s in np.geomspace(lo, hi, count)]


# --------------------------------------------------------------------------- save / load


def save_detector(model: GeneralizedRCNN, arch: DetectorArchitecture, weights_path: str | os.PathLike) -> Path:
    """Write weights as safetensors (architecture in its metadata) plus a readable JSON copy."""
    from safetensors.torch import save_file

    weights_path = Path(weights_path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights_path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: arch.to_json()})
    json_path = weights_path.with_suffix(".json")
    write_json(json_path, asdict(arch))
    return json_path


def read_label_map(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            names = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise DetectorError(f"cannot read label map {path}: {exc}") from None
    if isinstance(names, dict):  # {"0": "__background__", "1": "person", ...}
        try:
            names = [names[str(i)] for i in range(len(names))]
        except KeyError:
            raise DetectorError(f"label map {path}: keys must be 0..N-1") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) < 2:
        raise DetectorError(f"label map {path}: expected a JSON list of class names (index = class id)")
    return names


def builder_label_names(architecture: str) -> list[str]:
    """Class names torchvision ships with a builder's COCO weights (no download needed)."""
    from torchvision.models import get_model_weights

    try:
        return list(get_model_weights(architecture).DEFAULT.meta["categories"])
    except (ValueError, KeyError, AttributeError):
        raise DetectorError(
            f"no built-in label map for '{architecture}': set detector.label_map to a JSON list of class names"
        ) from None


def load_torch_model(
    weights: str | os.PathLike,
    label_map: str | os.PathLike | None = None,
    architecture: str = "fasterrcnn_resnet50_fpn",
    min_size: int = 800,
    max_size: int = 1333,
) -> tuple[GeneralizedRCNN, DetectorArchitecture]:
    """Load a detector and its architecture from a weights file.

    ``.safetensors`` files written by :func:`save_detector` carry their architecture;
    any other file is a torchvision state dict, read with ``weights_only=True`` and
    described by ``label_map`` + ``architecture``.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise DetectorError(f"detector weights not found: {weights}")
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            meta = (fh.metadata() or {}).get(METADATA_KEY)
            if meta is None:
                raise DetectorError(f"{weights}: no '{METADATA_KEY}' architecture in safetensors metadata")
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        arch = DetectorArchitecture.from_json(meta)
    else:
        label_names = read_label_map(label_map) if label_map else builder_label_names(architecture)
        arch = DetectorArchitecture(name=architecture, label_names=label_names, min_size=min_size, max_size=max_size)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types
            raise DetectorError(f"cannot load detector weights {weights}: {exc}") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
    model = build_detector(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DetectorError(f"detector weights {weights} do not match architecture {arch.name}: {exc}") from None
    return model.eval(), arch


# --------------------------------------------------------------------------- region extraction


def select_regions(
    probs: torch.Tensor, class_boxes: torch.Tensor, image_size: tuple[int, int], selection: RegionSelection
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-agnostic top-m over proposals: (boxes, scores, labels), sorted by score.

    probs (P, C+1) softmax scores; class_boxes (P, C+1, 4) refined boxes per class.
    """
    scores, labels = probs[:, 1:].max(dim=1)
    labels = labels + 1
    boxes = class_boxes[torch.arange(len(labels), device=labels.device), labels]
    boxes = clip_boxes_to_image(boxes, image_size)
    keep = torch.where(scores >= selection.min_score)[0]
    keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, selection.nms_iou)[: selection.num_regions]
    return boxes[keep], scores[keep], labels[keep]


class TorchvisionRegionDetector:
    """RegionDetector over any torchvision GeneralizedRCNN with a box head."""

    def __init__(self, model: GeneralizedRCNN, arch: DetectorArchitecture, device: torch.device | str | None = None,
                 precision: str = "fp32"):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.arch = arch
        self.label_names = list(arch.label_names)
        self.feature_dim = int(model.roi_heads.box_predictor.cls_score.in_features)

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).to(self.device).permute(2, 0, 1).float().div_(255.0)

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], selection: RegionSelection) -> list[DetectedRegions]:
        if not images:
            return []
        with autocast(self.device, self.precision):
            return self._detect(images, selection)

    def _detect(self, images: Sequence[np.ndarray], selection: RegionSelection) -> list[DetectedRegions]:
        model = self.model
        tensors = [self._to_tensor(img) for img in images]
        original_sizes = [tuple(t.shape[-2:]) for t in tensors]
        image_list, _ = model.transform(tensors)
        fmaps = model.backbone(image_list.tensors)
        if isinstance(fmaps, torch.Tensor):
            fmaps = OrderedDict([("0", fmaps)])
        proposals, _ = model.rpn(image_list, fmaps)
        heads = model.roi_heads
        box_features = heads.box_head(heads.box_roi_pool(fmaps, proposals, image_list.image_sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        # Boxes and scores in fp32 whatever the precision: NMS and the top-m cut compare them.
        class_boxes = heads.box_coder.decode(box_regression.float(), proposals)
        probs = F.softmax(class_logits.float(), dim=-1)
        counts = [len(p) for p in proposals]

        selected = [
            select_regions(p, b, size, selection)
            for p, b, size in zip(probs.split(counts), class_boxes.split(counts), image_list.image_sizes)
        ]
        # Pool once more at the final boxes so each feature describes exactly its box.
        final_boxes = [boxes for boxes, _, _ in selected]
        region_features = heads.box_head(heads.box_roi_pool(fmaps, final_boxes, image_list.image_sizes))
        region_features = region_features.split([len(b) for b in final_boxes])

        results = []
        for (boxes, scores, labels), feats, resized, original in zip(
            selected, region_features, image_list.image_sizes, original_sizes
        ):
            boxes = resize_boxes(boxes, resized, original)
            results.append(
                DetectedRegions(
                    boxes=boxes.float().cpu().numpy(),
                    scores=scores.float().cpu().numpy(),
                    labels=labels.to(torch.int32).cpu().numpy(),
                    features=feats.float().cpu().numpy(),
                    width=int(original[1]),
                    height=int(original[0]),
                )
            )
        return results


def load_region_detector(
    weights: str | os.PathLike,
    backend: str = "torchvision",
    label_map: str | os.PathLike | None = None,
    architecture: str = "fasterrcnn_resnet50_fpn",
    min_size: int = 800,
    max_size: int = 1333,
    device: str | None = None,
    precision: str = "fp32",
) -> RegionDetector:
    if backend == "detectron2":
        from tbkin.features.detectron2_backend import Detectron2RegionDetector

        return Detectron2RegionDetector(weights, label_map=label_map, config_file=architecture, device=device)
    if backend != "torchvision":
        raise DetectorError(f"unknown detector backend '{backend}' (torchvision | detectron2)")
    model, arch = load_torch_model(weights, label_map, architecture, min_size, max_size)
    return TorchvisionRegionDetector(model, arch, device, precision)
