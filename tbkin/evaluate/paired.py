"""Seed-paired differences against Base with a 95% Student-t confidence interval.

Every setting of the threshold ablation (and of the clutter experiment) is fine-tuned
with the same seeds as Base (T = 0, setting ``t0``). Runs of one seed share the
pretrained checkpoint, the data order and the head's initialisation, so the
difference ``setting - Base`` *of the same seed* removes much of the seed-to-seed
variation. For each setting we take those per-seed differences d_1 .. d_n (only
seeds that both runs have) and report

    mean_diff = mean(d)
    CI        = mean_diff ± t_{0.975, n-1} · sd(d) / sqrt(n)     (sd with n - 1)

i.e. the two-sided 95% **Student-t interval** of the mean paired difference. It
assumes the differences are roughly normal; with the usual 3 seeds the interval is
wide (t_{0.975, 2} ≈ 4.30), which is the honest answer. With fewer than 2 seeds the
interval is undefined (NaN, written as empty CSV cells).

The same t-interval (of a mean, unpaired) gives the bands of the ablation plots.

Setting names are those of the workflow: ``t<T>`` (threshold T, ``t0`` = Base) and
``local<w>`` (local window w); see :func:`setting_name`.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from tbkin.errors import DataFormatError

log = logging.getLogger(__name__)

BASE = "t0"
CONFIDENCE = 0.95
PAIRED_COLUMNS = ["setting", "task", "metric", "n_seeds", "mean_diff", "ci_low", "ci_high"]
_SETTING = re.compile(r"^(?:t(?P<t>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)|local(?P<w>[0-9]+))$")


def setting_name(mode: str, threshold: float, window: int | None) -> str:
    """The workflow's name of an attention setting: ``t0.1``, ``t0`` (Base, also full attention), ``local3``."""
    if mode == "local":
        return f"local{int(window)}"
    return f"t{float(threshold) if mode == 'threshold' else 0.0:g}"


def setting_order(name: str) -> tuple:
    """Sort key: thresholds ascending, then local windows ascending, then anything else by name."""
    m = _SETTING.match(name)
    if m is None:
        return (2, 0.0, name)
    if m.group("t") is not None:
        return (0, float(m.group("t")), name)
    return (1, float(m.group("w")), name)


def setting_threshold(name: str) -> float | None:
    """T of a ``t<T>`` setting name; None for other names."""
    m = _SETTING.match(name)
    return float(m.group("t")) if m and m.group("t") is not None else None


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): two-sided Student-t confidence interval of the mean.

    ``low``/``high`` are NaN with fewer than 2 values (no spread to estimate); with
    identical values they equal the mean.
    """
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def paired_differences(runs: pd.DataFrame, by: Sequence[str], value: str = "accuracy",
                       setting: str = "setting", seed: str = "seed", base: str = BASE) -> pd.DataFrame:
    """Per group of ``by`` columns and setting other than ``base``: the seed-paired
    difference ``setting - base`` of ``value``.

    ``runs`` has one row per (``by``..., setting, seed). Returns columns ``by``...,
    setting, n_seeds, mean_diff, ci_low, ci_high (see the module docstring); a setting
    without any seed in common with Base gets n_seeds 0 and NaN statistics. Groups
    without a Base run are left out (there is nothing to compare with).
    """
    by = list(by)
    dup = runs.duplicated(by + [setting, seed], keep=False)
    if dup.any():
        row = runs[dup].iloc[0]
        raise DataFormatError(f"two runs for {dict(row[by + [setting, seed]])}: cannot pair by seed")
    rows = []
    for key, group in runs.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        base_values = group[group[setting] == base].set_index(seed)[value]
        if base_values.empty:
            continue
        for name in sorted(set(group[setting]) - {base}, key=setting_order):
            other = group[group[setting] == name].set_index(seed)[value]
            common = sorted(set(other.index) & set(base_values.index))
            diffs = [float(other[s]) - float(base_values[s]) for s in common]
            mean, low, high = t_interval(diffs)
            rows.append({**dict(zip(by, key)), setting: name, "n_seeds": len(common),
                         "mean_diff": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=by + [setting, "n_seeds", "mean_diff", "ci_low", "ci_high"])


def log_differences(rows: pd.DataFrame, labels: Sequence[str]) -> None:
    """One log line per paired difference: its ``labels`` columns, the mean and the interval."""
    for _, row in rows.iterrows():
        what = ", ".join(f"{column} {row[column]}" for column in labels)
        log.info("%s - Base: %+.2f [%.2f, %.2f] (%d seeds)", what, row["mean_diff"], row["ci_low"],
                 row["ci_high"], row["n_seeds"])


def draw_band(ax, x, mean, low, high, label: str, color, marker: str = "o") -> None:
    """Mean line with markers and a shaded confidence band (gaps where the CI is NaN)."""
    ax.plot(x, mean, marker=marker, color=color, label=label)
    ax.fill_between(x, np.asarray(low, float), np.asarray(high, float), color=color, alpha=0.2, linewidth=0)


def widen_flat_axis(ax, pad: float = 1.0) -> None:
    """A panel whose values are all equal (e.g. identical accuracies) gets a readable
    ±``pad`` y range instead of matplotlib's range of rounding noise."""
    low, high = ax.get_ylim()
    if high - low < 1e-6:
        middle = round((low + high) / 2, 6)
        ax.set_ylim(middle - pad, middle + pad)


def best_threshold(paired_csv: str, task: str = "vqa", metric: str = "overall") -> str:
    """The ``t<T>`` setting (T > 0) of ``paired.csv`` with the largest mean gain over Base
    on ``task`` / ``metric``: the T the clutter experiment compares with Base."""
    table = pd.read_csv(paired_csv)
    rows = table[(table.task == task) & (table.metric == metric) & table.setting.map(
        lambda name: (setting_threshold(name) or 0.0) > 0)]
    if rows.empty or rows.mean_diff.isna().all():
        raise DataFormatError(f"{paired_csv}: no threshold setting with a {task} {metric} difference to Base")
    return str(rows.loc[rows.mean_diff.idxmax(), "setting"])
