"""VQA answer vocabulary and soft-score targets.

The vocabulary follows the rule behind the standard 3,129-answer VQA v2 list
(bottom-up-attention / "Tips and Tricks for VQA", Teney et al. 2018): normalise each
question's ``multiple_choice_answer`` with the official evaluation normalisation
(punctuation, number words, articles, contractions; commas removed), count in how many
questions each answer is the consensus answer, and keep those with a count of at least
``min_answer_count``. With ``min_answer_count: 9`` over the VQA v2 train2014 + val2014
annotations this gives the 3,129 answers; the pipeline builds the list from the
*training* annotations only (the split it fine-tunes on), so a train-only real run
has somewhat fewer answers.

Soft targets: an answer matched by 0 / 1 / 2 / 3 / >= 4 of the human annotators
scores 0 / 0.3 / 0.6 / 0.9 / 1 (the same normalisation applied to each human answer).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tbkin.atomic import write_json
from tbkin.errors import DataFormatError
from tbkin.evaluate.vqa_metric import process_digit_article, process_punctuation

SOFT_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)


def vocab_normalize(answer: str) -> str:
    """Normalisation used for vocabulary entries and training targets."""
    return process_digit_article(process_punctuation(answer)).replace(",", "")


def soft_score(num_matching: int) -> float:
    """0 / .3 / .6 / .9 / 1 for 0 / 1 / 2 / 3 / >= 4 matching annotators."""
    if num_matching < 0:
        raise ValueError(f"negative annotator count {num_matching}")
    return SOFT_SCORES[min(num_matching, 4)]


@dataclass
class AnswerVocab:
    answers: list[str]

    def __post_init__(self) -> None:
        self.index = {a: i for i, a in enumerate(self.answers)}

    def __len__(self) -> int:
        return len(self.answers)

    @classmethod
    def build(cls, consensus_answers: Iterable[str], min_count: int) -> "AnswerVocab":
        """Answers that are the consensus answer (``multiple_choice_answer``) of at least
        ``min_count`` questions, most frequent first (ties alphabetical: deterministic)."""
        counts: Counter[str] = Counter(vocab_normalize(a) for a in consensus_answers)
        kept = [a for a, c in counts.items() if c >= min_count and a]
        kept.sort(key=lambda a: (-counts[a], a))
        if not kept:
            raise DataFormatError(f"no answer occurs in at least {min_count} training questions")
        return cls(kept)

    def soft_targets(self, human_answers: Sequence[str]) -> dict[int, float]:
        """Vocabulary index -> soft score for one question's human answers."""
        counts = Counter(vocab_normalize(a) for a in human_answers)
        return {self.index[a]: soft_score(c) for a, c in counts.items() if a in self.index}

    def save(self, path: str | Path) -> None:
        write_json(path, {"answers": self.answers})

    @classmethod
    def load(cls, path: str | Path) -> "AnswerVocab":
        try:
            with open(path, encoding="utf-8") as fh:
                return cls(list(json.load(fh)["answers"]))
        except (OSError, KeyError, ValueError) as exc:
            raise DataFormatError(f"cannot read answer vocabulary {path}: {exc}") from None
