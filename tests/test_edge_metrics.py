"""Cross-edge precision / recall against the shapes gold (tbkin.graph.edge_metrics)."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tbkin.errors import DataFormatError
from tbkin.features.hdf5 import RegionFeatureWriter
from tbkin.graph.edge_metrics import box_iou, edge_metrics
from tbkin.text.scene_graph import OBJECT_TYPE

LABELS = ["circle", "square", "triangle", "diamond", "star"]
CATEGORY = {name: i + 1 for i, name in enumerate(LABELS)}


def annotation(ann_id, shape, color, size, x, y):
    return {"id": ann_id, "image_id": 1, "category_id": CATEGORY[shape], "bbox": [x, y, 10, 10], "area": 100,
            "iscrowd": 0, "attributes": {"color": color, "size": size}}


def gold(record_id, objects, attributes):
    return {"source": "caption", "record_id": record_id, "image_id": 1, "text": "", "objects": objects,
            "attributes": attributes, "relations": []}


@pytest.fixture
def files(tmp_path):
    """One image: a red circle (a1), a blue circle (a2), a red square (a3), a green star (a4).

    Regions: r0 on a1, r1 on a2 (shifted by 1 px, IoU 0.82), r2 on a3, r3 on clutter,
    r4 on a4 but below the confidence cut (0.3).
    """
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.png", "width": 60, "height": 60}],
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for n, i in CATEGORY.items()],
        "annotations": [annotation(1, "circle", "red", "large", 0, 0), annotation(2, "circle", "blue", "small", 20, 0),
                        annotation(3, "square", "red", "small", 0, 20), annotation(4, "star", "green", "large", 20, 20)],
    }))
    gold_path = tmp_path / "gold.json"
    gold_path.write_text(json.dumps([
        gold(7, ["circle", "square"], [["circle", "red"]]),   # "a red circle next to a square"
        gold(8, ["shape", "star"], [["shape", "blue"]]),      # "a blue shape above a star"
    ]))
    parses = tmp_path / "parses.parquet"
    pq.write_table(pa.table({
        "source": ["caption", "question", "caption"],
        "record_id": [7, 100, 8],
        "image_id": [1, 1, 1],
        "objects": pa.array([[{"name": "circle", "token": 2}, {"name": "square", "token": 6}],
                             [{"name": "circle", "token": 0}],
                             # the parser saw a "blob" the gold does not have
                             [{"name": "shape", "token": 2}, {"name": "star", "token": 5},
                              {"name": "blob", "token": 7}]], pa.list_(OBJECT_TYPE)),
    }), parses)
    features = tmp_path / "features.h5"
    boxes = np.array([[0, 0, 10, 10], [21, 0, 31, 10], [0, 20, 10, 30], [40, 40, 50, 50], [20, 20, 30, 30]],
                     np.float32)
    with RegionFeatureWriter(features, num_regions=6, feature_dim=2, label_names=LABELS) as writer:
        writer.append(1, 60, 60, boxes, np.array([0.9, 0.9, 0.9, 0.9, 0.3], np.float32),
                      np.array([0, 0, 1, 1, 4], np.int32), np.zeros((5, 2), np.float32))
    edges = tmp_path / "edges.parquet"
    cross = [(0, 0, 2), (0, 1, 2), (0, 2, 6), (0, 3, 6),  # circle->a1 ok, ->a2 wrong colour; square->a3 ok, ->clutter
             (1, 0, 0),                                   # question pair: not scored
             (2, 2, 7)]                                   # blob->a3: the gold names no blob
    pq.write_table(pa.table({
        "pair_id": pa.array([p for p, _, _ in cross] + [0], pa.int64()),
        "src_modality": ["image"] * len(cross) + ["image"], "src": pa.array([r for _, r, _ in cross] + [0], pa.int32()),
        "dst_modality": ["text"] * len(cross) + ["image"], "dst": pa.array([t for _, _, t in cross] + [1], pa.int32()),
        "kind": ["cross"] * len(cross) + ["image_intra"], "weight": pa.array([0.9] * (len(cross) + 1), pa.float32()),
    }), edges)
    return dict(edges=edges, parses=parses, features=features, instances=instances, gold=gold_path)


def metrics_of(files, min_confidence=0.5):
    return edge_metrics(files["edges"], files["parses"], files["features"], files["instances"], files["gold"],
                        min_confidence)


def test_precision_and_recall_of_a_hand_made_graph(files):
    m = metrics_of(files)
    assert m["pairs"] == 2  # captions only
    # correct: circle->a1, square->a3; wrong: circle->blue circle, square->clutter, blob->a3
    assert (m["cross_edges"], m["correct_edges"], m["precision"]) == (5, 2, 0.4)
    # gold links: circle-a1, square-a3, shape-a2 (blue, any category), star-a4; found: the first two
    assert (m["gold_links"], m["found_links"], m["recall"]) == (4, 2, 0.5)
    # a4's only region is below the confidence cut: no edge could find it
    assert (m["detected_links"], m["detected_recall"]) == (3, 0.6667)
    by = m["by_object"]
    assert by["circle"] == {"cross_edges": 2, "correct_edges": 1, "precision": 0.5,
                            "gold_links": 1, "found_links": 1, "recall": 1.0}
    assert by["blob"]["precision"] == 0.0 and by["blob"]["recall"] is None
    assert by["shape"]["cross_edges"] == 0 and by["shape"]["precision"] is None and by["shape"]["recall"] == 0.0
    assert m["iou_threshold"] == 0.5 and m["min_detection_confidence"] == 0.5


def test_confidence_cut_decides_detected_links(files):
    assert metrics_of(files, min_confidence=0.2)["detected_links"] == 4


def test_caption_without_gold_is_an_error(files):
    files["gold"].write_text(json.dumps([gold(7, ["circle"], [])]))
    with pytest.raises(DataFormatError, match="no gold record for caption 8"):
        metrics_of(files)


def test_box_iou():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]]))
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0]])
