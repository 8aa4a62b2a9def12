"""``tbkin summary RESULTS_DIR``: the figures of a run as one Markdown table.

Reads, and never writes, the files a run leaves below ``RESULTS_DIR``:

=================================  ==========================================================
file                               rows
=================================  ==========================================================
``vqa_eval.json``                  VQA accuracy (overall, per answer type, per question
                                   type), the question-type prior, the gain over it, the run
``rec_eval.json``                  REC accuracy and proposal upper bound per split
``detector/metrics.json``          box mAP, attribute accuracy, detector training
``graph/edge_metrics_val.json``    cross-edge precision and recall against the shapes gold
``pretrain/probe.json``            grounding probe: colour and shape words, own vs random image
``pretrain/log.jsonl``             first vs last logged window of ITM and the other losses
``pretrain/run.json``              pretraining precision, seconds, steps, samples/s
``finetune/vqa/run.json``          VQA fine-tuning precision, seconds, epochs, samples/s
``finetune/rec/run.json``          REC fine-tuning, the same
``benchmarks/**/*.tsv``            wall seconds of every step (Snakemake benchmark files)
=================================  ==========================================================

Output: a table ``| figure | value |`` with the rows of :data:`ROW_LABELS`, always
all of them, always in that order. A row whose file is absent reads
``not run (no <file>)``. A file that exists but cannot be read, is not strict JSON
(NaN and infinity included), or lacks a field a row needs stops the command with an
error naming the file and the field. The fixed labels let a test check that the
README's results table has exactly this command's format.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable

from tbkin.errors import DataFormatError

HEADER = ("figure", "value")
NOT_RUN = "not run"
MAX_QUESTION_TYPES = 12   # more than this (VQA v2 has 65): the lowest and the highest only
SLOWEST_STEPS = 8

VQA_EVAL = "vqa_eval.json"
REC_EVAL = "rec_eval.json"
DETECTOR_METRICS = "detector/metrics.json"
EDGE_METRICS = "graph/edge_metrics_val.json"
PROBE = "pretrain/probe.json"
PRETRAIN_LOG = "pretrain/log.jsonl"
PRETRAIN_RUN = "pretrain/run.json"
VQA_RUN = "finetune/vqa/run.json"
REC_RUN = "finetune/rec/run.json"
BENCHMARKS = "benchmarks"


class SummaryError(DataFormatError):
    """A results file exists but cannot be read, or lacks a field the summary needs."""


# ---------------------------------------------------------------------------- reading
def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:   # JSONDecodeError is a ValueError
        raise SummaryError(f"{where}: not valid JSON: {exc}") from None


class Results:
    """Lazy, read-only access to the files of one results folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SummaryError(f"{self.root}: not a results folder")
        self._cache: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        return self.root / name

    def _text(self, name: str) -> str | None:
        path = self.path(name)
        if not path.exists():
            return None
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SummaryError(f"{path}: cannot read: {exc}") from None

    def json(self, name: str) -> Any:
        """The parsed file, or None when it does not exist."""
        if name not in self._cache:
            text = self._text(name)
            self._cache[name] = None if text is None else _parse_json(text, str(self.path(name)))
        return self._cache[name]

    def jsonl(self, name: str) -> list[dict] | None:
        """The records of a JSON-lines file, or None when it does not exist."""
        if name not in self._cache:
            text = self._text(name)
            if text is None:
                self._cache[name] = None
            else:
                records = []
                for number, line in enumerate(text.splitlines(), 1):
                    if line.strip():
                        record = _parse_json(line, f"{self.path(name)}: line {number}")
                        if not isinstance(record, dict):
                            raise SummaryError(f"{self.path(name)}: line {number}: not a JSON object")
                        records.append(record)
                if not records:
                    raise SummaryError(f"{self.path(name)}: no records")
                self._cache[name] = records
        return self._cache[name]

    def benchmarks(self) -> dict[str, float] | None:
        """Step name (path below benchmarks/, no .tsv) -> wall seconds; None when there are none."""
        folder = self.path(BENCHMARKS)
        files = sorted(folder.rglob("*.tsv")) if folder.is_dir() else []
        if not files:
            return None
        return {str(f.relative_to(folder).with_suffix("")): _benchmark_seconds(f) for f in files}


