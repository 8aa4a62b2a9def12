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


def test_non_finite_numbers_are_refused_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune: {threshold: .nan}\npretrain: {lr: .inf}\nablation: {thresholds: [0.1, -.inf]}\n")
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, bad)
    msg = str(err.value)
    for key in ("finetune.threshold", "pretrain.lr", "ablation.thresholds.1"):
        assert f"key '{key}'" in msg and "not a finite number" in msg, msg
    assert str(bad) in msg


def test_all_digit_sha256_read_as_a_number_says_to_quote_it(tmp_path):
    bad = _write(tmp_path, {"downloads": {"weights": {"url": "https://example.org/w.pth", "sha256": 12345678}}})
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, bad)
    assert "downloads.weights.sha256" in str(err.value) and "quote" in str(err.value)
    quoted = _write(tmp_path, {"downloads": {"weights": {"url": "https://example.org/w.pth", "sha256": "12345678"}}})
    assert load_config(DEFAULT, quoted)["downloads"]["weights"]["sha256"] == "12345678"


def test_broken_yaml_names_file_line_and_column(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("results: x\nfeatures:\n  shards: [1,\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml, line 4, column 1: not valid YAML"):
        load_config(DEFAULT, bad)
    tabbed = tmp_path / "tabbed.yaml"
    tabbed.write_text("features:\n\tshards: 2\n")
    with pytest.raises(ConfigError, match=r"tabbed\.yaml, line 2, column 1: .*never tabs"):
        load_config(DEFAULT, tabbed)


def test_check_config_command_names_file_and_line(tmp_path, capsys):
    from tbkin.cli import main as tbkin_main

    bad = tmp_path / "broken.yaml"
    bad.write_text("pretrain:\n  steps: 5\n   lr: 0.1\n")
    assert tbkin_main(["check-config", str(bad)]) == 2
    assert f"{bad}, line 3" in capsys.readouterr().err
    assert tbkin_main(["check-config", "config/test.yaml"]) == 0
