"""SPICE-style rules: one spaCy ``Doc`` -> objects, attributes and relations.

The rules follow the Stanford scene-graph parser used by SPICE (Schuster et al.,
2015), re-expressed over spaCy's dependency labels. Like SPICE, the dependency
tree is first repaired where multi-word prepositions confuse the parser, then
read off:

* **Tree repairs.** (1) Multi-word prepositions (:data:`MULTIWORD_PREPOSITIONS`,
  matched longest first on lower-case tokens, as CoreNLP's multi-word-expression
  step does) that the parser made the head of a noun phrase ("the square right of
  the circle" parsed with "right" as the head noun and "square" as its modifier)
  are re-attached: the modifier noun takes the phrase head's place in the tree and
  the phrase becomes its prepositional modifier. (2) A word used as a noun phrase
  head is a noun whatever its part-of-speech tag: the root of a verbless fragment
  ("square above the star"), and a word in a nominal role (subject, object,
  prepositional object) that carries a determiner or adjective. (3) In "a man
  wearing a hat and a woman wearing glasses" the parser conjoins "woman" with
  "hat"; a conjunct with a participial clause of its own, conjoined with an
  object inside another noun's participial clause, is re-attached as a conjunct
  of that noun.
* **Objects** are nouns (lemma, lower case, so plurals become singular). Noun
  compounds are merged into one object named by all their lemmas ("traffic
  light"), as the Stanford parser's compound collapsing names its node; its
  vertex is the head noun. Under :data:`FREE_TEXT` conventions the head noun
  alone names the object and each compound modifier is an attribute of it
  ("car window" -> window, (window, car); "traffic light" -> light, (light,
  traffic): no list of lexicalised compounds is kept), so the object matches a
  reference that names the head noun and the modifier is not lost. Nouns inside
  a multi-word preposition ("left" in "to the left of") and pronouns are not
  objects.
* **Attributes** are adjectival modifiers (``amod``; ``compound`` modifiers that
  are adjectives, lower-case proper nouns or basic colour terms, which taggers
  often mislabel as nouns: "an orange star"), predicative adjectives (``acomp``:
  "the car is red", "the circle looks small"), each spread over conjunctions ("a
  red and blue ball", "a circle and a square are red"); a word conjoined with an
  adjective is an adjective, and an adjective the parser hung off a prenominal
  adjective ("small" in "the small purple square") modifies the noun too. In a
  list, a word the parser made a modifier of a later noun phrase ("a square, four
  diamonds") heads its own noun phrase. Quantity words ("many") are not attributes;
  numerals are not either, except under :data:`FREE_TEXT` conventions, where a
  number before its noun is a count attribute written as digits, like SPICE's
  count attributes ("two people" -> (people, "2"); number words one..twelve and
  digit strings; "number 5", with the number after the noun, is not a count).
* **Relations** come from prepositions (a token with a ``pobj`` child, or a
  multi-word preposition), whose subject is the noun they attach to, or the
  subject of the verb / copula they attach to (a lexical verb is prefixed to the
  predicate, "sit on", as the Stanford parser does; under :data:`FREE_TEXT`
  conventions the predicate is the preposition alone, whatever the verb:
  "a man sitting on a bench" -> (man, on, bench)); from verbs with a direct
  object ("the star touches the circle"); and from passive agents ("the circle
  is touched by the star" -> (star, touch, circle)). Subjects and objects are
  spread over conjunctions, relative pronouns resolve to the noun their clause
  modifies, and in "there is X ..." / "what shape is ..." the copula's ``attr``
  is the subject. A participle or relative clause after coordinated nouns ("a
  woman and a child playing frisbee") is read distributively, for all of them,
  wherever the parser attached it (to the first or to the last conjunct), unless
  another conjunct has a clause of its own or the coordination is itself an
  object (then the clause most likely belongs to the nearest noun only).

Predicates are normalised as in :mod:`tbkin.data.vocab`: lower case, articles
dropped, a leading "to" dropped ("to the left of" -> "left of"), verbs lemmatised.

**Conventions.** Gold scene graphs differ in three choices, so the rules take a
:class:`Conventions`: :data:`SHAPES` (the default, used by the pipeline) is the
normal form of :mod:`tbkin.data.vocab` written by the `shapes` generator, which
agrees with the Stanford rule-based parser (compounds collapsed into one node,
verb + preposition predicates, numerals not attributes); :data:`FREE_TEXT` is for
real, Visual-Genome-style region descriptions scored SPICE-style (count
attributes, compound modifiers as attributes, preposition-only predicates).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from tbkin.text.scene_graph import SceneAttribute, SceneObject, SceneRelation, TextSceneGraph


@dataclass(frozen=True)
class Conventions:
    """The gold scene-graph conventions the rules follow where gold standards differ."""

    count_attributes: bool = False  # "two people" -> (people, "2")
    compound_attributes: bool = False  # "car window" -> window, (window, car); else one object "car window"
    preposition_predicates: bool = False  # "sitting on" -> "on"; else "sit on"


SHAPES = Conventions()
FREE_TEXT = Conventions(count_attributes=True, compound_attributes=True, preposition_predicates=True)
CONVENTIONS = {"shapes": SHAPES, "free_text": FREE_TEXT}  # config text.conventions

ARTICLES = frozenset({"a", "an", "the"})
RELATIVE_PRONOUNS = frozenset({"that", "which", "who", "whom", "whose"})
# Adjectival modifiers that quantify or refer rather than describe.
NON_ATTRIBUTE_ADJECTIVES = frozenset(
    {"many", "much", "few", "several", "other", "same", "such", "more", "most", "less", "least", "own", "various"}
)
# Basic colour terms (Berlin & Kay): used before a noun they are attributes, not compound nouns.
COLOUR_TERMS = frozenset(
    {"black", "white", "red", "green", "yellow", "blue", "brown", "purple", "pink", "orange", "gray", "grey"}
)
# Count attributes: small numbers are what captions spell out; larger ones are written as digits.
NUMBER_WORDS = {w: str(n) for n, w in enumerate(
    "one two three four five six seven eight nine ten eleven twelve".split(), start=1)}
NOUN_POS = frozenset({"NOUN", "PROPN"})
NON_NOMINAL_POS = frozenset({"PRON", "DET", "PUNCT", "AUX", "NUM", "ADP", "CCONJ", "SCONJ", "PART", "INTJ", "SYM", "X"})
ADJECTIVE_POS = frozenset({"ADJ", "VERB", "PROPN", "NOUN"})  # adjectives and mis-tagged adjectives
SUBJECT_DEPS = frozenset({"nsubj", "nsubjpass"})
OBJECT_DEPS = frozenset({"pobj", "dobj", "obj"})
NOMINAL_ROLES = frozenset({"nsubj", "nsubjpass", "dobj", "pobj", "attr", "appos"})
NOUN_PHRASE_MODIFIERS = frozenset({"det", "amod", "compound", "nummod", "poss"})
# Dependents that show a mis-tagged word heads a noun phrase.
NOMINAL_EVIDENCE = frozenset({"det", "amod", "nummod", "poss"})

# Multi-word prepositions (the kind of list CoreNLP's multi-word-expression
# annotator and SPICE use). Matched on lower-case tokens, longest first.
MULTIWORD_PREPOSITIONS = tuple(
    phrase.split()
    for phrase in """
    to the left of|to the right of|on the left of|on the right of|at the left of|at the right of
    on the left side of|on the right side of|to the left side of|to the right side of
    left of|right of|in front of|in back of|at the front of|at the back of|in the back of
    on top of|on the top of|at the top of|at the bottom of|on the bottom of|underneath of
    in the middle of|in the center of|in the centre of|on the side of|to the side of
    on the edge of|at the edge of|on the other side of|on either side of|across from
    next to|close to|near to|adjacent to|far from|away from|apart from|out of|outside of
    inside of|ahead of|instead of|because of|on behalf of|in between|in addition to
    according to|along with|together with|prior to|due to|in spite of|all over|up to
    """.replace("\n", "|").split("|")
    if phrase.strip()
)
_MWE_BY_FIRST: dict[str, list[list[str]]] = {}
for _p in sorted(MULTIWORD_PREPOSITIONS, key=len, reverse=True):
    _MWE_BY_FIRST.setdefault(_p[0], []).append(_p)


def find_multiword_prepositions(lower: list[str]) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) token spans of multi-word prepositions."""
    spans = []
    i = 0
    while i < len(lower):
        for phrase in _MWE_BY_FIRST.get(lower[i], ()):
            if lower[i : i + len(phrase)] == phrase:
                spans.append((i, i + len(phrase)))
                i += len(phrase)
                break
        else:
            i += 1
    return spans


