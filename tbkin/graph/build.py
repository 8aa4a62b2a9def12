"""Build the unified scene graph and knowledge entries of one split; CLI ``build-graph``.

Pairs are the (image, caption) rows of the split's ``parses.parquet``: pretraining,
the only reader of edges and entries, trains on captions (questions and expressions
are fine-tuning data). ``pair_id`` is the row index in that file. The file is read in
record batches and the region boxes/labels/scores of only those batches' images
are read from the features HDF5, so memory stays flat however large the split;
edges and entries are streamed to Parquet (schemas below and in docs/artifacts.md).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from tbkin.atomic import atomic_path
from tbkin.errors import TbkinError
from tbkin.features.hdf5 import RegionFeatureReader
from tbkin.graph.edges import (
    CROSS, IMAGE, IMAGE_INTRA, KIND_NAMES, MODALITY_NAMES, TEXT, TEXT_INTRA, CooccurrenceCounts, EdgeArrays,
    cross_edges, image_intra_edges, ragged_arange, text_intra_edges,
)
from tbkin.graph.entries import MAX_BATCH_PAIRS, MAX_VERTEX_INDEX, ROLE_NAMES, EntryArrays, knowledge_entries
from tbkin.graph.wordvec import load_vectors, phrase_vectors

log = logging.getLogger(__name__)

PAIR_SOURCES = ("caption",)

EDGE_SCHEMA = pa.schema([
    ("pair_id", pa.int64()), ("src_modality", pa.string()), ("src", pa.int32()),
    ("dst_modality", pa.string()), ("dst", pa.int32()), ("kind", pa.string()), ("weight", pa.float32()),
])
ENTRY_SCHEMA = pa.schema([
    ("pair_id", pa.int64()), ("image_id", pa.int64()), ("entry", pa.int32()),
    ("anchor_modality", pa.string()), ("anchor", pa.int32()), ("member_modality", pa.string()),
    ("member", pa.int32()), ("role", pa.string()), ("similarity", pa.float32()),
])


class GraphInputError(TbkinError):
    """The parses or region features given to build-graph do not fit together."""


@dataclass
class TextBatch:
    """Flattened text scene graphs of a batch of pairs (``*_pair`` = batch-local pair index)."""

    num_pairs: int
    object_pair: np.ndarray
    object_token: np.ndarray
    object_name: np.ndarray           # object (str)
    attribute_pair: np.ndarray
    attribute_object_token: np.ndarray
    attribute_object_name: np.ndarray
    attribute_token: np.ndarray
    attribute_name: np.ndarray
    relation_pair: np.ndarray
    relation_token: np.ndarray        # first predicate token: the relation's vertex
    relation_predicate: np.ndarray
    relation_subject_token: np.ndarray
    relation_subject_name: np.ndarray
    relation_object_token: np.ndarray
    relation_object_name: np.ndarray

    @classmethod
    def from_arrow(cls, batch: pa.RecordBatch | pa.Table) -> "TextBatch":
        objects = _column(batch, "objects")
        obj_flat = objects.flatten()
        obj_parent = pc.list_parent_indices(objects).to_numpy().astype(np.int64)
        obj_start = (objects.offsets.to_numpy() - objects.offsets[0].as_py()).astype(np.int64)
        obj_token = obj_flat.field("token").to_numpy(zero_copy_only=False).astype(np.int32)
        obj_name = obj_flat.field("name").to_numpy(zero_copy_only=False)

        attrs = _column(batch, "attributes")
        attr_flat = attrs.flatten()
        attr_parent = pc.list_parent_indices(attrs).to_numpy().astype(np.int64)
        attr_obj = obj_start[attr_parent] + attr_flat.field("object").to_numpy(zero_copy_only=False)

        rels = _column(batch, "relations")
        rel_flat = rels.flatten()
        rel_parent = pc.list_parent_indices(rels).to_numpy().astype(np.int64)
        rel_subj = obj_start[rel_parent] + rel_flat.field("subject").to_numpy(zero_copy_only=False)
        rel_obj = obj_start[rel_parent] + rel_flat.field("object").to_numpy(zero_copy_only=False)
        rel_token = pc.list_element(rel_flat.field("tokens"), 0).to_numpy(zero_copy_only=False).astype(np.int32)
        return cls(
            num_pairs=len(batch),
            object_pair=obj_parent, object_token=obj_token, object_name=obj_name,
            attribute_pair=attr_parent, attribute_object_token=obj_token[attr_obj],
            attribute_object_name=obj_name[attr_obj],
            attribute_token=attr_flat.field("token").to_numpy(zero_copy_only=False).astype(np.int32),
            attribute_name=attr_flat.field("attribute").to_numpy(zero_copy_only=False),
            relation_pair=rel_parent, relation_token=rel_token,
            relation_predicate=rel_flat.field("predicate").to_numpy(zero_copy_only=False),
            relation_subject_token=obj_token[rel_subj], relation_subject_name=obj_name[rel_subj],
            relation_object_token=obj_token[rel_obj], relation_object_name=obj_name[rel_obj],
        )

    @classmethod
    def from_graphs(cls, graphs) -> "TextBatch":
        from tbkin.text.scene_graph import graphs_to_table

        return cls.from_arrow(graphs_to_table(list(graphs)))


def _column(batch, name: str) -> pa.ListArray:
    column = batch.column(name)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column


@dataclass
class RegionBatch:
    """Regions of the images of a batch; ``pair_image_row[p]`` = row of pair p's image (-1: none)."""

    boxes: np.ndarray       # (K, m, 4)
    labels: np.ndarray      # (K, m)
    scores: np.ndarray      # (K, m)
    num_boxes: np.ndarray   # (K,)
    pair_image_row: np.ndarray

    @classmethod
    def read(cls, reader: RegionFeatureReader, image_ids: np.ndarray) -> "RegionBatch":
        """The regions of the pairs' images (one per pair); ``features`` are never read."""
        data, pair_image_row = reader.get_many(image_ids, ("boxes", "labels", "scores", "num_boxes"))
        return cls(**data, pair_image_row=pair_image_row)


