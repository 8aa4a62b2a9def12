"""``tbkin eval-vqa``: official VQA accuracy of a predictions file, plus a prior baseline.

Input: predictions in the official results format ``[{"question_id", "answer"}]``,
the split's official questions/annotations files, and the *training* annotations
(for the question-only prior: the most frequent training answer of each question
type, the classic "prior per question type" baseline; question types unseen in
training fall back to the most frequent training answer overall).

Output JSON (see docs/artifacts.md)::

    {"dataset", "split", "attention": {"mode", "threshold", "window"}, "threshold",
     "seed", "accuracy": {"overall", "per_answer_type", "per_question_type"},
     "num_questions", "left_out_questions", "predictions",
     "question_type_prior": {"overall", "per_answer_type", "per_question_type"},
     "gain_over_prior"}

Questions about images that feature extraction skipped as unreadable have no
prediction; fine-tuning lists them in ``run.json`` and they are left out of the
score (and counted in ``left_out_questions``).
"""
from __future__ import annotations

import argparse
import logging
from collections import Counter, defaultdict
from dataclasses import asdict
from typing import Iterable, Mapping

from tbkin.atomic import write_json
from tbkin.data.loaders import VqaQuestion, load_vqa, read_json
from tbkin.errors import DataFormatError
from tbkin.evaluate.vqa_metric import VqaAccuracy, vqa_accuracy

log = logging.getLogger(__name__)


def official_annotation(question: VqaQuestion) -> dict:
    """A loaded, annotated question as the official annotation record the metric reads."""
    return {
        "question_id": question.question_id,
        "question_type": question.question_type,
        "answer_type": question.answer_type,
        "multiple_choice_answer": question.multiple_choice_answer,
        "answers": [{"answer": a.answer, "answer_confidence": a.answer_confidence, "answer_id": a.answer_id}
                    for a in question.answers],
    }


def load_annotations(questions_path: str, annotations_path: str) -> list[dict]:
    """Official annotation records of a split, validated by the shared loader."""
    return [official_annotation(q) for q in load_vqa(questions_path, annotations_path).questions]


def read_predictions(path: str) -> dict[int, str]:
    """Official results format -> question_id -> answer; duplicates are an error."""
    doc = read_json(path)
    if not isinstance(doc, list):
        raise DataFormatError(f"{path}: predictions must be a JSON list of {{question_id, answer}}")
    predictions: dict[int, str] = {}
    for i, item in enumerate(doc):
        try:
            qid, answer = int(item["question_id"]), str(item["answer"])
        except (KeyError, TypeError, ValueError):
            raise DataFormatError(f"{path}: record {i} is not {{question_id, answer}}") from None
        if qid in predictions:
            raise DataFormatError(f"{path}: question_id {qid} predicted twice")
        predictions[qid] = answer
    return predictions


def question_type_prior(train_annotations: Iterable[Mapping]) -> tuple[dict[str, str], str]:
    """(question_type -> most frequent training answer, overall most frequent answer).

    Ties are broken alphabetically so the baseline is deterministic."""
    by_type: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for ann in train_annotations:
        by_type[ann["question_type"]][ann["multiple_choice_answer"]] += 1
        overall[ann["multiple_choice_answer"]] += 1
    if not overall:
        raise DataFormatError("no training annotations for the question-type prior")

    def top(counter: Counter) -> str:
        return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]

    return {qt: top(c) for qt, c in by_type.items()}, top(overall)


def prior_predictions(annotations: Iterable[Mapping], train_annotations: Iterable[Mapping]) -> dict[int, str]:
    per_type, fallback = question_type_prior(train_annotations)
    return {int(a["question_id"]): per_type.get(a["question_type"], fallback) for a in annotations}


def _accuracy_dict(acc: VqaAccuracy) -> dict:
    d = asdict(acc)
    d.pop("per_question")
    d.pop("num_questions")
    return d


def evaluate(predictions_path: str, annotations: list[dict], train_annotations: list[dict]) -> dict:
    """Accuracy of a predictions file and of the question-type prior on ``annotations``."""
    predictions = read_predictions(predictions_path)
    known = {int(a["question_id"]) for a in annotations}
    unknown = sorted(set(predictions) - known)
    if unknown:
        raise DataFormatError(f"{predictions_path}: question_id {unknown[0]} is not in the evaluated split")
    try:
        acc = vqa_accuracy(predictions, annotations)
    except KeyError as exc:
        raise DataFormatError(f"{predictions_path}: {exc.args[0]}") from None
    prior = vqa_accuracy(prior_predictions(annotations, train_annotations), annotations)
    return {
        "accuracy": _accuracy_dict(acc),
        "num_questions": acc.num_questions,
        "question_type_prior": _accuracy_dict(prior),
        "gain_over_prior": round(acc.overall - prior.overall, 2),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, help='official results JSON [{"question_id", "answer"}]')
    parser.add_argument("--questions", required=True, help="official questions JSON of the evaluated split")
    parser.add_argument("--annotations", required=True, help="official annotations JSON of the evaluated split")
    parser.add_argument("--train-questions", required=True, help="training questions (question-type prior)")
    parser.add_argument("--train-annotations", required=True, help="training annotations (question-type prior)")
    parser.add_argument("--run-info", help="run.json written by finetune-vqa (attention setting, seed)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--output", required=True)


def run(args: argparse.Namespace) -> int:
    info = read_json(args.run_info) if args.run_info else {}
    left_out = {int(qid) for qid in info.get("left_out_eval_questions", [])}
    annotations = [a for a in load_annotations(args.questions, args.annotations) if a["question_id"] not in left_out]
    if left_out:
        log.warning("left out %d questions about images skipped at feature extraction (%s)", len(left_out), args.run_info)
    result = evaluate(args.predictions, annotations, load_annotations(args.train_questions, args.train_annotations))
    attention = info.get("attention", {"mode": "full", "threshold": 0.0, "window": None})
    doc = {
        "dataset": args.dataset,
        "split": args.split,
        "threshold": attention["threshold"] if attention["mode"] == "threshold" else 0.0,
        "attention": attention,
        "readout": info.get("readout", "cls"),
        "seed": info.get("seed"),
        **result,
        "left_out_questions": len(left_out),
        "predictions": args.predictions,
    }
    write_json(args.output, doc)
    log.info("VQA %s accuracy %.2f (prior %.2f) over %d questions; per answer type %s",
             args.split, doc["accuracy"]["overall"], doc["question_type_prior"]["overall"],
             doc["num_questions"], doc["accuracy"]["per_answer_type"])
    return 0
