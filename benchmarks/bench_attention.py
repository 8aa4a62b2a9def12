"""Threshold attention vs standard attention: forward + backward time at the default sizes.

    .venv/bin/python benchmarks/bench_attention.py [--threshold 0.05] [--threads 2] [--device cpu]

Two levels, measured in one run with the variants interleaved (min over repeats, so
other load on the machine inflates both sides alike):

* the attention function alone: transformers' eager attention vs the "tbkin"
  function in threshold mode, on q/k/v of [batch, heads, T+M, head_dim];
* the whole TBKIN encoder (default ``model.num_layers``, MiniLM-sized layers):
  ``set_attention("full")`` vs ``set_attention("threshold", T)``.

Target: threshold / standard <= 1.15. Also prints the local-window mode and peak RSS.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

# Passive OpenMP waiting (as the pretrain rule sets it): spinning threads distort timings on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers.models.bert.modeling_bert import eager_attention_forward

from tbkin.config import load_config
from tbkin.model.attention import tbkin_attention_forward
from tbkin.model.modeling_tbkin import TbkinConfig, TbkinInputs, TbkinModel

REPO = Path(__file__).resolve().parent.parent


class _Holder(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_variants(variants: dict, repeats: int, inner: int, device) -> dict[str, float]:
    """Min over ``repeats`` of the mean time of ``inner`` calls, variants interleaved."""
    best = {name: float("inf") for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            best[name] = min(best[name], (time.perf_counter() - start) / inner)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config/config.yaml"))
    parser.add_argument("--threshold", type=float, help="default: finetune.threshold of the config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    device = torch.device(args.device)
    threshold = args.threshold if args.threshold is not None else config["finetune"]["threshold"]
    batch = config["finetune"]["vqa"]["batch_size"]
    text, regions = config["model"]["max_text_len"], config["features"]["num_regions"]
    hidden, heads = 384, 12  # the packaged MiniLM checkpoint's layer size
    n, head_dim = text + regions, hidden // heads
    g = torch.Generator().manual_seed(0)

    # --- the attention function alone
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=g).to(device).requires_grad_() for _ in range(3))
    valid = torch.ones(batch, n, dtype=torch.bool)
    valid[:, text // 2 : text] = False  # typical text padding
    mask = torch.zeros(batch, n).masked_fill(~valid, torch.finfo(torch.float32).min)[:, None, None, :].to(device)
    holders = {
        mode: _Holder(TbkinConfig(attention_mode=mode, attention_threshold=threshold, local_window=5)).train()
        for mode in ("full", "threshold", "local")
    }

    def attention_step(fn, holder):
        def step():
            out, _ = fn(holder, q, k, v, mask, scaling=head_dim**-0.5, dropout=0.1)
            out.sum().backward()
        return step

    function_times = time_variants(
        {
            "standard (eager)": attention_step(eager_attention_forward, holders["full"]),
            f"threshold T={threshold}": attention_step(tbkin_attention_forward, holders["threshold"]),
            "local window 5": attention_step(tbkin_attention_forward, holders["local"]),
        },
        args.repeats, inner=20, device=device,
    )

    # --- the whole encoder
    layers = config["model"]["num_layers"]
    model_config = TbkinConfig(vocab_size=1000, hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
                               num_hidden_layers=layers, region_feature_dim=256, num_region_labels=16,
                               max_text_len=text)
    model = TbkinModel(model_config).to(device).train()
    ids = torch.randint(5, 1000, (batch, text), generator=g)
    inputs = TbkinInputs(ids.masked_fill(~valid[:, :text], 0), valid[:, :text], torch.randn(batch, regions, 256, generator=g),
                         torch.rand(batch, regions, 5, generator=g), valid[:, text:]).to(device)

    def model_step(mode):
        def step():
            model.set_attention(mode, threshold=threshold if mode == "threshold" else 0.0, window=5 if mode == "local" else None)
            model(inputs).sequence.sum().backward()
        return step

    model_times = time_variants(
        {"full": model_step("full"), f"threshold T={threshold}": model_step("threshold"), "local window 5": model_step("local")},
        args.repeats, inner=2, device=device,
    )

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"device: {where}; batch {batch}, heads {heads}, sequence {n} ({text} text + {regions} regions), head dim {head_dim}")
    for title, times in (("attention function fwd+bwd", function_times), (f"{layers}-layer encoder fwd+bwd", model_times)):
        base = next(iter(times.values()))
        print(title)
        for name, seconds in times.items():
            print(f"  {name:24s} {seconds * 1e3:8.2f} ms   x{seconds / base:.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
