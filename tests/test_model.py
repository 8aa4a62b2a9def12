"""TBKIN model: embeddings' shapes, BERT initialisation, attention switching, save/load."""
import json

import pytest
import torch
from transformers import BertModel

from tbkin.model.modeling_tbkin import CheckpointError, TbkinConfig, TbkinInputs, TbkinModel, load_model_config
from tbkin.model.tokenization import load_tokenizer, prune_tokenizer

from model_fixtures import write_tiny_bert


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def tiny_config(**kw):
    values = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  region_feature_dim=6, num_region_labels=3, max_text_len=8)
    values.update(kw)
    return TbkinConfig(**values)


def tiny_inputs(batch=3, text=8, regions=4, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (batch, text), generator=g)
    ids[:, 0] = 2
    text_mask = torch.ones(batch, text, dtype=torch.bool)
    text_mask[1, 5:] = False
    ids[~text_mask] = 0
    region_mask = torch.ones(batch, regions, dtype=torch.bool)
    region_mask[2, 1:] = False
    return TbkinInputs(ids, text_mask, torch.randn(batch, regions, dim, generator=g),
                       torch.rand(batch, regions, 5, generator=g), region_mask)


def test_output_shapes_and_views():
    model = TbkinModel(tiny_config()).eval()
    out = model(tiny_inputs(), output_attentions=True)
    assert out.sequence.shape == (3, 12, 16) and out.text_length == 8
    assert out.cls.shape == (3, 16) and out.regions.shape == (3, 4, 16) and out.text.shape == (3, 8, 16)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 2, 12, 12)
    # padded keys get no attention
    assert out.attentions[0][1, :, :, 5:8].abs().max() == 0 and out.attentions[0][2, :, :, 9:].abs().max() == 0
    assert model(tiny_inputs()).attentions is None


def test_region_embedding_is_sum_of_two_layer_norms_over_standardised_features():
    model = TbkinModel(tiny_config()).eval()
    inputs = tiny_inputs()
    emb = model.region_embeddings
    mean, std = torch.linspace(-1, 1, 6), torch.tensor([0.5, 1, 2, 3, 0, 1.5])
    emb.set_feature_statistics(mean, std)
    standardised = (inputs.region_features - mean) / torch.tensor([0.5, 1, 2, 3, 1, 1.5])  # constant dim: centred only
    expected = emb.feature_norm(emb.feature_proj(standardised)) + emb.position_norm(
        emb.position_proj(inputs.region_positions))
    torch.testing.assert_close(emb(inputs.region_features, inputs.region_positions), expected)
    assert emb.position_proj.in_features == 5


def test_from_bert_starts_region_layer_norms_at_the_text_scale(bert_dir):
    model = TbkinModel.from_bert(bert_dir, num_layers=1, region_feature_dim=6, num_region_labels=3)
    text_gain = model.embeddings.LayerNorm.weight
    for norm in (model.region_embeddings.feature_norm, model.region_embeddings.position_norm):
        torch.testing.assert_close(norm.weight, text_gain / 2**0.5)


def test_padding_does_not_change_real_tokens():
    model = TbkinModel(tiny_config()).eval()
    inputs = tiny_inputs()
    out = model(inputs).sequence
    changed = TbkinInputs(inputs.input_ids.clone(), inputs.text_mask, inputs.region_features.clone(),
                          inputs.region_positions, inputs.region_mask)
    changed.region_features[2, 1:] = 99.0  # padded regions of sample 2
    torch.testing.assert_close(model(changed).sequence[2, :9], out[2, :9])


