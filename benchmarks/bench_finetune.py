"""VQA fine-tuning throughput: samples/s of the real fine-tuning loop at the default sizes,
the share of its CPU time spent in matrix multiplications, and their GFLOP/s.

    .venv/bin/python benchmarks/bench_finetune.py [--steps 40] [--threads 2] [--device cpu]
    .venv/bin/python benchmarks/bench_finetune.py --compare-precision [--steps 30]

The encoder is the default run's pretrained checkpoint (results/pretrain) when it exists,
else the offline BERT checkpoint cut to `model.num_layers` layers. Batches are synthetic
with the default sizes: `finetune.vqa.batch_size` questions of 12 word pieces (a typical
`shapes` question), `features.num_regions` regions, 20 answers; threshold attention at
`finetune.threshold`. The matmul figures tell whether a step is bound by arithmetic
(then only fewer samples, layers or a faster device make fine-tuning shorter) or by
overheads that code could remove. Prints a summary with the peak RSS.

``--compare-precision`` times three configurations in one process, one thread each
unless said otherwise: plain fp32 (unfused AdamW, the loop before `train.precision`),
bf16 autocast alone, and the training configuration the default config runs
(`train.precision`, the fused optimizer, `finetune.nproc` data-parallel processes over
`--threads` cores). Its last two lines are the speed-ups over fp32. Where the CPU has
no native bf16 (AVX512-BF16 / AMX-BF16), bf16 is emulated and many times slower: it is
then timed over only a few steps, and the output says so.
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
import torch.multiprocessing as mp  # noqa: E402

from tbkin.config import load_config  # noqa: E402
from tbkin.features.detector import SMALL_ARCHITECTURE, DetectorArchitecture  # noqa: E402
from tbkin.model.modeling_tbkin import TbkinInputs, TbkinModel  # noqa: E402
from tbkin.model.tokenization import resolve_bert_path  # noqa: E402
from tbkin.precision import cpu_supports_bf16, resolve_precision  # noqa: E402
from tbkin.train import loop  # noqa: E402
from tbkin.train.finetune_common import AttentionSetting, FinetuneSettings, train  # noqa: E402
from tbkin.train.finetune_vqa import VqaBatch, VqaClassifier, vqa_loss  # noqa: E402
from tbkin.train.loop import cleanup_distributed, setup_distributed  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QUESTION_PIECES = 12
NUM_ANSWERS = 20
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
PROFILED_STEPS = 5
EMULATED_BF16_STEPS = 3


def load_encoder(config: dict) -> tuple[TbkinModel, str]:
    pretrained = REPO / config["results"] / "pretrain"
    if (pretrained / "model.safetensors").is_file():
        return TbkinModel.from_pretrained(pretrained), str(pretrained)
    bert = resolve_bert_path(config["model"]["bert_path"])
    model = TbkinModel.from_bert(bert, config["model"]["num_layers"], encoder_init=config["model"]["encoder_init"],
                                 keep_piece_ids=list(range(1000)),  # a pruned vocabulary, as the workflow uses
                                 region_feature_dim=DetectorArchitecture(SMALL_ARCHITECTURE, []).representation_size,
                                 num_region_labels=6,
                                 max_text_len=config["model"]["max_text_len"])
    return model, f"{bert} (first {config['model']['num_layers']} layers, 1,000 word pieces)"


def synthetic_batches(model_config, batch_size: int, num_regions: int, count: int = 4) -> list[VqaBatch]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(1, model_config.vocab_size, (batch_size, QUESTION_PIECES), generator=generator)
        inputs = TbkinInputs(
            input_ids=ids,
            text_mask=torch.ones_like(ids, dtype=torch.bool),
            region_features=torch.randn(batch_size, num_regions, model_config.region_feature_dim, generator=generator),
            region_positions=torch.rand(batch_size, num_regions, 5, generator=generator),
            region_mask=torch.ones(batch_size, num_regions, dtype=torch.bool),
        )
        batches.append(VqaBatch(inputs, (torch.rand(batch_size, NUM_ANSWERS, generator=generator) > 0.9).float()))
    return batches


def build_model(config: dict) -> tuple[VqaClassifier, str]:
    backbone, source = load_encoder(config)
    AttentionSetting("threshold", config["finetune"]["threshold"]).apply(backbone)
    torch.manual_seed(0)
    return VqaClassifier(backbone, NUM_ANSWERS, config["finetune"]["vqa"]["readout"]), source


def timed_run(config: dict, steps: int, precision: str, device: str, out_dir: Path, profile: bool = False):
    """One warm-up run and one timed run of the real loop; the stats of the timed one (and a profile)."""
    vqa = config["finetune"]["vqa"]
    model, source = build_model(config)
    ctx = setup_distributed(device)
    per_rank = vqa["batch_size"] // ctx.world_size
    batches = synthetic_batches(model.backbone.config, per_rank, config["features"]["num_regions"])

    def make_batch(indices: list[int]) -> VqaBatch:
        return batches[indices[0] % len(batches)]

    settings = FinetuneSettings(epochs=1, batch_size=vqa["batch_size"], lr=vqa["lr"], log_every=10**9,
                                precision=precision)
    train(model, 2 * vqa["batch_size"], make_batch, vqa_loss, settings, ctx, out_dir / "warm-up")
    stats = train(model, steps * vqa["batch_size"], make_batch, vqa_loss, settings, ctx, out_dir / "timed")
    prof = None
    if profile:  # a separate, short run: the profiler's own overhead would distort the timing
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
            train(model, PROFILED_STEPS * vqa["batch_size"], make_batch, vqa_loss, settings, ctx, out_dir / "profiled")
    return stats, prof, model, source


def _data_parallel_worker(rank: int, world_size: int, port: int, config: dict, steps: int, precision: str,
                          threads: int, out_dir: str, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        stats, _, _, _ = timed_run(config, steps, precision, "cpu", Path(out_dir) / f"rank{rank}")
        if rank == 0:
            results.put(stats)
    finally:
        cleanup_distributed()


def data_parallel_rate(config: dict, steps: int, precision: str, processes: int, threads: int, out_dir: Path) -> dict:
    """The loop's stats with ``processes`` gloo processes of ``threads`` threads (as `tbkin launch` runs it)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = 29_500 + os.getpid() % 1000
    mp.start_processes(_data_parallel_worker, args=(processes, port, config, steps, precision, threads, str(out_dir),
                                                    results), nprocs=processes, start_method="spawn")
    return results.get(timeout=10)


