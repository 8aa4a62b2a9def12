"""The official VQA accuracy (GT-Vision-Lab/VQA ``vqaEval.py``), reproduced exactly.

For each question, the prediction is compared with the 10 human answers; for each
of the 10 leave-one-out subsets of 9 answers the score is min(1, matches / 3), and
the question's accuracy is the mean of those 10 scores. Accuracies are reported in
percent, rounded to 2 decimals, overall, per answer type and per question type.

Normalisation follows the official script, quirks included:

* the prediction is always normalised: newlines/tabs become spaces, it is stripped,
  then :func:`process_punctuation` and :func:`process_digit_article` are applied;
* the human answers get :func:`process_punctuation` only, and **only when the 10
  answers are not all identical** (the official script skips normalisation for
  unanimous questions, so a prediction "t-shirt" -> "t shirt" does not match ten
  unanimous "t-shirt" answers, but does match them when one annotator differed).
  Human answers never get the digit / article / contraction step (the official
  annotations were normalised that way when they were collected).

The official script leaves one annotator out by comparing answer dicts; answer ids
are unique per question, so that is leaving out one index, which is what we do.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")
# Verbatim from the official script: "(?!<=\d)" is a (mistyped) lookahead, not a
# lookbehind, so a period before a non-digit is dropped even after a digit ("2." -> "2").
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# The official script passes re.UNICODE (= 32) positionally as ``count`` of re.sub:
# at most 32 periods are removed. Kept for exactness.
_PERIOD_STRIP_COUNT = 32


def process_punctuation(text: str) -> str:
    """Official punctuation rule: drop a mark next to a space (or anywhere when the
    text has a digit,digit comma), otherwise replace it with a space; strip periods
    that are not decimal points."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        # The official script tests the *original* text, not the running output.
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-case, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The full normalisation the official script applies to a predicted answer."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one prediction against the human answers (usually 10)."""
    if not human_answers:
        raise ValueError("a question needs at least one human answer")
    predicted = normalize_answer(prediction)
    gold = list(human_answers)
    if len(set(gold)) > 1:  # the official quirk: unanimous answers stay as they are
        gold = [process_punctuation(a) for a in gold]
    scores = []
    for left_out in range(len(gold)):
        matches = sum(1 for i, a in enumerate(gold) if i != left_out and a == predicted)
        scores.append(min(1.0, matches / 3.0))
    return sum(scores) / len(scores)


@dataclass
class VqaAccuracy:
    """Accuracies in percent (2 decimals, as the official script rounds them)."""

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    num_questions: int
    per_question: dict[int, float] = field(repr=False, default_factory=dict)  # in [0, 1]


def _percent(values: Sequence[float]) -> float:
    return round(100.0 * sum(values) / len(values), 2)


def vqa_accuracy(predictions: Mapping[int, str], annotations: Iterable[Mapping]) -> VqaAccuracy:
    """Score ``predictions`` (question_id -> answer) against official annotation dicts.

    Every annotated question must have a prediction (as the official script requires);
    a missing one raises KeyError naming the question id.
    """
    per_question: dict[int, float] = {}
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    for ann in annotations:
        qid = int(ann["question_id"])
        if qid not in predictions:
            raise KeyError(f"no prediction for question_id {qid}")
        acc = question_accuracy(predictions[qid], [a["answer"] for a in ann["answers"]])
        per_question[qid] = acc
        by_answer_type[ann["answer_type"]].append(acc)
        by_question_type[ann["question_type"]].append(acc)
    if not per_question:
        raise ValueError("no annotated questions to score")
    return VqaAccuracy(
        overall=_percent(list(per_question.values())),
        per_answer_type={k: _percent(v) for k, v in sorted(by_answer_type.items())},
        per_question_type={k: _percent(v) for k, v in sorted(by_question_type.items())},
        num_questions=len(per_question),
        per_question=per_question,
    )
