"""VQA questions about `shapes` images, with 10 annotator answers each.

Question families: existence, counting, colour / shape / size queries, comparison
("are the circle and the square the same color?") and yes/no checks of relations and
attributes, about objects picked out by attributes and relations ("what color is the
shape to the left of the red square?").

Against a question-only prior:
* a yes/no question's intended answer is chosen first, alternating per question type
  so that yes and no are balanced within every type; the text is made afterwards
  from the same templates for both answers;
* counting questions pick the target count first (uniform over 0..4), then a
  description with that count;
* a question never names the attribute it asks about.

``question_type`` is the official-style prefix ("is there a", "how many", "what color
is the", ...), ``answer_type`` one of yes/no, number, other.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

from tbkin.data.language import Desc, SceneIndex, render, select
from tbkin.data.scenes import Scene, clearly_not, holds
from tbkin.data.vocab import COLORS, GENERIC_NOUNS, RELATIONS, SHAPES, SIZES

VALUES = {"shape": SHAPES, "color": COLORS, "size": SIZES}
MAX_TARGET_COUNT = 4


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    question_type: str
    answer_type: str  # "yes/no" | "number" | "other"


class YesNoBalancer:
    """Picks the intended answer of each yes/no question: the rarer one so far per type."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def target(self, question_type: str, rng: random.Random) -> str:
        yes, no = self.counts[(question_type, "yes")], self.counts[(question_type, "no")]
        answer = rng.choice(["yes", "no"]) if yes == no else ("yes" if yes < no else "no")
        return answer

    def record(self, question: Question) -> None:
        if question.answer_type == "yes/no":
            self.counts[(question.question_type, question.answer)] += 1


def _question(text: str) -> str:
    return text[0].upper() + text[1:] + "?"


EXIST_DIMS = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"),
              ("color",), ("size", "color"))


def existence(scene: Scene, index: SceneIndex, rng: random.Random, answer: str, form: str) -> Optional[Question]:
    dims = rng.choice(EXIST_DIMS)
    if answer == "yes":
        obj = rng.choice(scene.objects)
        desc = Desc(**{d: getattr(obj, d) for d in dims})
    else:
        for _ in range(20):
            desc = Desc(**{d: rng.choice(VALUES[d]) for d in dims})
            if not select(scene, desc):
                break
        else:
            return None
    if form == "is there a":
        text = f"is there {render(desc, rng, det='a').text}"
    else:
        text = f"are there any {render(desc, rng, det='plural').text}"
    return Question(_question(text), answer, form, "yes/no")


def exist_is(scene, index, rng, balancer):
    return existence(scene, index, rng, balancer.target("is there a", rng), "is there a")


def exist_are(scene, index, rng, balancer):
    return existence(scene, index, rng, balancer.target("are there", rng), "are there")


def _head_keys(obj, with_size: bool = True):
    """Every attribute-only head description that ``obj`` matches."""
    sizes = (None, obj.size) if with_size else (None,)
    return [Desc(s, c, z) for s in (None, obj.shape) for c in (None, obj.color) for z in sizes]


def counting(scene: Scene, index: SceneIndex, rng: random.Random, balancer) -> Optional[Question]:
    by_count: dict[int, list[Desc]] = {}
    # count every head by letting each object vote for the heads it matches
    heads = [Desc(s, c, z) for s in (None, *SHAPES) for c in (None, *COLORS) for z in (None, *SIZES)]
    votes = Counter(h for o in scene.objects for h in _head_keys(o))
    for desc in heads:
        by_count.setdefault(votes[desc], []).append(desc)
    relational_heads = [h for h in heads if h.size is None]
    for anchor in scene.objects:
        anchor_descs = index.unique_attribute_descs[anchor.index]
        if not anchor_descs:
            continue
        anchor_desc = rng.choice(anchor_descs)
        for relation in RELATIONS:
            related = Counter(h for o in scene.objects if holds(relation, o, anchor)
                              for h in _head_keys(o, with_size=False))
            for head in relational_heads:
                by_count.setdefault(related[head], []).append(
                    Desc(head.shape, head.color, None, relation, anchor_desc))
    wanted = rng.randint(0, MAX_TARGET_COUNT)
    available = sorted(by_count, key=lambda c: (abs(c - wanted), c))
    count = available[0]
    desc = rng.choice(by_count[count])
    text = f"how many {render(desc, rng, det='plural').text} are there"
    return Question(_question(text), str(count), "how many", "number")


def attribute_query(dim: str, question_type: str):
    def make(scene: Scene, index: SceneIndex, rng: random.Random, balancer) -> Optional[Question]:
        obj = rng.choice(scene.objects)
        desc = index.pick_unique(obj, rng, exclude=(dim,))
        if desc is None:
            return None
        # "what shape is the red shape?" reads oddly: the generic head is object / thing
        nouns = tuple(n for n in GENERIC_NOUNS if n != dim)
        text = f"{question_type[:-4]} {render(desc, rng, det='the', generic_nouns=nouns).text}"
        return Question(_question(text), getattr(obj, dim), question_type, "other")
    return make


