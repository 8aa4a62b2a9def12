"""The official VQA accuracy against hand-worked examples."""
import pytest

from tbkin.evaluate.vqa_metric import (
    normalize_answer,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes", "yes"),                 # lower-case
        ("yes!", "yes"),                # mark not next to a space -> space, then split
        ("hi - there", "hi there"),     # mark next to a space -> removed
        ("t-shirt", "t shirt"),         # hyphen inside a word -> space
        ("1,000", "1000"),              # digit,digit comma anywhere -> marks removed
        ("yes.", "yes"),                # sentence period dropped
        ("2.5", "2.5"),                 # decimal point kept
        ("two", "2"),                   # number words -> digits
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),           # only zero..ten are mapped
        ("the dog", "dog"),             # articles dropped
        ("a cat and an apple", "cat and apple"),
        ("dont", "don't"),              # contractions restored
        ("isnt", "isn't"),
        ("  red\tcar\n", "red car"),    # whitespace
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_punctuation_and_digit_steps_separately():
    assert process_punctuation("(left)") == " left "
    assert process_punctuation("a, b") == "a b"   # ", " -> comma removed, no extra space
    assert process_digit_article("The Two Dogs") == "2 dogs"


def test_unanimous_exact_match_scores_one():
    assert question_accuracy("yes", ["yes"] * 10) == 1.0
    assert question_accuracy("no", ["yes"] * 10) == 0.0


def test_leave_one_out_three_of_ten():
    # 3 annotators said "2", 7 said "3". Leaving out a "2" leaves 2 matches (2/3),
    # 3 subsets; leaving out a "3" leaves 3 matches (1), 7 subsets: (3*2/3 + 7)/10 = 0.9
    gold = ["2"] * 3 + ["3"] * 7
    assert question_accuracy("2", gold) == pytest.approx(0.9)
    assert question_accuracy("two", gold) == pytest.approx(0.9)   # number word normalised
    assert question_accuracy("3", gold) == pytest.approx(1.0)


def test_one_of_ten_and_two_of_ten():
    # 1 match: 9 subsets keep it -> 1/3 each, the one leaving it out -> 0: 9/3/10 = 0.3
    assert question_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)
    # 2 matches: 8 subsets with 2/3, 2 subsets with 1/3: (16/3 + 2/3)/10 = 0.6
    assert question_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)
    # 4 matches: every subset keeps >= 3 -> 1
    assert question_accuracy("red", ["red"] * 4 + ["blue"] * 6) == pytest.approx(1.0)


def test_prediction_normalisation_articles_contractions():
    assert question_accuracy("The dog.", ["dog"] * 5 + ["cat"] * 5) == 1.0
    assert question_accuracy("dont", ["don't"] * 4 + ["no"] * 6) == 1.0


def test_gold_answers_get_punctuation_only_when_not_unanimous():
    # Official quirk: a prediction "t-shirt" is normalised to "t shirt"; ten unanimous
    # "t-shirt" answers are left as they are, so it scores 0 ...
    assert question_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    # ... but with one dissenting annotator the answers are normalised too and it matches.
    assert question_accuracy("t-shirt", ["t-shirt"] * 9 + ["shirt"]) == 1.0
    # Gold answers never get the number-word step: "two" answers do not match "2".
    assert question_accuracy("2", ["two"] * 6 + ["three"] * 4) == 0.0


