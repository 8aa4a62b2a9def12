"""Descriptions of scene objects, rendered to English with their gold scene graph.

A :class:`Desc` is the meaning of a noun phrase ("the small red circle", "the shape to
the left of the blue star"); :func:`select` evaluates it on a scene, so every
generated sentence is checked against the scene it describes. Rendering a
description returns the text together with its gold objects / attributes / relations
in the normal forms of :mod:`tbkin.data.vocab`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

from tbkin.data.scenes import Scene, SceneObject, holds
from tbkin.data.vocab import GENERIC_NOUNS, NUMBER_WORDS, RELATIONS, normalize_predicate, plural



@dataclass(frozen=True)
class Desc:
    """A description: optional shape (None = generic noun), colour, size, and an
    optional relation to a uniquely described anchor object."""

    shape: Optional[str] = None
    color: Optional[str] = None
    size: Optional[str] = None
    relation: Optional[str] = None
    anchor: Optional["Desc"] = None

    def matches_attributes(self, obj: SceneObject) -> bool:
        return ((self.shape is None or self.shape == obj.shape)
                and (self.color is None or self.color == obj.color)
                and (self.size is None or self.size == obj.size))

    def uses(self, dim: str) -> bool:
        """Whether the head noun phrase mentions dimension ``dim`` (the anchor does not count)."""
        return getattr(self, dim) is not None


def select(scene: Scene, desc: Desc) -> list[SceneObject]:
    """Objects of ``scene`` the description picks out (empty if the anchor is not unique)."""
    found = [o for o in scene.objects if desc.matches_attributes(o)]
    if desc.relation is None:
        return found
    anchors = select(scene, desc.anchor)
    if len(anchors) != 1:
        return []
    return [o for o in found if holds(desc.relation, o, anchors[0])]


@dataclass
class Gold:
    objects: list[str] = field(default_factory=list)
    attributes: list[list[str]] = field(default_factory=list)
    relations: list[list[str]] = field(default_factory=list)

    def extend(self, other: "Gold") -> "Gold":
        self.objects += other.objects
        self.attributes += other.attributes
        self.relations += other.relations
        return self


@dataclass
class Phrase:
    text: str
    gold: Gold
    noun: str  # gold object name of the head noun


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def render(desc: Desc, rng: random.Random, det: str = "the", count: int | None = None,
           generic_nouns: tuple[str, ...] = GENERIC_NOUNS) -> Phrase:
    """Render ``desc`` as a noun phrase.

    ``det`` is "the", "a" (a/an chosen by the next word), "plural" (bare plural:
    "red circles") or "" (no determiner); ``count`` > 1 gives a numeral and a plural
    noun ("two green triangles"). ``generic_nouns``: the head nouns to choose from
    when the description names no shape.
    """
    noun = desc.shape or rng.choice(generic_nouns)
    adjectives = [a for a in (desc.size, desc.color) if a is not None]
    numeral = count is not None and count > 1
    words = adjectives + [plural(noun) if numeral or det == "plural" else noun]
    if numeral:
        words.insert(0, NUMBER_WORDS[count])
    elif det == "a":
        words.insert(0, article(words[0]))
    elif det == "the":
        words.insert(0, "the")
    gold = Gold(objects=[noun], attributes=[[noun, a] for a in adjectives])
    if desc.relation is not None:
        phrase = rng.choice(RELATIONS[desc.relation])
        anchor = render(desc.anchor, rng, det="the")
        words += [phrase, anchor.text]
        gold.extend(anchor.gold)
        gold.relations.append([noun, normalize_predicate(phrase), anchor.noun])
    return Phrase(" ".join(words), gold, noun)


def attribute_descs(obj: SceneObject, exclude: tuple[str, ...] = ()) -> list[Desc]:
    """Every attribute-only description true of ``obj`` that avoids ``exclude`` dimensions."""
    shapes = [None] if "shape" in exclude else [obj.shape, None]
    colors = [None] if "color" in exclude else [None, obj.color]
    sizes = [None] if "size" in exclude else [None, obj.size]
    return [Desc(shape=s, color=c, size=z) for s in shapes for c in colors for z in sizes]


class SceneIndex:
    """Unique descriptions of a scene's objects, computed once per scene."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self._relational_cache: dict[tuple[int, tuple[str, ...]], list[Desc]] = {}

    @cached_property
    def unique_attribute_descs(self) -> dict[int, list[Desc]]:
        return {o.index: [d for d in attribute_descs(o) if select(self.scene, d) == [o]]
                for o in self.scene.objects}

    def unique_descs(self, obj: SceneObject, rng: random.Random, exclude: tuple[str, ...] = (),
                     relational: bool = True) -> list[Desc]:
        """Descriptions (attribute-only, and relational if asked) that pick out ``obj`` alone
        and do not mention the ``exclude`` dimensions in the head noun phrase."""
        out = [d for d in self.unique_attribute_descs[obj.index]
               if not any(d.uses(dim) for dim in exclude)]
        if relational:
            out += self._relational_descs(obj, rng, exclude)
        return out

    def _relational_descs(self, obj: SceneObject, rng: random.Random, exclude: tuple[str, ...]) -> list[Desc]:
        # cached per (object, exclude); the anchor's wording is drawn once, on first use
        key = (obj.index, exclude)
        if key not in self._relational_cache:
            found = []
            for anchor in self.scene.objects:
                anchor_descs = self.unique_attribute_descs[anchor.index]
                if anchor.index == obj.index or not anchor_descs:
                    continue
                for relation in RELATIONS:
                    if not holds(relation, obj, anchor):
                        continue
                    anchor_desc = rng.choice(anchor_descs)
                    related = [o for o in self.scene.objects if holds(relation, o, anchor)]
                    for head in attribute_descs(obj, exclude):
                        if [o for o in related if head.matches_attributes(o)] == [obj]:
                            found.append(Desc(head.shape, head.color, head.size, relation, anchor_desc))
            self._relational_cache[key] = found
        return list(self._relational_cache[key])

    def pick_unique(self, obj: SceneObject, rng: random.Random, exclude: tuple[str, ...] = ()) -> Desc | None:
        """A random unique description; attribute-only and relational ones equally likely."""
        descs = self.unique_descs(obj, rng, exclude)
        plain = [d for d in descs if d.relation is None]
        related = [d for d in descs if d.relation is not None]
        pools = [p for p in (plain, related) if p]
        return rng.choice(rng.choice(pools)) if pools else None


def random_true_desc(obj: SceneObject, rng: random.Random) -> Desc:
    """An indefinite description true of ``obj`` (uniqueness not needed)."""
    return Desc(
        shape=obj.shape if rng.random() < 0.8 else None,
        color=obj.color if rng.random() < 0.7 else None,
        size=obj.size if rng.random() < 0.5 else None,
    )


def join_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."
