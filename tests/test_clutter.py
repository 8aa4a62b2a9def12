"""The clutter experiment's target: levels reach the generator, and every run is its own job."""
from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image

from tbkin.evaluate.paired import best_threshold
from workflow_helpers import snakemake, tail, write_override

LEVELS = [0, 30]


def test_target_plans_base_and_t_per_level_and_seed(tmp_path):
    override, results = write_override(tmp_path, clutter={"levels": LEVELS, "seeds": [0, 1], "threshold": 0.1})
    proc = snakemake("-n", "--nolock", str(results / "clutter" / "clutter.csv"), configfiles=(override,))
    assert proc.returncode == 0, tail(proc)
    counts = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.MULTILINE)}
    runs = len(LEVELS) * 2 * 2  # levels x (Base, T) x seeds
    assert counts["clutter_generate"] == len(LEVELS), counts
    assert counts["clutter_finetune_vqa"] == runs and counts["clutter_finetune_rec"] == runs, counts
    assert "clutter/level30/vqa-t0.1-seed1" in proc.stdout and "clutter/level30/vqa-t0-seed1" in proc.stdout


def test_levels_reach_the_generator_and_change_only_the_clutter(tmp_path):
    override, results = write_override(tmp_path, clutter={"levels": LEVELS, "seeds": [0], "threshold": 0.1})
    markers = [results / "clutter" / f"level{level}" / "generate_shapes.json" for level in LEVELS]
    proc = snakemake("--cores", "1", *map(str, markers), configfiles=(override,))
    assert proc.returncode == 0, tail(proc)
    for level, marker in zip(LEVELS, markers):
        assert json.loads(marker.read_text())["generator"]["distractors_per_image"] == [level, level]
    data = [results / "clutter" / f"level{level}" / "data" for level in LEVELS]
    # the same scenes and texts: only the distractors are drawn in addition
    for name in ("annotations/instances_val.json", "vqa/v2_mscoco_val_annotations.json"):
        assert (data[0] / name).read_bytes() == (data[1] / name).read_bytes(), name
    image = sorted((data[0] / "images" / "val").iterdir())[0].name
    clean, cluttered = (np.asarray(Image.open(d / "images" / "val" / image), dtype=np.int16) for d in data)
    changed = np.abs(clean - cluttered).sum(axis=-1) > 0
    assert 0 < changed.mean() < 0.5, changed.mean()


def test_best_threshold_is_the_largest_vqa_gain(tmp_path):
    paired = tmp_path / "paired.csv"
    paired.write_text("setting,task,metric,n_seeds,mean_diff,ci_low,ci_high\n"
                      "t0.05,vqa,overall,5,0.4,-1,1.8\nt0.1,vqa,overall,5,1.2,0.1,2.3\n"
                      "local3,vqa,overall,5,3.0,1,5\nt0.2,rec,val,5,9.0,1,17\n")
    assert best_threshold(str(paired)) == "t0.1"  # local windows and REC are not candidates
