"""Box geometry for referring expression comprehension (REC).

The model scores every detected region and predicts a box correction (deltas) per
region; the answer is the top-scoring region's refined box, and it is a *hit* when
its IoU with the referred object's box is at least 0.5.

Training targets (ROSITA-style):
* rank: a distribution over the image's real (non-padding) regions, proportional to
  IoU over the regions with IoU >= 0.5 to the referred box. When no region reaches
  0.5 the single best-overlapping region is the target, so every expression trains.
* refinement: Faster R-CNN box deltas (dx, dy, dw, dh) from each of those positive
  regions to the referred box, regressed with SmoothL1 on the positives only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

HIT_IOU = 0.5
POSITIVE_IOU = 0.5
# Same clamp as torchvision's BoxCoder: keeps exp() of a wild dw/dh finite.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def xywh_to_xyxy(box: torch.Tensor) -> torch.Tensor:
    x, y, w, h = box.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_xywh(box: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = box.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    w = (boxes[..., 2] - boxes[..., 0]).clamp(min=1e-3)
    h = (boxes[..., 3] - boxes[..., 1]).clamp(min=1e-3)
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_deltas(regions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Deltas (dx, dy, dw, dh) taking ``regions`` to ``targets`` (both x1,y1,x2,y2)."""
    cx, cy, w, h = _centre_size(regions)
    tx, ty, tw, th = _centre_size(targets)
    return torch.stack([(tx - cx) / w, (ty - cy) / h, torch.log(tw / w), torch.log(th / h)], dim=-1)


def decode_deltas(regions: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_deltas` (x1,y1,x2,y2)."""
    cx, cy, w, h = _centre_size(regions)
    dx, dy, dw, dh = deltas.unbind(-1)
    ncx, ncy = cx + dx * w, cy + dy * h
    nw = w * torch.exp(dw.clamp(max=_MAX_LOG_SCALE))
    nh = h * torch.exp(dh.clamp(max=_MAX_LOG_SCALE))
    return torch.stack([ncx - 0.5 * nw, ncy - 0.5 * nh, ncx + 0.5 * nw, ncy + 0.5 * nh], dim=-1)


@dataclass
class RecTargets:
    rank: torch.Tensor       # (m,) float, sums to 1 over real regions
    positive: torch.Tensor   # (m,) bool, regions whose deltas are regressed
    deltas: torch.Tensor     # (m, 4) float, valid where ``positive``
    best_iou: float          # best IoU of any real region (the proposal upper bound)


def rec_targets(region_boxes: torch.Tensor, num_boxes: int, referred_box: torch.Tensor) -> RecTargets:
    """Targets for one expression: ``region_boxes`` (m, 4) x1y1x2y2, rows past
    ``num_boxes`` are padding; ``referred_box`` (4,) x1y1x2y2."""
    m = region_boxes.shape[0]
    if num_boxes < 1:
        raise ValueError("an image needs at least one region")
    ious = torch.zeros(m)
    ious[:num_boxes] = box_iou(region_boxes[:num_boxes].float(), referred_box.float()[None])[:, 0]
    positive = ious >= POSITIVE_IOU
    if not positive.any():
        positive[int(ious.argmax())] = True
    rank = torch.where(positive, ious.clamp(min=1e-6), torch.zeros_like(ious))
    rank = rank / rank.sum()
    deltas = encode_deltas(region_boxes.float(), referred_box.float().expand(m, 4))
    deltas = torch.where(positive[:, None], deltas, torch.zeros_like(deltas))
    return RecTargets(rank=rank, positive=positive, deltas=deltas, best_iou=float(ious.max()))


def refined_box(scores: torch.Tensor, region_boxes: torch.Tensor, deltas: torch.Tensor,
                num_boxes: int) -> torch.Tensor:
    """The top-scoring real region's box after applying its predicted deltas."""
    best = int(scores[:num_boxes].argmax())
    return decode_deltas(region_boxes[best].float(), deltas[best].float())


def box_iou_single(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(box_iou(a.float()[None], b.float()[None])[0, 0])


def is_hit(predicted_box: torch.Tensor, referred_box: torch.Tensor) -> bool:
    """REC hit rule: IoU(predicted, referred) >= 0.5 (both x1,y1,x2,y2)."""
    return box_iou_single(predicted_box, referred_box) >= HIT_IOU
