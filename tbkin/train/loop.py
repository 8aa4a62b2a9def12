"""Training utilities shared by pretraining and fine-tuning.

Interface::

    dist = setup_distributed()          # reads torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK,
                                        # MASTER_ADDR/PORT); gloo on CPU, nccl on CUDA
    dist.device, dist.rank, dist.world_size, dist.is_main
    with autocast(dist.device): ...     # bfloat16 autocast on CUDA, no-op on CPU
    step = load_checkpoint(state_dir, module, optimizer, scheduler)  # None if nothing saved
    save_checkpoint(state_dir, module, optimizer, scheduler, step, config={...})
    log = JsonlLogger(path, resume_step=step)  # drops records newer than the checkpoint
    log.write({"step": 20, "loss": 1.2}); log.close()
    cleanup_distributed()

Checkpoint layout (``state_dir``): ``checkpoint-{step}/`` holding ``model.safetensors``
(the full training module, heads included), ``trainer.pt`` (optimizer, scheduler,
step, torch/CUDA RNG states; loaded with ``weights_only=True``) and ``config.json``;
``latest.json`` names the newest complete one. It is written only after the
checkpoint folder is complete, so a kill at any moment leaves the previous checkpoint
usable; older folders are removed afterwards.

Determinism: the data order and masks are drawn from generators seeded by
(seed, step), so they need no saved state; dropout uses the global torch RNG, which
the checkpoint restores.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tbkin.atomic import atomic_path, write_json
from tbkin.errors import TbkinError

log = logging.getLogger(__name__)

LATEST = "latest.json"


class CheckpointStateError(TbkinError):
    """A training-state folder is unreadable or belongs to a different model."""


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup_distributed(device: str | None = None) -> DistributedContext:
    """Join the torchrun process group if one is set up in the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Mean of a tensor over processes (identity when not distributed)."""
    if not ctx.distributed:
        return value
    value = value.clone()
    torch.distributed.all_reduce(value)
    return value / ctx.world_size


def autocast(device: torch.device):
    """Mixed precision on CUDA (bfloat16: no loss scaling needed); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper."""
    return module.module if hasattr(module, "module") and isinstance(module, nn.parallel.DistributedDataParallel) else module


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    state_dir: str | Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    step: int,
    config: dict | None = None,
    keep: int = 1,
) -> Path:
    """Write ``checkpoint-{step}`` and point ``latest.json`` at it; keep the newest ``keep``."""
    state_dir = Path(state_dir)
    folder = state_dir / f"checkpoint-{step}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    module = unwrap(module)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    trainer = {
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state(),
    }
    with atomic_path(folder / "trainer.pt") as tmp:
        torch.save(trainer, tmp)
    write_json(folder / "config.json", config or {})
    write_json(state_dir / LATEST, {"step": int(step), "folder": folder.name})
    older = sorted(
        (p for p in state_dir.glob("checkpoint-*") if p != folder and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for stale in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return folder


def latest_checkpoint(state_dir: str | Path) -> Path | None:
    """Folder named by ``latest.json``, or None when there is none."""
    pointer = Path(state_dir) / LATEST
    if not pointer.is_file():
        return None
    try:
        folder = Path(state_dir) / json.loads(pointer.read_text())["folder"]
    except (ValueError, KeyError) as exc:
        raise CheckpointStateError(f"{pointer}: unreadable ({exc})") from None
    if not (folder / "trainer.pt").is_file():
        raise CheckpointStateError(f"{pointer} names {folder}, which is incomplete")
    return folder


def load_checkpoint(
    state_dir: str | Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    map_location: str | torch.device = "cpu",
) -> int | None:
    """Restore module / optimizer / scheduler / RNG from the latest checkpoint; return its step."""
    folder = latest_checkpoint(state_dir)
    if folder is None:
        return None
    module = unwrap(module)
    state = load_file(str(folder / "model.safetensors"), device=str(map_location))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointStateError(
            f"{folder}: checkpoint does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "delete the folder to start over"
        )
    trainer = torch.load(folder / "trainer.pt", map_location=map_location, weights_only=True)
    if optimizer is not None and trainer.get("optimizer") is not None:
        optimizer.load_state_dict(trainer["optimizer"])
    if scheduler is not None and trainer.get("scheduler") is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    rng = trainer["rng"]
    rng["torch"] = rng["torch"].cpu()
    _set_rng_state(rng)
    log.info("resumed from %s (step %d)", folder, trainer["step"])
    return int(trainer["step"])


class JsonlLogger:
    """Append one JSON object per line; flushes every line so a kill loses nothing written.

    ``resume_step``: records with ``step`` beyond it (written after the checkpoint a
    run resumes from) are dropped first, so a resumed log has each step once.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._fh = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [line for line in read_jsonl(self.path) if line.get("step", 0) <= resume_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (killed mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """LR schedule: linear warm-up to the base LR, then linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
