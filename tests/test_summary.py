"""`tbkin summary`: the results table from a run's files, and the README's copy of it."""
import json
import re
from pathlib import Path

import pytest

from tbkin.cli import main
from tbkin.evaluate import summary

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_MARKER = "<!-- table: tbkin summary results/ -->"

VQA_EVAL = {
    "dataset": "shapes", "split": "val", "threshold": 0.05,
    "attention": {"mode": "threshold", "threshold": 0.05, "window": None}, "readout": "cls", "seed": 0,
    "accuracy": {"overall": 40.03, "per_answer_type": {"yes/no": 54.83, "number": 55.95, "other": 25.17},
                 "per_question_type": {"what shape is the": 21.6, "what color is the": 16.6}},
    "num_questions": 1200,
    "question_type_prior": {"overall": 36.47, "per_answer_type": {"yes/no": 55.86, "number": 21.46, "other": 26.38},
                            "per_question_type": {"what shape is the": 21.6, "what color is the": 16.6}},
    "gain_over_prior": 3.56, "left_out_questions": 0, "predictions": "results/vqa_predictions.json",
}
REC_EVAL = {
    "dataset": "shapes", "threshold": 0.05, "attention": {"mode": "threshold", "threshold": 0.05, "window": None},
    "seed": 0, "accuracy": {"val": 87.92, "testA": 89.18, "testB": 92.43},
    "num_expressions": {"val": 240, "testA": 240, "testB": 240},
    "proposal_upper_bound": {"val": 98.5, "testA": 99.0, "testB": 97.25}, "predictions": "p.json",
}
DETECTOR = {"map_50": 0.9991, "map_50_95": 0.8612, "attribute_accuracy_on_gt_boxes": {"color": 1.0, "size": 0.995},
            "train_seconds": 203.4, "iterations": 400, "precision": "fp32", "loss_history": []}
EDGES = {"pairs": 600, "cross_edges": 2132, "correct_edges": 1664, "precision": 0.7805, "recall": 0.9343}
PROBE = {
    "color": {"own_image": 19.2, "random_image": 18.9, "difference": 0.3, "masked_words": 673, "chance": 16.67},
    "shape": {"own_image": None, "random_image": None, "difference": None, "masked_words": 0, "chance": 20.0},
    "all": {}, "precision": "bf16",
}
LOG = [
    {"step": 10, "lr": 1e-4, "loss": 16.1, "mlm": 4.771, "mrm": 3.229, "skm": 7.431, "itm": 0.6951},
    {"step": 20, "lr": 2e-4, "loss": 9.0, "mlm": 2.0, "mrm": 2.9, "skm": 5.0, "itm": 0.694},
    {"step": 300, "lr": 0.0, "loss": 8.0, "mlm": 0.812, "mrm": 2.538, "skm": 3.971, "itm": 0.6924},
]
PRETRAIN_RUN = {"task": "pretrain", "settings": {"steps": 300}, "world_size": 1, "steps": 300, "steps_this_run": 300,
                "train_seconds": 197.2, "samples_per_second": 48.7, "precision": "bf16"}
