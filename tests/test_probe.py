"""Grounding probe: hits over every piece of a masked word, random-image draw, probe.json end to end."""
import json
from pathlib import Path

import pytest
import torch

from tbkin.cli import main as cli_main
from tbkin.evaluate.probe import (
    draw_random_images,
    masked_word_hits,
    probe,
    read_probe_captions,
    summarize,
    word_group,
)
from tbkin.features.hdf5 import RegionFeatureReader
from tbkin.model.modeling_tbkin import (
    PRETRAINING_HEADS_NAME,
    CheckpointError,
    TbkinConfig,
    TbkinInputs,
    TbkinModel,
    TbkinPretrainingHeads,
    load_pretraining_heads,
    save_pretraining_heads,
)
from tbkin.model.tokenization import load_tokenizer
from tbkin.precision import resolve_precision
from tbkin.train.data import TextEncoder

from model_fixtures import COLORS, SHAPES, write_corpus, write_tiny_bert

torch.set_num_threads(1)


class PredictsInOrder:
    """Fake MLM head: the i-th masked position (row-major) is predicted as ``ids[i]``."""

    def __init__(self, ids, vocab_size):
        self.ids = list(ids)
        self.vocab_size = vocab_size

    def mlm_logits(self, hidden, word_embedding):
        assert hidden.shape[0] == len(self.ids), "one prediction per masked piece"
        return torch.nn.functional.one_hot(torch.tensor(self.ids), self.vocab_size).float()


def tiny_model(vocab_size=40):
    torch.manual_seed(0)
    config = TbkinConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, region_feature_dim=8, num_region_labels=3, max_text_len=8)
    return TbkinModel(config).eval()


def test_a_word_is_a_hit_only_when_every_piece_is_right():
    model = tiny_model()
    mask = 3
    original = torch.tensor([
        [1, 10, 11, 2, 0],   # one-piece word at 1, predicted right
        [1, 10, 11, 2, 0],   # one-piece word at 2, predicted wrong
        [1, 12, 13, 14, 2],  # two-piece word at 2-3: first piece right, second wrong
        [1, 12, 13, 14, 2],  # two-piece word at 1-2: both right
        [1, 12, 13, 14, 2],  # two-piece word at 2-3: first wrong, second right
    ])
    masked = torch.zeros(original.shape, dtype=torch.bool)
    masked[0, 1] = masked[1, 2] = True
    masked[2, 2:4] = masked[3, 1:3] = masked[4, 2:4] = True
    inputs = TbkinInputs(
        input_ids=original.masked_fill(masked, mask),
        text_mask=original != 0,
        region_features=torch.randn(5, 3, 8),
        region_positions=torch.rand(5, 3, 5),
        region_mask=torch.ones(5, 3, dtype=torch.bool),
    )
    predictions = [10, 20, 13, 21, 12, 13, 22, 14]  # masked positions in row-major order
    hits = masked_word_hits(model, PredictsInOrder(predictions, 40), inputs, original, masked)
    assert hits.tolist() == [True, False, False, True, False]


def test_random_images_are_other_images_and_reproducible():
    pool = [3, 5, 8, 13]
    own = [3, 5, 8, 13] * 50
    drawn = draw_random_images(own, pool, seed=1)
    assert drawn == draw_random_images(own, pool, seed=1)
    assert drawn != draw_random_images(own, pool, seed=2)
    assert all(o != d for o, d in zip(own, drawn))
    assert {d for o, d in zip(own, drawn) if o == 3} == {5, 8, 13}  # every other image can be drawn


