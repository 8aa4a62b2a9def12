"""The shared training loop (tbkin.train.loop.train_loop) on a tiny module.

Resume is bit-identical for a fixed seed and precision, a state written with other
settings is discarded, a damaged state is a clear error, a non-finite loss stops the
run before its checkpoint, and the bf16 path keeps weights, optimizer state and losses
in float32.
"""
import json
import logging
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import tbkin.train.loop as loop_module
from tbkin.train.guards import NonFiniteLossError
from tbkin.train.loop import CheckpointStateError, DistributedContext, LoopSettings, read_jsonl, train_loop

STEPS = 6
TIMING = ("samples_per_s", "data_share")
CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-identical results hold for a fixed thread count; run on one, like the CLI tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Batch:
    step: int
    x: torch.Tensor
    y: torch.Tensor

    def to(self, device):
        return Batch(self.step, self.x.to(device), self.y.to(device))


def make_batch(step: int, rank: int) -> Batch:
    generator = torch.Generator().manual_seed(1000 + step * 7 + rank)
    x = torch.randn(16, 8, generator=generator)
    return Batch(step, x, (x[:, :3].sum(dim=1, keepdim=True) > 0).float())


def losses_of(module: nn.Module, batch: Batch) -> dict:
    out = module(batch.x)
    return {"fit": nn.functional.mse_loss(out.float(), batch.y), "size": out.float().pow(2).mean() * 0.01}


def tiny_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 1))


def settings(**overrides) -> LoopSettings:
    values = dict(steps=STEPS, lr=1e-2, warmup_steps=2, seed=0, precision="fp32", log_every=1, checkpoint_every=3,
                  samples_per_step=16, task_weights={"size": 0.5})
    values.update(overrides)
    return LoopSettings(**values)


def run(tmp_path, name, batch_fn=make_batch, losses=losses_of, fingerprint=None, **overrides):
    module = tiny_module()
    result = train_loop(module, batch_fn, losses, settings(**overrides), CPU, tmp_path / name / "state",
                        tmp_path / name / "log.jsonl", desc="test-loop", fingerprint=fingerprint or {"run": 1})
    return module, result


class Killed(RuntimeError):
    pass


def dies_at(kill_step: int):
    def batch_fn(step, rank):
        if step == kill_step:
            raise Killed(f"killed before step {step}")
        return make_batch(step, rank)
    return batch_fn


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def assert_same_weights(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resumed_run_is_bit_identical_to_a_straight_one(tmp_path, caplog, precision):
    straight, full = run(tmp_path, "straight", precision=precision)
    assert full.steps_this_run == STEPS and full.precision == precision

    with pytest.raises(Killed):
        run(tmp_path, "resumed", batch_fn=dies_at(3), precision=precision)
    state = tmp_path / "resumed" / "state"
    assert json.loads((state / "latest.json").read_text())["step"] == 3
    with caplog.at_level(logging.INFO, logger="tbkin.train.loop"):
        resumed, rest = run(tmp_path, "resumed", precision=precision)
    assert "(step 3)" in caplog.text
    assert rest.steps_this_run == STEPS - 3 and rest.steps == STEPS

    assert_same_weights(straight, resumed)
    a = read_jsonl(tmp_path / "straight" / "log.jsonl")
    b = read_jsonl(tmp_path / "resumed" / "log.jsonl")
    assert [r["step"] for r in a] == list(range(1, STEPS + 1))
    assert without_timing(a) == without_timing(b)
    assert without_timing([full.last_record]) == without_timing([rest.last_record])


def test_dropout_is_seeded_by_the_run_seed(tmp_path):
    """The module's dropout is active: another seed changes the result, so the test above covers it."""
    first, _ = run(tmp_path, "seed0", seed=0)
    again, _ = run(tmp_path, "seed0-again", seed=0)
    other, _ = run(tmp_path, "seed1", seed=1)
    assert_same_weights(first, again)
    assert any(not torch.equal(p, q) for p, q in zip(first.state_dict().values(), other.state_dict().values()))


def test_state_written_with_other_settings_is_discarded(tmp_path, caplog):
    straight, _ = run(tmp_path, "straight", fingerprint={"lr": 1})
    with pytest.raises(Killed):
        run(tmp_path, "changed", batch_fn=dies_at(3), fingerprint={"lr": 2})
    assert (tmp_path / "changed" / "state" / "checkpoint-3").is_dir()
    with caplog.at_level(logging.INFO, logger="tbkin.train.loop"):
        restarted, result = run(tmp_path, "changed", fingerprint={"lr": 1})
    assert "other settings" in caplog.text and "resumed from" not in caplog.text
    assert result.steps_this_run == STEPS
    assert_same_weights(straight, restarted)
    assert [r["step"] for r in read_jsonl(tmp_path / "changed" / "log.jsonl")] == list(range(1, STEPS + 1))


def test_truncated_trainer_state_names_the_folder_and_says_to_delete_it(tmp_path):
    with pytest.raises(Killed):
        run(tmp_path, "broken", batch_fn=dies_at(3))
    state = tmp_path / "broken" / "state"
    trainer = state / "checkpoint-3" / "trainer.pt"
    data = trainer.read_bytes()
    trainer.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointStateError) as err:
        run(tmp_path, "broken")
    msg = str(err.value)
    assert str(state / "checkpoint-3") in msg
    assert f"Delete {state}" in msg


def test_non_finite_loss_stops_before_that_steps_checkpoint(tmp_path):
    def nan_at_second_step(module, batch):
        losses = losses_of(module, batch)
        if batch.step == 1:   # the second step, logged as step 2
            losses["fit"] = losses["fit"] * float("nan")
        return losses

    with pytest.raises(NonFiniteLossError) as err:
        run(tmp_path, "nan", losses=nan_at_second_step, checkpoint_every=1)
    msg = str(err.value)
    assert "step 2" in msg and "fit" in msg and "test-loop" in msg and "size" not in msg
    state = tmp_path / "nan" / "state"
    assert not (state / "checkpoint-2").exists()
    assert json.loads((state / "latest.json").read_text())["step"] == 1
    assert [r["step"] for r in read_jsonl(tmp_path / "nan" / "log.jsonl")] == [1]


def test_bf16_keeps_weights_optimizer_state_and_losses_in_float32(tmp_path, monkeypatch):
    """Runs whether or not the CPU has native bf16 (emulated it is only slower)."""
    seen = {"outputs": set(), "losses": set()}
    checked = loop_module.check_finite

    def spy_check(losses, step, where):
        seen["losses"].update(v.dtype for v in losses.values())
        return checked(losses, step, where)

    def bf16_losses(module, batch):
        out = module(batch.x)
        seen["outputs"].add(out.dtype)
        return {"fit": (out - batch.y).pow(2).mean()}   # stays bf16: the loop must cast it

    monkeypatch.setattr(loop_module, "check_finite", spy_check)
    module, result = run(tmp_path, "bf16", losses=bf16_losses, precision="bf16")
    assert result.precision == "bf16"
    assert seen["outputs"] == {torch.bfloat16}      # autocast was on
    assert seen["losses"] == {torch.float32}         # every loss the loop sums and checks
    assert all(p.dtype == torch.float32 for p in module.parameters())
    trainer = torch.load(tmp_path / "bf16" / "state" / "checkpoint-6" / "trainer.pt", weights_only=True)
    moments = [t for s in trainer["optimizer"]["state"].values() for k, t in s.items() if k != "step"]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    records = read_jsonl(tmp_path / "bf16" / "log.jsonl")
    assert len(records) == STEPS and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
