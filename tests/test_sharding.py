"""Sharded feature extraction and text parsing give the same combined artifacts as one shard.

One results folder, two Snakemake runs: first with 2 shards per stage, then with 1
(the shard files are named ``shard-{i}-of-{n}``, so the second run extracts and
parses again and recombines, reusing the dataset and the trained detector). The
combined HDF5 and Parquet files of both runs must be identical, value for value.
Results are bit-identical for equal torch thread counts only (float sums are reordered
otherwise); extraction jobs get the same threads whatever the shard count, so the
default rules are tested as they are. Any detector shows the identity, so it trains for two iterations only and every proposal counts
(min_score 0: an untrained detector's scores are low); features are extracted in
batches of two, so that both shards get images.
"""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from workflow_helpers import snakemake, tail, write_override

SPLIT = "val"
FEATURES = f"features/{SPLIT}.h5"
PARSES = f"text/{SPLIT}/parses.parquet"


def run(tmp_path, shards: int):
    override, results = write_override(tmp_path, f"override-{shards}.yaml", detector={"iterations": 2},
                                       features={"shards": shards, "batch_size": 2, "min_score": 0.0},
                                       text={"shards": shards})
    proc = snakemake(str(results / FEATURES), str(results / PARSES), "--cores", "2", configfiles=(override,))
    assert proc.returncode == 0, tail(proc)
    return results


def h5_contents(path):
    """{dataset name: array} and {attribute name: value} of a features file."""
    with h5py.File(path, "r") as f:
        datasets = {name: f[name][()] for name in f.keys()}
        attrs = {name: f.attrs[name] for name in f.attrs.keys()}
    return datasets, attrs


@pytest.mark.slow
def test_two_shards_combine_to_the_unsharded_artifacts(tmp_path):
    results = run(tmp_path, shards=2)
    for shard in (0, 1):  # both shards hold part of the split
        with h5py.File(results / f"features/{SPLIT}/shard-{shard}-of-2.h5", "r") as f:
            assert len(f["image_id"]) > 0, shard
        assert pq.read_metadata(results / f"text/{SPLIT}/shard-{shard}-of-2.parquet").num_rows > 0, shard
    sharded_features = tmp_path / "features-2.h5"
    sharded_parses = tmp_path / "parses-2.parquet"
    shutil.copy(results / FEATURES, sharded_features)
    shutil.copy(results / PARSES, sharded_parses)

    run(tmp_path, shards=1)
    assert (results / f"features/{SPLIT}/shard-0-of-1.h5").is_file(), "the 1-shard run did not re-extract"

    sharded, sharded_attrs = h5_contents(sharded_features)
    single, single_attrs = h5_contents(results / FEATURES)
    assert sorted(sharded) == sorted(single)
    assert len(single["image_id"]) > 1
    assert single["num_boxes"].sum() > 0, "no regions at all: the comparison would prove little"
    for name in single:
        assert sharded[name].dtype == single[name].dtype, name
        np.testing.assert_array_equal(sharded[name], single[name], err_msg=name)
    assert sharded_attrs.keys() == single_attrs.keys()
    for name, value in single_attrs.items():
        np.testing.assert_array_equal(sharded_attrs[name], value, err_msg=name)

    sharded_table = pq.read_table(sharded_parses)
    single_table = pq.read_table(results / PARSES)
    assert single_table.num_rows > 1
    assert sharded_table.schema.equals(single_table.schema), (sharded_table.schema, single_table.schema)
    assert sharded_table.equals(single_table)

    # The workflow report of this run (README's command, no --cores) holds the detector
    # metrics with their caption.
    report = tmp_path / "report.html"
    proc = snakemake("--report", str(report), str(results / FEATURES), configfiles=(tmp_path / "override-1.yaml",))
    assert proc.returncode == 0, tail(proc)
    html = report.read_text(errors="replace")
    assert "metrics.json" in html and "Faster R-CNN detector trained" in html
