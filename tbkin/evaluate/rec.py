"""``tbkin eval-rec``: REC accuracy per split.

A prediction is a hit when the IoU of its (refined) box with the referred object's
box is at least 0.5 (:func:`tbkin.evaluate.rec_boxes.is_hit`). Accuracy is the
percentage of expressions that are hits, per split (val, testA, testB; RefCOCOg
val / test). Every expression of an evaluated split must have a prediction.

Output JSON (see docs/artifacts.md)::

    {"dataset", "threshold", "attention", "seed",
     "accuracy": {split: percent}, "num_expressions": {split: n},
     "left_out_expressions": {split: n}, "proposal_upper_bound": {split: percent}, "predictions"}

Expressions about images that feature extraction skipped as unreadable have no
prediction; fine-tuning lists them in ``run.json`` and they are left out of the
score (and counted in ``left_out_expressions``).
"""
from __future__ import annotations

import argparse
import logging

import torch

from tbkin.atomic import write_json
from tbkin.data.loaders import Ref, load_refcoco, read_json
from tbkin.errors import DataFormatError
from tbkin.evaluate.rec_boxes import is_hit, xywh_to_xyxy

log = logging.getLogger(__name__)


def split_accuracy(predictions: list[dict], refs: list[Ref], where: str, left_out: frozenset[int] = frozenset()) -> float:
    """Percent hits (2 decimals) of ``predictions`` ({sent_id, box [x, y, w, h]}) on ``refs``,
    without the expressions (sent_ids) in ``left_out``."""
    referred = {s.sent_id: ref.bbox for ref in refs for s in ref.sentences if s.sent_id not in left_out}
    if not referred:
        raise DataFormatError(f"{where}: every expression of the split was left out (images skipped at extraction)")
    boxes: dict[int, list[float]] = {}
    for i, p in enumerate(predictions):
        try:
            sent_id, box = int(p["sent_id"]), [float(v) for v in p["box"]]
        except (KeyError, TypeError, ValueError):
            raise DataFormatError(f"{where}: record {i} is not {{sent_id, box}}") from None
        if len(box) != 4:
            raise DataFormatError(f"{where}: record {i}: box should be [x, y, w, h]")
        if sent_id not in referred:
            raise DataFormatError(f"{where}: sent_id {sent_id} is not an expression of this split")
        boxes[sent_id] = box
    missing = sorted(set(referred) - set(boxes))
    if missing:
        raise DataFormatError(f"{where}: no prediction for sent_id {missing[0]} ({len(missing)} missing)")
    hits = sum(is_hit(xywh_to_xyxy(torch.tensor(boxes[s])), xywh_to_xyxy(torch.tensor(b)))
               for s, b in referred.items())
    return round(100.0 * hits / len(referred), 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, help="finetune-rec predictions {split: [...]}")
    parser.add_argument("--refs", required=True)
    parser.add_argument("--refs-instances", required=True)
    parser.add_argument("--run-info", help="run.json written by finetune-rec")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--output", required=True)


def run(args: argparse.Namespace) -> int:
    predictions = read_json(args.predictions)
    if not isinstance(predictions, dict) or not predictions:
        raise DataFormatError(f"{args.predictions}: expected {{split: [predictions]}}")
    by_split = load_refcoco(args.refs, args.refs_instances).by_split()
    info = read_json(args.run_info) if args.run_info else {}
    left_out_by_split = info.get("left_out_eval_expressions", {})
    accuracy, counts, left_out_counts = {}, {}, {}
    for split, preds in predictions.items():
        if split not in by_split:
            raise DataFormatError(f"{args.predictions}: split '{split}' is not in {args.refs}")
        left_out = frozenset(int(i) for i in left_out_by_split.get(split, []))
        accuracy[split] = split_accuracy(preds, by_split[split], f"{args.predictions} [{split}]", left_out)
        counts[split] = sum(1 for r in by_split[split] for s in r.sentences if s.sent_id not in left_out)
        left_out_counts[split] = len(left_out)
    if any(left_out_counts.values()):
        log.warning("left out expressions about images skipped at feature extraction: %s (%s)",
                    left_out_counts, args.run_info)
    attention = info.get("attention", {"mode": "full", "threshold": 0.0, "window": None})
    doc = {
        "dataset": args.dataset,
        "threshold": attention["threshold"] if attention["mode"] == "threshold" else 0.0,
        "attention": attention,
        "seed": info.get("seed"),
        "accuracy": accuracy,
        "num_expressions": counts,
        "left_out_expressions": left_out_counts,
        "proposal_upper_bound": info.get("proposal_upper_bound", {}),
        "predictions": args.predictions,
    }
    write_json(args.output, doc)
    log.info("REC accuracy %s (proposal upper bound %s)", accuracy, doc["proposal_upper_bound"])
    return 0
