"""Precision and recall of the cross-modal edges against the `shapes` gold; CLI ``edge-metrics``.

The generator writes, for every caption, its gold scene graph (``gold_scene_graphs.json``:
object names, ``(object, attribute)`` pairs, relations), and the annotated objects of
every image with their boxes, category and colour/size (COCO ``instances`` file). A
gold text object *names* the annotated objects of the caption's image that fit its gold
description: category equal to its name (the generic nouns "shape", "object", "thing"
fit every category) and, for colour and for size, one of the values the gold attaches
to that name in that caption (none attached: any value). Relations are not used to
narrow this down, and mentions of one name in one caption are not told apart (gold
attributes are keyed by name), so "a red circle and a blue circle" names both circles
with either word. Real datasets have no such gold.

Only caption pairs are scored (questions have no gold scene graph; refs are not
pairs). A text object vertex of the edges (a parsed object token) takes its parsed
name; a region *matches* an annotated object when their boxes have IoU >= 0.5.

* precision = correct / cross edges, where a cross edge (region -> text object token) is
  correct if its region matches an annotated object that the object's name names;
* recall = found / gold links, a gold link being a distinct (caption pair, gold object
  name, annotated object) and found if some cross edge of the pair joins a text object
  of that name to a region matching that object;
* detected recall = found / detected links: the links whose object is matched by a
  region with detection score >= the build's ``min_detection_confidence``, i.e. the
  links a cross edge could find at all (the rest are detector misses).

Output JSON (``results/graph/edge_metrics_{split}.json``)::

    iou_threshold, min_detection_confidence   the matching rules used
    pairs                                     caption pairs scored
    cross_edges, correct_edges, precision     precision: null without edges
    gold_links, found_links, recall           recall: null without gold links
    detected_links, detected_recall
    by_object: {name: {cross_edges, correct_edges, precision, gold_links, found_links, recall}}
                                              per object name (parsed name for edges,
                                              gold name for links)
"""
from __future__ import annotations

import argparse
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
import torchvision

from tbkin.atomic import write_json
from tbkin.data.loaders import CocoAnnotation, load_coco_instances
from tbkin.data.vocab import COLORS, GENERIC_NOUNS, SIZES
from tbkin.errors import DataFormatError
from tbkin.features.hdf5 import RegionFeatureReader
from tbkin.text.metrics import load_gold

log = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5  # a region matches an annotated object, as for a REC hit
ATTRIBUTE_DIMENSION = {**{c: "color" for c in COLORS}, **{s: "size" for s in SIZES}}


@dataclass
class ScoredPair:
    """A caption pair: its image, parsed object tokens and gold links."""

    image_id: int
    token_names: dict[int, str]          # parsed object token -> object name
    named: dict[str, frozenset[int]]     # gold object name -> ids of the annotated objects it names


@dataclass
class ImageRegions:
    """Per region of one image: the annotated objects it matches, and whether it is confident."""

    matches: list[frozenset[int]]
    confident: list[bool]


def named_objects(record: Mapping, annotations: Sequence[CocoAnnotation],
                  category_names: Mapping[int, str]) -> dict[str, frozenset[int]]:
    """Gold object name -> annotated objects (ids) it names in ``record``'s image."""
    wanted: dict[str, dict[str, set[str]]] = {name: {} for name in record["objects"]}
    where = f"gold record {record['source']} {record['record_id']}"
    for name, value in record["attributes"]:
        if name not in wanted:
            raise DataFormatError(f"{where}: attribute {value!r} of {name!r}, which is not among its objects")
        if value not in ATTRIBUTE_DIMENSION:
            raise DataFormatError(f"{where}: attribute {value!r} is neither a colour nor a size")
        wanted[name].setdefault(ATTRIBUTE_DIMENSION[value], set()).add(value)

    def fits(name: str, ann: CocoAnnotation) -> bool:
        if name not in GENERIC_NOUNS and category_names[ann.category_id] != name:
            return False
        return all(ann.attributes.get(dim) in values for dim, values in wanted[name].items())

    return {name: frozenset(a.id for a in annotations if fits(name, a)) for name in wanted}


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of x1y1x2y2 boxes (n, 4) against (k, 4) -> (n, k) (torchvision's; 0 for empty boxes)."""
    as_tensor = lambda b: torch.as_tensor(np.asarray(b, np.float64).reshape(-1, 4))  # noqa: E731
    return torch.nan_to_num(torchvision.ops.box_iou(as_tensor(boxes), as_tensor(others)), nan=0.0).numpy()


def match_regions(boxes: np.ndarray, scores: np.ndarray, annotations: Sequence[CocoAnnotation],
                  min_confidence: float) -> ImageRegions:
    """Which annotated objects each region (valid rows only) matches at IoU >= 0.5."""
    ann_boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a.bbox for a in annotations)], np.float64)
    iou = box_iou(boxes, ann_boxes)
    ids = [a.id for a in annotations]
    matches = [frozenset(ids[k] for k in np.nonzero(row >= IOU_THRESHOLD)[0]) for row in iou]
    return ImageRegions(matches, [bool(s >= min_confidence) for s in scores])


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def score_edges(pairs: Mapping[int, ScoredPair], cross_edges: Iterable[tuple[int, int, int]],
                regions: Mapping[int, ImageRegions]) -> dict:
    """Precision / recall counts of ``cross_edges`` ((pair, region, token) rows) over ``pairs``.

    Edges of pairs not in ``pairs`` are not scored. ``regions`` maps an image id to its
    regions (an image without an entry has none).
    """
    no_regions = ImageRegions([], [])
    edges, correct = Counter(), Counter()
    found: set[tuple[int, str, int]] = set()
    for pair_id, region, token in cross_edges:
        pair = pairs.get(int(pair_id))
        if pair is None:
            continue
        name = pair.token_names.get(int(token))
        if name is None:
            raise DataFormatError(f"cross edge of pair {pair_id} ends at token {token}, which is no parsed object")
        matched = regions.get(pair.image_id, no_regions).matches[int(region)]
        edges[name] += 1
        hits = matched & pair.named.get(name, frozenset())
        if hits:
            correct[name] += 1
        found.update((int(pair_id), name, ann) for ann in hits)

    gold, found_by_name, detected = Counter(), Counter(), 0
    for pair_id, pair in pairs.items():
        image = regions.get(pair.image_id, no_regions)
        confident_objects = set().union(*(m for m, ok in zip(image.matches, image.confident) if ok))
        for name, objects in pair.named.items():
            gold[name] += len(objects)
            detected += len(objects & confident_objects)
            found_by_name[name] += sum((pair_id, name, ann) in found for ann in objects)

    total_edges, total_correct = sum(edges.values()), sum(correct.values())
    total_gold, total_found = sum(gold.values()), sum(found_by_name.values())
    by_object = {
        name: {"cross_edges": edges[name], "correct_edges": correct[name],
               "precision": _ratio(correct[name], edges[name]),
               "gold_links": gold[name], "found_links": found_by_name[name],
               "recall": _ratio(found_by_name[name], gold[name])}
        for name in sorted(set(edges) | set(gold))
    }
    return {
        "pairs": len(pairs),
        "cross_edges": total_edges, "correct_edges": total_correct, "precision": _ratio(total_correct, total_edges),
        "gold_links": total_gold, "found_links": total_found, "recall": _ratio(total_found, total_gold),
        "detected_links": detected, "detected_recall": _ratio(total_found, detected),
        "by_object": by_object,
    }


