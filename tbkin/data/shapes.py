"""Generate the embedded `shapes` dataset in the official on-disk formats.

Writes, below ``root`` (paths from ``config.data``):

* ``images/{split}/*.png`` and COCO ``instances_{split}.json`` / ``captions_{split}.json``;
* VQA v2 ``questions`` / ``annotations`` JSON per split (10 answers per question);
* RefCOCO-style ``refcoco/refs(unc).p`` + ``refcoco/instances.json`` over the *train*
  images. Ref splits are assigned per image: 10% (at least one image) to each
  non-train split, the rest to train (see :class:`RefSplitter`). ``testA`` images only refer to circles and squares and ``testB``
  images only to triangles, diamonds and stars -- like RefCOCO's testA (people) and
  testB (other objects), the two test splits differ in the category referred to;
* ``gold_scene_graphs.json``: the true scene graph of every caption and expression;
* the marker (``--marker``, below ``results:`` in the workflow) last, after the whole
  dataset loaded cleanly with :mod:`tbkin.data.check`.

Same spec and seed give byte-identical files: every image has its own random
generator seeded from (seed, split, index), and no file records a time or path.
"""
from __future__ import annotations

import argparse
import json
import logging
import pickle
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from tbkin.atomic import atomic_path, write_bytes, write_json, write_text
from tbkin.data.captions import make_captions, make_expressions
from tbkin.data.language import SceneIndex
from tbkin.config import settings_from_json, settings_from_mapping
from tbkin.data.check import check_dataset
from tbkin.data.loaders import DataLayout, add_layout_arguments, layout_from_args
from tbkin.data.questions import YesNoBalancer, annotate, make_questions
from tbkin.data.scenes import Scene, render, sample_scene
from tbkin.data.vocab import SHAPES

log = logging.getLogger(__name__)

REF_SHAPES = {"testA": ("circle", "square"), "testB": ("triangle", "diamond", "star")}
REF_SPLIT_SHARE = 0.1  # of the train images, per non-train ref split
INFO = {"description": "TBKIN shapes: procedurally rendered scenes", "version": "1.0",
        "contributor": "tbkin generate-shapes", "url": "", "year": 2024, "date_created": ""}
LICENSE = {"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}
CATEGORIES = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}


@dataclass(frozen=True)
class ShapesSpec:
    seed: int = 0
    image_size: int = 128
    train_images: int = 1200
    val_images: int = 200
    objects_per_image: tuple[int, int] = (3, 6)
    distractors_per_image: tuple[int, int] = (2, 5)
    captions_per_image: int = 3
    questions_per_image: int = 6
    refs_per_image: int = 2
    sentences_per_ref: int = 2
    answer_noise: float = 0.15
    refs_splits: tuple[str, ...] = ("train", "val", "testA", "testB")

    @classmethod
    def from_config(cls, config: dict) -> "ShapesSpec":
        """From a validated workflow config (its ``shapes`` section, seed and ref splits)."""
        values = {**config["shapes"], "seed": config["seed"], "refs_splits": config["data"]["refs_splits"]}
        return settings_from_mapping(cls, values, "config shapes")


class Counters:
    """Dataset-wide ids (annotation, caption, ref, sentence), unique across splits."""

    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def __call__(self, kind: str) -> int:
        self.next[kind] = self.next.get(kind, 0) + 1
        return self.next[kind]


def image_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"shapes/{seed}/{split}/{index}")


class RefSplitter:
    """Assigns each train image its ref split.

    Every non-train split gets ``REF_SPLIT_SHARE`` of the images (at least one), at
    positions drawn once from the seed. An image that cannot serve its split (a testA
    image without a describable circle or square) goes to train, and the next train
    image that can serve that split takes its place, so the shares hold.
    """

    def __init__(self, n_images: int, refs_splits: tuple[str, ...], seed: int):
        others = [s for s in refs_splits if s != "train"]
        per_split = max(1, round(REF_SPLIT_SHARE * n_images)) if n_images > len(others) else 0
        labels = [s for s in others for _ in range(per_split)]
        labels += ["train"] * (n_images - len(labels))
        random.Random(f"shapes/{seed}/ref-splits").shuffle(labels)
        self.labels = labels
        self.owed: Counter = Counter()

    def split_of(self, index: int, can_serve: Callable[[str], bool]) -> str:
        label = self.labels[index]
        if label != "train":
            if can_serve(label):
                return label
            self.owed[label] += 1
            return "train"
        for split in sorted(self.owed):
            if self.owed[split] and can_serve(split):
                self.owed[split] -= 1
                return split
        return "train"


