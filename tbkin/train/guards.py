"""Checks a training loop runs every step, so a diverged run stops instead of saving NaN.

Interface::

    check_finite({"mlm": mlm_loss, "itm": itm_loss}, step=120, where="pretrain")

raises :class:`NonFiniteLossError` naming the step, the run and every loss that is
NaN or infinite. Call it before the optimizer step, the log line and any checkpoint,
so that nothing written afterwards holds the bad value.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from tbkin.errors import TbkinError


class NonFiniteLossError(TbkinError, FloatingPointError):
    """A training loss became NaN or infinite."""


def check_finite(losses: Mapping[str, torch.Tensor | float], step: int, where: str) -> None:
    """Raise NonFiniteLossError if any of ``losses`` (task name -> loss) is NaN or infinite.

    ``where`` names the run (e.g. ``pretrain`` or ``finetune-vqa``). One host sync for
    all losses: they are stacked before the single transfer.
    """
    if not losses:
        return
    names = list(losses)
    values = [torch.as_tensor(losses[name]).detach().float().reshape(-1) for name in names]
    stacked = torch.cat([v.to(values[0].device) for v in values])
    if bool(torch.isfinite(stacked).all()):
        return
    bad = []
    for name, value in zip(names, values):
        items = value.cpu().tolist()
        wrong = [v for v in items if not math.isfinite(v)]
        if wrong:
            bad.append(f"{name} = {wrong[0]}")
    raise NonFiniteLossError(
        f"{where}: non-finite loss at step {step} ({', '.join(bad)}); training stopped before "
        "writing its outputs. Lower the learning rate or check the inputs, then rerun"
    )
