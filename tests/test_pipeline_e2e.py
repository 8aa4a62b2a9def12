"""The whole DAG on config/test.yaml on this machine, then what an edit to a data file reruns.

(tests/test_slurm.py runs the same targets through the SLURM profile and checks the
jobs; this test checks the outputs and the DAG's view of the data files.)
"""
import json
import os
import time

import pytest

from workflow_helpers import planned_rules, snakemake, tail, write_override

TARGETS = ("vqa_eval.json", "rec_eval.json")


def edit(path) -> None:
    """A real edit (Snakemake ignores a newer file whose checksum is unchanged): append a newline."""
    with open(path, "a") as fh:
        fh.write("\n")
    later = time.time() + 5
    os.utime(path, (later, later))


@pytest.mark.slow
def test_whole_dag_then_data_edits_rerun_only_what_reads_them(tmp_path):
    override, results = write_override(tmp_path)
    targets = [str(results / t) for t in TARGETS]
    proc = snakemake("--cores", "2", *targets, configfiles=(override,), timeout=900)
    assert proc.returncode == 0, tail(proc)

    # every val question has exactly one answer, and the score is computed over all of them
    data = results / "data" / "shapes"
    questions = json.loads((data / "vqa" / "v2_OpenEnded_mscoco_val_questions.json").read_text())["questions"]
    vqa = json.loads((results / "vqa_eval.json").read_text())
    predictions = json.loads((results / "vqa_predictions.json").read_text())
    assert sorted(p["question_id"] for p in predictions) == sorted(q["question_id"] for q in questions)
    assert vqa["num_questions"] == len(questions)
    assert set(predictions[0]) == {"question_id", "answer"}
    rec = json.loads((results / "rec_eval.json").read_text())
    assert set(rec["accuracy"]) == {"val", "testA", "testB"}, rec
    assert not list(results.rglob("*.partial")), "half-written files left behind"

    again = snakemake("-n", *targets, configfiles=(override,))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, tail(again)

    # editing the val questions re-checks val and re-runs what reads them, never pretraining
    edit(data / "vqa" / "v2_OpenEnded_mscoco_val_questions.json")
    val_edit = snakemake("-n", *targets, configfiles=(override,))
    assert val_edit.returncode == 0, tail(val_edit)
    planned = planned_rules(val_edit)
    assert {"check_data", "eval_vqa"} <= planned and "pretrain" not in planned, (planned, tail(val_edit))

    # editing the train questions re-runs VQA fine-tuning
    edit(data / "vqa" / "v2_OpenEnded_mscoco_train_questions.json")
    train_edit = snakemake("-n", *targets, configfiles=(override,))
    assert train_edit.returncode == 0, tail(train_edit)
    assert "finetune_vqa" in planned_rules(train_edit), tail(train_edit)