def comparison(scene: Scene, index: SceneIndex, rng: random.Random, balancer) -> Optional[Question]:
    answer = balancer.target("are the", rng)
    dim = rng.choice(("color", "shape", "size"))
    pairs = [(a, b) for a in scene.objects for b in scene.objects if a.index < b.index
             and (getattr(a, dim) == getattr(b, dim)) == (answer == "yes")]
    rng.shuffle(pairs)
    for a, b in pairs[:6]:
        da = index.pick_unique(a, rng, exclude=(dim,))
        db = index.pick_unique(b, rng, exclude=(dim,))
        if da is None or db is None:
            continue
        if rng.random() < 0.5:
            da, db = db, da
        text = f"are {render(da, rng).text} and {render(db, rng).text} the same {dim}"
        return Question(_question(text), answer, "are the", "yes/no")
    return None


def yes_no_check(scene: Scene, index: SceneIndex, rng: random.Random, balancer) -> Optional[Question]:
    """'Is the red circle to the left of the star?' / 'Is the small square blue?'"""
    answer = balancer.target("is the", rng)
    if rng.random() < 0.5:
        relation = rng.choice(list(RELATIONS))
        test = holds if answer == "yes" else clearly_not
        pairs = [(a, b) for a in scene.objects for b in scene.objects if test(relation, a, b)]
        rng.shuffle(pairs)
        for a, b in pairs[:6]:
            da = _plain_unique(index, a, rng)
            db = _plain_unique(index, b, rng)
            if da is None or db is None:
                continue
            phrase = rng.choice(RELATIONS[relation])
            text = f"is {render(da, rng).text} {phrase} {render(db, rng).text}"
            return Question(_question(text), answer, "is the", "yes/no")
        return None
    obj = rng.choice(scene.objects)
    dim = rng.choice(("color", "size"))
    desc = index.pick_unique(obj, rng, exclude=(dim,))
    if desc is None:
        return None
    value = getattr(obj, dim)
    if answer == "no":
        value = rng.choice([v for v in VALUES[dim] if v != value])
    return Question(_question(f"is {render(desc, rng).text} {value}"), answer, "is the", "yes/no")


def _plain_unique(index: SceneIndex, obj, rng: random.Random) -> Optional[Desc]:
    descs = index.unique_attribute_descs[obj.index]
    return rng.choice(descs) if descs else None


Family = Callable[[Scene, SceneIndex, random.Random, YesNoBalancer], Optional[Question]]
# Shares close to VQA v2's answer types (yes/no 38%, number 12-14%, other ~50%).
FAMILIES: tuple[tuple[Family, float], ...] = (
    (exist_is, 0.08),
    (exist_are, 0.06),
    (comparison, 0.10),
    (yes_no_check, 0.14),
    (counting, 0.14),
    (attribute_query("color", "what color is the"), 0.22),
    (attribute_query("shape", "what shape is the"), 0.18),
    (attribute_query("size", "what size is the"), 0.08),
)


def make_questions(scene: Scene, index: SceneIndex, rng: random.Random, n: int,
                   balancer: YesNoBalancer) -> list[Question]:
    families, weights = zip(*FAMILIES)
    out: list[Question] = []
    seen: set[str] = set()
    for _ in range(20 * n):
        family = rng.choices(families, weights)[0]
        question = family(scene, index, rng, balancer)
        if question is None or question.text in seen:
            continue
        seen.add(question.text)
        balancer.record(question)
        out.append(question)
        if len(out) == n:
            break
    return out


# ---- annotators ------------------------------------------------------------------

def alternatives(question: Question) -> list[str]:
    """Plausible wrong answers a careless or unsure annotator may give."""
    if question.answer_type == "yes/no":
        return ["no" if question.answer == "yes" else "yes"]
    if question.answer_type == "number":
        n = int(question.answer)
        return [str(m) for m in (n - 1, n + 1) if m >= 0]
    for values in VALUES.values():
        if question.answer in values:
            return [v for v in values if v != question.answer]
    raise ValueError(f"no alternatives for answer {question.answer!r}")


def annotate(question: Question, rng: random.Random, answer_noise: float) -> list[dict]:
    """Ten official-format answers. With probability ``answer_noise`` the question is
    ambiguous and 1-4 of the 10 annotators give a plausible different answer."""
    answers = [question.answer] * 10
    confidence = ["yes"] * 10
    if rng.random() < answer_noise:
        options = alternatives(question)
        for slot in rng.sample(range(10), rng.randint(1, 4)):
            answers[slot] = rng.choice(options)
            confidence[slot] = rng.choice(["maybe", "yes", "no"])
    return [{"answer": a, "answer_confidence": c, "answer_id": i + 1}
            for i, (a, c) in enumerate(zip(answers, confidence))]
