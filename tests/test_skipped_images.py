"""Images skipped at extraction (`features.skip_bad_images`): their questions and
expressions are left out of fine-tuning and scoring, and counted, instead of failing."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tbkin.cli import main

LABELS = ["circle", "square"]
NUM_REGIONS = 3
FEATURE_DIM = 8
SKIPPED_TRAIN, SKIPPED_VAL = 4, 103   # unreadable images: listed in the feature file, no regions


def write_features(path: Path, image_ids, skipped: int, rng) -> None:
    from tbkin.features.hdf5 import RegionFeatureWriter

    with RegionFeatureWriter(path, NUM_REGIONS, FEATURE_DIM, LABELS) as writer:
        for image_id in image_ids:
            if image_id == skipped:
                writer.skip(f"{image_id}.png", image_id)
                continue
            xy = rng.uniform(0, 30, size=(2, 2))
            boxes = np.concatenate([xy, xy + 16], axis=1).astype(np.float32)
            writer.append(image_id, 64, 64, boxes, np.ones(2, np.float32), np.array([0, 1]),
                          rng.normal(size=(2, FEATURE_DIM)).astype(np.float32))


def write_vqa(root: Path, split: str, image_ids, first_qid: int) -> tuple[Path, Path]:
    questions, annotations = [], []
    for k, image_id in enumerate(image_ids):
        qid = first_qid + k
        questions.append({"image_id": image_id, "question": "what shape is it?", "question_id": qid})
        answers = [{"answer": "circle", "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]
        annotations.append({"question_id": qid, "image_id": image_id, "question_type": "what shape",
                            "answer_type": "other", "multiple_choice_answer": "circle", "answers": answers})
    q, a = root / f"questions_{split}.json", root / f"annotations_{split}.json"
    q.write_text(json.dumps({"questions": questions}))
    a.write_text(json.dumps({"annotations": annotations}))
    return q, a


def tiny_pretrained(directory: Path) -> Path:
    from tbkin.model.modeling_tbkin import TbkinConfig, TbkinModel
    from tbkin.model.tokenization import default_bert_path, load_tokenizer, prune_tokenizer

    tokenizer, keep = prune_tokenizer(load_tokenizer(default_bert_path()), ["what shape is it?", "the circle"])
    config = TbkinConfig(
        vocab_size=len(keep), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, region_feature_dim=FEATURE_DIM, num_region_labels=len(LABELS),
        max_text_len=8,
    )
    torch.manual_seed(0)
    TbkinModel(config, tokenizer=tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("skipped")
    rng = np.random.default_rng(0)
    train_ids, val_ids = list(range(1, 9)), list(range(101, 105))
    write_features(root / "train.h5", train_ids, SKIPPED_TRAIN, rng)
    write_features(root / "val.h5", val_ids, SKIPPED_VAL, rng)
    return {"root": root, "train": write_vqa(root, "train", train_ids, 1), "val": write_vqa(root, "val", val_ids, 1000),
            "pretrained": tiny_pretrained(root / "pretrained"), "train_ids": train_ids, "val_ids": val_ids}


def test_vqa_questions_of_skipped_images_are_left_out_and_counted(data, tmp_path):
    (qt, at), (qv, av) = data["train"], data["val"]
    run_dir, predictions = tmp_path / "model", tmp_path / "pred.json"
    assert main(["finetune-vqa", "--pretrained", str(data["pretrained"]), "--train-questions", str(qt),
                 "--train-annotations", str(at), "--train-features", str(data["root"] / "train.h5"),
                 "--eval-questions", str(qv), "--eval-features", str(data["root"] / "val.h5"),
                 "--out-dir", str(run_dir), "--predictions", str(predictions), "--settings",
                 '{"epochs": 1, "batch_size": 4, "lr": 0.001}']) == 0
    skipped_qid = 1000 + data["val_ids"].index(SKIPPED_VAL)
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["train_questions"] == len(data["train_ids"]) - 1 and run_info["left_out_train_questions"] == 1
    assert run_info["left_out_eval_questions"] == [skipped_qid]
    assert skipped_qid not in {p["question_id"] for p in json.loads(predictions.read_text())}

    out = tmp_path / "eval.json"
    assert main(["eval-vqa", "--predictions", str(predictions), "--questions", str(qv), "--annotations", str(av),
                 "--train-questions", str(qt), "--train-annotations", str(at), "--run-info", str(run_dir / "run.json"),
                 "--dataset", "fixture", "--split", "val", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["left_out_questions"] == 1 and doc["num_questions"] == len(data["val_ids"]) - 1


def test_refs_of_skipped_images_are_left_out_and_counted(data, tmp_path):
    from tbkin.data.loaders import load_refcoco
    from tbkin.evaluate.rec import split_accuracy
    from tbkin.features.hdf5 import RegionFeatureReader
    from tbkin.train.data import TextEncoder
    from tbkin.train.finetune_rec import load_examples
    from tbkin.model.modeling_tbkin import TbkinModel

    images, annotations, refs = [], [], []
    for image_id in data["train_ids"]:
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 64, "height": 64})
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [1, 1, 16, 16],
                            "area": 256, "iscrowd": 0})
        refs.append({"ref_id": image_id, "ann_id": image_id, "image_id": image_id, "split": "val",
                     "category_id": 1, "sentences": [{"tokens": ["the", "circle"], "raw": "the circle",
                                                      "sent": "the circle", "sent_id": 500 + image_id}]})
    (tmp_path / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "circle"}]}))
    (tmp_path / "refs.p").write_bytes(pickle.dumps(refs))
    ref_data = load_refcoco(tmp_path / "refs.p", tmp_path / "instances.json")
    tokenizer = TbkinModel.from_pretrained(data["pretrained"]).tokenizer
    left_out: list[int] = []
    examples = load_examples(ref_data.refs, TextEncoder(tokenizer, 8), RegionFeatureReader(data["root"] / "train.h5"), left_out)
    assert left_out == [500 + SKIPPED_TRAIN]
    assert len(examples) == len(data["train_ids"]) - 1 and SKIPPED_TRAIN not in {e.ref.image_id for e in examples}
    # scoring leaves the same expressions out instead of asking for their predictions
    predictions = [{"sent_id": e.sent_id, "box": [1, 1, 16, 16]} for e in examples]
    assert split_accuracy(predictions, ref_data.refs, "preds", frozenset(left_out)) == 100.0


def test_pretraining_captions_of_skipped_images_are_left_out(data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tbkin.model.modeling_tbkin import TbkinModel
    from tbkin.features.hdf5 import RegionFeatureReader
    from tbkin.train.data import TextEncoder
    from tbkin.train.pretrain import read_caption_records

    rows = [{"source": "caption", "image_id": image_id, "text": "the circle", "tokens": ["the", "circle"],
             "token_starts": [0, 4]} for image_id in data["train_ids"]]
    parses = tmp_path / "parses.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parses)
    tokenizer = TbkinModel.from_pretrained(data["pretrained"]).tokenizer
    records = read_caption_records(parses, None, TextEncoder(tokenizer, 8), RegionFeatureReader(data["root"] / "train.h5"))
    assert [r.image_id for r in records] == [i for i in data["train_ids"] if i != SKIPPED_TRAIN]
    # pair ids stay the parses' row indices, as the knowledge entries name them
    assert [r.pair_id for r in records] == [k for k, i in enumerate(data["train_ids"]) if i != SKIPPED_TRAIN]
