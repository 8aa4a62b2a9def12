"""Numeric precision of training and inference: ``auto | bf16 | fp32`` (config ``train.precision``).

bf16 runs the matrix multiplications under :func:`torch.autocast` in bfloat16; weights,
optimizer state and losses stay float32. ``auto`` picks bf16 on CUDA devices that
support it and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX-BF16), where it
is measured to be about twice as fast as fp32 here; fp32 elsewhere, where emulated
bf16 would be slower than fp32.

Interface::

    precision = resolve_precision("auto", device)   # -> "bf16" | "fp32"
    with autocast(device, precision): loss = model(batch)
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    if flags:
        return any(flag in flags for flag in CPU_BF16_FLAGS)
    # No /proc/cpuinfo (macOS, Windows): ask PyTorch's dispatcher what the CPU can run.
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


def device_supports_bf16(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bf16()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The concrete precision (``bf16`` or ``fp32``) that ``precision`` means on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device_supports_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast on ``device`` for ``precision == "bf16"``; a no-op context for fp32."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
