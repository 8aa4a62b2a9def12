"""Fine-tuning machinery shared by VQA and REC.

* :func:`load_backbone` — the pretrained TBKIN encoder with the fine-tuning attention
  switched on (threshold T, or a local window for the paper's Table 2 baseline).
* :func:`train` — epochs over an in-memory example list, run by the shared training
  loop (:func:`tbkin.train.loop.train_loop`: precision, AdamW, warm-up and decay,
  progress bar, JSONL loss log, a resumable state saved after every epoch, and
  data-parallel training when launched by ``torchrun``).
* :func:`save_finetuned` / :func:`load_finetuned` — the fine-tuned encoder as a TBKIN
  checkpoint (``model.safetensors`` + ``config.json`` + tokenizer) beside the task
  head (``head.safetensors``) and ``run.json`` (task, attention setting, seed,
  epochs, precision, timing).
"""
from __future__ import annotations

import argparse
import functools
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tbkin.atomic import atomic_path, write_json
from tbkin.data.loaders import read_json
from tbkin.model.modeling_tbkin import TbkinModel
from tbkin.config import settings_from_json
from tbkin.train.loop import (
    Batch,
    DistributedContext,
    LoopSettings,
    cleanup_distributed,
    epoch_order,
    setup_distributed,
    train_loop,
    unwrap,
)

log = logging.getLogger(__name__)

HEAD_NAME = "head.safetensors"
RUN_INFO = "run.json"
STATE_DIR = "state"


@dataclass
class AttentionSetting:
    mode: str = "threshold"        # "threshold" (T = 0 is the Base model) | "local" | "full"
    threshold: float = 0.0
    window: int | None = None

    def apply(self, model: TbkinModel) -> None:
        model.set_attention(self.mode, threshold=self.threshold if self.mode == "threshold" else 0.0,
                            window=self.window if self.mode == "local" else None)


@dataclass
class FinetuneSettings:
    """A fine-tuning run's settings: config ``finetune.<task>`` plus seed and precision,
    given whole to the command (``--settings``, one JSON object)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-4
    seed: int = 0
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    log_every: int = 10
    precision: str = "auto"


@dataclass
class VqaSettings(FinetuneSettings):
    """VQA adds the answer vocabulary's cut-off and the classifier's input."""

    min_answer_count: int = 1
    readout: str = "cls"


def load_backbone(pretrained_dir: str | Path, attention: AttentionSetting) -> TbkinModel:
    model = TbkinModel.from_pretrained(pretrained_dir)
    attention.apply(model)
    return model


def make_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """ROSITA / MCAN classifier: Linear -> GELU -> LayerNorm -> Linear (hidden 2x)."""
    return nn.Sequential(nn.Linear(in_dim, 2 * in_dim), nn.GELU(), nn.LayerNorm(2 * in_dim),
                         nn.Linear(2 * in_dim, out_dim))


def train(
    module: nn.Module,
    num_examples: int,
    make_batch: Callable[[list[int]], Batch],
    compute_losses: Callable[[nn.Module, Batch], dict[str, torch.Tensor]],
    settings: FinetuneSettings,
    ctx: DistributedContext,
    out_dir: str | Path,
    desc: str = "fine-tune",
) -> dict:
    """Train ``module`` for ``settings.epochs`` epochs with the shared loop (:func:`train_loop`).

    ``make_batch(indices)`` builds the batch of those examples; each process takes every
    world_size-th slot of the epoch's permutation, so the global batch stays
    ``batch_size``. Resumes from ``out_dir/state`` (saved after every epoch) when a
    previous run was cut off. Returns the loop's statistics for ``run.json``.
    """
    out_dir = Path(out_dir)
    per_rank = max(1, settings.batch_size // ctx.world_size)
    steps_per_epoch = max(1, num_examples // (per_rank * ctx.world_size))
    total = steps_per_epoch * settings.epochs

    @functools.lru_cache(maxsize=1)  # one shuffle per epoch, not per step
    def order_of(epoch: int) -> torch.Tensor:
        return epoch_order(num_examples, settings.seed, epoch)

    def batch_of_step(step: int, rank: int) -> Batch:
        epoch, within = divmod(step, steps_per_epoch)
        order = order_of(epoch)
        first = (within * ctx.world_size + rank) * per_rank
        return make_batch([int(order[i % num_examples]) for i in range(first, first + per_rank)])

    loop = LoopSettings(steps=total, lr=settings.lr, warmup_steps=math.ceil(settings.warmup_fraction * total),
                        seed=settings.seed, precision=settings.precision, weight_decay=settings.weight_decay,
                        log_every=settings.log_every, checkpoint_every=steps_per_epoch,
                        samples_per_step=per_rank * ctx.world_size, steps_per_epoch=steps_per_epoch)
    result = train_loop(module, batch_of_step, compute_losses, loop, ctx, out_dir / STATE_DIR,
                        out_dir / "log.jsonl", desc=desc, fingerprint=asdict(settings))
    return result.stats()


def save_finetuned(out_dir: str | Path, backbone: TbkinModel, head: nn.Module, run_info: dict) -> None:
    """Final artifacts; the resumable training state is removed once they are written."""
    out_dir = Path(out_dir)
    backbone = unwrap(backbone)
    backbone.save_pretrained(out_dir)
    with atomic_path(out_dir / HEAD_NAME) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(tmp))
    write_json(out_dir / RUN_INFO, run_info)
    shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)


def load_head_state(out_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out_dir) / HEAD_NAME))


def read_run_info(out_dir: str | Path) -> dict:
    """The ``run.json`` of a finished fine-tuning run; {} when there is none."""
    path = Path(out_dir) / RUN_INFO
    return read_json(str(path)) if path.exists() else {}


def batched(num_examples: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + batch_size, num_examples))) for i in range(0, num_examples, batch_size)]


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments every fine-tuning command shares: attention setting and optimisation."""
    parser.add_argument("--mode", default="threshold", choices=["threshold", "local", "full"])
    parser.add_argument("--threshold", type=float, default=0.0, help="T (threshold mode); 0 = Base")
    parser.add_argument("--window", type=int, default=None, help="window (local mode)")
    parser.add_argument("--settings", default="{}",
                        help="one JSON object: config finetune.vqa or finetune.rec, plus seed and precision "
                             "(train.precision); missing fields take their defaults")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")


def run_distributed(args: argparse.Namespace, settings_class: type, body: Callable) -> int:
    """Read the settings, seed, join the torchrun process group (if any), run
    ``body(args, attention, settings, ctx)``, leave it."""
    attention = AttentionSetting(args.mode, args.threshold, args.window)
    settings = settings_from_json(settings_class, args.settings, f"{args.command} --settings")
    torch.set_num_threads(args.threads)
    torch.manual_seed(settings.seed)
    ctx = setup_distributed(args.device)
    try:
        return body(args, attention, settings, ctx)
    finally:
        cleanup_distributed()