class SplitWriter:
    """Collects the records of one split while its images are rendered."""

    def __init__(self, spec: ShapesSpec, layout: DataLayout, split: str, ids: Counters):
        self.spec, self.layout, self.split, self.ids = spec, layout, split, ids
        self.split_name = layout.splits[split]
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.captions: list[dict] = []
        self.questions: list[dict] = []
        self.answers: list[dict] = []
        self.refs: list[dict] = []
        self.gold: list[dict] = []
        self.balancer = YesNoBalancer()
        self.ref_splitter = RefSplitter(spec.train_images, spec.refs_splits, spec.seed) if split == "train" else None

    def add_image(self, index: int, image_id: int) -> None:
        spec = self.spec
        rng = image_rng(spec.seed, self.split, index)
        scene = sample_scene(rng, spec.image_size, rng.randint(*spec.objects_per_image))
        scene_index = SceneIndex(scene)
        file_name = f"shapes_{self.split_name}_{image_id:012d}.png"
        image_path = self.layout.file("images", self.split) / file_name
        with atomic_path(image_path, suffix=".png") as tmp:
            render(scene, rng.randint(*spec.distractors_per_image)).save(tmp, format="PNG", compress_level=1)
        self.images.append({"id": image_id, "file_name": file_name, "width": spec.image_size,
                            "height": spec.image_size, "license": 1})
        ann_ids = self._add_objects(scene, image_id)

        for text, gold in make_captions(scene, scene_index, rng, spec.captions_per_image):
            caption_id = self.ids("caption")
            self.captions.append({"id": caption_id, "image_id": image_id, "caption": text})
            self.gold.append(_gold("caption", caption_id, image_id, text, gold))

        questions = make_questions(scene, scene_index, rng, spec.questions_per_image, self.balancer)
        for k, q in enumerate(questions):
            qid = image_id * 1000 + k
            self.questions.append({"image_id": image_id, "question": q.text, "question_id": qid})
            self.answers.append({
                "question_id": qid, "image_id": image_id, "question_type": q.question_type,
                "answer_type": q.answer_type, "multiple_choice_answer": q.answer,
                "answers": annotate(q, rng, spec.answer_noise),
            })

        if self.split == "train":
            self._add_refs(index, scene, scene_index, rng, image_id, file_name, ann_ids)

    def _add_objects(self, scene: Scene, image_id: int) -> list[int]:
        ann_ids = []
        for obj in scene.objects:
            ann_id = self.ids("annotation")
            ann_ids.append(ann_id)
            polygon = [round(v, 2) for point in obj.polygon() for v in point]
            self.annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": CATEGORY_ID[obj.shape],
                "segmentation": [polygon], "area": round(obj.area(), 2),
                "bbox": [round(v, 2) for v in obj.bbox()], "iscrowd": 0,
                "attributes": {"color": obj.color, "size": obj.size},
            })
        return ann_ids

    def _add_refs(self, index, scene, scene_index, rng, image_id, file_name, ann_ids) -> None:
        spec = self.spec
        describable = [o for o in scene.objects if scene_index.unique_descs(o, rng)]
        ref_split = self.ref_splitter.split_of(
            index, lambda split: any(o.shape in REF_SHAPES.get(split, SHAPES) for o in describable))
        allowed = REF_SHAPES.get(ref_split, SHAPES)
        targets = [o for o in describable if o.shape in allowed]
        rng.shuffle(targets)
        made = 0
        for target in targets:
            if made == spec.refs_per_image:
                break
            expressions = make_expressions(scene_index, target, rng, spec.sentences_per_ref)
            if not expressions:
                continue
            made += 1
            ref_id, ann_id = self.ids("ref"), ann_ids[target.index]
            sentences = []
            for text, gold in expressions:
                sent_id = self.ids("sentence")
                sentences.append({"tokens": text.split(), "raw": text, "sent": text, "sent_id": sent_id})
                self.gold.append(_gold("ref", sent_id, image_id, text, gold))
            stem, ext = file_name.rsplit(".", 1)
            self.refs.append({
                "sent_ids": [s["sent_id"] for s in sentences], "file_name": f"{stem}_{ann_id}.{ext}",
                "ann_id": ann_id, "ref_id": ref_id, "image_id": image_id, "split": ref_split,
                "sentences": sentences, "category_id": CATEGORY_ID[target.shape],
            })

    def write(self) -> None:
        layout, split, name = self.layout, self.split, self.split_name
        common = {"info": INFO, "licenses": [LICENSE], "images": self.images}
        _write_json(layout.file("instances", split),
                   {**common, "annotations": self.annotations, "categories": CATEGORIES})
        _write_json(layout.file("captions", split), {**common, "annotations": self.captions})
        _write_json(layout.file("vqa_questions", split), {
            "info": INFO, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": name,
            "license": LICENSE, "questions": self.questions})
        _write_json(layout.file("vqa_annotations", split), {
            "info": INFO, "license": LICENSE, "data_type": "mscoco", "data_subtype": name,
            "annotations": self.answers})