def _ann(qid, answers, answer_type, question_type):
    return {
        "question_id": qid,
        "answer_type": answer_type,
        "question_type": question_type,
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


def test_aggregation_overall_per_type_rounded_percent():
    anns = [
        _ann(1, ["yes"] * 10, "yes/no", "is the"),
        _ann(2, ["yes"] * 10, "yes/no", "is the"),
        _ann(3, ["2"] * 3 + ["3"] * 7, "number", "how many"),
        _ann(4, ["red"] + ["blue"] * 9, "other", "what color is the"),
    ]
    preds = {1: "yes", 2: "no", 3: "2", 4: "red"}
    acc = vqa_accuracy(preds, anns)
    assert acc.num_questions == 4
    assert acc.per_answer_type == {"number": 90.0, "other": 30.0, "yes/no": 50.0}
    assert acc.per_question_type == {"how many": 90.0, "is the": 50.0, "what color is the": 30.0}
    assert acc.overall == 55.0   # (1 + 0 + 0.9 + 0.3) / 4
    assert acc.per_question[3] == pytest.approx(0.9)


def test_rounding_to_two_decimals():
    anns = [_ann(q, ["x"] * 10, "other", "what") for q in (1, 2, 3)]
    acc = vqa_accuracy({1: "x", 2: "y", 3: "y"}, anns)
    assert acc.overall == 33.33          # 100/3 rounded as the official script does
    anns[0]["answers"][0]["answer"] = "y"  # 1 annotator of 10 -> 0.3 for "y"
    acc = vqa_accuracy({1: "y", 2: "x", 3: "x"}, anns)
    assert acc.overall == 76.67          # (0.3 + 1 + 1) / 3


def test_missing_prediction_is_an_error():
    with pytest.raises(KeyError, match="question_id 7"):
        vqa_accuracy({}, [_ann(7, ["yes"] * 10, "yes/no", "is")])


def _write(path, obj):
    import json

    path.write_text(json.dumps(obj))
    return str(path)


def test_eval_vqa_cli_with_question_type_prior(tmp_path):
    import json

    from tbkin.cli import main

    def full(qid, answers, at, qt):
        d = _ann(qid, answers, at, qt)
        d["multiple_choice_answer"] = max(set(answers), key=answers.count)
        return d

    train = [full(1, ["yes"] * 10, "yes/no", "is the"), full(2, ["yes"] * 10, "yes/no", "is the"),
             full(3, ["no"] * 10, "yes/no", "is the"), full(4, ["2"] * 10, "number", "how many"),
             full(5, ["red"] * 10, "other", "what color")]
    val = [full(11, ["no"] * 10, "yes/no", "is the"), full(12, ["2"] * 10, "number", "how many"),
           full(13, ["blue"] * 10, "other", "what shape")]   # unseen type -> overall prior "yes"
    def questions(anns):
        return {"questions": [{"question_id": a["question_id"], "image_id": 1, "question": "q?"} for a in anns]}

    for a in train + val:
        a["image_id"] = 1
    paths = {
        "train": _write(tmp_path / "train.json", {"annotations": train}),
        "train_q": _write(tmp_path / "train_q.json", questions(train)),
        "val": _write(tmp_path / "val.json", {"annotations": val}),
        "val_q": _write(tmp_path / "val_q.json", questions(val)),
        "pred": _write(tmp_path / "pred.json", [{"question_id": 11, "answer": "no"},
                                                 {"question_id": 12, "answer": "two"},
                                                 {"question_id": 13, "answer": "red"}]),
        "run": _write(tmp_path / "run.json", {"attention": {"mode": "threshold", "threshold": 0.1, "window": None},
                                               "seed": 3}),
    }
    out = tmp_path / "eval.json"
    assert main(["eval-vqa", "--predictions", paths["pred"], "--questions", paths["val_q"],
                 "--annotations", paths["val"], "--train-questions", paths["train_q"],
                 "--train-annotations", paths["train"], "--run-info", paths["run"], "--dataset", "shapes",
                 "--split", "val", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["accuracy"]["overall"] == 66.67
    assert doc["accuracy"]["per_answer_type"] == {"number": 100.0, "other": 0.0, "yes/no": 100.0}
    # prior: "is the" -> yes (2 of 3), "how many" -> 2, unseen "what shape" -> yes (overall)
    assert doc["question_type_prior"]["overall"] == 33.33
    assert doc["gain_over_prior"] == 33.34
    assert doc["num_questions"] == 3 and doc["threshold"] == 0.1 and doc["seed"] == 3
    assert doc["predictions"] == paths["pred"] and doc["dataset"] == "shapes" and doc["split"] == "val"
    # a missing prediction is a one-line user error naming the question
    _write(tmp_path / "pred.json", [{"question_id": 11, "answer": "no"}])
    assert main(["eval-vqa", "--predictions", paths["pred"], "--questions", paths["val_q"],
                 "--annotations", paths["val"], "--train-questions", paths["train_q"],
                 "--train-annotations", paths["train"], "--dataset", "shapes", "--split", "val",
                 "--output", str(out)]) == 2
