"""The one training loop of TBKIN, shared by pretraining and fine-tuning, and its utilities.

Interface::

    dist = setup_distributed()          # reads torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK,
                                        # MASTER_ADDR/PORT); gloo on CPU, nccl on CUDA
    result = train_loop(module, make_batch, compute_losses, LoopSettings(...), dist,
                        state_dir, log_path, desc="pretrain", fingerprint={...})
    cleanup_distributed()

``make_batch(step, rank)`` builds this process's share of global batch ``step`` (a
dataclass with ``.to(device)``) from generators seeded by :func:`derive_seed`, so it
needs no saved state; ``compute_losses(module, batch)`` returns task name -> scalar
loss. The loop owns everything else, once: the precision (``tbkin.precision``: bf16
autocast or fp32; weights, optimizer state and losses stay fp32), AdamW (fused where
PyTorch has a fused kernel for the device) with linear warm-up and decay, gradient
clipping, DistributedDataParallel, the dropout seed of every (step, rank), a non-finite
loss check, window-averaged JSONL logging, the progress bar, and a resumable state.

Checkpoint layout (``state_dir``): ``checkpoint-{step}/`` holding ``model.safetensors``
(the full training module, heads included), ``trainer.pt`` (optimizer, scheduler,
step, torch/CUDA RNG states; loaded with ``weights_only=True``) and ``config.json``
(the run's settings fingerprint: a state written with other settings is discarded,
not resumed); ``latest.json`` names the newest complete one. It is written only after
the checkpoint folder is complete, so a kill at any moment leaves the previous
checkpoint usable; older folders are removed afterwards. A resumed run is
bit-identical to an uninterrupted one for a fixed seed, precision and process count.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from tbkin.atomic import atomic_path, json_line, write_json
from tbkin.errors import TbkinError
from tbkin.precision import autocast, resolve_precision
from tbkin.train.guards import check_finite

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
    try:  # read both files before applying either, so a damaged one changes nothing
        state = load_file(str(folder / "model.safetensors"), device=str(map_location))
        trainer = torch.load(folder / "trainer.pt", map_location=map_location, weights_only=True)
    except Exception as exc:  # safetensors and torch raise several types for a damaged file
        raise CheckpointStateError(
            f"{folder}: the saved training state is unreadable ({type(exc).__name__}: {exc}). Delete "
            f"{Path(state_dir)} to start this step over from the beginning"
        ) from None
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointStateError(
            f"{folder}: checkpoint does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "delete the folder to start over"
        )
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
                tmp.write_text("".join(json_line(r, self.path) for r in kept))
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        if self._fh is None:
            return
        self._fh.write(json_line(record, self.path))
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


# ------------------------------------------------------------------------ the loop
# Seed streams of derive_seed: one per use, so no two draws share a generator.
DATA_STREAM, DROPOUT_STREAM, ORDER_STREAM = 0, 1, 2


def derive_seed(seed: int, step: int, rank: int = 0, stream: int = DATA_STREAM) -> int:
    """The seed of one random stream at (step, rank): every RNG of training derives from here."""
    return (((seed * 1_000_003 + step) * 997 + rank) * 31 + stream) % (2**63)


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled example order of ``epoch`` (the same on every process)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, stream=ORDER_STREAM))
    return torch.randperm(num_examples, generator=generator)


class Batch(Protocol):
    def to(self, device: torch.device) -> "Batch": ...


@dataclass
class LoopSettings:
    """What :func:`train_loop` needs besides the model and the data."""

    steps: int
    lr: float
    warmup_steps: int
    seed: int = 0
    precision: str = "auto"                 # auto | bf16 | fp32 (tbkin.precision)
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 100
    samples_per_step: int = 1               # global batch size, for the throughput figure
    steps_per_epoch: int | None = None      # logs an ``epoch`` field when given
    task_weights: dict[str, float] = field(default_factory=dict)   # missing tasks weigh 1


@dataclass
class LoopResult:
    last_record: dict
    steps: int
    steps_this_run: int
    train_seconds: float
    samples_per_second: float
    precision: str

    def stats(self) -> dict:
        """The fields a run's ``run.json`` records."""
        return {"steps": self.steps, "steps_this_run": self.steps_this_run, "train_seconds": self.train_seconds,
                "samples_per_second": self.samples_per_second, "precision": self.precision}


def make_optimizer(module: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel (one pass over all parameters: fewer tiny operators)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar; redrawn at most twice a minute when stderr is a log file, not a terminal."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled,
                mininterval=2.0 if interactive else 30.0, dynamic_ncols=interactive, ascii=not interactive)


def discard_stale_state(state_dir: Path, fingerprint: dict, ctx: DistributedContext) -> None:
    """Remove a saved state written with other settings: resuming it would mix two runs."""
    folder = latest_checkpoint(state_dir)
    if folder is not None:
        try:
            saved = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            saved = None
        if saved != json.loads(json.dumps(fingerprint)) and ctx.is_main:
            log.warning("%s was written with other settings; starting over", state_dir)
            shutil.rmtree(state_dir)
    if ctx.distributed:
        torch.distributed.barrier()


