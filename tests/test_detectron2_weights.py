"""detectron2 backend weights: read without running code from the file (detectron2
itself need not be installed for these checks)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tbkin.features.detector import DetectorError
from tbkin.features.detectron2_backend import read_detectron2_weights

from pickle_payloads import RunsCode


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pkl_weights_carrying_code_are_refused_unexecuted(tmp_path, protocol):
    marker = tmp_path / "RAN"
    weights = tmp_path / "model_final.pkl"
    weights.write_bytes(pickle.dumps({"model": {"w": RunsCode(marker)}, "__author__": "x"}, protocol=protocol))
    with pytest.raises(DetectorError, match=r"model_final\.pkl: refused to load global"):
        read_detectron2_weights(weights)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pkl_weights_of_numpy_arrays_load(tmp_path, protocol):
    zoo = tmp_path / "zoo.pkl"
    state = {"backbone.conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    zoo.write_bytes(pickle.dumps({"model": state, "__author__": "FAIR"}, protocol=protocol))
    loaded = read_detectron2_weights(zoo)
    assert loaded["__author__"] == "FAIR"
    np.testing.assert_array_equal(loaded["model"]["backbone.conv.weight"], state["backbone.conv.weight"])
    # Caffe2 / Detectron1 layout: arrays under 'blobs', optimizer momenta dropped
    caffe2 = tmp_path / "caffe2.pkl"
    caffe2.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.ones(3), "conv1_w_momentum": np.ones(3)}}, protocol=2))
    assert read_detectron2_weights(caffe2) == {"model": {"conv1_w": pytest.approx(np.ones(3))},
                                              "__author__": "Caffe2", "matching_heuristics": True}


def test_other_weight_formats(tmp_path):
    from safetensors.torch import save_file

    state = {"w": torch.ones(2)}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    assert torch.equal(read_detectron2_weights(tmp_path / "w.safetensors")["model"]["w"], state["w"])
    assert torch.equal(read_detectron2_weights(tmp_path / "w.pth")["model"]["w"], state["w"])
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(DetectorError, match=r"w\.bin: unknown detector weights format"):
        read_detectron2_weights(tmp_path / "w.bin")
    with pytest.raises(DetectorError, match="not found"):
        read_detectron2_weights(tmp_path / "missing.pkl")
