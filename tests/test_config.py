import pytest
import yaml

from tbkin.config import ConfigError, load_config

DEFAULT = "config/config.yaml"


def test_default_and_test_configs_validate():
    cfg = load_config(DEFAULT)
    assert cfg["dataset"] == "shapes"
    test_cfg = load_config(DEFAULT, "config/test.yaml")
    assert test_cfg["results"] == "results-test"


def _write(tmp_path, data):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_misspelt_key_names_key_and_file(tmp_path):
    bad = _write(tmp_path, {"features": {"num_regoins": 4}})
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, bad)
    msg = str(err.value)
    assert "features.num_regoins" in msg and "unknown key" in msg and str(bad) in msg


def test_wrong_type_and_out_of_range(tmp_path):
    bad = _write(tmp_path, {"pretrain": {"steps": "many"}, "finetune": {"threshold": 1.5},
                            "model": {"encoder_init": "scratch"}})
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, bad)
    msg = str(err.value)
    assert "pretrain.steps" in msg and "finetune.threshold" in msg and "model.encoder_init" in msg


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