def test_from_bert_copies_text_embeddings_and_layers(bert_dir):
    bert = BertModel.from_pretrained(str(bert_dir)).eval()
    model = TbkinModel.from_bert(bert_dir, num_layers=1, region_feature_dim=6, num_region_labels=3).eval()
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 32
    ids = torch.tensor([[101, 1037, 2417, 4418, 102]])
    inputs = TbkinInputs(ids, torch.ones_like(ids, dtype=torch.bool), torch.zeros(1, 2, 6), torch.zeros(1, 2, 5),
                         torch.zeros(1, 2, dtype=torch.bool))
    # With every region padded, the text stream is BERT's first layer exactly.
    expected = bert(ids, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(model(inputs).text, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError):
        TbkinModel.from_bert(bert_dir, num_layers=5)


def test_from_bert_random_encoder_copies_only_the_text_embeddings(bert_dir):
    bert = BertModel.from_pretrained(str(bert_dir))
    model = TbkinModel.from_bert(bert_dir, num_layers=1, encoder_init="random", region_feature_dim=6,
                                 num_region_labels=3)
    torch.testing.assert_close(model.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    fresh, loaded = model.encoder.layer[0].attention.self.query.weight, bert.encoder.layer[0].attention.self.query.weight
    assert not torch.allclose(fresh, loaded)
    assert abs(float(fresh.detach().std()) - model.config.initializer_range) < 0.005
    with pytest.raises(CheckpointError, match="model.encoder_init"):
        TbkinModel.from_bert(bert_dir, num_layers=1, encoder_init="scratch")


def test_a_narrower_random_encoder_has_its_own_sizes_and_only_with_random_layers(bert_dir):
    model = TbkinModel.from_bert(bert_dir, num_layers=2, encoder_init="random", hidden_size=16,
                                 num_attention_heads=2, intermediate_size=24, region_feature_dim=6, num_region_labels=3)
    assert (model.config.hidden_size, model.config.num_attention_heads, model.config.intermediate_size) == (16, 2, 24)
    assert model.embeddings.word_embeddings.weight.shape[1] == 16
    assert model(tiny_inputs()).sequence.shape[-1] == 16
    with pytest.raises(CheckpointError, match="encoder_init"):
        TbkinModel.from_bert(bert_dir, num_layers=1, hidden_size=16)


@pytest.mark.parametrize("name", ["vqa2", "refcoco", "refcoco+", "refcocog"])
def test_real_data_configs_keep_the_papers_bert_initialisation(name, bert_dir):
    from tbkin.config import load_config

    model_config = load_config("config/config.yaml", f"config/{name}.yaml")["model"]
    assert model_config["encoder_init"] == "bert"
    sizes = {k: model_config[k] for k in ("hidden_size", "num_attention_heads", "intermediate_size")}
    assert sizes == dict.fromkeys(sizes)
    # and those settings copy the checkpoint's layers, as test_from_bert_copies_text_embeddings_and_layers checks
    model = TbkinModel.from_bert(bert_dir, num_layers=1, encoder_init=model_config["encoder_init"], **sizes,
                                 region_feature_dim=6, num_region_labels=3)
    bert = BertModel.from_pretrained(str(bert_dir))
    torch.testing.assert_close(model.encoder.layer[0].attention.self.query.weight,
                               bert.encoder.layer[0].attention.self.query.weight)


def test_pruned_vocabulary_keeps_the_right_embedding_rows(bert_dir):
    tokenizer = load_tokenizer(bert_dir)
    pruned, keep = prune_tokenizer(tokenizer, ["a red circle", "what color is the squares?"])
    full = TbkinModel.from_bert(bert_dir, 1)
    small = TbkinModel.from_bert(bert_dir, 1, keep_piece_ids=keep, tokenizer=pruned)
    assert small.config.vocab_size == len(keep) == len(pruned) < 200
    for piece in ("red", "circle", "color", "?", "[MASK]"):
        assert piece in pruned.get_vocab()
        old, new = tokenizer.convert_tokens_to_ids(piece), pruned.convert_tokens_to_ids(piece)
        assert torch.equal(small.embeddings.word_embeddings.weight[new], full.embeddings.word_embeddings.weight[old])
    # corpus words split into the same pieces; [PAD] stays 0
    text = "what color is the squares?"
    assert tokenizer.tokenize(text) == pruned.tokenize(text) and pruned.pad_token_id == 0


def test_set_attention_threshold_zero_is_the_base_model_and_threshold_changes_it():
    model = TbkinModel(tiny_config()).eval()
    inputs = tiny_inputs()
    base = model(inputs).sequence
    model.set_attention("threshold", threshold=0.0)
    assert torch.equal(model(inputs).sequence, base)
    model.set_attention("threshold", threshold=0.3)
    sparse = model(inputs, output_attentions=True)
    assert not torch.allclose(sparse.sequence, base) and torch.isfinite(sparse.sequence).all()
    assert (sparse.attentions[0] == 0).float().mean() > 0.3
    model.set_attention("local", window=3)
    assert torch.isfinite(model(inputs).sequence).all()
    with pytest.raises(ValueError):
        model.set_attention("local")
    with pytest.raises(ValueError):
        model.set_attention("threshold", threshold=1.5)


def test_save_and_load_round_trip(tmp_path, bert_dir):
    tokenizer = load_tokenizer(bert_dir)
    model = TbkinModel(tiny_config(vocab_size=len(tokenizer)), tokenizer=tokenizer).eval()
    model.set_attention("threshold", 0.1)
    model.region_embeddings.set_feature_statistics(torch.arange(6.0), torch.full((6,), 2.0))
    model.save_pretrained(tmp_path / "ckpt")
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "ckpt" / name).is_file()
    loaded = TbkinModel.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.attention_mode == "threshold" and loaded.config.attention_threshold == 0.1
    inputs = tiny_inputs()
    assert torch.equal(loaded(inputs).sequence, model(inputs).sequence)
    assert torch.equal(loaded.region_embeddings.feature_mean, torch.arange(6.0))  # statistics travel along
    assert loaded.tokenizer("a red circle")["input_ids"] == tokenizer("a red circle")["input_ids"]
    overridden = TbkinModel.from_pretrained(tmp_path / "ckpt", attention_mode="full", attention_threshold=0.0)
    assert overridden.config.attention_mode == "full"
    with pytest.raises(CheckpointError):
        TbkinModel.from_pretrained(tmp_path / "missing")


def test_a_config_json_with_the_old_max_regions_field_still_loads(tmp_path):
    model = TbkinModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    written = json.loads(path.read_text())
    assert "max_regions" not in written   # no longer a config field: nothing read it
    path.write_text(json.dumps({**written, "max_regions": 36}))   # as older versions wrote it
    assert "max_regions" not in load_model_config(path).to_dict()
    loaded = TbkinModel.from_pretrained(tmp_path).eval()
    assert not hasattr(loaded.config, "max_regions")
    inputs = tiny_inputs()
    assert torch.equal(loaded(inputs).sequence, model(inputs).sequence)


def test_collate_drops_region_slots_that_are_padding_in_every_row():
    from tbkin.train.data import RegionTensors, collate

    g = torch.Generator().manual_seed(1)

    def image(num_boxes, m=6):
        labels = torch.full((m,), -1)
        labels[:num_boxes] = 1
        features = torch.randn(m, 6, generator=g) * (torch.arange(m) < num_boxes)[:, None]
        return RegionTensors(0, features, torch.rand(m, 5, generator=g), torch.zeros(m, 4), labels,
                             torch.zeros(m), num_boxes, 10, 10)

    images = [image(2), image(4), image(0)]
    texts = [[2, 7, 8, 3], [2, 9, 3], [2, 11, 12, 13, 3]]
    trimmed = collate(texts, images)
    assert trimmed.region_features.shape == (3, 4, 6) and trimmed.region_mask.sum(1).tolist() == [2, 4, 0]
    assert collate(texts[2:], images[2:]).region_mask.shape == (1, 1)   # no detections: one masked slot

    full = TbkinInputs(trimmed.input_ids, trimmed.text_mask, torch.stack([r.features for r in images]),
                       torch.stack([r.positions for r in images]), torch.stack([r.mask for r in images]))
    model = TbkinModel(tiny_config()).eval()
    torch.testing.assert_close(model(trimmed).sequence, model(full).sequence[:, :trimmed.input_ids.shape[1] + 4])