def test_colour_and_shape_words_and_their_pieces(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert [word_group(w) for w in ("Red", "stars", "circle", "large", "thing")] == ["color", "shape", "shape", None, None]
    tokenizer = load_tokenizer(write_tiny_bert(tmp_path / "bert"))
    text = "A red circle and two blue stars."
    tokens = ["A", "red", "circle", "and", "two", "blue", "stars", "."]
    starts = [text.index(t, sum(len(x) for x in tokens[:i])) for i, t in enumerate(tokens)]
    rows = [dict(source="caption", image_id=1, text=text, tokens=tokens, token_starts=starts),
            dict(source="question", image_id=1, text="what color is the circle?", tokens=["what", "color", "is",
                 "the", "circle", "?"], token_starts=[0, 5, 11, 14, 18, 24])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "parses.parquet")
    captions, truncated = read_probe_captions(tmp_path / "parses.parquet", TextEncoder(tokenizer, 20))
    assert len(captions) == 1 and truncated == 0  # questions are not probed
    words = captions[0].words
    assert [group for group, _ in words] == ["color", "shape", "color", "shape"]
    ids = captions[0].text.input_ids
    assert [tokenizer.decode([ids[p] for p in pieces]).replace(" ", "") for _, pieces in words] == \
        ["red", "circle", "blue", "stars"]
    # [CLS] a red circle and | two blue stars . [SEP]: the last two words do not fit
    captions, truncated = read_probe_captions(tmp_path / "parses.parquet", TextEncoder(tokenizer, 6))
    assert [group for group, _ in captions[0].words] == ["color", "shape"] and truncated == 2


def test_summary_percentages_difference_and_chance():
    counts = {"color": {"own_image": 9, "random_image": 3, "masked_words": 12},
              "shape": {"own_image": 2, "random_image": 2, "masked_words": 4}}
    summary = summarize(counts)
    assert summary["color"] == {"own_image": 75.0, "random_image": 25.0, "difference": 50.0,
                                "masked_words": 12, "chance": 16.67}
    assert summary["shape"] == {"own_image": 50.0, "random_image": 50.0, "difference": 0.0,
                                "masked_words": 4, "chance": 20.0}
    assert summary["all"] == {"own_image": 68.75, "random_image": 31.25, "difference": 37.5, "masked_words": 16,
                              "chance": round((12 * 100 / 6 + 4 * 100 / 5) / 16, 2)}
    empty = summarize({"color": {"own_image": 0, "random_image": 0, "masked_words": 0},
                       "shape": {"own_image": 1, "random_image": 0, "masked_words": 1}})
    assert empty["color"]["own_image"] is None and empty["all"]["masked_words"] == 1


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny pretrained folder (model, config, tokenizer, pretraining heads) and a val corpus."""
    root = tmp_path_factory.mktemp("probe")
    corpus = write_corpus(root / "data", num_images=6)
    tokenizer = load_tokenizer(write_tiny_bert(root / "bert"))
    store = RegionFeatureReader(corpus["features"])
    torch.manual_seed(0)
    model = TbkinModel.from_bert(root / "bert", 1, tokenizer=tokenizer, encoder_init="random",
                                 region_feature_dim=store.feature_dim, num_region_labels=len(store.label_names),
                                 max_text_len=16)
    directory = root / "pretrain"
    model.save_pretrained(directory, tokenizer=tokenizer)
    save_pretraining_heads(directory, TbkinPretrainingHeads(model.config))
    return {"dir": directory, **corpus}


def _probe_cli(checkpoint, output, *extra):
    return cli_main(["probe", "--checkpoint", str(checkpoint["dir"]), "--parses", checkpoint["parses"],
                     "--features", checkpoint["features"], "--output", str(output), "--device", "cpu", *extra])


def test_probe_writes_the_documented_fields(checkpoint, tmp_path):
    output = tmp_path / "out" / "probe.json"
    assert _probe_cli(checkpoint, output, "--seed", "3") == 0
    result = json.loads(output.read_text())
    assert not list(output.parent.glob("*.partial"))
    # write_corpus: 6 images x 2 captions "a <colour> <shape> and a <colour> <shape>"
    assert result["color"]["masked_words"] == 12 * 2 and result["shape"]["masked_words"] == 12 * 2
    assert result["all"]["masked_words"] == 48
    for group, chance in (("color", 16.67), ("shape", 20.0), ("all", round((100 / 6 + 100 / 5) / 2, 2))):
        r = result[group]
        assert set(r) == {"own_image", "random_image", "difference", "masked_words", "chance"}
        assert 0 <= r["own_image"] <= 100 and 0 <= r["random_image"] <= 100
        assert r["difference"] == pytest.approx(r["own_image"] - r["random_image"], abs=0.011)
        assert r["chance"] == chance
    assert result["precision"] == resolve_precision("auto", "cpu")
    assert (result["seed"], result["captions"], result["images"], result["truncated_words"]) == (3, 12, 6, 0)
    assert result["device"] == "cpu" and result["checkpoint"] == str(checkpoint["dir"])
    # deterministic: the same command writes the same file
    again = tmp_path / "again.json"
    assert _probe_cli(checkpoint, again, "--seed", "3") == 0
    assert again.read_text() == output.read_text()


def test_probe_runs_in_bf16_when_asked(checkpoint, tmp_path):
    output = tmp_path / "probe.json"
    assert _probe_cli(checkpoint, output, "--precision", "bf16") == 0  # emulated where the CPU lacks bf16
    result = json.loads(output.read_text())
    assert result["precision"] == "bf16" and result["all"]["masked_words"] == 48


def test_the_main_target_runs_the_probe_on_shapes(tmp_path):
    from workflow_helpers import snakemake, tail, write_override

    override, results = write_override(tmp_path)
    proc = snakemake("-n", "-p", "--nolock", str(results / "vqa_eval.json"), configfiles=(override,))
    assert proc.returncode == 0, tail(proc)
    commands = [line for line in proc.stdout.splitlines() if line.startswith("Shell command: tbkin probe")]
    assert len(commands) == 1, tail(proc)
    assert f"--output {results / 'pretrain' / 'probe.json'}" in commands[0]
    assert f"--parses {results / 'text' / 'val' / 'parses.parquet'}" in commands[0]


def test_batching_does_not_change_the_hits(checkpoint):
    """Padding to a batch's longest caption and largest image must not change a prediction."""
    model = TbkinModel.from_pretrained(checkpoint["dir"])
    heads = load_pretraining_heads(checkpoint["dir"], model.config)
    # Only the corpus's colour and shape pieces can win: a random head then hits some
    # words and misses others, and which ones depends on the hidden states.
    words = [*COLORS, *SHAPES]
    with torch.no_grad():
        heads.mlm_bias.fill_(-1e4)
        heads.mlm_bias[model.tokenizer.convert_tokens_to_ids(words)] = 0.0
    store = RegionFeatureReader(checkpoint["features"], cache=True)
    captions, _ = read_probe_captions(checkpoint["parses"], TextEncoder(model.tokenizer, model.config.max_text_len))
    mask_id = model.tokenizer.mask_token_id
    together = probe(model, heads, captions, store, mask_id, seed=0, batch_size=64, precision="fp32")
    one_by_one = probe(model, heads, captions, store, mask_id, seed=0, batch_size=1, precision="fp32")
    assert together == one_by_one
    hits = [c[condition] for c in together.values() for condition in ("own_image", "random_image")]
    assert 0 < sum(hits) < 2 * sum(c["masked_words"] for c in together.values()), together


def test_missing_pretraining_heads_name_the_file(checkpoint, tmp_path, capsys):
    folder = tmp_path / "no_heads"
    folder.mkdir()
    for path in Path(checkpoint["dir"]).iterdir():
        if path.name != PRETRAINING_HEADS_NAME:
            (folder / path.name).write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match=PRETRAINING_HEADS_NAME):
        load_pretraining_heads(folder, TbkinModel.from_pretrained(folder).config)
    code = _probe_cli({**checkpoint, "dir": folder}, tmp_path / "probe.json")
    assert code == 2 and str(folder / PRETRAINING_HEADS_NAME) in capsys.readouterr().err
    assert not (tmp_path / "probe.json").exists()
