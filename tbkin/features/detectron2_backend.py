"""detectron2 backend of :class:`tbkin.features.detector.RegionDetector`.

For detectron2 checkpoints such as the bottom-up-attention Visual Genome Faster
R-CNN ports. detectron2 is not on PyPI; this module is only usable where it is
installed, and raises DetectorError otherwise. Region selection is the same
function as for the torchvision backend; detectron2's class order (background last)
is mapped to this package's (background = class id 0).

No code runs from the weights or the config file: detectron2 reads ``.pkl`` weights
with a plain ``pickle.load`` and a config's YAML tags with ``yaml.unsafe_load``, so
weights go through :func:`read_detectron2_weights` (numpy arrays and plain
containers only) and the config is read with ``allow_unsafe=False``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tbkin.data.loaders import safe_load_pickle
from tbkin.errors import DataFormatError, UnsafePickleError
from tbkin.features.detector import (
    BACKGROUND,
    DetectedRegions,
    DetectorError,
    RegionSelection,
    read_label_map,
    select_regions,
)

WEIGHT_SUFFIXES = (".pkl", ".pth", ".pt", ".safetensors")
# What a pickled numpy array needs (numpy 1 and 2 module names, pickle protocols 2-5);
# none of these can import or call anything else.
NUMPY_ARRAY_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocol 2 written by Python 3 stores bytes this way
    ("collections", "OrderedDict"),
})


def _read_weights_pickle(path: Path) -> dict[str, Any]:
    """A detectron2 / Detectron1 ``.pkl`` as the checkpoint dict detectron2 builds from it."""
    try:
        # latin1: Detectron1 / Caffe2 pickles come from Python 2
        data = safe_load_pickle(path, NUMPY_ARRAY_GLOBALS, encoding="latin1")
    except UnsafePickleError as exc:
        raise DetectorError(f"{exc}; detector weights may hold only arrays (convert them to .safetensors "
                            "where they were made)") from None
    except DataFormatError as exc:
        raise DetectorError(f"cannot load detector weights: {exc}") from None
    if not isinstance(data, dict):
        raise DetectorError(f"{path}: detector weights should hold a dict, got {type(data).__name__}")
    if "model" in data and "__author__" in data:  # detectron2 model-zoo format
        checkpoint = data
    else:  # Caffe2 / Detectron1 model zoo, as detectron2's own loader reads it
        blobs = data.get("blobs", data)
        if not isinstance(blobs, dict):
            raise DetectorError(f"{path}: 'blobs' should be a dict of arrays, got {type(blobs).__name__}")
        checkpoint = {"model": {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")},
                      "__author__": "Caffe2", "matching_heuristics": True}
    if not isinstance(checkpoint["model"], dict):
        raise DetectorError(f"{path}: 'model' should be a dict of arrays")
    for key, value in checkpoint["model"].items():
        if not isinstance(value, np.ndarray) or value.dtype == object:
            raise DetectorError(f"{path}: weight '{key}' is a {type(value).__name__}, not a numeric array")
    return checkpoint


def read_detectron2_weights(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict ``DetectionCheckpointer`` loads (``{"model": state, ...}``),
    read without running code from the file: ``.pkl`` (numpy arrays only),
    ``.pth`` / ``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"detector weights not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        return _read_weights_pickle(path)
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return {"model": load_file(str(path))}
        except (SafetensorError, OSError) as exc:
            raise DetectorError(f"cannot load detector weights {path}: {exc}") from None
    if suffix in (".pth", ".pt"):
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types
            raise DetectorError(f"cannot load detector weights {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise DetectorError(f"{path}: detector weights should hold a dict, got {type(loaded).__name__}")
        return loaded if "model" in loaded else {"model": loaded}
    raise DetectorError(f"{path}: unknown detector weights format; the detectron2 backend reads "
                        f"{', '.join(WEIGHT_SUFFIXES)}")


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
        checkpoint = read_detectron2_weights(weights)  # before building: a bad file fails fast
        cfg = get_cfg()
        try:
            cfg.merge_from_file(str(config_file), allow_unsafe=False)  # YAML tags must not construct objects
        except Exception as exc:  # yaml and yacs errors come in many types
            raise DetectorError(f"cannot read detectron2 config file {config_file} (detector.architecture): {exc}") from None
        cfg.MODEL.DEVICE = str(self.device)
        self.model = build_model(cfg).eval()

        class PreloadedCheckpointer(DetectionCheckpointer):
            def _load_file(self, filename):
                return checkpoint

        PreloadedCheckpointer(self.model).load(str(weights))
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
