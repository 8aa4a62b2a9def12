"""The `shapes` generator: official formats, determinism, truthful text and gold."""
from __future__ import annotations

import json
import pickle
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from tbkin.data import vocab
from tbkin.data.captions import make_captions, make_expressions
from tbkin.data.language import Desc, SceneIndex, render, select
from tbkin.data.loaders import DataLayout
from tbkin.data.questions import YesNoBalancer, make_questions
from tbkin.data.scenes import Scene, SceneObject, holds, sample_scene
from tbkin.data.shapes import REF_SHAPES, ShapesSpec, generate

SPEC = ShapesSpec(seed=3, image_size=96, train_images=30, val_images=8, questions_per_image=4)


def _layout(root: Path) -> DataLayout:
    return DataLayout(root=root, splits={"train": "train", "val": "val"})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> DataLayout:
    layout = _layout(tmp_path_factory.mktemp("shapes"))
    generate(SPEC, layout, progress=False)
    return layout


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(dataset, tmp_path):
    again = _layout(tmp_path / "again")
    generate(SPEC, again, progress=False)
    first, second = _files(dataset.root), _files(again.root)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    assert not [n for n in first if n.endswith(".partial")]
    other = _layout(tmp_path / "other")
    generate(ShapesSpec(**{**SPEC.__dict__, "seed": 4, "val_images": 1, "train_images": 3}), other, progress=False)
    assert _files(other.root)["images/train/shapes_train_000000000001.png"] != first["images/train/shapes_train_000000000001.png"]


def _json(layout, key, split=None):
    return json.loads(layout.file(key, split).read_text())


