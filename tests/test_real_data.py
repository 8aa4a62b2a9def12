"""The real-data configs, end to end, on tiny fixtures in the official layouts.

The fixtures (tests/official_layout.py) are rewritten from a generated `shapes`
dataset; the detector is the `detector.safetensors` a `shapes` run trained, loaded
through `detector.weights` (detector.train: false), as a user would bring their own.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from official_layout import write_official_layout
from tbkin.data.loaders import DataLayout
from workflow_helpers import REPO, TEST_CONFIG, planned_rules, snakemake, tail, tool_env, write_override

# config/test.yaml's tiny model and features again: the real configs set the paper's sizes
TINY = {
    "model": {"encoder_init": "random", "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128},
    "features": {"num_regions": 8, "min_score": 0.0, "shards": 1},
    "text": {"shards": 1},  # one spaCy load per split: the fixture is tiny
}


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """(resources folder in the official layouts, detector weights)."""
    tmp = tmp_path_factory.mktemp("official")
    override, results = write_override(tmp)
    weights = results / "detector" / "detector.safetensors"
    proc = snakemake("--cores", "2", str(weights), configfiles=(override,))
    assert proc.returncode == 0, tail(proc)
    shapes = DataLayout.from_config(yaml.safe_load(override.read_text())["data"] | {"splits": {"train": "train", "val": "val"}})
    resources = tmp / "resources"
    write_official_layout(shapes, resources)
    return resources, weights


def real_override(tmp_path: Path, dataset: str, resources: Path, weights: Path, **extra) -> tuple[Path, Path]:
    results = tmp_path / "results" / dataset
    test_cfg = yaml.safe_load(TEST_CONFIG.read_text())
    override = {
        "results": str(results),
        "data": {"root": str(resources / dataset), "download_dir": str(tmp_path / "downloads")},
        "detector": {"train": False, "weights": str(weights), "min_size": 96, "max_size": 96},
        **TINY, **extra,
    }
    override["pretrain"] = {**test_cfg["pretrain"], **extra.get("pretrain", {})}
    path = tmp_path / f"{dataset}.yaml"
    path.write_text(yaml.safe_dump(override))
    return path, results


def files_below(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.mark.slow
def test_vqa2_and_refcoco_configs_run_end_to_end_without_downloads(fixture, tmp_path):
    resources, weights = fixture
    before = files_below(resources)

    # VQA v2: planned without any download (the files are in place), then run
    override, results = real_override(tmp_path, "vqa2", resources, weights)
    configs = (REPO / "config" / "vqa2.yaml", override)
    dry = snakemake("-n", "--cores", "2", str(results / "vqa_eval.json"), configfiles=configs)
    assert dry.returncode == 0, tail(dry)
    assert "download" not in planned_rules(dry) and "check_data" in planned_rules(dry), tail(dry)
    proc = snakemake("--cores", "2", str(results / "vqa_eval.json"), configfiles=configs, timeout=900)
    assert proc.returncode == 0, tail(proc)
    vqa = json.loads((results / "vqa_eval.json").read_text())
    questions = json.loads((resources / "vqa2" / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    assert vqa["num_questions"] == len(questions["questions"])
    image_list = json.loads((results / "data" / "val" / "image_list.json").read_text())
    assert image_list["image_source"] == "instances" and image_list["images"][0]["file_name"].startswith("COCO_val2014_")

    # RefCOCO: pretrains on the COCO captions; RefCOCO+ and RefCOCOg start from its checkpoint
    override, refcoco = real_override(tmp_path, "refcoco", resources, weights)
    proc = snakemake("--cores", "2", str(refcoco / "rec_eval.json"),
                     configfiles=(REPO / "config" / "refcoco.yaml", override), timeout=900)
    assert proc.returncode == 0, tail(proc)
    assert set(json.loads((refcoco / "rec_eval.json").read_text())["accuracy"]) == {"val", "testA", "testB"}
    for dataset, splits in (("refcoco+", {"val", "testA", "testB"}), ("refcocog", {"val", "test"})):
        override, out = real_override(tmp_path, dataset, resources, weights,
                                      pretrain={"checkpoint": str(refcoco / "pretrain")})
        proc = snakemake("--cores", "2", str(out / "rec_eval.json"),
                         configfiles=(REPO / "config" / f"{dataset}.yaml", override), timeout=900)
        assert proc.returncode == 0, tail(proc)
        assert "rule pretrain:" not in proc.stdout + proc.stderr, tail(proc)
        assert set(json.loads((out / "rec_eval.json").read_text())["accuracy"]) == splits

    # nothing was written into the dataset folders (shared, read-only copies are common)
    assert files_below(resources) == before


def test_missing_file_with_downloads_off_is_an_error_naming_it(tmp_path):
    override, results = write_override(tmp_path, data={"root": str(tmp_path / "vqa2"), "download": False,
                                                       "download_dir": str(tmp_path / "dl")})
    proc = snakemake("-n", "--nolock", "--cores", "1", str(results / "vqa_eval.json"),
                     configfiles=(REPO / "config" / "vqa2.yaml", override))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, tail(proc)
    assert "data.download is false" in out and "v2_OpenEnded_mscoco_val2014_questions.json" in out, tail(proc)


def header_commands(path: Path) -> list[list[str]]:
    """The `snakemake ...` commands of a config file's header comment (continuation lines joined)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    text = "\n".join(lines).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("snakemake ")]


@pytest.mark.parametrize("name", ["vqa2", "refcoco", "refcoco+", "refcocog"])
def test_config_header_commands_parse(name, tmp_path):
    """Each documented command, as written, plans its target (a dry run in the repository)."""
    commands = header_commands(REPO / "config" / f"{name}.yaml")
    assert commands, f"config/{name}.yaml documents no command"
    checkpoint = tmp_path / "pretrain"  # stands in for the VQA v2 run's pretrained folder
    checkpoint.mkdir()
    for file_name in ("model.safetensors", "config.json"):
        (checkpoint / file_name).touch()
    for command in commands:
        args = [arg.replace("results/vqa2/pretrain", str(checkpoint)) for arg in command[1:]]
        target = next(arg for arg in args if arg.endswith("_eval.json"))
        assert target.startswith(f"results/{name}/"), command
        proc = snakemake_as_typed(args)
        assert proc.returncode == 0, (command, tail(proc))
        assert "Nothing to be done" in proc.stdout + proc.stderr or target in proc.stdout + proc.stderr, tail(proc)


def snakemake_as_typed(args: list[str]):
    """`snakemake` with these arguments, as a user types it in the repository (plus -n)."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--nolock", *args]
    return subprocess.run(cmd, cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=300)


def test_nested_override_on_the_command_line_is_typed_and_errors_name_it(tmp_path):
    override, results = write_override(tmp_path)
    ok = snakemake("-n", "--nolock", "-p", str(results / "vqa_eval.json"), "--config", "finetune={threshold: 0.1}",
                   configfiles=(override,))
    assert ok.returncode == 0, tail(ok)
    assert "--threshold 0.1 " in ok.stdout, tail(ok)
    bad = snakemake("-n", "--nolock", str(results / "vqa_eval.json"), "--config", "finetune={threshold: high}",
                    configfiles=(override,))
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "finetune.threshold" in out and "--config" in out, tail(bad)