def compare_precision(args, config: dict) -> None:
    native = cpu_supports_bf16()
    ft = config["finetune"]
    auto = resolve_precision(config["train"]["precision"], "cpu")
    print(f"CPU bf16 instructions: {'yes' if native else 'no (bf16 is emulated)'}; train.precision = "
          f"{config['train']['precision']} -> {auto}; finetune.nproc = {ft['nproc']}")
    torch.set_num_threads(1)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        fused = loop.make_optimizer
        loop.make_optimizer = lambda module, lr, wd, device: torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=wd)
        try:
            rates["fp32"] = timed_run(config, args.steps, "fp32", "cpu", Path(tmp) / "fp32")[0]["samples_per_second"]
            bf16_steps = args.steps if native else EMULATED_BF16_STEPS
            rates["bf16"] = timed_run(config, bf16_steps, "bf16", "cpu", Path(tmp) / "bf16")[0]["samples_per_second"]
        finally:
            loop.make_optimizer = fused
        processes = ft["nproc"]
        if processes > 1:
            stats = data_parallel_rate(config, args.steps, auto, processes, max(1, args.threads // processes), Path(tmp) / "ddp")
        else:
            torch.set_num_threads(args.threads)
            stats = timed_run(config, args.steps, auto, "cpu", Path(tmp) / "default")[0]
        rates["default"] = stats["samples_per_second"]
    print(f"plain fp32 (1 thread, unfused AdamW): {rates['fp32']:.1f} samples/s")
    print(f"bf16 autocast (1 thread, unfused AdamW){'' if native else f', emulated, {EMULATED_BF16_STEPS} steps'}: "
          f"{rates['bf16']:.1f} samples/s")
    print(f"default ({auto}, fused AdamW, {processes} process(es) on {args.threads} thread(s)): "
          f"{rates['default']:.1f} samples/s")
    own_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: {own_mb:.0f} MB in this process, {workers_mb:.0f} MB in the largest data-parallel worker")
    print(f"bf16 speed-up over fp32: {rates['bf16'] / rates['fp32']:.2f}x")
    print(f"default speed-up over fp32: {rates['default'] / rates['fp32']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config/config.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, help="default: the config's train.precision")
    parser.add_argument("--compare-precision", action="store_true", help="fp32 vs bf16 vs the default configuration")
    args = parser.parse_args()
    config = load_config(args.config)
    if args.compare_precision:
        compare_precision(args, config)
        return
    torch.set_num_threads(args.threads)
    vqa = config["finetune"]["vqa"]
    precision = args.precision or config["train"]["precision"]
    with tempfile.TemporaryDirectory() as tmp:
        stats, prof, model, source = timed_run(config, args.steps, precision, args.device, Path(tmp), profile=True)
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    matmuls = [e for e in events if e.key in MATMUL_OPS]
    matmul_us = sum(e.self_cpu_time_total for e in matmuls)
    matmul_flops = sum(e.flops for e in matmuls)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{args.threads} threads"
    backbone = model.backbone
    print(f"encoder: {source}; device: {device}; precision {stats['precision']}; "
          f"{backbone.config.num_hidden_layers} layers x {backbone.config.hidden_size}, batch {vqa['batch_size']}, "
          f"sequence {QUESTION_PIECES} + {config['features']['num_regions']}, T = {config['finetune']['threshold']}")
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
