"""Tiny copies of the real datasets in their exact official layout, for end-to-end tests.

A generated `shapes` dataset is rewritten the way the real downloads lay out their
files: COCO 2014 image names (``COCO_train2014_%012d.jpg``, JPEG), the COCO annotation
names, VQA v2's questions/annotations names and ``data_subtype``, and RefCOCO's
``refs(unc).p`` / RefCOCOg's ``refs(umd).p`` next to an ``instances.json``.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

from PIL import Image

from tbkin.data.loaders import DataLayout, safe_load_pickle

COCO_SPLITS = {"train": "train2014", "val": "val2014"}
REF_DATASETS = {"refcoco": "refs(unc).p", "refcoco+": "refs(unc).p", "refcocog": "refs(umd).p"}


def _coco_name(coco_split: str, image_id: int) -> str:
    return f"COCO_{coco_split}_{image_id:012d}.jpg"


def _renamed_images(doc: dict, coco_split: str) -> dict:
    for image in doc["images"]:
        image["file_name"] = _coco_name(coco_split, image["id"])
    return doc


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def write_official_layout(shapes: DataLayout, resources: Path) -> None:
    """``resources/{coco2014,vqa2,refcoco,refcoco+,refcocog}`` as the real configs expect them."""
    coco = resources / "coco2014"
    for split, coco_split in COCO_SPLITS.items():
        instances = json.loads(shapes.file("instances", split).read_text())
        (coco / coco_split).mkdir(parents=True, exist_ok=True)
        for image in instances["images"]:
            with Image.open(shapes.file("images", split) / image["file_name"]) as im:
                im.convert("RGB").save(coco / coco_split / _coco_name(coco_split, image["id"]), quality=95)
        _write_json(coco / "annotations" / f"instances_{coco_split}.json", _renamed_images(instances, coco_split))
        captions = json.loads(shapes.file("captions", split).read_text())
        _write_json(coco / "annotations" / f"captions_{coco_split}.json", _renamed_images(captions, coco_split))
        for key, name in (("vqa_questions", f"v2_OpenEnded_mscoco_{coco_split}_questions.json"),
                          ("vqa_annotations", f"v2_mscoco_{coco_split}_annotations.json")):
            doc = json.loads(shapes.file(key, split).read_text())
            doc["data_subtype"] = coco_split
            _write_json(resources / "vqa2" / "vqa" / name, doc)

    refs = safe_load_pickle(shapes.file("refs"))
    ref_instances = _renamed_images(json.loads(shapes.file("refs_instances").read_text()), "train2014")
    for dataset, refs_name in REF_DATASETS.items():
        out = []
        for ref in refs:
            ref = dict(ref, file_name=f"COCO_train2014_{ref['image_id']:012d}_{ref['ann_id']}.jpg")
            if dataset == "refcocog" and ref["split"] in ("testA", "testB"):
                ref["split"] = "test"  # RefCOCOg (umd) has one test split
            out.append(ref)
        folder = resources / dataset / dataset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / refs_name).write_bytes(pickle.dumps(out, protocol=2))
        _write_json(folder / "instances.json", ref_instances)
