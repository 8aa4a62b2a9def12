"""Unified scene-graph edges, computed for many image-text pairs at once with numpy.

Vertices: image regions (modality ``IMAGE``, index = region row) and text words
(modality ``TEXT``, index = token position). Edges are undirected and stored once:

* ``image_intra``: regions i < j of one image with IoU > 0; weight = IoU.
* ``text_intra``: object token - attribute token, and object token - relation
  token for the relation's subject and its object; weight = how often that
  (object lemma, attribute) or (object lemma, predicate) pair occurs in the whole
  dataset (:class:`CooccurrenceCounts`).
* ``cross``: region (src) - text object token (dst); weight = word-vector cosine
  similarity of the region's label and the object's lemma. Only regions with
  detection score >= ``min_confidence`` take part; similarities below
  ``min_similarity`` are dropped.

Normalisation: each modality's intra weights are normalised on their own, within
one pair: divided by the largest weight of that modality in the pair, so the
strongest image edge and the strongest text edge of every pair weigh 1 and the
others keep their proportion to it (IoU <= 1 and raw counts in the thousands
become comparable). Cross weights are cosine similarities and stay as they are.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

IMAGE, TEXT = 0, 1
MODALITY_NAMES = ("image", "text")
IMAGE_INTRA, TEXT_INTRA, CROSS = 0, 1, 2
KIND_NAMES = ("image_intra", "text_intra", "cross")


@dataclass
class EdgeArrays:
    """Undirected edges of a batch of pairs, one row per edge (``pair`` = batch-local index)."""

    pair: np.ndarray          # int64
    src_modality: np.ndarray  # int8
    src: np.ndarray           # int32
    dst_modality: np.ndarray  # int8
    dst: np.ndarray           # int32
    kind: np.ndarray          # int8
    weight: np.ndarray        # float32

    @classmethod
    def empty(cls) -> "EdgeArrays":
        return cls.make(np.zeros(0, np.int64), IMAGE, np.zeros(0), IMAGE, np.zeros(0), IMAGE_INTRA, np.zeros(0))

    @classmethod
    def make(cls, pair, src_modality, src, dst_modality, dst, kind, weight) -> "EdgeArrays":
        n = len(pair)
        return cls(
            np.asarray(pair, np.int64),
            np.full(n, src_modality, np.int8),
            np.asarray(src, np.int32),
            np.full(n, dst_modality, np.int8),
            np.asarray(dst, np.int32),
            np.full(n, kind, np.int8),
            np.asarray(weight, np.float32),
        )

    @classmethod
    def concat(cls, parts: list["EdgeArrays"]) -> "EdgeArrays":
        parts = [p for p in parts if len(p)] or [cls.empty()]
        merged = cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))
        # order by (pair, kind, src, dst) through one int64 key (pair < 2**20, vertices < 2**16)
        key = (merged.pair << 34) | (merged.kind.astype(np.int64) << 32) \
            | (merged.src.astype(np.int64) << 16) | merged.dst.astype(np.int64)
        order = np.argsort(key)
        return cls(*(getattr(merged, f)[order] for f in cls.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.pair)


def normalise_by_group(group: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Divide each weight by the largest weight of its group (groups need not be sorted)."""
    weight = np.asarray(weight, np.float64)
    if len(weight) == 0:
        return weight.astype(np.float32)
    _, inverse = np.unique(group, return_inverse=True)
    group_max = np.zeros(inverse.max() + 1)
    np.maximum.at(group_max, inverse, weight)
    return (weight / np.where(group_max[inverse] > 0, group_max[inverse], 1.0)).astype(np.float32)


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """IoU of every box pair per image: (B, m, 4) x1y1x2y2 -> (B, m, m)."""
    boxes = np.asarray(boxes, np.float32)
    x1, y1, x2, y2 = (boxes[..., k] for k in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    iw = np.clip(np.minimum(x2[:, :, None], x2[:, None, :]) - np.maximum(x1[:, :, None], x1[:, None, :]), 0, None)
    ih = np.clip(np.minimum(y2[:, :, None], y2[:, None, :]) - np.maximum(y1[:, :, None], y1[:, None, :]), 0, None)
    inter = iw * ih
    union = area[:, :, None] + area[:, None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


def image_intra_edges(boxes: np.ndarray, num_boxes: np.ndarray):
    """Region pairs with IoU > 0 of each image: (image row, i, j, normalised IoU) with i < j."""
    boxes = np.asarray(boxes, np.float32)
    num_boxes = np.asarray(num_boxes)
    if boxes.shape[0] == 0:
        z = np.zeros(0, np.int64)
        return z, z.astype(np.int32), z.astype(np.int32), np.zeros(0, np.float32)
    m = boxes.shape[1]
    iou = pairwise_iou(boxes)
    valid = np.arange(m)[None, :] < num_boxes[:, None]
    upper = np.triu(np.ones((m, m), bool), k=1)
    keep = (iou > 0) & upper[None] & valid[:, :, None] & valid[:, None, :]
    image, i, j = np.nonzero(keep)
    weight = normalise_by_group(image, iou[image, i, j])
    return image.astype(np.int64), i.astype(np.int32), j.astype(np.int32), weight


class CooccurrenceCounts:
    """Dataset-wide counts of (object lemma, attribute) and (object lemma, predicate) pairs."""

    def __init__(self):
        self.attribute: Counter = Counter()
        self.relation: Counter = Counter()

    def add(self, attribute_pairs, relation_pairs) -> None:
        self.attribute.update(attribute_pairs)
        self.relation.update(relation_pairs)

    def lookup_attribute(self, objects, attributes) -> np.ndarray:
        get = self.attribute.get
        return np.fromiter((get(k, 0) for k in zip(objects, attributes)), np.float64, len(objects))

    def lookup_relation(self, objects, predicates) -> np.ndarray:
        get = self.relation.get
        return np.fromiter((get(k, 0) for k in zip(objects, predicates)), np.float64, len(objects))


def text_intra_edges(pair: np.ndarray, object_token: np.ndarray, word_token: np.ndarray, count: np.ndarray):
    """Deduplicated (pair, object token, word token) edges, weight = count normalised per pair.

    A word linked to the same object twice (e.g. a relation token shared by two
    relations) keeps its largest count. Edges with count 0 cannot occur for pairs
    counted over the same data; they are kept with weight 0 if they do.
    """
    pair = np.asarray(pair, np.int64)
    if len(pair) == 0:
        return pair, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    object_token = np.asarray(object_token, np.int64)
    word_token = np.asarray(word_token, np.int64)
    count = np.asarray(count, np.float64)
    order = np.lexsort((-count, word_token, object_token, pair))
    pair, object_token, word_token, count = pair[order], object_token[order], word_token[order], count[order]
    first = np.ones(len(pair), bool)
    first[1:] = (pair[1:] != pair[:-1]) | (object_token[1:] != object_token[:-1]) | (word_token[1:] != word_token[:-1])
    pair, object_token, word_token, count = pair[first], object_token[first], word_token[first], count[first]
    return pair, object_token.astype(np.int32), word_token.astype(np.int32), normalise_by_group(pair, count)


def ragged_arange(lengths: np.ndarray) -> np.ndarray:
    """[0..l0-1, 0..l1-1, ...] for non-negative lengths."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - starts


def cross_edges(
    object_pair: np.ndarray,
    object_token: np.ndarray,
    object_code: np.ndarray,
    pair_image_row: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    num_boxes: np.ndarray,
    similarity: np.ndarray,
    min_confidence: float,
    min_similarity: float,
):
    """Region-object edges of each pair by label/lemma similarity.

    ``object_*``: one row per text object (pair index, token, row of ``similarity``'s
    second axis). ``pair_image_row[pair]``: row of the pair's image in ``labels`` /
    ``scores`` / ``num_boxes`` (-1: no regions). ``similarity[label, code]`` is NaN
    when either word has no vector. Returns (pair, region, token, similarity).
    """
    object_pair = np.asarray(object_pair, np.int64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))
    if len(object_pair) == 0 or labels.shape[0] == 0:
        return empty
    m = labels.shape[1]
    image_row = np.asarray(pair_image_row, np.int64)[object_pair]
    has_image = image_row >= 0
    region_count = np.where(has_image, np.asarray(num_boxes, np.int64)[np.maximum(image_row, 0)], 0)
    region_count = np.minimum(region_count, m)
    rep = np.repeat(np.arange(len(object_pair)), region_count)
    region = ragged_arange(region_count)
    rows = image_row[rep]
    label = labels[rows, region]
    confident = (scores[rows, region] >= min_confidence) & (label >= 0)
    rep, region, label = rep[confident], region[confident], label[confident]
    sim = similarity[label, np.asarray(object_code, np.int64)[rep]]
    keep = sim >= min_similarity  # NaN (no vector) compares False
    rep, region, sim = rep[keep], region[keep], sim[keep]
    return object_pair[rep], region.astype(np.int32), np.asarray(object_token, np.int32)[rep], sim.astype(np.float32)
