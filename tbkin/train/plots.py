"""``tbkin plot-losses LOG.jsonl --output curves.png``: one panel per loss of a training log.

Plots every numeric field of the log records whose name is ``loss`` or a task name
(any key except step, lr, throughput and timing fields) against ``step``.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from tbkin.atomic import atomic_path
from tbkin.errors import TbkinError
from tbkin.train.loop import read_jsonl

NOT_LOSSES = {"step", "lr", "samples_per_s", "data_share", "epoch", "time"}


def loss_series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """name -> (steps, values) for every loss field of the records."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key in NOT_LOSSES or not isinstance(value, (int, float)) or "step" not in record:
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(record["step"])
            values.append(float(value))
    return series


# Loss of a model that has learnt nothing, per task: drawn so that "flat at chance" is
# visible at a glance instead of an autoscaled axis making it look like noise.
CHANCE_LEVELS = {"itm": math.log(2)}   # ITM: two balanced classes


def plot_losses(log_path: str | Path, output: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(log_path)
    series = loss_series(records)
    if not series:
        raise TbkinError(f"{log_path}: no loss records to plot")
    names = sorted(series, key=lambda n: (n != "loss", n))
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = series[name]
        ax.plot(steps, values, marker="o", markersize=2)
        if name in CHANCE_LEVELS:
            chance = CHANCE_LEVELS[name]
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3f})")
            low, high = min(min(values), chance), max(max(values), chance)
            margin = max(0.1 * chance, 0.1 * (high - low))
            ax.set_ylim(max(0.0, low - margin), high + margin)
            ax.legend(loc="lower left", fontsize=8)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(output, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", help="JSONL training log")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--title", default="", help="figure title")


def run(args: argparse.Namespace) -> int:
    plot_losses(args.log, args.output, args.title)
    return 0
