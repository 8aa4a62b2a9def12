"""Threshold ablation: collect the sweep's evaluations into a CSV and figures.

Each run of the sweep (one attention setting x one seed, fine-tuned from the same
pretrained checkpoint) is evaluated by ``eval-vqa`` / ``eval-rec``; this command
reads those evaluation JSONs and writes

* ``ablation.csv``: one row per run and metric (task, mode, threshold, window,
  seed, metric, accuracy);
* ``ablation_summary.csv``: mean and sample std over seeds per setting and metric;
* ``ablation_vqa.png``: like the paper's Fig 5, four panels (Yes/No, Number, Other,
  Overall accuracy against T, mean +- std over seeds); the local-window baselines
  are drawn as horizontal bands (mean +- std) labelled ``Local-w``;
* ``ablation_rec.png``: REC accuracy per split against T.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from tbkin.atomic import atomic_path
from tbkin.errors import DataFormatError

log = logging.getLogger(__name__)

VQA_PANELS = (("yes/no", "Yes/No"), ("number", "Number"), ("other", "Other"), ("overall", "Overall"))


@dataclass(frozen=True)
class RunSetting:
    mode: str
    threshold: float
    window: int | None
    seed: int

    @property
    def label(self) -> str:
        if self.mode == "local":
            return f"Local-{self.window}"
        return "Base" if self.threshold <= 0 else f"TBKIN-{self.threshold:g}"


def _setting(doc: dict, path: str) -> RunSetting:
    try:
        att = doc["attention"]
        return RunSetting(att["mode"], float(att["threshold"]), att.get("window"), int(doc["seed"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataFormatError(f"{path}: evaluation has no attention/seed fields ({exc})") from None


def collect_rows(vqa_evals: Iterable[str], rec_evals: Iterable[str]) -> pd.DataFrame:
    rows = []
    for task, paths in (("vqa", vqa_evals), ("rec", rec_evals)):
        for path in paths:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
            s = _setting(doc, path)
            base = dict(task=task, setting=s.label, mode=s.mode, threshold=s.threshold,
                        window=s.window, seed=s.seed)
            if task == "vqa":
                metrics = {"overall": doc["accuracy"]["overall"], **doc["accuracy"]["per_answer_type"]}
            else:
                metrics = dict(doc["accuracy"])
            rows += [dict(base, metric=m, accuracy=float(v)) for m, v in metrics.items()]
    if not rows:
        raise DataFormatError("no evaluation files given")
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    keys = ["task", "setting", "mode", "threshold", "window", "metric"]
    summary = (runs.groupby(keys, dropna=False)["accuracy"]
               .agg(mean="mean", std="std", num_seeds="count").reset_index())
    summary["std"] = summary["std"].fillna(0.0)
    return summary.sort_values(["task", "metric", "mode", "threshold", "window"]).reset_index(drop=True)


def _panel(ax, summary: pd.DataFrame, metric: str, title: str) -> None:
    rows = summary[summary["metric"] == metric]
    thr = rows[rows["mode"] != "local"].sort_values("threshold")
    if len(thr):
        ax.errorbar(thr["threshold"], thr["mean"], yerr=thr["std"], marker="o", capsize=3,
                    color="tab:blue", label="threshold T (T=0: Base)")
    colors = iter(["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"])
    for _, row in rows[rows["mode"] == "local"].sort_values("window").iterrows():
        color = next(colors, "gray")
        ax.axhline(row["mean"], color=color, linestyle="--", label=row["setting"])
        ax.axhspan(row["mean"] - row["std"], row["mean"] + row["std"], color=color, alpha=0.15)
    ax.set_title(title)
    ax.set_xlabel("threshold T")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)


def plot(summary: pd.DataFrame, task: str, out_png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary[summary["task"] == task]
    if task == "vqa":
        panels = [(m, t) for m, t in VQA_PANELS if m in set(rows["metric"])]
    else:
        panels = [(m, f"REC {m}") for m in sorted(set(rows["metric"]))]
    if not panels:
        raise DataFormatError(f"no {task} results to plot")
    ncols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (metric, title) in zip(axes.flat, panels):
        _panel(ax, rows, metric, title)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    n_seeds = int(rows["num_seeds"].max())
    fig.suptitle(f"{task.upper()} accuracy vs attention threshold (mean ± std over {n_seeds} seeds)")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vqa-evals", nargs="*", default=[], help="eval-vqa JSONs of the sweep's runs")
    parser.add_argument("--rec-evals", nargs="*", default=[], help="eval-rec JSONs of the sweep's runs")
    parser.add_argument("--csv", required=True, help="per-run CSV")
    parser.add_argument("--summary", required=True, help="mean/std CSV")
    parser.add_argument("--vqa-png", help="four-panel VQA figure")
    parser.add_argument("--rec-png", help="REC figure")


def run(args: argparse.Namespace) -> int:
    runs = collect_rows(args.vqa_evals, args.rec_evals)
    summary = summarize(runs)
    write_csv(runs, args.csv)
    write_csv(summary, args.summary)
    if args.vqa_png:
        plot(summary, "vqa", args.vqa_png)
    if args.rec_png:
        plot(summary, "rec", args.rec_png)
    overall = summary[(summary["task"] == "vqa") & (summary["metric"] == "overall")]
    for _, row in overall.iterrows():
        log.info("VQA %-12s %.2f ± %.2f (%d seeds)", row["setting"], row["mean"], row["std"], row["num_seeds"])
    return 0