def normalise_predicate(words: Iterable[str]) -> list[int]:
    """Indices of ``words`` kept in the normal form (articles and a leading "to" dropped)."""
    words = list(words)
    keep = [i for i, w in enumerate(words) if w not in ARTICLES]
    if len(keep) > 1 and words[keep[0]] == "to":
        keep = keep[1:]
    return keep


class _Tree:
    """A mutable copy of a Doc's dependency tree (spaCy's own is read-only)."""

    def __init__(self, doc):
        # one pass over the tokens: creating spaCy Token objects is the expensive part
        self.n = len(doc)
        self.text, self.lower, self.lemma, self.pos, self.dep, self.start = [], [], [], [], [], []
        for tok in doc:
            self.text.append(tok.text)
            self.lower.append(tok.lower_)
            self.lemma.append(tok.lemma_.lower())
            self.pos.append(tok.pos_)
            self.dep.append(tok.dep_)
            self.start.append(tok.idx)
        relative = doc.to_array("HEAD").view("int64").tolist() if self.n else []  # stored unsigned
        self.head = [i + int(r) for i, r in enumerate(relative)]

    def children(self, i: int) -> list[int]:
        return [c for c in range(self.n) if self.head[c] == i and c != i]

    def is_root(self, i: int) -> bool:
        return self.head[i] == i

    def move(self, child: int, new_head: int, dep: str | None = None) -> None:
        self.head[child] = new_head
        if dep is not None:
            self.dep[child] = dep