class _LossWindow:
    """Sums of the losses since the last log line, averaged (over processes too) when logged."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.data_seconds = 0.0
        self.started = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], data_seconds: float) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())
        self.count += 1
        self.data_seconds += data_seconds

    def record(self, step: int, lr: float, samples_per_step: int, ctx: DistributedContext) -> dict:
        names = list(self.sums)
        means = all_reduce_mean(torch.tensor([self.sums[k] / self.count for k in names]), ctx).tolist()
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        record = {"step": step, "lr": lr, **{k: round(v, 5) for k, v in zip(names, means)}}
        record["samples_per_s"] = round(self.count * samples_per_step / elapsed, 2)
        record["data_share"] = round(self.data_seconds / elapsed, 4)
        self.__init__()
        return record


def train_loop(
    module: nn.Module,
    make_batch: Callable[[int, int], Batch],
    compute_losses: Callable[[nn.Module, Batch], dict[str, torch.Tensor]],
    settings: LoopSettings,
    ctx: DistributedContext,
    state_dir: str | Path,
    log_path: str | Path,
    desc: str,
    fingerprint: dict | None = None,
) -> LoopResult:
    """Train ``module`` for ``settings.steps`` steps, resuming from ``state_dir`` when it holds a state.

    The total loss is the ``task_weights``-weighted sum of ``compute_losses``'s values,
    each computed in fp32. The final state is saved too, so a run killed after
    training but before its caller wrote the outputs resumes at the end. The weights of a
    resumed run are bit-identical to an uninterrupted one; its first log record averages
    only the steps since the resume (the loss window is not part of the saved state).
    """
    s = settings
    state_dir, log_path = Path(state_dir), Path(log_path)
    fingerprint = fingerprint if fingerprint is not None else {}
    precision = resolve_precision(s.precision, ctx.device)
    module.to(ctx.device)
    optimizer = make_optimizer(module, s.lr, s.weight_decay, ctx.device)
    scheduler = linear_warmup_decay(optimizer, s.warmup_steps, s.steps)
    discard_stale_state(state_dir, fingerprint, ctx)
    start = load_checkpoint(state_dir, module, optimizer, scheduler, map_location=ctx.device) or 0
    wrapped: nn.Module = module
    if ctx.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    logger = JsonlLogger(log_path, resume_step=start, enabled=ctx.is_main)
    window, record = _LossWindow(), {}
    bar = progress_bar(s.steps, start, desc, ctx.is_main)
    began = time.perf_counter()
    wrapped.train()
    for step in range(start, s.steps):
        fetch_started = time.perf_counter()
        batch = make_batch(step, ctx.rank).to(ctx.device)
        data_seconds = time.perf_counter() - fetch_started
        torch.manual_seed(derive_seed(s.seed, step, ctx.rank, DROPOUT_STREAM))
        with autocast(ctx.device, precision):
            losses = compute_losses(wrapped, batch)
        losses = {name: value.float() for name, value in losses.items()}
        loss = sum(float(s.task_weights.get(name, 1.0)) * value for name, value in losses.items())
        losses = {"loss": loss, **losses}
        _stop_if_not_finite(losses, step + 1, desc, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), s.clip_norm)
        optimizer.step()
        scheduler.step()
        window.add(losses, data_seconds)
        done = step + 1
        bar.update(1)
        if done % s.log_every == 0 or done == s.steps:
            record = window.record(done, scheduler.get_last_lr()[0], s.samples_per_step, ctx)
            if s.steps_per_epoch:
                record["epoch"] = step // s.steps_per_epoch
            logger.write(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in losses}, refresh=False)
        if done % s.checkpoint_every == 0 or done == s.steps:
            if ctx.is_main:
                save_checkpoint(state_dir, module, optimizer, scheduler, done, config=fingerprint)
            if ctx.distributed:
                torch.distributed.barrier()
    bar.close()
    logger.close()
    seconds = time.perf_counter() - began
    ran = s.steps - start
    return LoopResult(last_record=record, steps=s.steps, steps_this_run=ran, train_seconds=round(seconds, 1),
                      samples_per_second=round(ran * s.samples_per_step / max(seconds, 1e-9), 1),
                      precision=precision)


def _stop_if_not_finite(losses: dict[str, torch.Tensor], step: int, desc: str, ctx: DistributedContext) -> None:
    """Every process stops together: one raising alone would leave the others waiting in DDP."""
    if ctx.distributed:
        finite = torch.stack([v.detach() for v in losses.values()]).isfinite().all().float()
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() == 1.0:
            return
        if all(math.isfinite(float(v)) for v in losses.values()):
            raise NonFiniteOnOtherProcess(f"{desc}: non-finite loss at step {step} on another process")
    check_finite(losses, step, desc)


class NonFiniteOnOtherProcess(TbkinError):
    """Another data-parallel process hit a non-finite loss; that process names it."""
