"""Threshold ablation: collect the sweep's evaluations into CSVs and figures.

Each run of the sweep (one attention setting x one seed, fine-tuned from the same
pretrained checkpoint) is evaluated by ``eval-vqa`` / ``eval-rec``; this command
reads those evaluation JSONs and writes

* ``ablation.csv``: one row per run and metric (task, setting, setting_name, mode,
  threshold, window, seed, metric, accuracy); ``setting`` is the figure label
  (``Base``, ``TBKIN-0.1``, ``Local-3``), ``setting_name`` the workflow's name
  (``t0``, ``t0.1``, ``local3``);
* ``ablation_summary.csv``: per setting and metric the mean, sample std, number of
  seeds and the 95% Student-t interval of the mean over seeds (ci_low, ci_high);
* ``ablation_vqa.png``: like the paper's Fig 5, four panels (Yes/No, Number, Other,
  Overall accuracy against T), mean over seeds with a shaded 95% confidence band;
  the local-window baselines are horizontal lines with their band, labelled ``Local-w``;
* ``ablation_rec.png``: REC accuracy per split against T, drawn the same way;
* ``--paired``: ``paired.csv``, every setting minus Base (``t0``) of the same seed and
  task, with a 95% t-interval over seeds (:mod:`tbkin.evaluate.paired`):
  ``setting, task, metric, n_seeds, mean_diff, ci_low, ci_high``;
* ``--paired-png``: those differences against T, one panel per task and metric.

With a single seed a confidence interval is undefined: its CSV cells are empty and the
figures draw no band.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from tbkin.atomic import atomic_path
from tbkin.data.loaders import read_json
from tbkin.errors import DataFormatError
from tbkin.evaluate.paired import (BASE, PAIRED_COLUMNS, draw_band, log_differences, paired_differences, setting_name,
                                   setting_order, setting_threshold, t_interval, widen_flat_axis)

log = logging.getLogger(__name__)

VQA_PANELS = (("yes/no", "Yes/No"), ("number", "Number"), ("other", "Other"), ("overall", "Overall"))
TASKS = ("vqa", "rec")
LOCAL_COLORS = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


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

    @property
    def name(self) -> str:
        """The workflow's setting name (``t0.1``, ``local3``; Base is ``t0``)."""
        return setting_name(self.mode, self.threshold, self.window)