VQA_RUN = {"task": "vqa", "settings": {"epochs": 2}, "world_size": 2, "steps": 450, "train_seconds": 253.0,
           "samples_per_second": 62.0, "precision": "fp32"}
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(seconds: float) -> str:
    return BENCH_HEADER + f"{seconds}\t0:00:00\t1\t1\t1\t1\t0\t0\t50\t1\n"


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    files = {
        "vqa_eval.json": json.dumps(VQA_EVAL),
        "rec_eval.json": json.dumps(REC_EVAL),
        "detector/metrics.json": json.dumps(DETECTOR),
        "graph/edge_metrics_val.json": json.dumps(EDGES),
        "pretrain/probe.json": json.dumps(PROBE),
        "pretrain/log.jsonl": "".join(json.dumps(r) + "\n" for r in LOG),
        "pretrain/run.json": json.dumps(PRETRAIN_RUN),
        "finetune/vqa/run.json": json.dumps(VQA_RUN),
        # no finetune/rec/run.json: that row reads "not run"
        "benchmarks/features/train_detector.tsv": bench(203.4),
        "benchmarks/pretrain/pretrain.tsv": bench(230.0),
        "benchmarks/finetune/vqa.tsv": BENCH_HEADER + "250\t0\t1\t1\t1\t1\t0\t0\t50\t1\n" + "260\t0\t1\t1\t1\t1\t0\t0\t50\t1\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# The shape of each row's value when its file exists (a full match); an absent file
# gives the row's "not run (no <file>)" marker instead.
N2 = r"-?[\d,]+\.\d{2}"
PCT = rf"(?:{N2}|n/a)"
KEYED = rf"(?:[^,;]+ {PCT}(?:, [^,;]+ {PCT})*|none)"
RUN = r"(?:bf16|fp32|precision not recorded), [\d,]+ s"
VALUE_SHAPES = {
    "VQA accuracy, overall": N2,
    "VQA accuracy per answer type": KEYED,
    "VQA accuracy per question type":
        rf"(?:[^;]+ {PCT}(?:; [^;]+ {PCT})*|none|\d+ types; none scored|\d+ types; lowest .+ {PCT}, highest .+ {PCT})",
    "Question-type prior, overall": N2,
    "Question-type prior per answer type": KEYED,
    "VQA gain over the prior": r"[+-][\d,]+\.\d{2}",
    "VQA run": r"\S+ \S+, [\d,]+ questions; .+ attention.*; readout \S+; seed \S+(?:; \d+ left out \(skipped images\))?",
    "REC accuracy": KEYED,
    "REC proposal upper bound": KEYED,
    "Detector box mAP@0.5 (mAP@[.5:.95])": r"\d\.\d{3} \(\d\.\d{3}\)",
    "Detector attribute accuracy on val boxes": r"(?:[^,]+ \d\.\d{3}(?:, [^,]+ \d\.\d{3})*|none)",
    "Cross edges against the gold, val": r"precision \S+, recall \S+ \([\d,]+ edges, [\d,]+ pairs\)",
    "Probe, colour words: own / random image": rf"{PCT} / {PCT} \(chance {PCT}, [\d,]+ words\)",
    "Probe, shape words: own / random image": rf"{PCT} / {PCT} \(chance {PCT}, [\d,]+ words\)",
    "Pretraining ITM loss, first → last window": r"-?\d+\.\d{3} → -?\d+\.\d{3} \(steps \S+ → \S+\)",
    "Pretraining other losses, first → last window":
        r"[A-Z]+ -?[\d,]+\.\d{2} → -?[\d,]+\.\d{2}(?:, [A-Z]+ -?[\d,]+\.\d{2} → -?[\d,]+\.\d{2})*",
    "Detector training": rf"{RUN}, [\d,]+ iterations",
    "Pretraining": rf"{RUN}, [\d,]+ steps, [\d,]+\.\d samples/s, \d+ process(?:es)?",
    "VQA fine-tuning": rf"{RUN}, [\d,]+ epochs, [\d,]+\.\d samples/s, \d+ process(?:es)?",
    "REC fine-tuning": rf"{RUN}, [\d,]+ epochs, [\d,]+\.\d samples/s, \d+ process(?:es)?",
    "Slowest steps, wall time": r"\S+ [\d,]+ s(?:, \S+ [\d,]+ s)*(?:; \d+ more)?",
    "All steps, wall time summed": r"[\d,]+ s over \d+ steps \(steps that ran side by side count in full\)",
}


def not_run_markers(tmp_path) -> dict[str, str]:
    empty = tmp_path / "empty-results"
    empty.mkdir()
    return dict(summary.summary_rows(empty))


def check_value_shapes(rows: list[list[str]], markers: dict[str, str]) -> None:
    for label, value in rows:
        value = value.replace("\\|", "|")
        assert value == markers[label] or re.fullmatch(VALUE_SHAPES[label], value), \
            f"row {label!r}: {value!r} is not in the shape `tbkin summary` prints"


def table_rows(markdown: str) -> list[list[str]]:
    """Cells of every table line, header and separator included."""
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in markdown.splitlines() if line.strip().startswith("|")]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def test_table_rows_and_values(results, capsys):
    before = snapshot(results)
    assert main(["summary", str(results)]) == 0
    printed = capsys.readouterr().out
    assert snapshot(results) == before  # reads only

    rows = table_rows(printed)
    assert rows[0] == list(summary.HEADER)
    assert rows[1] == ["---", "---"]
    values = dict((label, value) for label, value in rows[2:])
    assert [label for label, _ in rows[2:]] == list(summary.ROW_LABELS)

    assert values["VQA accuracy, overall"] == "40.03"
    assert values["VQA accuracy per answer type"] == "yes/no 54.83, number 55.95, other 25.17"
    assert values["VQA accuracy per question type"] == "what color is the 16.60; what shape is the 21.60"
    assert values["Question-type prior, overall"] == "36.47"
    assert values["Question-type prior per answer type"] == "yes/no 55.86, number 21.46, other 26.38"
    assert values["VQA gain over the prior"] == "+3.56"
    assert values["VQA run"] == "shapes val, 1,200 questions; threshold attention T = 0.05; readout cls; seed 0"
    assert values["REC accuracy"] == "val 87.92, testA 89.18, testB 92.43"
    assert values["REC proposal upper bound"] == "val 98.50, testA 99.00, testB 97.25"
    assert values["Detector box mAP@0.5 (mAP@[.5:.95])"] == "0.999 (0.861)"
    assert values["Detector attribute accuracy on val boxes"] == "color 1.000, size 0.995"
    assert values["Cross edges against the gold, val"] == "precision 0.7805, recall 0.9343 (2,132 edges, 600 pairs)"
    assert values["Probe, colour words: own / random image"] == "19.20 / 18.90 (chance 16.67, 673 words)"
    assert values["Probe, shape words: own / random image"] == "n/a / n/a (chance 20.00, 0 words)"
    assert values["Pretraining ITM loss, first → last window"] == "0.695 → 0.692 (steps 10 → 300)"
    assert values["Pretraining other losses, first → last window"] == "MLM 4.77 → 0.81, MRM 3.23 → 2.54, SKM 7.43 → 3.97"
    assert values["Detector training"] == "fp32, 203 s, 400 iterations"
    assert values["Pretraining"] == "bf16, 197 s, 300 steps, 48.7 samples/s, 1 process"
    assert values["VQA fine-tuning"] == "fp32, 253 s, 2 epochs, 62.0 samples/s, 2 processes"
    assert values["REC fine-tuning"] == "not run (no finetune/rec/run.json)"
    assert values["Slowest steps, wall time"] == "finetune/vqa 255 s, pretrain/pretrain 230 s, features/train_detector 203 s"
    assert values["All steps, wall time summed"].startswith("688 s over 3 steps")
    assert set(VALUE_SHAPES) == set(summary.ROW_LABELS)
    check_value_shapes(rows[2:], not_run_markers(results.parent))


