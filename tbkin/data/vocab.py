"""The closed vocabulary of the `shapes` dataset and the gold scene-graph conventions.

Gold scene graphs (written by the generator, scored against by the text parser)
use these normal forms, the same ones SPICE-style parsing produces:

* object: the singular lemma of the head noun ("circles" -> "circle"; the generic
  nouns "shape"/"object"/"thing" are objects too).
* attribute: (object, adjective lemma), for attributive ("a red circle"),
  predicative ("the circle is red") and conjoined ("a red and blue ...") adjectives.
* relation: (subject, predicate, object) where the predicate is the lower-case
  phrase with articles and a leading "to" dropped: "to the left of" -> "left of",
  "next to", "above", "on top of"; verbs are lemmatised ("touches" -> "touch").
  The gold predicate is the normalised phrase as written ("beside" stays
  "beside"), not the spatial relation it stands for.
"""
from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
GENERIC_NOUNS = ("shape", "object", "thing")

# spatial relation -> phrasings the generator may use in text
RELATIONS = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "on top of"),
    "below": ("below", "under"),
    "next to": ("next to", "beside"),
}

# Further conventions the generator follows (consistent with the ones above):
# * numerals ("two green triangles") are not attributes; a plural noun phrase is one
#   gold object (its singular lemma) carrying the phrase's adjectives;
# * a conjunction over a plural subject ("the circles are red and blue") gives one
#   attribute pair per adjective on that one object;
# * "there" (existential) is not an object;
# * objects, attributes and relations are listed once per mention, in text order
#   (two mentions of "circle" give two entries).

ARTICLES = ("a", "an", "the")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def plural(noun: str) -> str:
    """Plural of a vocabulary noun (all regular)."""
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


def normalize_predicate(phrase: str) -> str:
    """Gold form of a relation phrase: lower case, articles and a leading "to" dropped.

    >>> normalize_predicate("to the left of")
    'left of'
    >>> normalize_predicate("on top of")
    'on top of'
    """
    words = [w for w in phrase.lower().split() if w not in ARTICLES]
    if words and words[0] == "to":
        words = words[1:]
    return " ".join(words)
