"""Seed-paired differences with a Student-t interval (ablation) and the clutter summary."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tbkin.cli import main
from tbkin.evaluate.paired import setting_name, setting_order, t_interval

# Hand computation for the differences [1, 2, 3]: mean 2, sample sd 1,
# t_{0.975, df=2} = 4.302652729911275, half width 4.302652729911275 / sqrt(3) = 2.484137...
T_975_2 = 4.302652729911275
HALF = T_975_2 * 1.0 / math.sqrt(3)
PNG = b"\x89PNG\r\n\x1a\n"


def test_t_interval_hand_worked():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert HALF == pytest.approx(2.4841377118, abs=1e-9)
    assert (low, high) == (pytest.approx(2.0 - HALF), pytest.approx(2.0 + HALF))
    # identical differences: no spread, the interval is the point
    assert t_interval([0.5, 0.5]) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5))
    # one seed: no interval
    mean, low, high = t_interval([4.0])
    assert mean == 4.0 and math.isnan(low) and math.isnan(high)


def test_setting_names_follow_the_workflow():
    assert setting_name("threshold", 0.0, None) == "t0"
    assert setting_name("full", 0.0, None) == "t0"
    assert setting_name("threshold", 0.05, None) == "t0.05"
    assert setting_name("local", 0.0, 3) == "local3"
    assert sorted(["local5", "t0.2", "local3", "t0", "t0.05"], key=setting_order) == \
        ["t0", "t0.05", "t0.2", "local3", "local5"]


def _vqa_eval(path: Path, mode: str, t: float, window, seed: int, overall: float, yes_no: float = 70.0) -> str:
    acc = {"overall": overall, "per_answer_type": {"yes/no": yes_no, "number": 30.0, "other": 40.0}}
    path.write_text(json.dumps({"attention": {"mode": mode, "threshold": t, "window": window}, "seed": seed,
                                "accuracy": acc}))
    return str(path)


def _rec_eval(path: Path, t: float, seed: int, val: float, test_a: float = 50.0) -> str:
    path.write_text(json.dumps({"attention": {"mode": "threshold", "threshold": t, "window": None}, "seed": seed,
                                "accuracy": {"val": val, "testA": test_a}}))
    return str(path)


@pytest.fixture
def sweep(tmp_path):
    """Base and T=0.1 with seeds 0-2; local3 with seed 0 only; REC Base and T=0.1 with seeds 0-2."""
    base = {0: 50.0, 1: 52.0, 2: 51.0}
    tbkin = {0: 51.0, 1: 54.0, 2: 54.0}             # differences 1, 2, 3
    vqa = [_vqa_eval(tmp_path / f"vqa-t0-{s}.json", "threshold", 0.0, None, s, v) for s, v in base.items()]
    vqa += [_vqa_eval(tmp_path / f"vqa-t0.1-{s}.json", "threshold", 0.1, None, s, v) for s, v in tbkin.items()]
    vqa.append(_vqa_eval(tmp_path / "vqa-local3-0.json", "local", 0.0, 3, 0, 49.0))
    rec = [_rec_eval(tmp_path / f"rec-t0-{s}.json", 0.0, s, 60.0 + s) for s in range(3)]
    rec += [_rec_eval(tmp_path / f"rec-t0.1-{s}.json", 0.1, s, 60.5 + s) for s in range(3)]   # +0.5 each
    return tmp_path, vqa, rec


def _run_ablation(tmp_path, vqa, rec):
    out = {k: tmp_path / n for k, n in [("csv", "a.csv"), ("summary", "s.csv"), ("vqa", "v.png"), ("rec", "r.png"),
                                         ("paired", "paired.csv"), ("paired_png", "paired.png")]}
    code = main(["ablation", "--vqa-evals", *vqa, "--rec-evals", *rec, "--csv", str(out["csv"]),
                 "--summary", str(out["summary"]), "--vqa-png", str(out["vqa"]), "--rec-png", str(out["rec"]),
                 "--paired", str(out["paired"]), "--paired-png", str(out["paired_png"])])
    return code, out


def test_paired_csv_against_hand_worked_example(sweep):
    tmp_path, vqa, rec = sweep
    code, out = _run_ablation(tmp_path, vqa, rec)
    assert code == 0
    text = out["paired"].read_text()
    assert text.splitlines()[0] == "setting,task,metric,n_seeds,mean_diff,ci_low,ci_high"
    assert "nan" not in text.lower()
    paired = pd.read_csv(out["paired"])
    row = paired[(paired.setting == "t0.1") & (paired.task == "vqa") & (paired.metric == "overall")].iloc[0]
    assert row["n_seeds"] == 3 and row["mean_diff"] == pytest.approx(2.0)
    assert row["ci_low"] == pytest.approx(2.0 - HALF, abs=1e-4) and row["ci_high"] == pytest.approx(2.0 + HALF, abs=1e-4)
    # equal per-type accuracies: difference 0 with a zero-width interval
    row = paired[(paired.setting == "t0.1") & (paired.metric == "yes/no")].iloc[0]
    assert (row["mean_diff"], row["ci_low"], row["ci_high"]) == (0.0, 0.0, 0.0)
    # the local window is compared with Base too; one common seed: empty interval cells
    local = paired[(paired.setting == "local3") & (paired.metric == "overall")].iloc[0]
    assert local["n_seeds"] == 1 and local["mean_diff"] == pytest.approx(-1.0)
    assert math.isnan(local["ci_low"]) and math.isnan(local["ci_high"])
    assert "local3,vqa,overall,1,-1.0000,," in text
    rec_val = paired[(paired.task == "rec") & (paired.metric == "val")].iloc[0]
    assert (rec_val["setting"], rec_val["n_seeds"]) == ("t0.1", 3)
    assert rec_val["mean_diff"] == pytest.approx(0.5) and rec_val["ci_low"] == pytest.approx(0.5)
    # Base itself is not a row; every (setting, task, metric) once
    assert "t0" not in set(paired.setting)
    assert not paired.duplicated(["setting", "task", "metric"]).any()
    assert len(paired) == 2 * 4 + 2   # VQA t0.1 and local3 x 4 metrics, REC t0.1 x 2 splits
    for key in ("vqa", "rec", "paired_png"):
        assert out[key].read_bytes()[:8] == PNG


def test_summary_has_the_t_interval_of_each_setting(sweep):
    tmp_path, vqa, rec = sweep
    code, out = _run_ablation(tmp_path, vqa, rec)
    assert code == 0
    summary = pd.read_csv(out["summary"])
    row = summary[(summary.setting_name == "t0.1") & (summary.task == "vqa") & (summary.metric == "overall")].iloc[0]
    # 51, 54, 54: mean 53, sd sqrt(3)
    half = T_975_2 * math.sqrt(3) / math.sqrt(3)
    assert row["mean"] == pytest.approx(53.0) and row["num_seeds"] == 3
    assert row["ci_low"] == pytest.approx(53.0 - half, abs=1e-4) and row["ci_high"] == pytest.approx(53.0 + half, abs=1e-4)
    local = summary[(summary.setting == "Local-3") & (summary.metric == "overall")].iloc[0]
    assert math.isnan(local["ci_low"])


def test_two_runs_of_one_seed_are_an_error_naming_the_files(sweep, capsys):
    tmp_path, vqa, rec = sweep
    duplicate = _vqa_eval(tmp_path / "copy.json", "threshold", 0.1, None, 1, 60.0)
    code, _ = _run_ablation(tmp_path, vqa + [duplicate], rec)
    assert code == 2
    err = capsys.readouterr().err
    assert "copy.json" in err and "vqa-t0.1-1.json" in err


def test_missing_accuracy_key_names_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"attention": {"mode": "threshold", "threshold": 0.0, "window": None}, "seed": 0,
                               "accuracy": {"overall": 50.0}}))
    assert main(["ablation", "--vqa-evals", str(bad), "--csv", str(tmp_path / "a.csv"),
                 "--summary", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "per_answer_type" in err


# ---- clutter ----------------------------------------------------------------------

def _clutter_run(root: Path, level, task: str, setting: str, seed: int, value: float) -> Path:
    path = root / f"level{level}" / f"{task}-{setting}-seed{seed}" / "eval.json"
    path.parent.mkdir(parents=True)
    t = float(setting[1:])
    if task == "vqa":
        _vqa_eval(path, "threshold", t, None, seed, value)
    else:
        _rec_eval(path, t, seed, value)
    return path


@pytest.fixture
def clutter_runs(tmp_path):
    root = tmp_path / "clutter"
    # level 0: TBKIN - Base = 1, 2, 3 (VQA) and 0.5 (REC); level 2: VQA only, seeds 0-1: 4, 6
    vqa0 = {"t0": [50.0, 52.0, 51.0], "t0.1": [51.0, 54.0, 54.0]}
    for setting, values in vqa0.items():
        for seed, v in enumerate(values):
            _clutter_run(root, 0, "vqa", setting, seed, v)
    for seed in range(3):
        _clutter_run(root, 0, "rec", "t0", seed, 60.0 + seed)
        _clutter_run(root, 0, "rec", "t0.1", seed, 60.5 + seed)
    for seed, (b, t) in enumerate([(40.0, 44.0), (41.0, 47.0)]):
        _clutter_run(root, 2, "vqa", "t0", seed, b)
        _clutter_run(root, 2, "vqa", "t0.1", seed, t)
    return root


def test_clutter_csv_and_paired_figure(clutter_runs, tmp_path):
    out_csv, out_png, out_paired = tmp_path / "clutter.csv", tmp_path / "clutter.png", tmp_path / "cp.csv"
    assert main(["clutter", "--runs-dir", str(clutter_runs), "--csv", str(out_csv), "--png", str(out_png),
                 "--paired", str(out_paired)]) == 0
    text = out_csv.read_text()
    assert text.splitlines()[0] == "level,setting,seed,vqa_overall,rec_val"
    assert "nan" not in text.lower()
    runs = pd.read_csv(out_csv)
    assert len(runs) == 6 + 4
    row = runs[(runs.level == 0) & (runs.setting == "t0.1") & (runs.seed == 1)].iloc[0]
    assert (row["vqa_overall"], row["rec_val"]) == (54.0, 61.5)
    assert runs[runs.level == 2]["rec_val"].isna().all()        # VQA only: empty REC cells
    assert "2,t0,0,40.0000," in text

    diffs = pd.read_csv(out_paired)
    v0 = diffs[(diffs.level == 0) & (diffs.metric == "vqa_overall")].iloc[0]
    assert v0["n_seeds"] == 3 and v0["mean_diff"] == pytest.approx(2.0)
    assert v0["ci_low"] == pytest.approx(2.0 - HALF, abs=1e-4) and v0["ci_high"] == pytest.approx(2.0 + HALF, abs=1e-4)
    # level 2: differences 4 and 6 -> mean 5, sd sqrt(2), t_{0.975, 1} = 12.706204736174698
    v2 = diffs[(diffs.level == 2) & (diffs.metric == "vqa_overall")].iloc[0]
    half = 12.706204736174698 * math.sqrt(2) / math.sqrt(2)
    assert v2["mean_diff"] == pytest.approx(5.0) and v2["ci_high"] == pytest.approx(5.0 + half, abs=1e-4)
    assert set(diffs[diffs.metric == "rec_val"]["level"]) == {0}
    assert out_png.read_bytes()[:8] == PNG


def test_clutter_reads_listed_files_and_checks_the_path_against_the_json(clutter_runs, tmp_path, capsys):
    files = sorted(str(p) for p in clutter_runs.glob("level0/vqa-*/eval.json"))
    assert main(["clutter", "--evals", *files, "--csv", str(tmp_path / "c.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "c.csv")) == 6

    # a file outside the layout
    stray = tmp_path / "eval.json"
    stray.write_text("{}")
    assert main(["clutter", "--evals", str(stray), "--csv", str(tmp_path / "c.csv")]) == 2
    assert "level<L>/<task>-<setting>-seed<S>/eval.json" in capsys.readouterr().err

    # an evaluation of T = 0.2 filed as t0.1
    wrong = clutter_runs / "level0" / "vqa-t0.1-seed0" / "eval.json"
    _vqa_eval(wrong, "threshold", 0.2, None, 0, 50.0)
    assert main(["clutter", "--runs-dir", str(clutter_runs), "--csv", str(tmp_path / "c.csv")]) == 2
    err = capsys.readouterr().err
    assert "vqa-t0.1-seed0" in err and "t0.2" in err


def test_clutter_help_documents_the_layout(capsys):
    with pytest.raises(SystemExit):
        main(["clutter", "--help"])
    assert "level<L>/<task>-<setting>-seed<S>/eval.json" in capsys.readouterr().out
