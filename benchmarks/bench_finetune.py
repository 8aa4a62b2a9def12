"""VQA fine-tuning throughput: samples/s of the real fine-tuning loop at the default sizes,
the share of its CPU time spent in matrix multiplications, and their GFLOP/s.

    .venv/bin/python benchmarks/bench_finetune.py [--steps 40] [--threads 2] [--device cpu]

The encoder is the default run's pretrained checkpoint (results/pretrain) when it exists,
else the offline BERT checkpoint cut to `model.num_layers` layers. Batches are synthetic
with the default sizes: `finetune.vqa.batch_size` questions of 12 word pieces (a typical
`shapes` question), `features.num_regions` regions, 20 answers; threshold attention at
`finetune.threshold`. The matmul figures tell whether a step is bound by arithmetic
(then only fewer samples, layers or a faster device make fine-tuning shorter) or by
overheads that code could remove. Prints a summary with the peak RSS.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
from pathlib import Path

# Passive OpenMP waiting (as the rules set it): spinning threads distort timings on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tbkin.config import load_config  # noqa: E402
from tbkin.features.detector import SMALL_ARCHITECTURE, DetectorArchitecture  # noqa: E402
from tbkin.model.modeling_tbkin import TbkinInputs, TbkinModel  # noqa: E402
from tbkin.model.tokenization import resolve_bert_path  # noqa: E402
from tbkin.train.finetune_common import AttentionSetting, FinetuneSettings, train  # noqa: E402
from tbkin.train.finetune_vqa import VqaClassifier  # noqa: E402
from tbkin.train.loop import setup_distributed  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QUESTION_PIECES = 12
NUM_ANSWERS = 20
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
PROFILED_STEPS = 5


def load_encoder(config: dict) -> tuple[TbkinModel, str]:
    pretrained = REPO / config["results"] / "pretrain"
    if (pretrained / "model.safetensors").is_file():
        return TbkinModel.from_pretrained(pretrained), str(pretrained)
    bert = resolve_bert_path(config["model"]["bert_path"])
    model = TbkinModel.from_bert(bert, config["model"]["num_layers"], encoder_init=config["model"]["encoder_init"],
                                 region_feature_dim=DetectorArchitecture(SMALL_ARCHITECTURE, []).representation_size,
                                 num_region_labels=6,
                                 max_text_len=config["model"]["max_text_len"],
                                 max_regions=config["features"]["num_regions"])
    return model, f"{bert} (first {config['model']['num_layers']} layers)"


def synthetic_batch(config, batch_size: int, num_regions: int, generator: torch.Generator):
    ids = torch.randint(1, config.vocab_size, (batch_size, QUESTION_PIECES), generator=generator)
    inputs = TbkinInputs(
        input_ids=ids,
        text_mask=torch.ones_like(ids, dtype=torch.bool),
        region_features=torch.randn(batch_size, num_regions, config.region_feature_dim, generator=generator),
        region_positions=torch.rand(batch_size, num_regions, 5, generator=generator),
        region_mask=torch.ones(batch_size, num_regions, dtype=torch.bool),
    )
    targets = (torch.rand(batch_size, NUM_ANSWERS, generator=generator) > 0.9).float()
    return inputs, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config/config.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    vqa = config["finetune"]["vqa"]
    backbone, source = load_encoder(config)
    AttentionSetting("threshold", config["finetune"]["threshold"]).apply(backbone)
    model = VqaClassifier(backbone, NUM_ANSWERS, vqa["readout"])
    generator = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(backbone.config, vqa["batch_size"], config["features"]["num_regions"], generator)
               for _ in range(4)]
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    ctx = setup_distributed(args.device)

    def batch_loss(module: nn.Module, indices) -> torch.Tensor:
        inputs, targets = batches[indices[0] % len(batches)]
        return bce(module(inputs.to(ctx.device)).float(), targets.to(ctx.device)) / len(indices)

    settings = FinetuneSettings(epochs=1, batch_size=vqa["batch_size"], lr=vqa["lr"], log_every=10**9)
    num_examples = args.steps * vqa["batch_size"]
    with tempfile.TemporaryDirectory() as tmp:
        train(model, 2 * vqa["batch_size"], batch_loss, settings, ctx, Path(tmp) / "warm-up")
        stats = train(model, num_examples, batch_loss, settings, ctx, Path(tmp) / "timed")
        # A separate, short profiled run: the profiler's own overhead would distort the timing.
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
            train(model, PROFILED_STEPS * vqa["batch_size"], batch_loss, settings, ctx, Path(tmp) / "profiled")
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    matmuls = [e for e in events if e.key in MATMUL_OPS]
    matmul_us = sum(e.self_cpu_time_total for e in matmuls)
    matmul_flops = sum(e.flops for e in matmuls)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{args.threads} threads"
    print(f"encoder: {source}; device: {device}; {backbone.config.num_hidden_layers} layers x "
          f"{backbone.config.hidden_size}, batch {vqa['batch_size']}, sequence {QUESTION_PIECES} + "
          f"{config['features']['num_regions']}, T = {config['finetune']['threshold']}")
    rate = stats["samples_per_second"]
    print(f"finetune-vqa: {rate:.1f} samples/s ({args.steps} steps in {stats['train_seconds']} s), "
          f"peak RSS {rss_mb:.0f} MB")
    print(f"matrix multiplications ({PROFILED_STEPS} profiled steps): {matmul_us / max(total_us, 1):.0%} of the "
          f"operators' CPU time, {matmul_flops / max(matmul_us, 1) / 1e3:.1f} GFLOP/s while they run")
    questions = config["shapes"]["train_images"] * config["shapes"]["questions_per_image"]
    epoch = questions / rate
    print(f"one shapes epoch ({questions:,} questions) at this rate: {epoch:.0f} s; "
          f"{vqa['epochs']} epochs (finetune.vqa.epochs): {vqa['epochs'] * epoch:.0f} s")


if __name__ == "__main__":
    main()