def _benchmark_seconds(path: Path) -> float:
    """Mean of the ``s`` column of a Snakemake benchmark file (one row per repeat)."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise SummaryError(f"{path}: cannot read: {exc}") from None
    if len(lines) < 2:
        raise SummaryError(f"{path}: expected a header and at least one row")
    header = lines[0].split("\t")
    if "s" not in header:
        raise SummaryError(f"{path}: no 's' column in the header")
    column = header.index("s")
    values = []
    for number, line in enumerate(lines[1:], 2):
        cells = line.split("\t")
        try:
            value = float(cells[column])
        except (IndexError, ValueError):
            raise SummaryError(f"{path}: line {number}: no number in column 's'") from None
        if not math.isfinite(value):
            raise SummaryError(f"{path}: line {number}: column 's' is not finite")
        values.append(value)
    return sum(values) / len(values)


def _field(doc: Any, where: Path | str, *keys: str) -> Any:
    value = doc
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise SummaryError(f"{where}: missing field '{'.'.join(keys[:depth + 1])}'")
        value = value[key]
    return value


def _number(doc: Any, where: Path | str, *keys: str, optional: bool = False) -> float | None:
    value = _field(doc, where, *keys)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SummaryError(f"{where}: field '{'.'.join(keys)}' should be a number, got {value!r}")
    return value


def _mapping(doc: Any, where: Path | str, *keys: str) -> dict[str, float]:
    value = _field(doc, where, *keys)
    if not isinstance(value, dict):
        raise SummaryError(f"{where}: field '{'.'.join(keys)}' should be an object")
    for name, item in value.items():
        if item is not None and (isinstance(item, bool) or not isinstance(item, (int, float))):
            raise SummaryError(f"{where}: field '{'.'.join(keys)}.{name}' should be a number, got {item!r}")
    return value


# -------------------------------------------------------------------------- formatting
def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _per_key(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {_pct(v)}" for k, v in values.items()) or "none"


def _seconds(value: float) -> str:
    return f"{value:,.0f} s"


# -------------------------------------------------------------------------------- rows
Row = Callable[[Results], str]


def _vqa(fn: Callable[[Any, Path], str]) -> Row:
    return _from_json(VQA_EVAL, fn)


def _from_json(name: str, fn: Callable[[Any, Path], str]) -> Row:
    def row(results: Results) -> str:
        doc = results.json(name)
        if doc is None:
            return f"{NOT_RUN} (no {name})"
        if not isinstance(doc, dict):
            raise SummaryError(f"{results.path(name)}: the top level should be a JSON object")
        return fn(doc, results.path(name))
    return row


def _question_types(doc: Any, where: Path) -> str:
    per_type = _mapping(doc, where, "accuracy", "per_question_type")
    if len(per_type) <= MAX_QUESTION_TYPES:
        return "; ".join(f"{k} {_pct(v)}" for k, v in sorted(per_type.items())) or "none"
    scored = [(k, v) for k, v in per_type.items() if v is not None]
    if not scored:
        return f"{len(per_type)} types; none scored"
    low = min(scored, key=lambda kv: (kv[1], kv[0]))
    high = max(scored, key=lambda kv: (kv[1], kv[0]))
    return f"{len(per_type)} types; lowest {low[0]} {_pct(low[1])}, highest {high[0]} {_pct(high[1])}"


def _attention(doc: Any, where: Path) -> str:
    mode = _field(doc, where, "attention", "mode")
    if mode == "threshold":
        return f"threshold attention T = {_number(doc, where, 'attention', 'threshold'):g}"
    if mode == "local":
        return f"local attention, window {_field(doc, where, 'attention', 'window')}"
    return f"{mode} attention"


def _vqa_run(doc: Any, where: Path) -> str:
    text = (f"{_field(doc, where, 'dataset')} {_field(doc, where, 'split')}, "
            f"{int(_number(doc, where, 'num_questions')):,} questions; {_attention(doc, where)}; "
            f"readout {doc.get('readout', 'cls')}; seed {_field(doc, where, 'seed')}")
    left_out = doc.get("left_out_questions") or 0
    return text + (f"; {left_out} left out (skipped images)" if left_out else "")


def _map_50(doc: Any, where: Path) -> str:
    return f"{_number(doc, where, 'map_50'):.3f} ({_number(doc, where, 'map_50_95'):.3f})"


def _attributes(doc: Any, where: Path) -> str:
    values = _mapping(doc, where, "attribute_accuracy_on_gt_boxes")
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items()) or "none"


def _edges(doc: Any, where: Path) -> str:
    precision = _number(doc, where, "precision", optional=True)
    recall = _number(doc, where, "recall", optional=True)
    fmt = lambda v: "n/a" if v is None else f"{v:g}"   # noqa: E731  (written rounded to 4 decimals)
    return (f"precision {fmt(precision)}, recall {fmt(recall)} "
            f"({int(_number(doc, where, 'cross_edges')):,} edges, {int(_number(doc, where, 'pairs')):,} pairs)")


def _probe(group: str) -> Row:
    def fn(doc: Any, where: Path) -> str:
        own = _number(doc, where, group, "own_image", optional=True)
        other = _number(doc, where, group, "random_image", optional=True)
        words = int(_number(doc, where, group, "masked_words"))
        chance = _number(doc, where, group, "chance", optional=True)
        return f"{_pct(own)} / {_pct(other)} (chance {_pct(chance)}, {words:,} words)"
    return _from_json(PROBE, fn)


def _windows(results: Results) -> tuple[dict, dict, Path] | None:
    records = results.jsonl(PRETRAIN_LOG)
    if records is None:
        return None
    return records[0], records[-1], results.path(PRETRAIN_LOG)


def _itm(results: Results) -> str:
    windows = _windows(results)
    if windows is None:
        return f"{NOT_RUN} (no {PRETRAIN_LOG})"
    first, last, where = windows
    return (f"{_number(first, where, 'itm'):.3f} → {_number(last, where, 'itm'):.3f} "
            f"(steps {_field(first, where, 'step')} → {_field(last, where, 'step')})")


def _other_losses(results: Results) -> str:
    windows = _windows(results)
    if windows is None:
        return f"{NOT_RUN} (no {PRETRAIN_LOG})"
    first, last, where = windows
    tasks = [t for t in ("mlm", "mrm", "skm") if t in first or t in last]
    if not tasks:
        raise SummaryError(f"{where}: no 'mlm', 'mrm' or 'skm' field")
    return ", ".join(f"{t.upper()} {_number(first, where, t):.2f} → {_number(last, where, t):.2f}" for t in tasks)


def _precision(doc: Any) -> str:
    return doc.get("precision") or "precision not recorded"


def _detector_training(doc: Any, where: Path) -> str:
    return (f"{_precision(doc)}, {_seconds(_number(doc, where, 'train_seconds'))}, "
            f"{int(_number(doc, where, 'iterations')):,} iterations")


def _training(unit: str) -> Callable[[Any, Path], str]:
    def fn(doc: Any, where: Path) -> str:
        amount = (_number(doc, where, "settings", "epochs") if unit == "epochs" else _number(doc, where, "steps"))
        processes = int(_number(doc, where, "world_size")) if "world_size" in doc else 1
        return (f"{_precision(doc)}, {_seconds(_number(doc, where, 'train_seconds'))}, {int(amount):,} {unit}, "
                f"{_number(doc, where, 'samples_per_second'):,.1f} samples/s, "
                f"{processes} process{'es' if processes != 1 else ''}")
    return fn


def _slowest(results: Results) -> str:
    steps = results.benchmarks()
    if steps is None:
        return f"{NOT_RUN} (no {BENCHMARKS}/**/*.tsv)"
    ranked = sorted(steps.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{name} {_seconds(s)}" for name, s in ranked[:SLOWEST_STEPS])
    rest = len(ranked) - SLOWEST_STEPS
    return text + (f"; {rest} more" if rest > 0 else "")


def _all_steps(results: Results) -> str:
    steps = results.benchmarks()
    if steps is None:
        return f"{NOT_RUN} (no {BENCHMARKS}/**/*.tsv)"
    return f"{_seconds(sum(steps.values()))} over {len(steps)} steps (steps that ran side by side count in full)"


ROWS: tuple[tuple[str, Row], ...] = (
    ("VQA accuracy, overall", _vqa(lambda d, w: _pct(_number(d, w, "accuracy", "overall")))),
    ("VQA accuracy per answer type", _vqa(lambda d, w: _per_key(_mapping(d, w, "accuracy", "per_answer_type")))),
    ("VQA accuracy per question type", _vqa(_question_types)),
    ("Question-type prior, overall", _vqa(lambda d, w: _pct(_number(d, w, "question_type_prior", "overall")))),
    ("Question-type prior per answer type",
     _vqa(lambda d, w: _per_key(_mapping(d, w, "question_type_prior", "per_answer_type")))),
    ("VQA gain over the prior", _vqa(lambda d, w: f"{_number(d, w, 'gain_over_prior'):+.2f}")),
    ("VQA run", _vqa(_vqa_run)),
    ("REC accuracy", _from_json(REC_EVAL, lambda d, w: _per_key(_mapping(d, w, "accuracy")))),
    ("REC proposal upper bound", _from_json(REC_EVAL, lambda d, w: _per_key(_mapping(d, w, "proposal_upper_bound")))),
    ("Detector box mAP@0.5 (mAP@[.5:.95])", _from_json(DETECTOR_METRICS, _map_50)),
    ("Detector attribute accuracy on val boxes", _from_json(DETECTOR_METRICS, _attributes)),
    ("Cross edges against the gold, val", _from_json(EDGE_METRICS, _edges)),
    ("Probe, colour words: own / random image", _probe("color")),
    ("Probe, shape words: own / random image", _probe("shape")),
    ("Pretraining ITM loss, first → last window", _itm),
    ("Pretraining other losses, first → last window", _other_losses),
    ("Detector training", _from_json(DETECTOR_METRICS, _detector_training)),
    ("Pretraining", _from_json(PRETRAIN_RUN, _training("steps"))),
    ("VQA fine-tuning", _from_json(VQA_RUN, _training("epochs"))),
    ("REC fine-tuning", _from_json(REC_RUN, _training("epochs"))),
    ("Slowest steps, wall time", _slowest),
    ("All steps, wall time summed", _all_steps),
)
ROW_LABELS: tuple[str, ...] = tuple(label for label, _ in ROWS)


def summary_rows(results_dir: str | Path) -> list[tuple[str, str]]:
    """(label, value) for every row of :data:`ROWS`, in order."""
    results = Results(results_dir)
    return [(label, row(results)) for label, row in ROWS]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[tuple[str, str]]) -> str:
    lines = [f"| {HEADER[0]} | {HEADER[1]} |", "|---|---|"]
    lines += [f"| {_cell(label)} | {_cell(value)} |" for label, value in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="the run's results folder (config key `results`)")


def run(args: argparse.Namespace) -> int:
    print(markdown_table(summary_rows(args.results_dir)))
    return 0