def _write_json(path: Path, obj: Any) -> None:
    # compact, like the official files; json.dumps uses the C encoder (json.dump does not)
    write_text(path, json.dumps(obj) + "\n")


def _gold(source: str, record_id: int, image_id: int, text: str, gold) -> dict:
    return {"source": source, "record_id": record_id, "image_id": image_id, "text": text,
            "objects": gold.objects, "attributes": gold.attributes, "relations": gold.relations}


def _remove_stale_images(directory: Path) -> None:
    """Drop images of an earlier, larger generation (only files this generator names)."""
    if directory.is_dir():
        for path in directory.glob("shapes_*.png"):
            path.unlink()


def generate(spec: ShapesSpec, layout: DataLayout, marker: Path | None = None, progress: bool = True) -> dict:
    """Write the whole dataset, then ``marker`` (if given) with the spec and counts; return the counts."""
    if marker is not None:
        Path(marker).unlink(missing_ok=True)  # an interrupted run must not look complete
    ids = Counters()
    writers = {}
    next_image_id = 1
    gold: list[dict] = []
    for split, n_images in (("train", spec.train_images), ("val", spec.val_images)):
        _remove_stale_images(layout.file("images", split))
        writer = SplitWriter(spec, layout, split, ids)
        for index in tqdm(range(n_images), desc=f"shapes {split}", disable=not progress, mininterval=2):
            writer.add_image(index, next_image_id)
            next_image_id += 1
        writer.write()
        writers[split] = writer
        gold += writer.gold

    train = writers["train"]
    ref_images = {r["image_id"] for r in train.refs}
    _write_json(layout.file("refs_instances"), {
        "info": INFO, "licenses": [LICENSE],
        "images": [im for im in train.images if im["id"] in ref_images],
        "annotations": [a for a in train.annotations if a["image_id"] in ref_images],
        "categories": CATEGORIES})
    write_bytes(layout.file("refs"), pickle.dumps(train.refs, protocol=2))
    _write_json(layout.root / "gold_scene_graphs.json", gold)

    counts = check_dataset(layout)
    if marker is not None:
        write_json(marker, {"dataset": "shapes", "generator": _jsonable(asdict(spec)), "counts": counts})
    return counts


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return obj


# ---- CLI: tbkin generate-shapes ------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_layout_arguments(parser)
    parser.add_argument("--spec", default="{}",
                        help="generator settings as one JSON object with ShapesSpec's fields (config "
                             "`shapes` plus seed and refs_splits); missing fields take their defaults")
    parser.add_argument("--marker", required=True, help="JSON written last: the spec and the counts")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    spec = settings_from_json(ShapesSpec, args.spec, "generate-shapes --spec")
    counts = generate(spec, layout_from_args(args), args.marker, progress=not args.no_progress)
    log.info("shapes dataset written: %s", counts)
    return 0
