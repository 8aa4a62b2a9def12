"""Typed text scene graphs and their Parquet (Arrow) schema.

A :class:`TextSceneGraph` is what the parser produces for one text: the spaCy
tokens with their character offsets (so later stages can map every object,
attribute and relation word to BERT word pieces), and the objects, attributes
and relations, each pointing at the token(s) it was read from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa


@dataclass(frozen=True)
class SceneObject:
    name: str          # lemma (compound nouns joined by a space: "traffic light")
    token: int         # index of the head noun's token


@dataclass(frozen=True)
class SceneAttribute:
    object: int        # index into TextSceneGraph.objects
    attribute: str     # adjective lemma
    token: int         # index of the adjective's token


@dataclass(frozen=True)
class SceneRelation:
    subject: int       # index into TextSceneGraph.objects
    predicate: str     # normalised phrase: "left of", "next to", "touch"
    object: int        # index into TextSceneGraph.objects
    tokens: tuple[int, ...]  # tokens of the predicate words (first one is the graph vertex)


@dataclass
class TextSceneGraph:
    text: str
    tokens: list[str] = field(default_factory=list)
    token_starts: list[int] = field(default_factory=list)
    objects: list[SceneObject] = field(default_factory=list)
    attributes: list[SceneAttribute] = field(default_factory=list)
    relations: list[SceneRelation] = field(default_factory=list)

    # Tuple views in the gold scene-graph normal form (tbkin.data.vocab).
    def object_names(self) -> list[str]:
        return [o.name for o in self.objects]

    def attribute_tuples(self) -> list[tuple[str, str]]:
        return [(self.objects[a.object].name, a.attribute) for a in self.attributes]

    def relation_tuples(self) -> list[tuple[str, str, str]]:
        return [(self.objects[r.subject].name, r.predicate, self.objects[r.object].name) for r in self.relations]

    def to_row(self) -> dict:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "token_starts": self.token_starts,
            "objects": [{"name": o.name, "token": o.token} for o in self.objects],
            "attributes": [{"object": a.object, "attribute": a.attribute, "token": a.token} for a in self.attributes],
            "relations": [
                {"subject": r.subject, "predicate": r.predicate, "object": r.object, "tokens": list(r.tokens)}
                for r in self.relations
            ],
        }

    @classmethod
    def from_row(cls, row: dict) -> "TextSceneGraph":
        return cls(
            text=row["text"],
            tokens=list(row["tokens"]),
            token_starts=[int(s) for s in row["token_starts"]],
            objects=[SceneObject(o["name"], int(o["token"])) for o in row["objects"]],
            attributes=[SceneAttribute(int(a["object"]), a["attribute"], int(a["token"])) for a in row["attributes"]],
            relations=[
                SceneRelation(int(r["subject"]), r["predicate"], int(r["object"]), tuple(int(t) for t in r["tokens"]))
                for r in row["relations"]
            ],
        )


OBJECT_TYPE = pa.struct([("name", pa.string()), ("token", pa.int32())])
ATTRIBUTE_TYPE = pa.struct([("object", pa.int32()), ("attribute", pa.string()), ("token", pa.int32())])
RELATION_TYPE = pa.struct(
    [("subject", pa.int32()), ("predicate", pa.string()), ("object", pa.int32()), ("tokens", pa.list_(pa.int32()))]
)

# One row per distinct text (parse shards).
PARSE_FIELDS = [
    pa.field("text", pa.string()),
    pa.field("tokens", pa.list_(pa.string())),
    pa.field("token_starts", pa.list_(pa.int32())),
    pa.field("objects", pa.list_(OBJECT_TYPE)),
    pa.field("attributes", pa.list_(ATTRIBUTE_TYPE)),
    pa.field("relations", pa.list_(RELATION_TYPE)),
]
TEXT_PARSE_SCHEMA = pa.schema(PARSE_FIELDS)

# One row per text record (parses.parquet).
RECORD_FIELDS = [
    pa.field("source", pa.string()),
    pa.field("record_id", pa.int64()),
    pa.field("image_id", pa.int64()),
]
RECORD_PARSE_SCHEMA = pa.schema(RECORD_FIELDS + PARSE_FIELDS)


def graphs_to_table(graphs: list[TextSceneGraph]) -> pa.Table:
    return pa.Table.from_pylist([g.to_row() for g in graphs], schema=TEXT_PARSE_SCHEMA)