@dataclass
class GraphParams:
    min_confidence: float
    min_similarity: float


class LabelMatcher:
    """Cosine similarity of region labels to object lemmas, cached per lemma."""

    def __init__(self, kv, label_names: Sequence[str]):
        self.kv = kv
        self.label_vectors = phrase_vectors(kv, list(label_names))
        self._column: dict[str, int] = {}
        self._similarity = np.zeros((len(label_names), 0), np.float32)

    def codes(self, names: np.ndarray) -> np.ndarray:
        """Column of each name in :attr:`similarity`, computing new names' columns."""
        if len(names) == 0:
            return np.zeros(0, np.int64)
        codes, uniques = pd.factorize(names)
        new = [u for u in uniques if u not in self._column]
        if new:
            block = self.label_vectors @ phrase_vectors(self.kv, new).T
            for name in new:
                self._column[name] = len(self._column)
            self._similarity = np.concatenate([self._similarity, block.astype(np.float32)], axis=1)
        lookup = np.array([self._column[u] for u in uniques], np.int64)
        return lookup[codes]

    @property
    def similarity(self) -> np.ndarray:
        return self._similarity


def count_cooccurrences(tables: Iterable[pa.RecordBatch | pa.Table], counts: CooccurrenceCounts | None = None):
    """Add the (object, attribute) and (object, predicate) pairs of parsed texts to ``counts``."""
    counts = counts or CooccurrenceCounts()
    for table in tables:
        text = TextBatch.from_arrow(table)
        counts.add(
            zip(text.attribute_object_name, text.attribute_name),
            list(zip(text.relation_subject_name, text.relation_predicate))
            + list(zip(text.relation_object_name, text.relation_predicate)),
        )
    return counts