def _setting(doc: dict, path: str) -> RunSetting:
    try:
        att = doc["attention"]
        return RunSetting(att["mode"], float(att["threshold"]), att.get("window"), int(doc["seed"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataFormatError(f"{path}: evaluation has no attention/seed fields ({exc})") from None


def eval_metrics(doc: dict, task: str, path: str | Path) -> dict[str, float]:
    """Accuracy per metric of one evaluation JSON: VQA overall + per answer type, REC per split."""
    try:
        acc = doc["accuracy"]
        if task == "vqa":
            metrics = {"overall": acc["overall"], **acc["per_answer_type"]}
        elif task == "rec":
            metrics = dict(acc)
        else:
            raise ValueError(f"unknown task {task!r}")
        return {m: float(v) for m, v in metrics.items()}
    except KeyError as exc:
        raise DataFormatError(f"{path}: {task} evaluation has no key {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise DataFormatError(f"{path}: 'accuracy' is not a {task} evaluation ({exc})") from None


def read_eval(path: str | Path, task: str) -> tuple[RunSetting, dict[str, float]]:
    """(attention setting and seed, accuracy per metric) of an ``eval-vqa`` / ``eval-rec`` JSON."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataFormatError(f"{path}: an evaluation JSON should be an object")
    return _setting(doc, str(path)), eval_metrics(doc, task, path)


def collect_rows(vqa_evals: Iterable[str], rec_evals: Iterable[str]) -> pd.DataFrame:
    rows = []
    seen: dict[tuple, str] = {}
    for task, paths in (("vqa", vqa_evals), ("rec", rec_evals)):
        for path in paths:
            s, metrics = read_eval(path, task)
            key = (task, s.name, s.seed)
            if key in seen:  # the paired comparison needs one run per setting and seed
                raise DataFormatError(f"{path}: {task} run {s.name} seed {s.seed} is already in {seen[key]}")
            seen[key] = str(path)
            base = dict(task=task, setting=s.label, setting_name=s.name, mode=s.mode, threshold=s.threshold,
                        window=s.window, seed=s.seed)
            rows += [dict(base, metric=m, accuracy=v) for m, v in metrics.items()]
    if not rows:
        raise DataFormatError("no evaluation files given")
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    keys = ["task", "setting", "setting_name", "mode", "threshold", "window", "metric"]
    summary = (runs.groupby(keys, dropna=False)["accuracy"]
               .agg(mean="mean", std="std", num_seeds="count",
                    ci_low=lambda acc: t_interval(acc)[1], ci_high=lambda acc: t_interval(acc)[2])
               .reset_index())
    summary["std"] = summary["std"].fillna(0.0)
    return summary.sort_values(["task", "metric", "mode", "threshold", "window"]).reset_index(drop=True)


def metric_order(task: str, metrics: Iterable[str]) -> list[str]:
    """VQA: the paper's panel order then any other answer type; REC: splits alphabetically."""
    metrics = set(metrics)
    first = [m for m, _ in VQA_PANELS if m in metrics] if task == "vqa" else []
    return first + sorted(metrics - set(first))


def paired_table(runs: pd.DataFrame) -> pd.DataFrame:
    """``paired.csv``: every setting minus Base (``t0``) of the same task and seed."""
    diffs = paired_differences(runs, by=["task", "metric"], setting="setting_name")
    for task in sorted(set(runs["task"]) - set(diffs["task"])):
        log.warning("%s: no Base run (setting %s): no paired differences", task, BASE)
    for (task, name), group in diffs.groupby(["task", "setting_name"]):
        if (group["n_seeds"] == 0).any():
            log.warning("%s %s: no seed in common with Base (%s); its differences are empty", task, name, BASE)
    diffs = diffs.rename(columns={"setting_name": "setting"})
    order = {t: {m: i for i, m in enumerate(metric_order(t, diffs.loc[diffs.task == t, "metric"]))}
             for t in set(diffs["task"])}
    diffs = diffs.assign(_task=diffs["task"].map(TASKS.index),
                         _setting=diffs["setting"].map(setting_order),
                         _metric=[order[t][m] for t, m in zip(diffs["task"], diffs["metric"])])
    diffs = diffs.sort_values(["_task", "_setting", "_metric"])
    return diffs[PAIRED_COLUMNS].reset_index(drop=True)


def _figure(num_panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 2 if num_panels > 1 else 1
    nrows = (num_panels + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax in list(axes.flat)[num_panels:]:
        ax.axis("off")
    return plt, fig, list(axes.flat)[:num_panels]


def _save(plt, fig, out_png: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _panel(ax, summary: pd.DataFrame, metric: str, title: str) -> None:
    rows = summary[summary["metric"] == metric]
    thr = rows[rows["mode"] != "local"].sort_values("threshold")
    if len(thr):
        draw_band(ax, thr["threshold"], thr["mean"], thr["ci_low"], thr["ci_high"],
                  "threshold T (T=0: Base)", "tab:blue")
    colors = iter(LOCAL_COLORS)
    for _, row in rows[rows["mode"] == "local"].sort_values("window").iterrows():
        color = next(colors, "gray")
        ax.axhline(row["mean"], color=color, linestyle="--", label=row["setting"])
        if pd.notna(row["ci_low"]):
            ax.axhspan(row["ci_low"], row["ci_high"], color=color, alpha=0.15, linewidth=0)
    widen_flat_axis(ax)
    ax.set_title(title)
    ax.set_xlabel("threshold T")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)


def plot(summary: pd.DataFrame, task: str, out_png: str | Path) -> None:
    rows = summary[summary["task"] == task]
    titles = dict(VQA_PANELS) if task == "vqa" else {}
    panels = [(m, titles.get(m, f"{task.upper()} {m}")) for m in metric_order(task, rows["metric"])]
    if not panels:
        raise DataFormatError(f"no {task} results to plot")
    plt, fig, axes = _figure(len(panels))
    for ax, (metric, title) in zip(axes, panels):
        _panel(ax, rows, metric, title)
    axes[0].legend(fontsize=8)
    n_seeds = int(rows["num_seeds"].max())
    fig.suptitle(f"{task.upper()} accuracy vs attention threshold (mean and 95% CI over {n_seeds} seeds)")
    _save(plt, fig, out_png)


def plot_paired(paired: pd.DataFrame, out_png: str | Path) -> None:
    """Each setting minus Base (same seed) against T, with its 95% t-interval band."""
    panels = [(t, m) for t in TASKS for m in metric_order(t, paired.loc[paired.task == t, "metric"])]
    if not panels:
        raise DataFormatError("no paired differences to plot (is there a Base run, setting t0?)")
    plt, fig, axes = _figure(len(panels))
    for ax, (task, metric) in zip(axes, panels):
        rows = paired[(paired.task == task) & (paired.metric == metric)]
        thresholds = rows["setting"].map(setting_threshold)
        thr = rows[thresholds.notna()].assign(T=thresholds[thresholds.notna()]).sort_values("T")
        if len(thr):
            draw_band(ax, thr["T"], thr["mean_diff"], thr["ci_low"], thr["ci_high"], "TBKIN(T) - Base", "tab:blue")
        colors = iter(LOCAL_COLORS)
        for _, row in rows[thresholds.isna()].iterrows():
            color = next(colors, "gray")
            ax.axhline(row["mean_diff"], color=color, linestyle="--", label=f"{row['setting']} - Base")
            if pd.notna(row["ci_low"]):
                ax.axhspan(row["ci_low"], row["ci_high"], color=color, alpha=0.15, linewidth=0)
        ax.axhline(0.0, color="black", linewidth=0.8)
        widen_flat_axis(ax)
        ax.set_title(f"{task.upper()} {metric}")
        ax.set_xlabel("threshold T")
        ax.set_ylabel("difference to Base (points)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    n_seeds = int(paired["n_seeds"].max())
    fig.suptitle(f"Difference to Base, paired by seed (mean and 95% t-interval, up to {n_seeds} seeds)")
    _save(plt, fig, out_png)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    # NaN (an undefined interval) becomes an empty cell, never the text "nan"
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f", na_rep="")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vqa-evals", nargs="*", default=[], help="eval-vqa JSONs of the sweep's runs")
    parser.add_argument("--rec-evals", nargs="*", default=[], help="eval-rec JSONs of the sweep's runs")
    parser.add_argument("--csv", required=True, help="per-run CSV")
    parser.add_argument("--summary", required=True, help="mean / std / 95%% CI CSV per setting and metric")
    parser.add_argument("--vqa-png", help="four-panel VQA figure")
    parser.add_argument("--rec-png", help="REC figure")
    parser.add_argument("--paired", help="paired.csv: each setting minus Base (t0) of the same seed, 95%% t-interval")
    parser.add_argument("--paired-png", help="figure of the paired differences against T")


def run(args: argparse.Namespace) -> int:
    runs = collect_rows(args.vqa_evals, args.rec_evals)
    summary = summarize(runs)
    write_csv(runs, args.csv)
    write_csv(summary, args.summary)
    if args.vqa_png:
        plot(summary, "vqa", args.vqa_png)
    if args.rec_png:
        plot(summary, "rec", args.rec_png)
    if args.paired or args.paired_png:
        paired = paired_table(runs)
        if args.paired:
            write_csv(paired, args.paired)
        if args.paired_png:
            plot_paired(paired, args.paired_png)
        log_differences(paired[paired.metric == "overall"], ["task", "setting"])
    overall = summary[(summary["task"] == "vqa") & (summary["metric"] == "overall")]
    for _, row in overall.iterrows():
        log.info("VQA %-12s %.2f ± %.2f (%d seeds)", row["setting"], row["mean"], row["std"], row["num_seeds"])
    return 0
