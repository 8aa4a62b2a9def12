"""Pretraining: batches (masking, ITM negatives), losses, checkpoint/resume, 2-process DDP."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tbkin.model.masking import IGNORE_INDEX
from tbkin.precision import cpu_supports_bf16
from tbkin.train.loop import read_jsonl
from tbkin.train.plots import plot_losses
from tbkin.train.pretrain import PretrainSettings, build, train

from model_fixtures import write_corpus, write_tiny_bert

REPO = Path(__file__).resolve().parent.parent
NO_NATIVE_BF16 = pytest.mark.skipif(
    not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX-BF16); bf16 would be emulated")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    paths = write_corpus(root / "data")
    paths["bert"] = str(write_tiny_bert(root / "bert"))
    return paths


def _settings(corpus, **overrides):
    values = dict(steps=6, batch_size=8, lr=1e-3, warmup_steps=1, log_every=2, checkpoint_every=3,
                  num_layers=1, bert_path=corpus["bert"], max_text_len=12)
    values.update(overrides)
    return PretrainSettings(**values)


def test_batch_masks_follow_the_rules(corpus):
    settings = _settings(corpus, batch_size=8, itm_negative_ratio=0.5, mask_prob=0.5)
    tokenizer, batches, _ = build(settings, corpus["parses"], corpus["features"], corpus["entries"])
    special = set(tokenizer.all_special_ids)
    saw_negative = saw_masked_negative = saw_skm_text = saw_skm_region = False
    for step in range(6):
        batch = batches.batch(step)
        matched = batch.itm_labels.bool()
        records = [batches.records[i] for i in batches.indices(step, 0)]
        regions = batch.inputs.region_features
        for b, record in enumerate(records):
            original = torch.tensor(record.text.input_ids)
            labels = torch.where(batch.mlm_labels[b] >= 0, batch.mlm_labels[b], batch.skm_text_labels[b])
            chosen = labels != IGNORE_INDEX
            # targets are the original pieces, never special tokens
            assert torch.equal(labels[: len(original)][chosen[: len(original)]], original[chosen[: len(original)]])
            assert not any(int(t) in special for t in labels[chosen])
            if not matched[b]:
                # no masking loss, but masked inputs like a matched pair (no "unmasked = mismatched" cue)
                saw_negative = True
                assert not chosen.any() and not batch.mrm_regions[b].any() and not batch.skm_regions[b].any()
                corrupted = batch.inputs.input_ids[b, : len(original)] != original
                saw_masked_negative |= bool(corrupted.any() or (regions[b] != batch.region_targets[b]).any())
                continue
            # the SKM anchor (parse token 2 -> its word pieces) is always masked on matched pairs
            anchor_pieces = record.token_pieces[2]
            assert batch.skm_text_labels[b, anchor_pieces].ne(IGNORE_INDEX).all()
            saw_skm_text = True
            saw_skm_region |= bool(batch.skm_regions[b].any())
            masked = batch.mrm_regions[b] | batch.skm_regions[b]
            assert (regions[b][masked] == 0).all()
            assert not (batch.mrm_regions[b] & batch.skm_regions[b]).any()
            assert not (batch.mlm_labels[b].ne(IGNORE_INDEX) & batch.skm_text_labels[b].ne(IGNORE_INDEX)).any()
            assert (masked <= batch.inputs.region_mask[b]).all()
    assert saw_negative and saw_masked_negative and saw_skm_text and saw_skm_region


def test_itm_negatives_use_another_image_at_the_configured_ratio(corpus):
    settings = _settings(corpus, batch_size=8, itm_negative_ratio=0.25)
    _, batches, _ = build(settings, corpus["parses"], corpus["features"], None)
    labels = torch.cat([batches.batch(step).itm_labels for step in range(40)])
    assert abs(float(1 - labels.float().mean()) - 0.25) < 0.06
    batch = batches.batch(0)
    records = [batches.records[i] for i in batches.indices(0, 0)]
    for b, record in enumerate(records):
        own = torch.from_numpy(batches.store.get(record.image_id).features)
        same = torch.equal(batch.region_targets[b], own)
        assert same == bool(batch.itm_labels[b])


def test_batches_are_deterministic_and_epochs_cover_the_corpus(corpus):
    settings = _settings(corpus)
    _, batches, _ = build(settings, corpus["parses"], corpus["features"], corpus["entries"])
    a, b = batches.batch(3), batches.batch(3)
    assert torch.equal(a.inputs.input_ids, b.inputs.input_ids) and torch.equal(a.itm_labels, b.itm_labels)
    per_epoch = len(batches.records) // settings.batch_size
    seen = sorted(i for step in range(per_epoch) for i in batches.indices(step, 0))
    assert len(set(seen)) == len(seen)


def test_every_loss_is_finite_and_trains(corpus):
    settings = _settings(corpus)
    torch.manual_seed(0)
    _, batches, module = build(settings, corpus["parses"], corpus["features"], corpus["entries"])
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    batch = batches.batch(0)
    first = None
    for _ in range(25):
        losses = module(batch)
        if first is None:
            first = {k: float(v.detach()) for k, v in losses.items()}
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    last = {k: float(v.detach()) for k, v in module(batch).items()}
    for task in ("mlm", "mrm", "skm", "itm"):
        assert np.isfinite(first[task]) and last[task] < first[task], (task, first, last)


def _cli(corpus, out_dir, steps=6, extra=()):
    settings = {"bert_path": corpus["bert"], "num_layers": 1, "steps": steps, "batch_size": 8, "lr": 0.001,
                "warmup_steps": 1, "log_every": 2, "checkpoint_every": 3, "max_text_len": 12}
    return [sys.executable, "-m", "tbkin.cli", "pretrain", "--parses", corpus["parses"], "--features",
            corpus["features"], "--entries", corpus["entries"], "--out-dir", str(out_dir),
            "--settings", json.dumps(settings), "--threads", "1", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO)}


def test_run_writes_checkpoint_log_and_is_deterministic(corpus, tmp_path):
    settings = _settings(corpus)
    first = train(settings, corpus["parses"], corpus["features"], corpus["entries"], tmp_path / "a", device="cpu")
    second = train(settings, corpus["parses"], corpus["features"], corpus["entries"], tmp_path / "b", device="cpu")
    assert first == {**second, "samples_per_s": first["samples_per_s"], "data_share": first["data_share"]}
    for name in ("model.safetensors", "config.json", "tokenizer.json", "log.jsonl"):
        assert (tmp_path / "a" / name).is_file()
    assert "max_regions" not in json.loads((tmp_path / "a" / "config.json").read_text())
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = read_jsonl(tmp_path / "a" / "log.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(set(r) >= {"loss", "mlm", "mrm", "skm", "itm", "lr", "samples_per_s"} for r in records)
    plot_losses(tmp_path / "a" / "log.jsonl", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    from tbkin.model.modeling_tbkin import TbkinModel

    model = TbkinModel.from_pretrained(tmp_path / "a")
    assert model.config.num_hidden_layers == 1 and model.tokenizer is not None
    assert model.config.vocab_size == len(model.tokenizer) < 200


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=NO_NATIVE_BF16)])
def test_each_precision_pretrains_and_is_recorded(corpus, tmp_path, precision):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        last = train(_settings(corpus, precision=precision), corpus["parses"], corpus["features"],
                     corpus["entries"], tmp_path / precision, device="cpu")
    finally:
        torch.set_num_threads(before)
    assert last["precision"] == precision and last["step"] == 6
    run_info = json.loads((tmp_path / precision / "run.json").read_text())
    assert run_info["precision"] == precision and run_info["settings"]["precision"] == precision
    records = read_jsonl(tmp_path / precision / "log.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6]
    for record in records:
        assert all(np.isfinite(record[k]) for k in ("loss", "mlm", "mrm", "skm", "itm")), record
    weights = load_file(tmp_path / precision / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())


@pytest.fixture
def one_thread():
    """Run in-process training on one thread, as the subprocesses do (`--threads 1`):
    results are bit-identical for a fixed seed *and* thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(corpus, tmp_path, caplog, one_thread):
    steps = 12
    reference = tmp_path / "reference"
    settings = _settings(corpus, steps=steps)
    train(settings, corpus["parses"], corpus["features"], corpus["entries"], reference, device="cpu")

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(corpus, out, steps, extra=["--device", "cpu"]), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "state" / "latest.json"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < steps and not (out / "model.safetensors").exists(), "run finished before it was killed"

    # Rerun the same work (in-process: the interpreter start-up is the slow part of a subprocess).
    with caplog.at_level(logging.INFO, logger="tbkin.train.loop"):
        train(settings, corpus["parses"], corpus["features"], corpus["entries"], out, device="cpu")
    assert f"(step {killed_at})" in caplog.text
    a, b = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    steps_logged = [r["step"] for r in read_jsonl(out / "log.jsonl")]
    assert steps_logged == list(range(2, steps + 1, 2))


@pytest.mark.slow
def test_two_process_ddp_on_cpu(corpus, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = torchrun + _cli(corpus, tmp_path / "ddp", steps=4, extra=["--device", "cpu"])[1:]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_jsonl(tmp_path / "ddp" / "log.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