def caption_pairs(parses_path, instances, gold_path) -> dict[int, ScoredPair]:
    """Caption pairs of a split's parses (pair id = row), each with its gold links."""
    gold = {int(r["record_id"]): r for r in load_gold(gold_path) if r["source"] == "caption"}
    by_image = instances.annotations_by_image()
    category_names = {c.id: c.name for c in instances.categories.values()}
    table = pq.read_table(parses_path, columns=["source", "record_id", "image_id", "objects"])
    pairs = {}
    for pair_id, row in enumerate(table.to_pylist()):
        if row["source"] != "caption":
            continue
        record = gold.get(int(row["record_id"]))
        if record is None:
            raise DataFormatError(f"{gold_path}: no gold record for caption {row['record_id']} of {parses_path}")
        if row["image_id"] not in by_image:
            raise DataFormatError(f"caption {row['record_id']} of {parses_path}: image {row['image_id']} "
                                  f"is not in {instances.path}")
        pairs[pair_id] = ScoredPair(
            int(row["image_id"]), {o["token"]: o["name"] for o in row["objects"]},
            named_objects(record, by_image[row["image_id"]], category_names))
    return pairs


def image_regions(features_path, image_ids: Sequence[int], instances, min_confidence: float) -> dict[int, ImageRegions]:
    by_image = instances.annotations_by_image()
    with RegionFeatureReader(features_path) as reader:
        data, rows = reader.get_many(image_ids, ("boxes", "scores", "num_boxes"))
    out = {}
    for image_id, row in zip(image_ids, rows):
        if row >= 0:
            n = int(data["num_boxes"][row])
            out[image_id] = match_regions(data["boxes"][row, :n], data["scores"][row, :n], by_image[image_id],
                                          min_confidence)
    return out


def edge_metrics(edges_path, parses_path, features_path, instances_path, gold_path, min_confidence: float) -> dict:
    """The metrics JSON of one split (module docstring)."""
    instances = load_coco_instances(instances_path)
    pairs = caption_pairs(parses_path, instances, gold_path)
    image_ids = sorted({p.image_id for p in pairs.values()})
    regions = image_regions(features_path, image_ids, instances, min_confidence)
    cross = pq.read_table(edges_path, columns=["pair_id", "src", "dst"], filters=[("kind", "==", "cross")])
    rows = zip(*(cross.column(c).to_numpy() for c in ("pair_id", "src", "dst")))
    return {"iou_threshold": IOU_THRESHOLD, "min_detection_confidence": min_confidence,
            **score_edges(pairs, rows, regions)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edges", required=True, help="edges Parquet of the split (build-graph)")
    parser.add_argument("--parses", required=True, help="parses.parquet of the split")
    parser.add_argument("--features", required=True, help="region features HDF5 of the split")
    parser.add_argument("--instances", required=True, help="COCO instances JSON of the split (shapes)")
    parser.add_argument("--gold", required=True, help="gold_scene_graphs.json of the shapes generator")
    parser.add_argument("--min-confidence", type=float, default=0.5, help="text.min_detection_confidence")
    parser.add_argument("--output", required=True, help="metrics JSON")


def run(args: argparse.Namespace) -> int:
    result = edge_metrics(args.edges, args.parses, args.features, args.instances, args.gold, args.min_confidence)
    write_json(args.output, result)
    log.info("cross edges: precision %s, recall %s (detected recall %s) over %d caption pairs",
             result["precision"], result["recall"], result["detected_recall"], result["pairs"])
    return 0
