"""What the features stage needs from a COCO instances file: images, boxes, attributes."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from tbkin.data.loaders import CocoImage, load_coco_instances


@dataclass
class BoxRecord:
    image_id: int
    category_id: int
    bbox: list[float]                     # x, y, w, h
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class DetectionData:
    """Images sorted by id, their boxes, the categories and attribute vocabulary."""

    images: list[CocoImage]
    boxes_by_image: dict[int, list[BoxRecord]]
    category_ids: list[int]               # sorted; detector class id = position + 1
    category_names: list[str]
    attribute_names: dict[str, list[str]]  # group -> sorted values seen in the file

    def label_names(self) -> list[str]:
        from tbkin.features.detector import BACKGROUND

        return [BACKGROUND, *self.category_names]

    def box_sides(self) -> np.ndarray:
        sides = [np.sqrt(max(b.bbox[2] * b.bbox[3], 0.0)) for boxes in self.boxes_by_image.values() for b in boxes]
        return np.asarray(sides, dtype=np.float64)


def load_detection_data(path: str | os.PathLike) -> DetectionData:
    """Read a COCO instances file with the shared loader (crowd boxes are left out)."""
    instances = load_coco_instances(path)
    images = sorted(instances.images.values(), key=lambda im: im.id)
    boxes_by_image: dict[int, list[BoxRecord]] = {image.id: [] for image in images}
    attribute_values: dict[str, set[str]] = {}
    for ann in instances.annotations:
        if ann.iscrowd:
            continue
        attrs = {str(k): str(v) for k, v in ann.attributes.items()}
        for key, value in attrs.items():
            attribute_values.setdefault(key, set()).add(value)
        boxes_by_image[ann.image_id].append(BoxRecord(ann.image_id, ann.category_id, list(ann.bbox), attrs))
    categories = sorted(instances.categories.values(), key=lambda c: c.id)
    return DetectionData(
        images=images,
        boxes_by_image=boxes_by_image,
        category_ids=[c.id for c in categories],
        category_names=[c.name for c in categories],
        attribute_names={k: sorted(v) for k, v in sorted(attribute_values.items())},
    )
