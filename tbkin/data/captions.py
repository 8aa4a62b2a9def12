"""Captions and referring expressions of `shapes` images, each with its gold scene graph.

Every sentence is true of its image: indefinite noun phrases are checked by
construction (they describe the object they were made from), definite ones ("the
star above the blue square") with :func:`tbkin.data.language.select`, and plural
numerals ("two green triangles") count every matching object of the image.
"""
from __future__ import annotations

import random
from collections import Counter
from itertools import zip_longest
from typing import Callable, Optional

from tbkin.data.language import (
    Desc, Gold, SceneIndex, join_list, random_true_desc, render, sentence,
)
from tbkin.data.scenes import Scene, SceneObject, holds
from tbkin.data.vocab import NUMBER_WORDS, RELATIONS, normalize_predicate, plural

Caption = tuple[str, Gold]

LIST_LEVELS = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"))


def caption_list(scene: Scene, index: SceneIndex, rng: random.Random) -> Optional[Caption]:
    """'There is a red circle, two blue squares and a star.'"""
    level = rng.choice(LIST_LEVELS)
    groups = Counter(tuple(getattr(o, dim) for dim in level) for o in scene.objects)
    keys = list(groups)
    chosen = rng.sample(keys, min(len(keys), rng.randint(2, 3)))
    phrases = []
    for key in chosen:
        desc = Desc(**dict(zip(level, key)))
        count = groups[key]
        phrases.append(render(desc, rng, det="a", count=count if count > 1 else None))
    gold = Gold()
    for p in phrases:
        gold.extend(p.gold)
    body = join_list([p.text for p in phrases])
    if rng.random() < 0.5:
        verb = "is" if groups[chosen[0]] == 1 else "are"
        body = f"there {verb} {body}"
    return sentence(body), gold


def caption_relation(scene: Scene, index: SceneIndex, rng: random.Random) -> Optional[Caption]:
    """'A red circle is to the left of a large blue square.'"""
    pairs = [(a, b, rel) for a in scene.objects for b in scene.objects for rel in RELATIONS
             if holds(rel, a, b)]
    if not pairs:
        return None
    a, b, relation = rng.choice(pairs)
    subject = render(random_true_desc(a, rng), rng, det="a")
    obj = render(random_true_desc(b, rng), rng, det="a")
    phrase = rng.choice(RELATIONS[relation])
    gold = Gold().extend(subject.gold).extend(obj.gold)
    gold.relations.append([subject.noun, normalize_predicate(phrase), obj.noun])
    if rng.random() < 0.5:
        return sentence(f"{subject.text} is {phrase} {obj.text}"), gold
    return sentence(f"there is {subject.text} {phrase} {obj.text}"), gold


def caption_predicative(scene: Scene, index: SceneIndex, rng: random.Random) -> Optional[Caption]:
    """'The star above the blue square is small and yellow.'"""
    obj = rng.choice(scene.objects)
    predicated = rng.choice([("color",), ("size",), ("size", "color")])
    desc = index.pick_unique(obj, rng, exclude=predicated)
    if desc is None:
        return None
    subject = render(desc, rng, det="the")
    adjectives = [getattr(obj, dim) for dim in predicated]
    gold = subject.gold
    gold.attributes += [[subject.noun, adj] for adj in adjectives]
    return sentence(f"{subject.text} is {' and '.join(adjectives)}"), gold


def caption_conjunction(scene: Scene, index: SceneIndex, rng: random.Random) -> Optional[Caption]:
    """'The two circles are red and blue.' / 'There are red and blue circles.'"""
    by_shape: dict[str, list[SceneObject]] = {}
    for o in scene.objects:
        by_shape.setdefault(o.shape, []).append(o)
    options = [(shape, objs) for shape, objs in by_shape.items()
               if len(objs) in (2, 3) and len({o.color for o in objs}) == len(objs)]
    if not options:
        return None
    shape, objs = rng.choice(options)
    colours = [o.color for o in objs]
    rng.shuffle(colours)
    gold = Gold(objects=[shape], attributes=[[shape, c] for c in colours])
    if rng.random() < 0.5:
        numeral = rng.choice([NUMBER_WORDS[len(objs)] + " ", ""])
        return sentence(f"the {numeral}{plural(shape)} are {join_list(colours)}"), gold
    return sentence(f"there are {join_list(colours)} {plural(shape)}"), gold


CAPTION_TEMPLATES: tuple[Callable[[Scene, SceneIndex, random.Random], Optional[Caption]], ...] = (
    caption_list, caption_relation, caption_predicative, caption_conjunction,
)


def make_captions(scene: Scene, index: SceneIndex, rng: random.Random, n: int) -> list[Caption]:
    """``n`` captions, distinct where the scene allows it, with varied templates."""
    captions: list[Caption] = []
    seen: set[str] = set()
    for attempt in range(20 * n):
        template = CAPTION_TEMPLATES[(len(captions) + attempt) % len(CAPTION_TEMPLATES)] \
            if attempt < n else rng.choice(CAPTION_TEMPLATES)
        made = template(scene, index, rng)
        if made is None or made[0] in seen:
            continue
        seen.add(made[0])
        captions.append(made)
        if len(captions) == n:
            return captions
    while len(captions) < n:  # a tiny scene may not allow n distinct sentences
        captions.append(caption_list(scene, index, rng))
    return captions


# ---- referring expressions ---------------------------------------------------------

def make_expressions(index: SceneIndex, target: SceneObject, rng: random.Random, n: int) -> list[Caption]:
    """Up to ``n`` distinct lower-case expressions that pick out ``target`` alone."""
    descs = index.unique_descs(target, rng)
    rng.shuffle(descs)
    plain = [d for d in descs if d.relation is None]
    related = [d for d in descs if d.relation is not None]
    # alternate attribute-only and relational expressions, starting with either
    first, second = (plain, related) if rng.random() < 0.5 else (related, plain)
    ordered = [d for pair in zip_longest(first, second) for d in pair if d is not None]
    out: list[Caption] = []
    seen: set[str] = set()
    for desc in ordered:
        phrase = render(desc, rng, det=rng.choice(["the", ""]))
        if phrase.text not in seen:
            seen.add(phrase.text)
            out.append((phrase.text, phrase.gold))
        if len(out) == n:
            break
    return out