def graph_batch(text: TextBatch, regions: RegionBatch, counts: CooccurrenceCounts, matcher: LabelMatcher,
                params: GraphParams) -> tuple[EdgeArrays, EntryArrays]:
    """Edges and knowledge entries of a batch of pairs."""
    if text.num_pairs >= MAX_BATCH_PAIRS:
        raise GraphInputError(f"batch of {text.num_pairs} pairs is larger than {MAX_BATCH_PAIRS}")
    if max(regions.boxes.shape[1], text.object_token.max(initial=0) + 1) > MAX_VERTEX_INDEX:
        raise GraphInputError(f"texts longer than {MAX_VERTEX_INDEX} tokens or as many regions are not supported")
    # image intra: per image once, then repeated for every pair of that image
    image, i, j, iou = image_intra_edges(regions.boxes, regions.num_boxes)
    per_image = np.bincount(image, minlength=len(regions.num_boxes)) if len(regions.num_boxes) else np.zeros(0, np.int64)
    start = np.cumsum(per_image) - per_image
    has_image = regions.pair_image_row >= 0
    pair_rows = np.where(has_image, regions.pair_image_row, 0)
    fan = np.where(has_image, per_image[pair_rows] if len(per_image) else 0, 0)
    pick = np.repeat(start[pair_rows] if len(start) else np.zeros(len(fan), np.int64), fan) + ragged_arange(fan)
    image_edges = EdgeArrays.make(np.repeat(np.arange(text.num_pairs), fan), IMAGE, i[pick], IMAGE, j[pick],
                                  IMAGE_INTRA, iou[pick])

    # text intra: object-attribute, subject-relation, object-relation
    pair = np.concatenate([text.attribute_pair, text.relation_pair, text.relation_pair])
    obj = np.concatenate([text.attribute_object_token, text.relation_subject_token, text.relation_object_token])
    word = np.concatenate([text.attribute_token, text.relation_token, text.relation_token])
    count = np.concatenate([
        counts.lookup_attribute(text.attribute_object_name, text.attribute_name),
        counts.lookup_relation(text.relation_subject_name, text.relation_predicate),
        counts.lookup_relation(text.relation_object_name, text.relation_predicate),
    ])
    tp, to, tw, tweight = text_intra_edges(pair, obj, word, count)
    text_edges = EdgeArrays.make(tp, TEXT, to, TEXT, tw, TEXT_INTRA, tweight)

    cp, region, token, sim = cross_edges(
        text.object_pair, text.object_token, matcher.codes(text.object_name), regions.pair_image_row,
        regions.labels, regions.scores, regions.num_boxes, matcher.similarity,
        params.min_confidence, params.min_similarity,
    )
    cross = EdgeArrays.make(cp, IMAGE, region, TEXT, token, CROSS, sim)
    edges = EdgeArrays.concat([image_edges, text_edges, cross])
    return edges, knowledge_entries(edges)


def _strings(codes: np.ndarray, names: Sequence[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int8)), pa.array(list(names))).cast(pa.string())


def edges_table(edges: EdgeArrays, pair_ids: np.ndarray) -> pa.Table:
    return pa.table({
        "pair_id": pa.array(pair_ids[edges.pair]),
        "src_modality": _strings(edges.src_modality, MODALITY_NAMES),
        "src": pa.array(edges.src),
        "dst_modality": _strings(edges.dst_modality, MODALITY_NAMES),
        "dst": pa.array(edges.dst),
        "kind": _strings(edges.kind, KIND_NAMES),
        "weight": pa.array(edges.weight),
    }, schema=EDGE_SCHEMA)


def entries_table(entries: EntryArrays, pair_ids: np.ndarray, image_ids: np.ndarray) -> pa.Table:
    return pa.table({
        "pair_id": pa.array(pair_ids[entries.pair]),
        "image_id": pa.array(image_ids[entries.pair]),
        "entry": pa.array(entries.entry),
        "anchor_modality": _strings(entries.anchor_modality, MODALITY_NAMES),
        "anchor": pa.array(entries.anchor),
        "member_modality": _strings(entries.member_modality, MODALITY_NAMES),
        "member": pa.array(entries.member),
        "role": _strings(entries.role, ROLE_NAMES),
        "similarity": pa.array(entries.similarity),
    }, schema=ENTRY_SCHEMA)


def _parquet_options(schema: pa.Schema) -> dict:
    # dictionary-encode only the few-valued string columns: faster and smaller than for all
    return {"compression": "zstd", "use_dictionary": [f.name for f in schema if f.type == pa.string()]}


