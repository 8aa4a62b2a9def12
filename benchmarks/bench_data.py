"""Generate the `shapes` dataset at the config's size; print throughput, peak RSS and
the question-only prior baseline (most frequent train answer per question_type,
scored on val with the VQA min(1, n/3) accuracy averaged over the 10 leave-one-out
subsets; answers compared as written, the generator's answers need no normalisation).

    python benchmarks/bench_data.py [--config config/config.yaml] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from tbkin.config import load_config
from tbkin.data.loaders import DataLayout, load_vqa
from tbkin.data.shapes import ShapesSpec, generate


def vqa_accuracy(predicted: str, answers: list[str]) -> float:
    scores = []
    for leave_out in range(len(answers)):
        others = answers[:leave_out] + answers[leave_out + 1:]
        scores.append(min(1.0, sum(a == predicted for a in others) / 3))
    return sum(scores) / len(scores)


def prior_baseline(layout: DataLayout) -> dict:
    train = load_vqa(layout.file("vqa_questions", "train"), layout.file("vqa_annotations", "train"))
    val = load_vqa(layout.file("vqa_questions", "val"), layout.file("vqa_annotations", "val"))
    by_type: dict[str, Counter] = defaultdict(Counter)
    for q in train.questions:
        by_type[q.question_type][q.multiple_choice_answer] += 1
    overall = Counter(q.multiple_choice_answer for q in train.questions).most_common(1)[0][0]
    per_type: dict[str, list[float]] = defaultdict(list)
    per_answer_type: dict[str, list[float]] = defaultdict(list)
    for q in val.questions:
        guess = by_type[q.question_type].most_common(1)[0][0] if q.question_type in by_type else overall
        acc = vqa_accuracy(guess, [a.answer for a in q.answers])
        per_type[q.question_type].append(acc)
        per_answer_type[q.answer_type].append(acc)
    mean = lambda xs: round(100 * sum(xs) / len(xs), 2)
    return {
        "overall": mean([a for xs in per_type.values() for a in xs]),
        "per_answer_type": {k: mean(v) for k, v in sorted(per_answer_type.items())},
        "per_question_type": {k: (mean(v), len(v)) for k, v in sorted(per_type.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--out", help="dataset folder (default: a temporary one)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    spec = ShapesSpec.from_config(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        layout = DataLayout.from_config({**cfg["data"], "root": str(root)})
        start, cpu_start = time.perf_counter(), time.process_time()
        summary = generate(spec, layout, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        n_images = spec.train_images + spec.val_images
        print(f"generated {n_images} images in {seconds:.1f} s wall, {cpu:.1f} s CPU "
              f"({n_images / cpu:.1f} images per CPU second)")
        print("counts:", json.dumps(summary["counts"]))
        print("question-only prior baseline (VQA accuracy, %):")
        print(json.dumps(prior_baseline(layout), indent=1))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
