"""Region-feature extraction throughput and peak memory at 1x and 4x dataset size.

Each size runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own: the
writer streams batches to disk, so peak RSS must stay flat (within ~10%) as the
dataset grows. The larger sizes repeat the split's images under new image ids.

    python benchmarks/bench_features.py                     # default config, val split
    python benchmarks/bench_features.py --weights results/detector/detector.safetensors

Without a weights file an untrained detector of the same architecture is used (same
cost per image). Timings on a shared machine are noisy; compare runs on one machine.
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
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(args: argparse.Namespace) -> None:
    import torch

    from tbkin.features.coco import load_detection_data
    from tbkin.features.detector import RegionSelection, TorchvisionRegionDetector, build_small_detector, load_region_detector
    from tbkin.features.extract import extract_features
    from tbkin.features.train_detector import small_architecture

    torch.set_num_threads(args.threads)
    data = load_detection_data(args.instances)
    base = data.images[: args.base_images] if args.base_images else data.images
    stride = max(r.id for r in base) + 1
    records = [replace(r, id=r.id + k * stride) for k in range(args.factor) for r in base]
    if args.weights:
        detector = load_region_detector(args.weights, device=args.device)
    else:
        arch = small_architecture(data, args.min_size, args.max_size)
        detector = TorchvisionRegionDetector(build_small_detector(arch).eval(), arch, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "features.h5"
        started = time.perf_counter()
        summary = extract_features(
            detector, records, args.images, out, RegionSelection(args.num_regions), args.batch_size, args.float16
        )
        seconds = time.perf_counter() - started
        size_mb = out.stat().st_size / 2**20
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "factor": args.factor, "images": summary.images, "seconds": round(seconds, 2),
        "images_per_s": round(summary.images / seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1),
        "file_mb": round(size_mb, 1), "device": str(detector.device),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=[str(ROOT / "config/config.yaml")])
    parser.add_argument("--split", default="val")
    parser.add_argument("--weights", default=None, help="detector weights (default: untrained small detector)")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--base-images", type=int, default=0, help="use only the first N images of the split (0 = all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--detector-metrics", default=None, help="metrics JSON of train-detector to report")
    # used by the subprocess
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--factor", type=int, default=1, help=argparse.SUPPRESS)
    for name in ("instances", "images"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("num-regions", "batch-size", "min-size", "max-size"):
        parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--float16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from tbkin.config import load_config

    config = load_config(*args.config)
    data = config["data"]
    split = data["splits"][args.split]
    instances = os.path.join(data["root"], data["instances"].format(split=split))
    images = os.path.join(data["root"], data["images"].format(split=split))
    if not os.path.exists(instances):
        sys.exit(f"{instances} not found: generate the dataset first (snakemake --cores all {config['results']}/data/generate_shapes.json)")
    feat, det = config["features"], config["detector"]
    base_cmd = [
        sys.executable, __file__, "--child", "--instances", instances, "--images", images,
        "--num-regions", str(feat["num_regions"]), "--batch-size", str(feat["batch_size"]),
        "--min-size", str(det["min_size"]), "--max-size", str(det["max_size"]),
        "--threads", str(args.threads), "--base-images", str(args.base_images),
    ]
    base_cmd += ["--weights", args.weights] if args.weights else []
    base_cmd += ["--device", args.device] if args.device else []
    base_cmd += ["--float16"] if feat["float16"] else []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    results = []
    for factor in args.factors:
        proc = subprocess.run(base_cmd + ["--factor", str(factor)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{r['factor']}x: {r['images']} images in {r['seconds']} s = {r['images_per_s']} images/s on {r['device']}"
              f" ({args.threads} threads), peak RSS {r['peak_rss_mb']} MB, file {r['file_mb']} MB")
    if len(results) > 1:
        growth = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"] - 1
        print(f"peak RSS growth {results[0]['factor']}x -> {results[-1]['factor']}x: {100 * growth:+.1f}% "
              f"({'flat' if abs(growth) <= 0.10 else 'NOT flat'}, limit 10%)")
    if args.detector_metrics and os.path.exists(args.detector_metrics):
        m = json.load(open(args.detector_metrics))
        print(f"detector: box mAP@0.5 {m['map_50']:.3f}, mAP@[.5:.95] {m['map_50_95']:.3f}, "
              f"attributes {m.get('attribute_accuracy_on_gt_boxes')}, trained {m['iterations']} iterations "
              f"in {m['train_seconds']} s on {m['threads']} threads")
    print("note: timings on a shared machine are noisy")


if __name__ == "__main__":
    main()
