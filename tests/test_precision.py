"""Numeric precision (``train.precision``): resolving ``auto``, autocast and the config key."""
import pytest
import torch
import yaml

import tbkin.precision
from tbkin.config import ConfigError, load_config
from tbkin.precision import autocast, cpu_supports_bf16, resolve_precision

DEFAULT = "config/config.yaml"

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Test CPU
flags\t\t: fpu vme de pse tsc msr pae {extra} avx2 avx512f
bogomips\t: 4000.00

processor\t: 1
flags\t\t: fpu vme de pse tsc msr pae {extra} avx2 avx512f
"""


@pytest.fixture(autouse=True)
def fresh_cache():
    """cpu_supports_bf16 is cached: never let a fake CPU leak into other tests."""
    cpu_supports_bf16.cache_clear()
    yield
    cpu_supports_bf16.cache_clear()


@pytest.mark.parametrize("extra, expected", [
    ("avx512_bf16", True),
    ("amx_bf16 amx_tile amx_int8", True),
    ("avx512_vnni avx512_fp16", False),
    ("", False),
])
def test_cpu_supports_bf16_reads_the_cpu_flags(tmp_path, extra, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    assert cpu_supports_bf16(str(cpuinfo)) is expected


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("native", [True, False])
def test_explicit_precisions_pass_through(monkeypatch, precision, native):
    monkeypatch.setattr(tbkin.precision, "cpu_supports_bf16", lambda *a, **k: native)
    assert resolve_precision(precision, "cpu") == precision
    assert resolve_precision(precision, torch.device("cpu")) == precision


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_native_bf16_support(monkeypatch, native, expected):
    monkeypatch.setattr(tbkin.precision, "cpu_supports_bf16", lambda *a, **k: native)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_auto_on_this_cpu_matches_its_flags():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")


@pytest.mark.parametrize("bad", ["fp16", "BF16", "float32", ""])
def test_unknown_precision_names_the_accepted_values(bad):
    with pytest.raises(ValueError) as err:
        resolve_precision(bad, "cpu")
    msg = str(err.value)
    assert all(name in msg for name in ("auto", "bf16", "fp32")) and repr(bad) in msg


def test_autocast_bf16_runs_matmuls_in_bfloat16_on_cpu():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
        assert torch.nn.functional.linear(a, b.T).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    assert (a @ b).dtype == torch.float32   # nothing leaks out of the context


def test_autocast_auto_follows_resolve(monkeypatch):
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(tbkin.precision, "cpu_supports_bf16", lambda *a, native=native, **k: native)
        with autocast("cpu", "auto"):
            assert (a @ b).dtype == dtype


def test_config_refuses_fp16_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"precision": "fp16"}}))
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, bad)
    msg = str(err.value)
    assert "train.precision" in msg and "fp16" in msg and str(bad) in msg


@pytest.mark.parametrize("value", ["auto", "bf16", "fp32"])
def test_config_accepts_each_precision(tmp_path, value):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"train": {"precision": value}}))
    assert load_config(DEFAULT, good)["train"]["precision"] == value