def test_empty_results_folder_is_all_not_run(tmp_path, capsys):
    assert main(["summary", str(tmp_path)]) == 0
    rows = table_rows(capsys.readouterr().out)[2:]
    assert [label for label, _ in rows] == list(summary.ROW_LABELS)
    assert all(value.startswith("not run (no ") for _, value in rows)


@pytest.mark.parametrize("name, text, message", [
    ("vqa_eval.json", "{not json", "vqa_eval.json: not valid JSON"),
    ("vqa_eval.json", json.dumps({**VQA_EVAL, "accuracy": {"overall": 40.0}}), "missing field 'accuracy.per_answer_type'"),
    ("vqa_eval.json", json.dumps(VQA_EVAL).replace("40.03", "NaN"), "vqa_eval.json: not valid JSON: non-finite number NaN"),
    ("pretrain/log.jsonl", json.dumps(LOG[0]) + "\n{oops\n", "pretrain/log.jsonl: line 2: not valid JSON"),
    ("pretrain/log.jsonl", json.dumps({"step": 10, "mlm": 1.0}) + "\n", "log.jsonl: missing field 'itm'"),
    ("pretrain/run.json", json.dumps({k: v for k, v in PRETRAIN_RUN.items() if k != "train_seconds"}),
     "pretrain/run.json: missing field 'train_seconds'"),
    ("detector/metrics.json", "[1, 2]", "detector/metrics.json: the top level should be a JSON object"),
    ("benchmarks/pretrain/pretrain.tsv", "s\th:m:s\nabc\t0\n", "pretrain.tsv: line 2: no number in column 's'"),
])
def test_garbled_file_is_an_error_naming_it(results, capsys, name, text, message):
    (results / name).write_text(text)
    assert main(["summary", str(results)]) == 2
    assert message in capsys.readouterr().err


def test_missing_results_folder_is_an_error(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not a results folder" in capsys.readouterr().err


def test_readme_table_has_the_command_format(tmp_path):
    """The README's results table is this command's output: same header, same rows, in order,
    and every value either the row's "not run" marker or in the shape the command prints."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert TABLE_MARKER in lines, f"README.md has no {TABLE_MARKER!r} line above its results table"
    start = lines.index(TABLE_MARKER) + 1
    block = []
    for line in lines[start:]:
        if not line.strip().startswith("|"):
            break
        block.append(line)
    rows = table_rows("\n".join(block))
    assert rows[:2] == [list(summary.HEADER), ["---", "---"]]
    assert all(len(row) == 2 for row in rows), "every row has a figure and a value"
    assert [label for label, _ in rows[2:]] == list(summary.ROW_LABELS)
    # exactly the command's line format, so a row cannot be typed in another shape
    rendered = summary.markdown_table([(label, value.replace("\\|", "|")) for label, value in rows[2:]])
    assert rendered.splitlines() == [line.strip() for line in block]
    check_value_shapes(rows[2:], not_run_markers(tmp_path))
    # and only one results table carries the marker
    assert lines.count(TABLE_MARKER) == 1


def test_many_question_types_give_the_lowest_and_highest(results):
    per_type = {f"type {i:02d}": float(i) for i in range(20)}
    doc = {**VQA_EVAL, "accuracy": {**VQA_EVAL["accuracy"], "per_question_type": per_type}}
    (results / "vqa_eval.json").write_text(json.dumps(doc))
    values = dict(summary.summary_rows(results))
    assert values["VQA accuracy per question type"] == "20 types; lowest type 00 0.00, highest type 19 19.00"
