"""Answer vocabulary (min-count rule) and soft scores."""
import pytest

from tbkin.errors import DataFormatError
from tbkin.train.answers import AnswerVocab, soft_score, vocab_normalize


@pytest.mark.parametrize("count, score", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_score(count, score):
    assert soft_score(count) == score


def test_soft_score_rejects_negative():
    with pytest.raises(ValueError):
        soft_score(-1)


def test_vocab_min_count_and_order():
    anns = [a for a in ["yes"] * 5 + ["no"] * 3 + ["Two"] * 2 + ["2"] + ["red"] * 3 + ["rare"]]
    vocab = AnswerVocab.build(anns, min_count=3)
    # "Two" and "2" normalise to the same answer (3 questions); "rare" is dropped.
    assert vocab.answers == ["yes", "2", "no", "red"]
    assert AnswerVocab.build(anns, min_count=1).answers[-1] == "rare"
    with pytest.raises(DataFormatError, match="at least 6"):
        AnswerVocab.build(anns, min_count=6)


def test_vocab_normalize_removes_commas():
    assert vocab_normalize("1,000") == "1000"
    assert vocab_normalize("The Red, Car") == "red car"


def test_soft_targets_count_matching_annotators():
    vocab = AnswerVocab(["yes", "no", "2", "red"])
    human = ["yes"] * 3 + ["no"] + ["two", "2", "Two", "2."] + ["green", "blue"]
    targets = vocab.soft_targets(human)
    # yes: 3 -> .9, no: 1 -> .3, "2" after normalisation: 4 -> 1, out-of-vocabulary ignored
    assert targets == {0: 0.9, 1: 0.3, 2: 1.0}


def test_save_load_roundtrip(tmp_path):
    vocab = AnswerVocab(["yes", "no"])
    vocab.save(tmp_path / "answers.json")
    assert AnswerVocab.load(tmp_path / "answers.json").answers == ["yes", "no"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataFormatError, match="bad.json"):
        AnswerVocab.load(tmp_path / "bad.json")
