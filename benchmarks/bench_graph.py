"""Unified scene graph + knowledge entries: pairs per second on one core, peak RSS at 1x and 4x.

Synthetic inputs shaped like the `shapes` data (9 pairs per image, m regions per
image with overlapping boxes, 1-4 objects per text with attributes and
relations) are written to a temporary folder; each scale then runs
``build_graph`` in a fresh process, so its peak RSS is its own.

    OMP_NUM_THREADS=1 python benchmarks/bench_graph.py [--pairs 20000] [--regions 16]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS = ["circle", "square", "triangle", "diamond", "star"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
PREDICATES = ["left of", "right of", "above", "below", "next to"]


def synthetic_graph(rng: np.random.Generator):
    from tbkin.text.scene_graph import SceneAttribute, SceneObject, SceneRelation, TextSceneGraph

    tokens, objects, attributes, relations = [], [], [], []
    for k in range(int(rng.integers(0, 4))):
        if k:
            tokens += PREDICATES[int(rng.integers(len(PREDICATES)))].split()
            relations.append(SceneRelation(k - 1, " ".join(tokens[-2:]), k, (len(tokens) - 2,)))
        tokens += ["the", COLOURS[int(rng.integers(len(COLOURS)))], LABELS[int(rng.integers(len(LABELS)))]]
        objects.append(SceneObject(tokens[-1], len(tokens) - 1))
        attributes.append(SceneAttribute(k, tokens[-2], len(tokens) - 2))
    starts = list(np.cumsum([0] + [len(t) + 1 for t in tokens[:-1]])) if tokens else []
    return TextSceneGraph(" ".join(tokens), tokens, [int(s) for s in starts], objects, attributes, relations)


def write_inputs(folder: Path, pairs: int, regions: int, seed: int = 0) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from gensim.models import KeyedVectors
    from tbkin.graph.wordvec import save_vectors

    from tbkin.features.hdf5 import RegionFeatureWriter
    from tbkin.text.parse_combine import PARSES_ROW_GROUP
    from tbkin.text.scene_graph import RECORD_PARSE_SCHEMA

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = (pairs + 8) // 9
    pool = [synthetic_graph(rng) for _ in range(500)]
    picks = rng.integers(len(pool), size=pairs)
    writer = pq.ParquetWriter(folder / "parses.parquet", RECORD_PARSE_SCHEMA)
    for lo in range(0, pairs, 50_000):
        rows = []
        for p in range(lo, min(pairs, lo + 50_000)):
            row = pool[picks[p]].to_row()
            row.update(source="caption" if p % 3 == 0 else "question", record_id=p, image_id=p // 9)
            rows.append(row)
        writer.write_table(pa.Table.from_pylist(rows, schema=RECORD_PARSE_SCHEMA), row_group_size=PARSES_ROW_GROUP)
    writer.close()
    with RegionFeatureWriter(folder / "features.h5", regions, 4, LABELS) as out:
        for image in range(images):
            n = int(rng.integers(regions // 2, regions + 1))
            xy = rng.uniform(0, 100, size=(n, 2))
            wh = rng.uniform(8, 40, size=(n, 2))
            boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
            out.append(image, 128, 128, boxes, rng.uniform(0.2, 1.0, n).astype(np.float32),
                       rng.integers(len(LABELS), size=n).astype(np.int32), np.zeros((n, 4), np.float32))
    kv = KeyedVectors(vector_size=16)
    words = LABELS + ["shape"]
    base = rng.normal(size=(1, 16))
    kv.add_vectors(words, (base + 0.8 * rng.normal(size=(len(words), 16))).astype(np.float32))
    save_vectors(kv, folder / "vectors.bin")
    return {"pairs": pairs, "images": images}


def worker(folder: Path) -> None:
    from tbkin.graph.build import GraphParams, build_graph
    from tbkin.graph.wordvec import load_vectors

    kv = load_vectors(folder / "vectors.bin")
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = build_graph(folder / "parses.parquet", [folder / "parses.parquet"], folder / "features.h5", kv,
                          GraphParams(0.5, 0.5), folder / "edges.parquet", folder / "entries.parquet",
                          progress=False)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # CPU time is reported beside wall time: on a shared machine wall time includes waiting
    print(json.dumps({**summary, "seconds": round(seconds, 3), "pairs_per_s": round(summary["pairs"] / seconds),
                      "cpu_seconds": round(cpu_seconds, 3), "pairs_per_cpu_s": round(summary["pairs"] / cpu_seconds),
                      "peak_rss_mb": round(peak_mb, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20_000, help="pairs at 1x")
    ap.add_argument("--regions", type=int, default=16, help="m regions per image")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            folder = Path(tmp) / f"x{scale}"
            write_inputs(folder, args.pairs * scale, args.regions)
            out = subprocess.run([sys.executable, __file__, "--worker", str(folder)], env=env,
                                 check=True, capture_output=True, text=True)
            results[scale] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{scale}x: {results[scale]}")
    if len(results) > 1:
        base = results[min(results)]["peak_rss_mb"]
        for scale, r in sorted(results.items()):
            print(f"{scale}x: {r['pairs_per_s']} pairs/s wall, {r['pairs_per_cpu_s']} pairs/CPU-s, peak RSS {r['peak_rss_mb']} MB "
                  f"({100 * (r['peak_rss_mb'] / base - 1):+.1f}% vs {min(results)}x)")


if __name__ == "__main__":
    main()
