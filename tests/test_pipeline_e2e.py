"""The whole DAG on config/test.yaml, through Snakemake, into a temporary folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def run_snakemake(tmp_path: Path, *targets: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    override = tmp_path / "override.yaml"
    results = tmp_path / "results"
    test_cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    data = dict(test_cfg.get("data", {}))
    data["root"] = str(results / "data" / "shapes")
    override.write_text(yaml.safe_dump({"results": str(results), "data": data}))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        sys.executable, "-m", "snakemake", "--cores", "2", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(REPO), *[str(results / t) for t in targets], *extra,
        "--configfile", "config/test.yaml", str(override),
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_whole_dag_on_test_config(tmp_path):
    proc = run_snakemake(tmp_path, "vqa_eval.json", "rec_eval.json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = tmp_path / "results"
    vqa = json.loads((results / "vqa_eval.json").read_text())
    assert 0.0 <= vqa["accuracy"]["overall"] <= 100.0
    assert vqa["num_questions"] > 0
    predictions = json.loads(Path(vqa["predictions"]).read_text())
    assert len(predictions) == vqa["num_questions"]
    assert set(predictions[0]) == {"question_id", "answer"}
    rec = json.loads((results / "rec_eval.json").read_text())
    assert "val" in rec["accuracy"]
    # nothing half-written anywhere
    assert not list(results.rglob("*.partial"))
    # a second run has nothing to do
    again = run_snakemake(tmp_path, "vqa_eval.json", "rec_eval.json", extra=("-n",))
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