def test_coco_instances_and_captions_have_the_official_fields(dataset):
    for split in ("train", "val"):
        inst = _json(dataset, "instances", split)
        assert {"info", "licenses", "images", "annotations", "categories"} <= set(inst)
        assert [c["name"] for c in inst["categories"]] == list(vocab.SHAPES)
        for image in inst["images"]:
            assert {"id", "file_name", "width", "height"} <= set(image)
            assert (dataset.file("images", split) / image["file_name"]).is_file()
        for ann in inst["annotations"]:
            assert {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation", "attributes"} <= set(ann)
            assert ann["attributes"]["color"] in vocab.COLORS and ann["attributes"]["size"] in vocab.SIZES
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= SPEC.image_size and y + h <= SPEC.image_size and w > 0 and h > 0
        caps = _json(dataset, "captions", split)
        per_image = Counter(c["image_id"] for c in caps["annotations"])
        assert set(per_image.values()) == {SPEC.captions_per_image}
        assert all({"id", "image_id", "caption"} <= set(c) for c in caps["annotations"])
    coco = COCO(str(dataset.file("instances", "train")))  # the official API reads it
    first = coco.getImgIds()[0]
    assert coco.loadAnns(coco.getAnnIds(imgIds=first))
    assert len(coco.annToMask(coco.loadAnns(coco.getAnnIds(imgIds=first))[0]).nonzero()[0]) > 10


def test_vqa_files_have_the_official_fields(dataset):
    for split in ("train", "val"):
        qs = _json(dataset, "vqa_questions", split)
        anns = _json(dataset, "vqa_annotations", split)
        assert {"info", "task_type", "data_type", "data_subtype", "license", "questions"} <= set(qs)
        assert {"info", "license", "data_type", "data_subtype", "annotations"} <= set(anns)
        questions = {q["question_id"]: q for q in qs["questions"]}
        assert len(questions) == len(anns["annotations"]) > 0
        for ann in anns["annotations"]:
            assert set(ann) == {"question_id", "image_id", "question_type", "answer_type",
                                "multiple_choice_answer", "answers"}
            assert ann["answer_type"] in ("yes/no", "number", "other")
            assert len(ann["answers"]) == 10
            assert all(set(a) == {"answer", "answer_confidence", "answer_id"} for a in ann["answers"])
            assert [a["answer_id"] for a in ann["answers"]] == list(range(1, 11))
            counts = Counter(a["answer"] for a in ann["answers"])
            assert ann["multiple_choice_answer"] == counts.most_common(1)[0][0]
            q = questions[ann["question_id"]]
            assert q["image_id"] == ann["image_id"]
            words = q["question"].lower().split()
            assert " ".join(words[:len(ann["question_type"].split())]).replace(" an", " a") == ann["question_type"]


def test_refs_pick_train_images_and_follow_the_split_rule(dataset):
    refs = pickle.loads(dataset.file("refs").read_bytes())
    inst = json.loads(dataset.file("refs_instances").read_text())
    train_ids = {im["id"] for im in _json(dataset, "instances", "train")["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    names = {c["id"]: c["name"] for c in inst["categories"]}
    assert {r["image_id"] for r in refs} <= train_ids
    split_of_image = {}
    for ref in refs:
        assert set(ref) == {"ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "file_name", "category_id"}
        assert anns[ref["ann_id"]]["image_id"] == ref["image_id"]
        assert anns[ref["ann_id"]]["category_id"] == ref["category_id"]
        assert split_of_image.setdefault(ref["image_id"], ref["split"]) == ref["split"]  # per image
        assert names[ref["category_id"]] in REF_SHAPES.get(ref["split"], vocab.SHAPES)
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for s in ref["sentences"]:
            assert s["tokens"] == s["sent"].split() and s["raw"]
    images_per_split = Counter(split_of_image.values())
    assert set(images_per_split) == {"train", "val", "testA", "testB"}
    share = round(0.1 * SPEC.train_images)
    assert [images_per_split[s] for s in ("val", "testA", "testB")] == [share] * 3, images_per_split


def test_marker_is_written_last_with_counts_where_it_is_asked(tmp_path):
    layout = _layout(tmp_path / "data")
    marker_path = tmp_path / "results" / "generated.json"
    generate(SPEC, layout, marker_path, progress=False)
    assert not (layout.root / "DATASET_READY.json").exists()  # nothing written into the dataset folder
    marker = json.loads(marker_path.read_text())
    assert marker["dataset"] == "shapes"
    assert marker["counts"]["train"]["images"] == SPEC.train_images
    assert marker["counts"]["val"]["questions"] == SPEC.val_images * SPEC.questions_per_image


# ---- text and gold -----------------------------------------------------------------

def obj(index, shape, color, size, row, col):
    return SceneObject(index, shape, color, size, row, col, cx=(col + 0.5) * 32, cy=(row + 0.5) * 32, radius=8)


SCENE = Scene(128, (
    obj(0, "circle", "red", "small", 0, 0),
    obj(1, "square", "blue", "large", 0, 2),
    obj(2, "circle", "green", "large", 1, 1),
    obj(3, "star", "red", "large", 3, 3),
), seed=0)


def test_relations_are_defined_on_grid_cells():
    c, s, g, star = SCENE.objects
    assert holds("left of", c, s) and holds("right of", s, c) and not holds("left of", s, c)
    assert holds("above", c, g) and holds("below", star, s)
    assert holds("next to", s, g) and not holds("next to", c, s) and not holds("next to", c, c)


def test_rendering_gives_exact_text_and_gold():
    rng = random.Random(0)
    desc = Desc("circle", "green", "large", "right of", Desc("circle", "red"))
    phrase = render(desc, rng)
    assert phrase.text.startswith("the large green circle ") and phrase.text.endswith(" the red circle")
    predicate = vocab.normalize_predicate(phrase.text[len("the large green circle "):-len(" the red circle")])
    assert predicate in ("right of",)
    assert phrase.gold.objects == ["circle", "circle"]
    assert phrase.gold.attributes == [["circle", "large"], ["circle", "green"], ["circle", "red"]]
    assert phrase.gold.relations == [["circle", "right of", "circle"]]
    plural = render(Desc("triangle", "orange"), rng, det="a", count=2)
    assert plural.text == "two orange triangles" and plural.gold.objects == ["triangle"]
    assert render(Desc("circle", "orange"), rng, det="a").text == "an orange circle"
    assert vocab.normalize_predicate("to the left of") == "left of"
    assert vocab.normalize_predicate("On top of") == "on top of"


def test_unique_descriptions_pick_out_exactly_one_object():
    rng = random.Random(1)
    for trial in range(40):
        scene = sample_scene(rng, 128, rng.randint(3, 6))
        index = SceneIndex(scene)
        for o in scene.objects:
            for exclude in ((), ("color",), ("shape",)):
                for desc in index.unique_descs(o, rng, exclude):
                    assert select(scene, desc) == [o]
                    assert not any(desc.uses(d) for d in exclude)


def _words(text):
    return re.findall(r"[a-z]+", text.lower())


def test_gold_mentions_only_words_of_the_sentence(dataset):
    gold = json.loads((dataset.root / "gold_scene_graphs.json").read_text())
    caption_ids = {c["id"] for split in ("train", "val") for c in _json(dataset, "captions", split)["annotations"]}
    sent_ids = {s["sent_id"] for r in pickle.loads(dataset.file("refs").read_bytes()) for s in r["sentences"]}
    assert {g["record_id"] for g in gold if g["source"] == "caption"} == caption_ids
    assert {g["record_id"] for g in gold if g["source"] == "ref"} == sent_ids
    for g in gold:
        words = _words(g["text"])
        nouns = {w for w in words} | {w[:-1] for w in words} | {w[:-2] for w in words}
        assert g["objects"] and set(g["objects"]) <= nouns, g
        for o, a in g["attributes"]:
            assert o in g["objects"] and a in words and a in vocab.COLORS + vocab.SIZES, g
        for s, p, o in g["relations"]:
            assert s in g["objects"] and o in g["objects"]
            assert p in {vocab.normalize_predicate(x) for v in vocab.RELATIONS.values() for x in v}
            assert " ".join(p.split()) in " ".join(words), g


def test_captions_with_plural_numerals_count_every_match():
    rng = random.Random(5)
    index = SceneIndex(SCENE)
    numerals = {w: i for i, w in enumerate(vocab.NUMBER_WORDS)}
    for _ in range(30):
        for text, gold in make_captions(SCENE, index, rng, 3):
            for m in re.finditer(r"\b(two|three) ((?:small |large )?(?:red |blue |green )?)(\w+?)s\b", text.lower()):
                adjectives = m.group(2).split()
                desc = Desc(shape=m.group(3), color=next((a for a in adjectives if a in vocab.COLORS), None),
                            size=next((a for a in adjectives if a in vocab.SIZES), None))
                assert len(select(SCENE, desc)) == numerals[m.group(1)], text


def _parse_np(words):
    """Attribute-only noun phrase -> Desc (None if it has a relation)."""
    size = next((w for w in words if w in vocab.SIZES), None)
    color = next((w for w in words if w in vocab.COLORS), None)
    noun = words[-1].rstrip("s") if words[-1] not in ("this",) else None
    if len(words) > 3 or noun not in vocab.SHAPES + vocab.GENERIC_NOUNS:
        return None
    return Desc(noun if noun in vocab.SHAPES else None, color, size)


def test_answers_are_true_of_the_scene():
    rng = random.Random(7)
    checked = Counter()
    for trial in range(60):
        scene = sample_scene(rng, 128, rng.randint(3, 6))
        for q in make_questions(scene, SceneIndex(scene), rng, 6, YesNoBalancer()):
            words = _words(q.text)
            if q.question_type == "how many":
                desc = _parse_np(words[2:-2])
                if desc is not None:
                    assert str(len(select(scene, desc))) == q.answer, q
                    checked["count"] += 1
            elif q.question_type in ("is there a", "are there"):
                desc = _parse_np(words[3:])  # after "is there a(n)" / "are there any"
                assert ("yes" if select(scene, desc) else "no") == q.answer, q
                checked["exist"] += 1
            elif q.question_type.startswith("what"):
                desc = _parse_np(words[3:])
                if desc is not None:
                    (target,) = select(scene, desc)
                    assert getattr(target, words[1]) == q.answer, q
                    assert q.answer not in words and words.count(words[1]) == 1  # never "the red shape"
                    checked[words[1]] += 1
    assert min(checked.values()) >= 5 and len(checked) == 5, checked


def test_yes_no_answers_are_balanced_per_question_type(dataset):
    counts = Counter()
    for split in ("train", "val"):
        for ann in _json(dataset, "vqa_annotations", split)["annotations"]:
            if ann["answer_type"] == "yes/no":
                counts[(ann["question_type"], ann["multiple_choice_answer"])] += 1
    types = {t for t, _ in counts}
    assert types >= {"is there a", "are there", "are the", "is the"}
    for t in types:
        assert abs(counts[(t, "yes")] - counts[(t, "no")]) <= 3, counts


def test_referring_expressions_are_distinct_and_unique():
    rng = random.Random(9)
    index = SceneIndex(SCENE)
    made = make_expressions(index, SCENE.objects[3], rng, 3)
    assert len({t for t, _ in made}) == len(made) >= 2
    assert all(g.objects[0] in ("star",) + vocab.GENERIC_NOUNS for _, g in made)
