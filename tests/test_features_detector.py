"""Detector training, weights loading, and the feature CLI commands end to end (tiny)."""
from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open

from tbkin.cli import main as tbkin
from tbkin.features.detector import METADATA_KEY, DetectorError, RegionSelection, load_region_detector
from tbkin.features.hdf5 import RegionFeatureReader
from tbkin.features.images import load_rgb
from tbkin.data.loaders import DataLayout
from tbkin.data.shapes import ShapesSpec, generate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few iterations on a tiny generated `shapes` set."""
    root = tmp_path_factory.mktemp("det")
    layout = DataLayout(root=root / "shapes", splits={"train": "train", "val": "val"})
    generate(ShapesSpec(seed=1, image_size=64, train_images=8, val_images=4, captions_per_image=1,
                        questions_per_image=1, refs_per_image=1, sentences_per_ref=1), layout, progress=False)
    train_instances, train_images = layout.file("instances", "train"), layout.file("images", "train")
    val_instances, val_images = layout.file("instances", "val"), layout.file("images", "val")
    weights, metrics = root / "out" / "detector.safetensors", root / "out" / "metrics.json"
    code = tbkin([
        "train-detector", "--train-instances", str(train_instances), "--train-images", str(train_images),
        "--val-instances", str(val_instances), "--val-images", str(val_images),
        "--weights", str(weights), "--metrics", str(metrics), "--iterations", "6", "--batch-size", "2",
        "--min-size", "64", "--max-size", "64", "--threads", "1",
    ])
    assert code == 0
    return root, weights, metrics, train_instances, val_instances, val_images


def test_training_writes_weights_architecture_and_metrics(trained):
    root, weights, metrics, train_instances, _, _ = trained
    with safe_open(str(weights), framework="pt") as fh:
        arch = json.loads(fh.metadata()[METADATA_KEY])
        keys = set(fh.keys())
    # classes and attributes come from the instances file, background first
    instances = json.loads(train_instances.read_text())
    categories = sorted(instances["categories"], key=lambda c: c["id"])
    assert arch["label_names"] == ["__background__", *(c["name"] for c in categories)]
    assert arch["category_ids"] == [0, *(c["id"] for c in categories)]
    colors = {a["attributes"]["color"] for a in instances["annotations"]}
    assert arch["attribute_names"]["color"] == sorted(colors) and len(colors) > 1
    assert set(arch["attribute_names"]["size"]) <= {"large", "small"}
    assert json.loads(weights.with_suffix(".json").read_text())["label_names"] == arch["label_names"]
    assert any(k.startswith("roi_heads.attribute_head.classifiers.color") for k in keys)
    m = json.loads(metrics.read_text())
    assert 0.0 <= m["map_50"] <= 1.0 and 0.0 <= m["map_50_95"] <= m["map_50"] + 1e-9
    assert m["iterations"] == 6 and m["val_images"] == 4 and m["train_seconds"] > 0
    assert set(m["attribute_accuracy_on_gt_boxes"]) == {"color", "size"}
    assert len(m["loss_history"]) >= 2 and "loss_attributes" in m["loss_history"][0]


def test_cli_extract_shards_and_combine(trained, tmp_path):
    _, weights, _, _, val_instances, val_images = trained
    shards = []
    for i in range(2):
        shards.append(tmp_path / f"shard-{i}-of-2.h5")
        assert tbkin([
            "extract-features", "--weights", str(weights), "--image-list", str(val_instances), "--images", str(val_images),
            "--shard", str(i), "--num-shards", "2", "--num-regions", "5", "--min-score", "0.0",
            "--batch-size", "2", "--float16", "--output", str(shards[-1]),
        ]) == 0
    out = tmp_path / "val.h5"
    assert tbkin(["combine-features", *map(str, shards), "--output", str(out)]) == 0
    with h5py.File(out, "r") as h5:
        expected_ids = sorted(image["id"] for image in json.loads(val_instances.read_text())["images"])
        assert list(h5["image_id"][:]) == expected_ids
        assert h5["features"].dtype == np.float16 and h5["features"].shape[:2] == (4, 5)
    # the reader returns what a direct detection of the same image gives
    detector = load_region_detector(weights, device="cpu")
    image = json.loads(val_instances.read_text())["images"][2]
    direct = detector.detect([load_rgb(val_images / image["file_name"])], RegionSelection(5, min_score=0.0))[0]
    with RegionFeatureReader(out) as reader:
        regions = reader.get(image["id"])
    k = regions.num_boxes
    assert k == len(direct.boxes)
    np.testing.assert_allclose(regions.boxes[:k], direct.boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(regions.features[:k].astype(np.float32), direct.features, rtol=1e-2, atol=1e-2)


def test_shard_index_out_of_range_is_a_clean_error(trained, tmp_path, capsys):
    _, weights, _, _, val_instances, val_images = trained
    code = tbkin([
        "extract-features", "--weights", str(weights), "--image-list", str(val_instances), "--images", str(val_images),
        "--shard", "2", "--num-shards", "2", "--output", str(tmp_path / "x.h5"),
    ])
    assert code == 2 and "shard 2 is out of range" in capsys.readouterr().err


def test_state_dict_weights_load_with_builder_labels(tmp_path):
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "coco.pth"
    torch.save(model.state_dict(), path)
    detector = load_region_detector(path, architecture="fasterrcnn_mobilenet_v3_large_320_fpn",
                                    min_size=64, max_size=64, device="cpu")
    assert len(detector.label_names) == 91 and detector.label_names[1] == "person"
    assert detector.feature_dim == 1024
    regions = detector.detect([np.zeros((48, 80, 3), np.uint8)], RegionSelection(4, min_score=0.0))[0]
    assert regions.features.shape[1] == 1024 and (regions.width, regions.height) == (80, 48)


def test_weights_that_need_code_to_unpickle_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"x": Payload()}, fh, protocol=2)
    with pytest.raises(DetectorError, match="evil.pth"):
        load_region_detector(path, architecture="fasterrcnn_resnet50_fpn", device="cpu")


def test_unknown_builder_and_missing_detectron2_are_named(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({}, path)
    with pytest.raises(DetectorError, match="label_map"):
        load_region_detector(path, architecture="not_a_model", device="cpu")
    try:
        import detectron2  # noqa: F401
    except ImportError:
        with pytest.raises(DetectorError, match="detectron2 is not installed"):
            load_region_detector(path, backend="detectron2", label_map=path, architecture="cfg.yaml")
