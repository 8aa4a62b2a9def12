"""Detected regions per image as the `shapes` distractors grow (the clutter experiment's levels).

Renders the same val scenes at each level, extracts regions with a trained detector
and prints the mean number of kept regions per image, with throughput and peak RSS:

    python benchmarks/bench_clutter_regions.py --weights results/detector/detector.safetensors

The detector and region selection are the default config's (`features.*`,
`detector.min_size/max_size`); levels default to `clutter.levels`.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from tbkin.config import load_config

    config = load_config(ROOT / "config" / "config.yaml")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a detector.safetensors of a shapes run")
    parser.add_argument("--levels", type=int, nargs="+", default=config["clutter"]["levels"])
    parser.add_argument("--images", type=int, default=40, help="val images per level")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    import h5py
    import numpy as np
    import torch

    from tbkin.data.check import check_part, read_image_list
    from tbkin.data.loaders import DataLayout
    from tbkin.data.shapes import ShapesSpec, generate
    from tbkin.features.detector import RegionSelection, load_region_detector
    from tbkin.features.extract import extract_features

    torch.set_num_threads(1)
    feat, det = config["features"], config["detector"]
    detector = load_region_detector(args.weights, "torchvision", None, det["architecture"], det["min_size"],
                                    det["max_size"], "cpu", "fp32")
    selection = RegionSelection(feat["num_regions"], feat["min_score"], feat["nms_iou"])
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels:
            root = Path(tmp) / f"level{level}"
            layout = DataLayout(root, {"train": "train", "val": "val"})
            spec = ShapesSpec(seed=args.seed, train_images=1, val_images=args.images,
                              distractors_per_image=(level, level))
            generate(spec, layout, progress=False)
            image_list = root / "image_list.json"
            image_list.write_text(json.dumps(check_part(layout, "val", ["instances"])))
            start = time.perf_counter()
            out = root / "val.h5"
            extract_features(detector, read_image_list(image_list), layout.file("images", "val"), out, selection,
                             feat["batch_size"])
            seconds = time.perf_counter() - start
            with h5py.File(out) as h5:
                regions = float(np.mean(h5["num_boxes"][:]))
            print(f"level {level:3d}: {regions:.2f} regions per image ({args.images} images, "
                  f"{args.images / seconds:.1f} images/s)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
