"""Official-format loaders: typed records, errors naming file and record, safe pickles."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from tbkin.cli import main as tbkin_main
from tbkin.data.loaders import (
    DataLayout, load_coco_captions, load_coco_instances, load_refcoco, load_vqa,
    safe_load_pickle,
)
from tbkin.data.check import check_dataset, check_part, coco_file_name, read_image_list
from tbkin.data.shapes import ShapesSpec, generate
from tbkin.errors import DataFormatError, UnsafePickleError

from pickle_payloads import RunsCode

SPEC = ShapesSpec(seed=1, image_size=64, train_images=12, val_images=4, questions_per_image=3,
                  captions_per_image=2, refs_per_image=1)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    generate(SPEC, DataLayout(root, {"train": "train", "val": "val"}), progress=False)
    return root


@pytest.fixture
def layout(pristine, tmp_path) -> DataLayout:
    """A private copy each test may break."""
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    return DataLayout(root, {"train": "train", "val": "val"})


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_loaders_return_typed_records(layout):
    inst = load_coco_instances(layout.file("instances", "train"), layout.file("images", "train"))
    assert len(inst.images) == SPEC.train_images and inst.category_names[0] == "circle"
    ann = inst.annotations[0]
    assert len(ann.bbox) == 4 and ann.attributes["color"] and ann.image_id in inst.images
    assert sum(len(v) for v in inst.annotations_by_image().values()) == len(inst.annotations)
    caps = load_coco_captions(layout.file("captions", "val"))
    assert len(caps.captions) == SPEC.val_images * SPEC.captions_per_image
    vqa = load_vqa(layout.file("vqa_questions", "train"), layout.file("vqa_annotations", "train"),
                   known_image_ids=set(inst.images))
    q = vqa.questions[0]
    assert len(q.answers) == 10 and q.answer_type in ("yes/no", "number", "other") and q.question_type
    only_questions = load_vqa(layout.file("vqa_questions", "val"))
    assert only_questions.questions[0].answers is None
    refs = load_refcoco(layout.file("refs"), layout.file("refs_instances"), layout.file("images", "train"))
    ref = refs.refs[0]
    assert ref.image.id == ref.image_id and ref.sentences[0].tokens and len(ref.bbox) == 4
    assert set(refs.by_split()) <= {"train", "val", "testA", "testB"}


def test_missing_field_names_file_and_record(layout):
    path = layout.file("vqa_questions", "train")
    _edit_json(path, lambda d: d["questions"][2].pop("question"))
    with pytest.raises(DataFormatError) as err:
        load_vqa(path)
    msg = str(err.value)
    assert str(path) in msg and "questions[2]" in msg and "missing field 'question'" in msg


def test_answer_list_not_ten_long(layout):
    path = layout.file("vqa_annotations", "val")
    qid = {}

    def drop_one(d):
        qid["id"] = d["annotations"][1]["question_id"]
        d["annotations"][1]["answers"].pop()
    _edit_json(path, drop_one)
    with pytest.raises(DataFormatError) as err:
        load_vqa(layout.file("vqa_questions", "val"), path)
    msg = str(err.value)
    assert str(path) in msg and f"question_id {qid['id']}" in msg and "9 entries, expected 10" in msg


def test_image_id_without_image_file(layout):
    images = layout.file("images", "train")
    victim = sorted(images.iterdir())[3]
    victim.unlink()
    path = layout.file("instances", "train")
    with pytest.raises(DataFormatError) as err:
        load_coco_instances(path, images)
    msg = str(err.value)
    assert str(path) in msg and victim.name in msg and "image id 4" in msg


def test_question_about_an_unknown_image(layout):
    path = layout.file("vqa_questions", "val")
    _edit_json(path, lambda d: d["questions"][0].update(image_id=999999))
    with pytest.raises(DataFormatError, match=r"questions\[0\].*image id 999999 has no image"):
        load_vqa(path, known_image_ids={1, 2, 3})


def test_wrong_type_bad_json_and_missing_file(layout, tmp_path):
    path = layout.file("instances", "val")
    _edit_json(path, lambda d: d["annotations"][0].update(bbox=[1, 2, 3]))
    with pytest.raises(DataFormatError, match=r"annotations\[0\].*'bbox'"):
        load_coco_instances(path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataFormatError, match="broken.json: not valid JSON"):
        load_coco_captions(broken)
    with pytest.raises(DataFormatError, match="nope.json: file not found"):
        load_coco_captions(tmp_path / "nope.json")


def test_ref_with_unknown_annotation(layout):
    refs = pickle.loads(layout.file("refs").read_bytes())
    refs[1]["ann_id"] = 10 ** 9
    layout.file("refs").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(DataFormatError) as err:
        load_refcoco(layout.file("refs"), layout.file("refs_instances"))
    assert "refs(unc).p" in str(err.value) and f"ref_id {refs[1]['ref_id']}" in str(err.value)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_carrying_code_is_rejected_unexecuted(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1}, RunsCode(marker)], protocol=protocol))
    with pytest.raises(UnsafePickleError) as err:
        safe_load_pickle(path)
    assert str(path) in str(err.value) and "system" in str(err.value)
    assert not marker.exists()
    assert isinstance(err.value, DataFormatError)


def test_plain_pickles_load_and_garbage_is_a_format_error(tmp_path):
    data = [{"ref_id": 1, "sentences": [{"raw": "the red circle", "tokens": ["the", "red"]}], "box": (1.5, 2)}]
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"ok{protocol}.p"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert safe_load_pickle(path) == data
    # a Python 2 byte string (protocol 2, SHORT_BINSTRING) loads as text
    py2 = tmp_path / "py2.p"
    py2.write_bytes(b"\x80\x02]q\x00U\x03redq\x01a.")
    assert safe_load_pickle(py2) == ["red"]
    garbage = tmp_path / "garbage.p"
    garbage.write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(DataFormatError, match="garbage.p: not a valid pickle"):
        safe_load_pickle(garbage)


def test_check_data_cli_writes_marker_and_reports_errors_in_one_line(layout, capsys, tmp_path):
    out = tmp_path / "results" / "val" / "image_list.json"
    args = ["check-data", "--root", str(layout.root), "--split", "train=train", "--split", "val=val",
            "--dataset", "shapes", "--part", "val", "--out", str(out)]
    assert tbkin_main(args) == 0
    marker = json.loads(out.read_text())
    assert marker["counts"]["images"] == SPEC.val_images and marker["dataset"] == "shapes"
    assert marker["image_source"] == "instances"
    assert marker == {"dataset": "shapes", **check_part(layout, "val", ["instances", "captions", "vqa", "refs"])}
    assert [im.id for im in read_image_list(out)] == sorted(im["id"] for im in marker["images"])
    out.unlink()
    _edit_json(layout.file("captions", "val"), lambda d: d["annotations"][0].pop("caption"))
    assert tbkin_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "captions_val.json" in err and "annotations[0]" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_check_data_validates_only_the_listed_contents(layout):
    shutil.rmtree(layout.root / "vqa")
    summary = check_dataset(layout, ["instances", "captions", "refs"])
    assert "questions" not in summary["train"]
    with pytest.raises(DataFormatError, match="file not found"):
        check_dataset(layout)


def test_malformed_answer_names_its_position(layout):
    path = layout.file("vqa_annotations", "train")
    _edit_json(path, lambda d: d["annotations"][0]["answers"][4].pop("answer"))
    with pytest.raises(DataFormatError, match=r"annotations\[0\] \(question_id \d+\) answers\[4\]: missing field 'answer'"):
        load_vqa(layout.file("vqa_questions", "train"), path)


@pytest.mark.parametrize("text", ["", "   \t\n"])
def test_empty_question_fails_check_data_naming_file_and_record(layout, capsys, text):
    path = layout.file("vqa_questions", "val")
    _edit_json(path, lambda d: d["questions"][2].update(question=text))
    out = layout.root.parent / "READY.json"
    assert tbkin_main(["check-data", "--root", str(layout.root), "--part", "val", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert path.name in err and "questions[2]" in err and "question text is empty" in err, err
    assert not out.exists()


def _without(layout: DataLayout, *keys: str) -> None:
    for key in keys:
        for split in layout.splits:
            layout.file(key, split).unlink()


def test_image_list_falls_back_to_captions_then_to_questions(layout):
    """A VQA dataset without COCO instances files: the image list comes from what there is."""
    _without(layout, "instances")
    marker = check_part(layout, "val", ["captions", "vqa"])
    assert marker["image_source"] == "captions" and marker["counts"]["images"] == SPEC.val_images
    # questions only: files named the COCO way, sizes read from the images
    _without(layout, "captions")
    image_dir = layout.file("images", "val")
    for path in image_dir.iterdir():
        image_id = int(path.stem.rsplit("_", 1)[1])
        path.rename(image_dir / coco_file_name("val", image_id))
    questions = json.loads(layout.file("vqa_questions", "val").read_text())
    assert questions["data_subtype"] == "val"
    marker = check_part(layout, "val", ["vqa"])
    assert marker["image_source"] == "vqa_questions" and marker["counts"]["images"] == SPEC.val_images
    assert all(im["width"] == SPEC.image_size for im in marker["images"])


def test_split_without_an_image_list_is_an_error_naming_the_cause(layout):
    with pytest.raises(DataFormatError, match="split 'val' has no image list.*refs cover train only"):
        check_part(layout, "val", ["refs"])
    # the refs' train images are the train split's image list of a RefCOCO-only config
    assert check_part(layout, "train", ["refs"])["image_source"] == "refs_instances"
