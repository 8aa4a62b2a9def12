"""detectron2 backend of :class:`tbkin.features.detector.RegionDetector`.

For detectron2 checkpoints such as the bottom-up-attention Visual Genome Faster
R-CNN ports. detectron2 is not on PyPI; this module is only usable where it is
installed, and raises DetectorError otherwise. Region selection is the same
function as for the torchvision backend; detectron2's class order (background last)
is mapped to this package's (background = class id 0).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from tbkin.features.detector import (
    BACKGROUND,
    DetectedRegions,
    DetectorError,
    RegionSelection,
    read_label_map,
    select_regions,
)


def _import_detectron2():
    try:
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.data import transforms
        from detectron2.modeling import build_model
        from detectron2.structures import Boxes
    except ImportError:
        raise DetectorError(
            "detector.backend is 'detectron2' but detectron2 is not installed (it is not on PyPI; "
            "see https://detectron2.readthedocs.io/en/latest/tutorials/install.html)"
        ) from None
    return DetectionCheckpointer, get_cfg, transforms, build_model, Boxes


class Detectron2RegionDetector:
    def __init__(
        self,
        weights: str | os.PathLike,
        label_map: str | os.PathLike | None,
        config_file: str | os.PathLike,
        device: str | None = None,
    ):
        DetectionCheckpointer, get_cfg, transforms, build_model, self._Boxes = _import_detectron2()
        if not os.path.isfile(config_file):
            raise DetectorError(f"detectron2 config file not found: {config_file} (detector.architecture)")
        if label_map is None:
            raise DetectorError("the detectron2 backend needs detector.label_map (JSON list, index 0 = background)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cfg = get_cfg()
        cfg.merge_from_file(str(config_file))
        cfg.MODEL.DEVICE = str(self.device)
        self.model = build_model(cfg).eval()
        DetectionCheckpointer(self.model).load(str(weights))
        self.input_format = cfg.INPUT.FORMAT
        self.resize = transforms.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        names = read_label_map(label_map)
        self.label_names = names if names[0] == BACKGROUND else [BACKGROUND, *names]
        heads = self.model.roi_heads
        self.feature_dim = int(heads.box_predictor.cls_score.in_features)

    def _box_features(self, features, boxes):
        heads = self.model.roi_heads
        if hasattr(heads, "box_pooler"):  # StandardROIHeads (FPN)
            pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
            return heads.box_head(pooled)
        # Res5ROIHeads (C4, as in bottom-up-attention): res5 on the pooled box, then mean.
        return heads._shared_roi_transform([features[f] for f in heads.in_features], boxes).mean(dim=[2, 3])

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], selection: RegionSelection) -> list[DetectedRegions]:
        if not images:
            return []
        inputs = []
        for image in images:
            pixels = image[:, :, ::-1] if self.input_format == "BGR" else image
            resized = self.resize.get_transform(pixels).apply_image(np.ascontiguousarray(pixels))
            inputs.append({"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": image.shape[0], "width": image.shape[1]})
        model = self.model
        batch = model.preprocess_image(inputs)
        features = model.backbone(batch.tensor)
        proposals, _ = model.proposal_generator(batch, features, None)
        proposal_boxes = [p.proposal_boxes for p in proposals]
        predictions = model.roi_heads.box_predictor(self._box_features(features, proposal_boxes))
        probs_list = model.roi_heads.box_predictor.predict_probs(predictions, proposals)
        boxes_list = model.roi_heads.box_predictor.predict_boxes(predictions, proposals)

        selected = []
        for probs, class_boxes, size in zip(probs_list, boxes_list, batch.image_sizes):
            num_fg = probs.shape[1] - 1
            # detectron2: background is the last column; here it is class 0.
            probs = torch.cat([probs[:, -1:], probs[:, :-1]], dim=1)
            class_boxes = class_boxes.view(len(probs), -1, 4).expand(-1, num_fg, -1)
            class_boxes = torch.cat([class_boxes[:, :1], class_boxes], dim=1)
            selected.append(select_regions(probs, class_boxes, tuple(size), selection))
        final = [self._Boxes(boxes) for boxes, _, _ in selected]
        region_features = self._box_features(features, final).split([len(b) for b in final])

        results = []
        for (boxes, scores, labels), feats, size, image in zip(selected, region_features, batch.image_sizes, images):
            scale = torch.tensor(
                [image.shape[1] / size[1], image.shape[0] / size[0]] * 2, device=boxes.device, dtype=boxes.dtype
            )
            results.append(DetectedRegions(
                boxes=(boxes * scale).float().cpu().numpy(), scores=scores.float().cpu().numpy(),
                labels=labels.to(torch.int32).cpu().numpy(), features=feats.float().cpu().numpy(),
                width=int(image.shape[1]), height=int(image.shape[0]),
            ))
        return results
