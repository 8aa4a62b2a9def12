"""Pretraining throughput: samples/s on the default config and the share of each step spent
building the batch (data), measured by the real training loop.

    .venv/bin/python benchmarks/bench_pretrain.py [--steps 60] [--threads 2] [--device cpu]

Inputs: the default run's artifacts when they exist (results/text/train/parses.parquet,
results/features/train.h5, results/graph/entries/split=train/part-0.parquet), else a
synthetic corpus with the default config's sizes (images, captions, regions, feature dim 256).
Prints one line per logged window and a summary with the peak RSS.
"""
from __future__ import annotations

import argparse
import os
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

# Passive OpenMP waiting (as the pretrain rule sets it): spinning threads distort timings on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from tbkin.config import load_config  # noqa: E402
from tbkin.train.loop import read_jsonl  # noqa: E402
from tbkin.train.pretrain import PretrainSettings, train  # noqa: E402


def default_inputs(config: dict, workdir: Path) -> dict:
    results = REPO / config["results"]
    real = {
        "parses": results / "text/train/parses.parquet",
        "features": results / "features/train.h5",
        "entries": results / "graph/entries/split=train/part-0.parquet",
    }
    if all(p.exists() for p in real.values()):
        return {k: str(v) for k, v in real.items()} | {"source": "default run artifacts"}
    from model_fixtures import write_corpus

    shapes = config["shapes"]
    paths = write_corpus(workdir / "corpus", num_images=shapes["train_images"],
                         num_regions=config["features"]["num_regions"], feature_dim=256,
                         captions_per_image=shapes["captions_per_image"])
    return paths | {"source": "synthetic corpus of the default sizes"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config/config.yaml"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--window", type=int, default=20, help="steps per measurement window")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, help="override pretrain.batch_size")
    parser.add_argument("--num-layers", type=int, help="override model.num_layers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = default_inputs(config, Path(tmp))
        model, pre = config["model"], config["pretrain"]
        settings = PretrainSettings(
            steps=args.steps, batch_size=args.batch_size or pre["batch_size"], lr=pre["lr"],
            warmup_steps=pre["warmup_steps"], task_weights=pre["task_weights"],
            itm_negative_ratio=pre["itm_negative_ratio"], mask_prob=pre["mask_prob"], log_every=args.window,
            checkpoint_every=10**9, seed=config["seed"], bert_path=model["bert_path"],
            num_layers=args.num_layers or model["num_layers"], max_text_len=model["max_text_len"],
            prune_vocab=model["prune_vocab"],
        )
        start = time.perf_counter()
        train(settings, inputs["parses"], inputs["features"], inputs["entries"], Path(tmp) / "out", device=args.device)
        wall = time.perf_counter() - start
        records = read_jsonl(Path(tmp) / "out" / "log.jsonl")
    for r in records:
        print(json.dumps({k: r[k] for k in ("step", "samples_per_s", "data_share", "loss")}))
    steady = records[1:] or records  # the first window includes start-up costs
    rate = sum(r["samples_per_s"] for r in steady) / len(steady)
    share = sum(r["data_share"] for r in steady) / len(steady)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{args.threads} threads"
    print(f"inputs: {inputs['source']}; device: {device}; layers {settings.num_layers}, batch {settings.batch_size}")
    print(f"pretrain: {rate:.1f} samples/s (steady windows), data share {share:.1%}, "
          f"{args.steps} steps in {wall:.1f} s incl. start-up, peak RSS {rss_mb:.0f} MB")
    per_step = settings.batch_size / rate
    print(f"default run estimate: {pre['steps']} steps x {per_step:.3f} s = {pre['steps'] * per_step:.0f} s of training")


if __name__ == "__main__":
    main()
