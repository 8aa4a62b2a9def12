"""``tbkin clutter``: does the threshold help more when the images are more cluttered?

The clutter experiment fine-tunes Base (``t0``) and TBKIN settings on datasets
rendered with increasing clutter (level L), several seeds each, and evaluates every
run with ``eval-vqa`` / ``eval-rec``. Those evaluation JSONs are found by their
path, in the layout of the ablation's runs with one folder per level::

    <runs-dir>/level<L>/<task>-<setting>-seed<S>/eval.json

``L`` is a number (the clutter level, the figure's x axis), ``task`` is ``vqa`` or
``rec``, ``setting`` a workflow setting name (``t0`` = Base, ``t0.1``, ``local3``)
and ``S`` the seed. Give the folder (``--runs-dir``: every ``eval.json`` in that
layout is read) or the files themselves (``--evals``: each path must end in that
layout; a workflow rule passes its inputs so that stale runs are never picked up).
When the JSON records its attention setting and seed, they must agree with the path.

Outputs:

* ``--csv``: one row per run: ``level, setting, seed, vqa_overall, rec_val``
  (VQA overall accuracy and REC val accuracy; empty where that task was not run);
* ``--png``: TBKIN(T) - Base against the clutter level for both metrics, paired by
  seed (the mean difference and its 95% Student-t interval over seeds, see
  :mod:`tbkin.evaluate.paired`);
* ``--paired`` (optional): those differences as a CSV,
  ``level, setting, metric, n_seeds, mean_diff, ci_low, ci_high``.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from tbkin.atomic import atomic_path
from tbkin.data.loaders import read_json
from tbkin.errors import DataFormatError
from tbkin.evaluate.ablation import eval_metrics, write_csv
from tbkin.evaluate.paired import (
    BASE, draw_band, log_differences, paired_differences, setting_name, setting_order, widen_flat_axis,
)

log = logging.getLogger(__name__)

LAYOUT = "level<L>/<task>-<setting>-seed<S>/eval.json"
_RUN = re.compile(r"^(?P<task>vqa|rec)-(?P<setting>.+)-seed(?P<seed>[0-9]+)$")
_LEVEL = re.compile(r"^level(?P<level>[-+]?[0-9]*\.?[0-9]+)$")
# column of clutter.csv -> (task, metric of that task's evaluation)
METRICS = {"vqa_overall": ("vqa", "overall"), "rec_val": ("rec", "val")}
CSV_COLUMNS = ["level", "setting", "seed", *METRICS]


def parse_run_path(path: str | Path) -> tuple[float, str, str, int]:
    """(level, task, setting, seed) of ``.../level<L>/<task>-<setting>-seed<S>/eval.json``."""
    path = Path(path)
    run = _RUN.match(path.parent.name)
    level = _LEVEL.match(path.parent.parent.name)
    if path.name != "eval.json" or run is None or level is None:
        raise DataFormatError(f"{path}: not in the layout {LAYOUT}")
    return float(level["level"]), run["task"], run["setting"], int(run["seed"])


def find_evals(runs_dir: str | Path) -> list[Path]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise DataFormatError(f"{runs_dir}: no such directory")
    found = sorted(p for p in runs_dir.glob("level*/*-seed*/eval.json"))
    if not found:
        raise DataFormatError(f"{runs_dir}: no evaluation JSONs in the layout {LAYOUT}")
    return found


def _check_path_agrees(doc: dict, path: Path, setting: str, seed: int) -> None:
    """The path names the run; a JSON that says otherwise was copied to the wrong place."""
    att = doc.get("attention")
    if isinstance(att, dict) and "mode" in att:
        try:
            recorded = setting_name(att["mode"], att.get("threshold", 0.0), att.get("window"))
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}: unreadable 'attention' {att!r}") from None
        if recorded != setting:
            raise DataFormatError(f"{path}: the path says setting {setting}, "
                                  f"the evaluation's 'attention' says {recorded}")
    if doc.get("seed") is not None and int(doc["seed"]) != seed:
        raise DataFormatError(f"{path}: the path says seed {seed}, the evaluation's 'seed' says {doc['seed']}")


def collect(evals: Iterable[str | Path]) -> pd.DataFrame:
    """``clutter.csv`` rows (one per level, setting and seed) from evaluation JSONs."""
    values: dict[tuple[float, str, int], dict[str, float]] = {}
    sources: dict[tuple, Path] = {}
    for path in map(Path, evals):
        level, task, setting, seed = parse_run_path(path)
        key = (level, setting, seed)
        if (task, key) in sources:
            raise DataFormatError(f"{path}: same run as {sources[(task, key)]}")
        sources[(task, key)] = path
        doc = read_json(path)
        if not isinstance(doc, dict):
            raise DataFormatError(f"{path}: an evaluation JSON should be an object")
        _check_path_agrees(doc, path, setting, seed)
        metrics = eval_metrics(doc, task, path)
        for column, (col_task, metric) in METRICS.items():
            if col_task != task:
                continue
            if metric not in metrics:
                raise DataFormatError(f"{path}: no '{metric}' accuracy (has {sorted(metrics)})")
            values.setdefault(key, {})[column] = metrics[metric]
    if not values:
        raise DataFormatError("no evaluation files given")
    rows = [dict(level=lv, setting=s, seed=sd, **v) for (lv, s, sd), v in values.items()]
    df = pd.DataFrame(rows).reindex(columns=CSV_COLUMNS)
    if (df["level"] == df["level"].round()).all():
        df["level"] = df["level"].astype(int)  # "level 3", not "3.0"
    df["_order"] = df["setting"].map(setting_order)
    return df.sort_values(["level", "_order", "seed"]).drop(columns="_order").reset_index(drop=True)


def paired(runs: pd.DataFrame) -> pd.DataFrame:
    """Every setting minus Base (``t0``) of the same level and seed, per metric."""
    long = runs.melt(id_vars=["level", "setting", "seed"], value_vars=list(METRICS),
                     var_name="metric", value_name="accuracy").dropna(subset=["accuracy"])
    diffs = paired_differences(long, by=["level", "metric"])
    missing = sorted(set(runs["level"]) - set(diffs["level"]))
    if missing:
        log.warning("no Base (%s) run at clutter level(s) %s: nothing to compare there", BASE, missing)
    return diffs[["level", "setting", "metric", "n_seeds", "mean_diff", "ci_low", "ci_high"]]


def plot(diffs: pd.DataFrame, out_png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"vqa_overall": "VQA overall accuracy", "rec_val": "REC accuracy (val)"}
    panels = [m for m in METRICS if m in set(diffs["metric"])]
    if not panels:
        raise DataFormatError(f"no run has a Base ({BASE}) partner of the same level and seed: nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    colors = plt.get_cmap("tab10")
    settings = sorted(set(diffs["setting"]), key=setting_order)
    for ax, metric in zip(axes[0], panels):
        for i, name in enumerate(settings):
            rows = diffs[(diffs.metric == metric) & (diffs.setting == name)].sort_values("level")
            if len(rows):
                draw_band(ax, rows["level"], rows["mean_diff"], rows["ci_low"], rows["ci_high"],
                          f"{name} - Base", colors(i % 10))
        ax.axhline(0.0, color="black", linewidth=0.8)
        widen_flat_axis(ax)
        ax.set_title(titles[metric])
        ax.set_xlabel("clutter level")
        ax.set_ylabel("difference to Base (points)")
        ax.set_xticks(np.unique(diffs["level"].to_numpy()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n_seeds = int(diffs["n_seeds"].max())
    fig.suptitle(f"TBKIN - Base against clutter, paired by seed (mean and 95% t-interval, up to {n_seeds} seeds)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (f"Summarise the clutter experiment. Evaluation JSONs are found by their path, "
                          f"<runs-dir>/{LAYOUT} (L: clutter level, a number; task: vqa | rec; setting: "
                          f"t<T> with t0 = Base, or local<w>; S: seed).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs-dir", help=f"read every <runs-dir>/{LAYOUT}")
    source.add_argument("--evals", nargs="+", help=f"evaluation JSONs, each path ending in {LAYOUT}")
    parser.add_argument("--csv", required=True, help="clutter.csv: level, setting, seed, vqa_overall, rec_val")
    parser.add_argument("--png", help="figure: TBKIN - Base (mean and 95%% CI over seeds) against the level")
    parser.add_argument("--paired", help="CSV of the paired differences: level, setting, metric, n_seeds, "
                                         "mean_diff, ci_low, ci_high")


def run(args: argparse.Namespace) -> int:
    evals = find_evals(args.runs_dir) if args.runs_dir else args.evals
    runs = collect(evals)
    write_csv(runs, args.csv)
    if args.png or args.paired:
        diffs = paired(runs)
        if args.paired:
            write_csv(diffs, args.paired)
        if args.png:
            plot(diffs, args.png)
        log_differences(diffs, ["level", "metric", "setting"])
    log.info("%d runs at clutter levels %s", len(runs), sorted(set(runs["level"])))
    return 0