def iter_pair_batches(parses_path: str | Path, batch_size: int) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Batches of pair rows (captions) with their global row indices."""
    columns = ["source", "image_id", "objects", "attributes", "relations"]
    offset = 0
    for batch in pq.ParquetFile(parses_path).iter_batches(batch_size=batch_size, columns=columns):
        is_pair = np.isin(batch.column("source").to_numpy(zero_copy_only=False), PAIR_SOURCES)
        rows = offset + np.nonzero(is_pair)[0]
        offset += len(batch)
        if len(rows):
            yield batch.filter(pa.array(is_pair)), rows.astype(np.int64)


def build_graph(parses_path, count_paths: Sequence, features_path, kv, params: GraphParams,
                edges_out, entries_out, batch_size: int = 2048, progress: bool = True) -> dict:
    """Write the edges and entries Parquet files of one split; returns summary counts."""
    counts = CooccurrenceCounts()
    for path in count_paths:
        count_cooccurrences(pq.ParquetFile(path).iter_batches(
            batch_size=batch_size, columns=["objects", "attributes", "relations"]), counts)
    regions = RegionFeatureReader(features_path)
    matcher = LabelMatcher(kv, regions.label_names)
    summary = {"pairs": 0, "edges": 0, "entries": 0, "entry_rows": 0, "pairs_without_regions": 0}
    total_rows = pq.ParquetFile(parses_path).metadata.num_rows
    try:
        with atomic_path(edges_out, suffix=".parquet") as edges_tmp, atomic_path(entries_out, suffix=".parquet") as entries_tmp:
            with pq.ParquetWriter(edges_tmp, EDGE_SCHEMA, **_parquet_options(EDGE_SCHEMA)) as edge_writer, \
                    pq.ParquetWriter(entries_tmp, ENTRY_SCHEMA, **_parquet_options(ENTRY_SCHEMA)) as entry_writer:
                bar = tqdm(total=total_rows, desc="graph", unit="row", disable=not progress, mininterval=5)
                for batch, pair_ids in iter_pair_batches(parses_path, batch_size):
                    image_ids = batch.column("image_id").to_numpy().astype(np.int64)
                    region_batch = RegionBatch.read(regions, image_ids)
                    edges, entries = graph_batch(TextBatch.from_arrow(batch), region_batch, counts, matcher, params)
                    edge_writer.write_table(edges_table(edges, pair_ids))
                    entry_writer.write_table(entries_table(entries, pair_ids, image_ids))
                    summary["pairs"] += len(pair_ids)
                    summary["edges"] += len(edges)
                    summary["entry_rows"] += len(entries)
                    summary["entries"] += int((entries.role == 0).sum())
                    summary["pairs_without_regions"] += int((region_batch.pair_image_row < 0).sum())
                    bar.update(len(pair_ids))
                bar.close()
    finally:
        regions.close()
    if summary["pairs"] and summary["pairs_without_regions"] == summary["pairs"]:
        raise GraphInputError(f"no image of {parses_path} has regions in {features_path}: wrong features file?")
    if summary["pairs_without_regions"]:
        log.warning("%d pairs have an image without regions in %s", summary["pairs_without_regions"], features_path)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parses", required=True, help="parses.parquet of the split")
    parser.add_argument("--count-parses", nargs="+", required=True,
                        help="parses.parquet the co-occurrence counts come from: the train split's "
                             "(statistics that training uses never see val)")
    parser.add_argument("--features", required=True, help="region features HDF5 of the split")
    parser.add_argument("--word-vectors", required=True, help="word2vec binary file written by `tbkin word-vectors`")
    parser.add_argument("--min-confidence", type=float, default=0.5, help="text.min_detection_confidence")
    parser.add_argument("--min-similarity", type=float, default=0.5, help="text.cross_modal_min_similarity")
    parser.add_argument("--batch-size", type=int, default=2048, help="pairs per processing chunk")
    parser.add_argument("--edges", required=True, help="output edges Parquet")
    parser.add_argument("--entries", required=True, help="output entries Parquet")


def run(args: argparse.Namespace) -> int:
    kv = load_vectors(args.word_vectors)
    summary = build_graph(
        args.parses, args.count_parses, args.features, kv,
        GraphParams(args.min_confidence, args.min_similarity), args.edges, args.entries, args.batch_size,
    )
    log.info("graph: %s", summary)
    return 0