class _DocRules:
    """Applies the rules to one Doc."""

    def __init__(self, doc, conventions: Conventions = SHAPES):
        self.conventions = conventions
        self.t = _Tree(doc)
        self.spans = find_multiword_prepositions(self.t.lower)
        self.in_span: dict[int, tuple[int, int]] = {i: s for s in self.spans for i in range(*s)}
        self._repair_multiword_heads()
        self._retag_nominal_heads()
        self._repair_clause_coordination()
        self._kids = [[] for _ in range(self.t.n)]
        for i in range(self.t.n):
            if not self.t.is_root(i):
                self._kids[self.t.head[i]].append(i)
        self.object_index: dict[int, int] = {}
        self.objects: list[SceneObject] = []
        for i in range(self.t.n):
            if self._is_object(i):
                self.object_index[i] = len(self.objects)
                self.objects.append(SceneObject(self._object_name(i), i))

    # -- tree repairs ----------------------------------------------------------
    def _span_top(self, span: tuple[int, int]) -> int:
        for i in range(*span):
            if not span[0] <= self.t.head[i] < span[1] or self.t.is_root(i):
                return i
        return span[0]

    def _repair_multiword_heads(self) -> None:
        """"the square right of the circle" parsed with "right" heading "square": swap them."""
        t = self.t
        for span in self.spans:
            top = self._span_top(span)
            before = [c for i in range(*span) for c in t.children(i) if c < span[0] and t.dep[c] != "punct"]
            candidates = [c for c in before if t.dep[c] in ("compound", "amod", "npadvmod", "nmod", "nsubj", "appos")
                          and t.pos[c] in ("NOUN", "PROPN", "ADJ", "ADV", "VERB")]
            if not candidates:
                continue
            noun = max(candidates)
            if noun + 1 != span[0] and any(t.dep[k] == "punct" for k in range(noun + 1, span[0])):
                continue
            # the noun takes the phrase's place; the phrase and the noun phrase's other
            # modifiers (determiner, adjectives) now hang off the noun
            if t.is_root(top):
                t.move(noun, noun, "ROOT")
            else:
                t.move(noun, t.head[top], t.dep[top])
            for c in before:
                if c != noun:
                    t.move(c, noun)
            t.move(top, noun, "prep")
            if t.pos[noun] not in NOUN_POS:
                t.pos[noun] = "NOUN"

    def _retag_nominal_heads(self) -> None:
        t = self.t
        for i in range(t.n):
            if t.pos[i] in NOUN_POS or i in self.in_span or t.pos[i] in NON_NOMINAL_POS:
                continue
            children = t.children(i)
            deps = {t.dep[c] for c in children}
            fragment_root = t.is_root(i) and t.pos[i] != "VERB" and not (deps & SUBJECT_DEPS) \
                and not any(t.pos[c] in ("AUX", "VERB") for c in children)
            nominal_role = t.dep[i] in NOMINAL_ROLES and bool(deps & NOMINAL_EVIDENCE)
            if fragment_root or nominal_role:
                t.pos[i] = "NOUN"
        # an "adjective" separated from its noun by a new noun phrase of a list heads its own
        # noun phrase ("a square, four diamonds": "square" is not a modifier of "diamonds")
        for i in range(t.n):
            h = t.head[i]
            if t.dep[i] == "amod" and i < h and any(
                (t.dep[k] == "punct" or t.pos[k] == "CCONJ") and t.pos[k + 1] in ("DET", "NUM")
                for k in range(i + 1, h - 1)
            ):
                t.pos[i], t.dep[i] = "NOUN", "conj"
        # a word conjoined with an adjective is an adjective ("large and purple")
        for i in range(t.n):
            h = t.head[i]
            if t.dep[i] == "conj" and t.pos[i] in NOUN_POS and t.pos[h] == "ADJ" and t.dep[h] in ("amod", "acomp"):
                t.pos[i] = "ADJ"

    def _repair_clause_coordination(self) -> None:
        """"a man wearing a hat and a woman wearing glasses": the parser conjoins "woman" with
        "hat". A conjunct with a participial clause of its own, conjoined with an object inside
        another noun's participial clause, is a new noun phrase parallel to that noun."""
        t = self.t
        for i in range(t.n):
            if t.dep[i] != "conj" or t.pos[i] not in NOUN_POS or not any(t.dep[c] == "acl" for c in t.children(i)):
                continue
            host = t.head[i]
            if t.dep[host] not in OBJECT_DEPS:
                continue
            clause = t.head[host]
            if t.dep[clause] == "prep":  # "a cat sitting on a chair and a dog lying on the floor"
                clause = t.head[clause]
            if t.dep[clause] == "acl" and t.pos[t.head[clause]] in NOUN_POS and t.head[clause] < clause:
                t.move(i, t.head[clause])

    # -- objects -----------------------------------------------------------
    def _is_object(self, i: int) -> bool:
        t = self.t
        if t.pos[i] not in NOUN_POS or i in self.in_span:
            return False
        if t.dep[i] == "compound" and t.pos[t.head[i]] in NOUN_POS and not t.is_root(i):
            return False  # part of its head's name, or an attribute of it
        if t.pos[i] == "PROPN" and t.text[i].islower() and t.dep[i] == "amod":
            return False  # a mis-tagged adjective
        return True

    def _is_attribute_compound(self, i: int) -> bool:
        """A ``compound`` modifier that is really an adjective."""
        t = self.t
        return t.pos[i] == "ADJ" or t.lower[i] in COLOUR_TERMS or (t.pos[i] == "PROPN" and t.text[i].islower())

    def _is_name_compound(self, i: int) -> bool:
        return self.t.dep[i] == "compound" and self.t.pos[i] in NOUN_POS and not self._is_attribute_compound(i)

    def _compound_parts(self, i: int) -> list[int]:
        parts = []

        def collect(j):
            for c in self._kids[j]:
                if c < j and self._is_name_compound(c):
                    collect(c)
                    parts.append(c)

        collect(i)
        return parts

    def _object_name(self, i: int) -> str:
        if self.conventions.compound_attributes:
            return self.t.lemma[i]  # the parts become attributes instead
        return " ".join(self.t.lemma[p] for p in self._compound_parts(i) + [i])

    def _objects_with_conj(self, i: int) -> list[int]:
        """Object tokens of ``i`` and the nouns conjoined with it."""
        out, stack = [], [i]
        while stack:
            j = stack.pop()
            if j in self.object_index:
                out.append(j)
            stack.extend(c for c in self._kids[j] if self.t.dep[c] == "conj")
        return sorted(out)

    def _clause_hosts(self, noun: int, clause: int) -> list[int]:
        """Objects a participle / relative clause attached to ``noun`` describes.

        The parser hangs a clause after "a man and a dog" off one conjunct (the first
        or the last); when the clause follows the whole coordination it describes all
        of them, unless another conjunct has a clause of its own ("a man wearing a hat
        and a woman wearing glasses") or the coordination is an object, where a
        trailing clause is far more often the last noun's own.
        """
        t = self.t
        first = noun
        while t.dep[first] == "conj" and not t.is_root(first) and t.head[first] in self.object_index:
            first = t.head[first]
        group = self._objects_with_conj(first)
        own_clause = any(t.dep[c] in ("acl", "relcl") and c != clause for g in group for c in self._kids[g])
        if len(group) > 1 and clause > max(group) and not own_clause and t.dep[first] not in OBJECT_DEPS:
            return group
        return [noun] if noun in self.object_index else []

    # -- subjects ------------------------------------------------------------
    def subjects_of(self, verb: int, depth: int = 0) -> list[int]:
        """Object tokens that are the subject of ``verb`` (a verb, copula or adjective)."""
        t = self.t
        if depth > 4:
            return []
        out = []
        for c in self._kids[verb]:
            if t.dep[c] in SUBJECT_DEPS:
                if t.lower[c] in RELATIVE_PRONOUNS and t.dep[verb] == "relcl":
                    out.extend(self._clause_hosts(t.head[verb], verb))
                else:
                    out.extend(self._objects_with_conj(c))
        if out:
            return sorted(set(out))
        if t.lemma[verb] == "be" or any(t.dep[c] == "expl" for c in self._kids[verb]):
            # "there is a circle ...", "what shape is left of ...": the attr is the subject
            for c in self._kids[verb]:
                if t.dep[c] == "attr":
                    out.extend(self._objects_with_conj(c))
            if out:
                return sorted(set(out))
        if t.dep[verb] in ("acl", "relcl") and t.head[verb] in self.object_index:
            return self._clause_hosts(t.head[verb], verb)
        if t.dep[verb] in ("conj", "xcomp", "acomp", "advcl") and not t.is_root(verb):
            return self.subjects_of(t.head[verb], depth + 1)
        return []

    # -- attributes ----------------------------------------------------------
    def _adjectives_with_conj(self, i: int) -> list[int]:
        t = self.t
        out, stack = [], [i]
        while stack:
            j = stack.pop()
            if j not in self.in_span and t.lower[j] not in NON_ATTRIBUTE_ADJECTIVES and j not in self.object_index:
                out.append(j)
            # conjoined adjectives, and stacked ones the parser hung off another adjective
            stack.extend(c for c in self._kids[j] if t.pos[c] in ADJECTIVE_POS and (
                t.dep[c] == "conj" or (t.dep[c] == "amod" and t.dep[j] == "amod")))
        return out

    def _count(self, obj: int, c: int) -> str | None:
        """Digits of a count attribute, if ``c`` is a number counting ``obj`` ("two people")."""
        t = self.t
        if t.dep[c] != "nummod" or c > obj:  # "number 5" names, it does not count
            return None
        if t.lower[c].isdigit():
            return t.lower[c]
        return NUMBER_WORDS.get(t.lower[c])

    def attributes(self) -> list[SceneAttribute]:
        t = self.t
        conventions = self.conventions
        found: dict[tuple[int, int], SceneAttribute] = {}

        def add(obj: int, words, name: str | None = None):
            for a in words:
                if (obj, a) not in found:
                    found[(obj, a)] = SceneAttribute(self.object_index[obj], name or t.lemma[a], a)

        for i in range(t.n):
            if i in self.object_index:
                parts = self._compound_parts(i)
                if conventions.compound_attributes:
                    add(i, parts)  # "car window": "car" describes the window
                # modifiers of the compound parts belong to the merged object ("purple star shape")
                for c in (c for part in [i] + parts for c in self._kids[part]):
                    if t.dep[c] == "amod" and t.pos[c] in ADJECTIVE_POS:
                        add(i, self._adjectives_with_conj(c))
                    elif t.dep[c] == "compound" and self._is_attribute_compound(c):
                        add(i, self._adjectives_with_conj(c))
                    elif conventions.count_attributes and c in self._kids[i] and self._count(i, c):
                        add(i, [c], self._count(i, c))
            elif t.dep[i] == "acomp" and i not in self.in_span:
                for subject in self.subjects_of(t.head[i]):
                    add(subject, self._adjectives_with_conj(i))
        return sorted(found.values(), key=lambda a: (a.object, a.token))

    # -- relations -----------------------------------------------------------
    def _predicate(self, verb: int | None, words: list[int]) -> tuple[str, tuple[int, ...]]:
        """Normal form of an optional lemmatised verb followed by preposition words (as written)."""
        keep = [words[k] for k in normalise_predicate([self.t.lower[w] for w in words])]
        text = ([self.t.lemma[verb]] if verb is not None else []) + [self.t.lower[w] for w in keep]
        return " ".join(text), tuple(([verb] if verb is not None else []) + keep)

    def _unit_subjects(self, unit: list[int]) -> tuple[list[int], int | None]:
        """Subject tokens of a preposition unit and the lexical verb it hangs off (if any)."""
        t = self.t
        ids = set(unit)
        governor = next((t.head[i] for i in unit if t.head[i] not in ids), None)
        if governor is None:  # the preposition phrase is the root: look for a subject inside
            subjects = sorted({s for i in unit for s in self.subjects_of(i)})
            return subjects, None
        for _ in range(4):
            if governor in self.object_index:
                return [governor], None
            if t.pos[governor] in ("VERB", "AUX"):
                verb = governor if t.pos[governor] == "VERB" and t.lemma[governor] != "be" else None
                return self.subjects_of(governor), verb
            if t.is_root(governor):
                break
            governor = t.head[governor]  # an adjective / adverb / preposition in between
        return [], None

    def relations(self) -> list[SceneRelation]:
        t = self.t
        found: dict[tuple, SceneRelation] = {}

        def add(subjects, predicate, tokens, objects):
            for s in subjects:
                for o in objects:
                    if s != o and predicate:
                        rel = SceneRelation(self.object_index[s], predicate, self.object_index[o], tokens)
                        found.setdefault((rel.subject, rel.predicate, rel.object, rel.tokens), rel)

        units = [list(range(a, b)) for a, b in self.spans]
        units += [[i] for i in range(t.n) if i not in self.in_span and t.dep[i] != "agent"
                  and any(t.dep[c] == "pobj" for c in self._kids[i])]
        for unit in units:
            ids = set(unit)
            objects = [o for c in self._kids[unit[-1]] if t.dep[c] in OBJECT_DEPS and c not in ids
                       for o in self._objects_with_conj(c)]
            if not objects:
                objects = [o for i in unit for c in self._kids[i] if t.dep[c] in OBJECT_DEPS and c not in ids
                           for o in self._objects_with_conj(c)]
            if not objects:
                continue
            subjects, verb = self._unit_subjects(unit)
            if self.conventions.preposition_predicates:
                verb = None  # "sitting on" -> "on": the preposition names the relation
            predicate, tokens = self._predicate(verb, unit)
            add(subjects, predicate, tokens, objects)

        for i in range(t.n):
            if i in self.in_span:
                continue
            if t.pos[i] == "VERB":
                direct = [o for c in self._kids[i] if t.dep[c] in ("dobj", "obj") for o in self._objects_with_conj(c)]
                if direct:
                    particles = [c for c in self._kids[i] if t.dep[c] == "prt"]
                    predicate, tokens = self._predicate(i, particles)
                    add(self.subjects_of(i), predicate, tokens, direct)
            if t.dep[i] == "agent":  # passive: "... is touched by the star"
                agents = [o for c in self._kids[i] if t.dep[c] == "pobj" for o in self._objects_with_conj(c)]
                verb = t.head[i]
                predicate, tokens = self._predicate(verb, [])
                add(agents, predicate, tokens, self.subjects_of(verb))
        return sorted(found.values(), key=lambda r: (r.subject, r.object, r.tokens))


def doc_to_scene_graph(doc, conventions: Conventions = SHAPES) -> TextSceneGraph:
    rules = _DocRules(doc, conventions)
    return TextSceneGraph(
        text=doc.text,
        tokens=rules.t.text,
        token_starts=rules.t.start,
        objects=rules.objects,
        attributes=rules.attributes(),
        relations=rules.relations(),
    )
