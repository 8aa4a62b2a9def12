"""Config validation from the Snakefile, and the data rules each dataset selects."""
from __future__ import annotations

import dataclasses
import json

import yaml

from tbkin.config import load_config
from tbkin.data.shapes import ShapesSpec

from workflow_helpers import REPO, snakemake, tail, write_override


def test_bad_key_stops_snakemake_naming_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"shapes": {"train_imagez": 5}, "features": {"num_regions": 0}}))
    proc = snakemake("-n", "--nolock", configfiles=(bad,))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, tail(proc)
    assert "shapes.train_imagez" in out and "unknown key" in out, tail(proc)
    assert "features.num_regions" in out, tail(proc)
    assert str(bad) in out, tail(proc)
    assert "Building DAG" not in out, tail(proc)  # stopped before any job was planned


def test_shapes_dataset_is_generated_by_its_rule(tmp_path):
    override, results = write_override(tmp_path)
    ready = results / "data" / "generate_shapes.json"
    proc = snakemake("--cores", "1", str(ready), configfiles=(override,))
    assert proc.returncode == 0, tail(proc)
    marker = json.loads(ready.read_text())
    test_cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    assert marker["counts"]["train"]["images"] == test_cfg["shapes"]["train_images"]
    # the rule passes every shapes setting of the config to the generator
    spec = ShapesSpec.from_config(load_config(REPO / "config" / "config.yaml", REPO / "config" / "test.yaml", override))
    assert marker["generator"] == json.loads(json.dumps(dataclasses.asdict(spec)))
    assert (results / "logs" / "data" / "generate_shapes.log").is_file()
    assert (results / "benchmarks" / "data" / "generate_shapes.tsv").is_file()


def test_real_dataset_plans_one_download_per_archive_then_check_data(tmp_path):
    override, results = write_override(tmp_path, data={"root": str(tmp_path / "vqa2"),
                                                       "download_dir": str(tmp_path / "dl")})
    ready = results / "data" / "train" / "image_list.json"
    proc = snakemake("-n", "--nolock", "--cores", "1", str(ready),
                     configfiles=(REPO / "config" / "vqa2.yaml", override))
    assert proc.returncode == 0, tail(proc)
    downloads = yaml.safe_load((REPO / "config" / "vqa2.yaml").read_text())["downloads"]
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts.get("download") == len(downloads) and counts.get("check_data") == 1, tail(proc)
    assert "generate_shapes" not in proc.stdout


def test_conda_env_pins_match_pyproject():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "envs" / "tbkin.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(deps)
    assert "python=3.11" in env["dependencies"]


def test_non_finite_setting_stops_snakemake_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune: {threshold: .nan}\npretrain: {lr: .inf}\n")
    proc = snakemake("-n", "--nolock", configfiles=(bad,))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, tail(proc)
    assert "finetune.threshold" in out and "pretrain.lr" in out and "not a finite number" in out, tail(proc)
    assert "Building DAG" not in out, tail(proc)


def test_broken_default_config_names_file_and_line(tmp_path):
    """Snakemake's own message for a broken YAML file names neither the file nor the line."""
    import shutil
    import subprocess
    import sys

    from workflow_helpers import tool_env

    for part in ("Snakefile", "rules", "workflow", "config"):
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / part)
    broken = tmp_path / "config" / "config.yaml"
    broken.write_text(broken.read_text().replace("features:\n", "features:\n\tbad: [\n", 1))
    line = broken.read_text().splitlines().index("\tbad: [") + 1
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--nolock", "--snakefile", str(tmp_path / "Snakefile"),
                           "--directory", str(tmp_path)], cwd=tmp_path, env=tool_env(), capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, tail(proc)
    assert f"config/config.yaml, line {line}" in out, tail(proc)
