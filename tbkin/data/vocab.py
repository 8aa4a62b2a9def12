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
