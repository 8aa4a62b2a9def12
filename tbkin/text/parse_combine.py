"""Merge parse shards (one row per distinct text) back onto the split's text records.

Output ``parses.parquet`` has one row per record (schema
:data:`tbkin.text.scene_graph.RECORD_PARSE_SCHEMA`, documented in docs/artifacts.md).
"""
from __future__ import annotations

import argparse
import logging
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tbkin.atomic import atomic_path
from tbkin.errors import TbkinError
from tbkin.text.records import TextRecords, add_record_arguments, records_from_args
from tbkin.text.scene_graph import RECORD_PARSE_SCHEMA, TEXT_PARSE_SCHEMA

log = logging.getLogger(__name__)


class ParseShardError(TbkinError):
    """Parse shards are missing texts, overlap, or have the wrong schema."""


def join_parses(records: TextRecords, shards: Sequence[pa.Table]) -> pa.Table:
    parsed = pa.concat_tables([s.select(TEXT_PARSE_SCHEMA.names).cast(TEXT_PARSE_SCHEMA) for s in shards]) \
        if shards else TEXT_PARSE_SCHEMA.empty_table()
    texts = pd.Index(parsed.column("text").to_pylist())
    if texts.has_duplicates:
        dup = texts[texts.duplicated()][0]
        raise ParseShardError(f"text parsed in more than one shard: {dup!r}")
    rows = texts.get_indexer(records.text)
    if (rows < 0).any():
        missing = records.text[int(np.nonzero(rows < 0)[0][0])]
        raise ParseShardError(f"{int((rows < 0).sum())} records have no parse, e.g. {missing!r}; wrong shards?")
    joined = parsed.take(pa.array(rows, pa.int64()))
    columns = {
        "source": pa.array(records.source, pa.string()),
        "record_id": pa.array(records.record_id, pa.int64()),
        "image_id": pa.array(records.image_id, pa.int64()),
    }
    columns.update({name: joined.column(name) for name in TEXT_PARSE_SCHEMA.names})
    return pa.table(columns, schema=RECORD_PARSE_SCHEMA)


def read_shard(path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ParseShardError(f"cannot read parse shard {path}: {exc}") from None


# Readers stream the file a row group at a time (build-graph): keep groups small.
PARSES_ROW_GROUP = 8192


def write_parses(table: pa.Table, output) -> None:
    with atomic_path(output, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, row_group_size=PARSES_ROW_GROUP)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", help="parse shard Parquet files")
    add_record_arguments(parser)
    parser.add_argument("--output", required=True, help="parses.parquet")


def run(args: argparse.Namespace) -> int:
    records = records_from_args(args)
    table = join_parses(records, [read_shard(p) for p in args.shards])
    write_parses(table, args.output)
    log.info("%d records (%d distinct texts) -> %s", len(records), len(set(records.text)), args.output)
    return 0
