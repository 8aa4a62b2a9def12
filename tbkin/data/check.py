"""``tbkin check-data``: validate one part of a dataset and record what was checked.

A *part* is one logical split (``train``, ``val``) or ``refs`` (RefCOCO's refs and
their instances file). Each part is checked by its own job, so editing the val
questions re-checks val only and nothing downstream of train is planned again.

For a split the marker is also the split's **image list**, the one list of images
every later stage reads. It comes from whatever annotation files the config has, in
this order: COCO ``instances``, COCO ``captions``, VQA ``questions`` (image files named
the COCO way, ``COCO_<data_subtype>_<id:012d>.jpg``), and for the train split of a
RefCOCO-only config the refs' ``instances.json``. A split with none of these is an
error that names the cause.

Markers are written below ``results:`` (never into the dataset folder, which may be
a shared read-only copy).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from tbkin.atomic import write_json
from tbkin.data.download import sha256_of
from tbkin.data.loaders import (
    CONTENTS,
    CocoImage,
    DataLayout,
    add_layout_arguments,
    check_image_files,
    coco_images,
    layout_from_args,
    load_coco_captions,
    load_coco_instances,
    load_refcoco,
    load_vqa,
    read_json,
)
from tbkin.errors import DataFormatError

log = logging.getLogger(__name__)

REFS_PART = "refs"


def coco_file_name(data_subtype: str, image_id: int) -> str:
    """COCO 2014's image file name, e.g. ``COCO_val2014_000000000042.jpg``."""
    return f"COCO_{data_subtype}_{image_id:012d}.jpg"


def _images_of_questions(questions_path: Path, data_subtype: str, image_ids: set[int],
                         images_dir: Path) -> list[CocoImage]:
    """Image records of a VQA questions file (it lists ids only; sizes come from the files)."""
    images = []
    for image_id in sorted(image_ids):
        file_name = coco_file_name(data_subtype, image_id)
        path = images_dir / file_name
        try:
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
        except FileNotFoundError:
            raise DataFormatError(f"{questions_path}: image id {image_id}: file {path} does not exist") from None
        except OSError as exc:
            raise DataFormatError(f"{questions_path}: image id {image_id}: {path} is not a readable image: {exc}") from None
        images.append(CocoImage(image_id, file_name, width, height))
    return images


def check_split(layout: DataLayout, split: str, contents: Sequence[str]) -> dict:
    """Load every file of one split; return the marker: counts, file hashes and image list."""
    image_dir = layout.file("images", split)
    counts: dict[str, int] = {}
    files: list[Path] = []
    images: Optional[dict[int, CocoImage]] = None
    source = None
    if "instances" in contents:
        inst = load_coco_instances(layout.file("instances", split), image_dir)
        files.append(inst.path)
        images, source = inst.images, "instances"
        counts.update(objects=len(inst.annotations))
    if "captions" in contents:
        caps = load_coco_captions(layout.file("captions", split), image_dir)
        files.append(caps.path)
        counts["captions"] = len(caps.captions)
        if images is None:
            images, source = caps.images, "captions"
    if "vqa" in contents:
        vqa = load_vqa(layout.file("vqa_questions", split), layout.file("vqa_annotations", split),
                       known_image_ids=set(images) if images is not None else None)
        files += [vqa.questions_path, vqa.annotations_path]
        counts["questions"] = len(vqa.questions)
        if images is None:
            found = _images_of_questions(vqa.questions_path, vqa.data_subtype, vqa.image_ids, image_dir)
            images, source = {im.id: im for im in found}, "vqa_questions"
    if images is None and "refs" in contents and split == "train":
        # RefCOCO's expressions are about train images: its instances file lists them
        refs_instances = load_coco_instances(layout.file("refs_instances"), image_dir)
        images, source = refs_instances.images, "refs_instances"
    if images is None:
        raise DataFormatError(
            f"split {split!r} has no image list: data.contents is {list(contents)}, and none of "
            "instances, captions or vqa gives this split's images (refs cover train only). "
            "Add a file that lists them, or remove the split from data.splits")
    if not images:
        raise DataFormatError(f"split {split!r}: {source} file {_source_path(layout, split, source)} lists no images")
    counts["images"] = len(images)
    return {
        "part": split,
        "contents": list(contents),
        "counts": counts,
        "files": _hashes(layout, files),
        "image_source": source,
        "images_dir": str(image_dir),
        "images": [{"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height}
                   for im in sorted(images.values(), key=lambda im: im.id)],
    }


def _source_path(layout: DataLayout, split: str, source: str) -> Path:
    return layout.file(source) if source == "refs_instances" else layout.file(source, split)


def check_refs(layout: DataLayout) -> dict:
    """Load the refs and their instances; image files are checked in the train folder."""
    data = load_refcoco(layout.file("refs"), layout.file("refs_instances"), layout.file("images", "train"))
    return {
        "part": REFS_PART,
        "counts": {split: len(refs) for split, refs in sorted(data.by_split().items())},
        "files": _hashes(layout, [data.refs_path, data.instances.path]),
    }


def _hashes(layout: DataLayout, files: list[Path]) -> dict[str, str]:
    return {str(p.relative_to(layout.root)) if p.is_relative_to(layout.root) else str(p): sha256_of(p) for p in files}


def check_part(layout: DataLayout, part: str, contents: Sequence[str]) -> dict:
    unknown = sorted(set(contents) - set(CONTENTS))
    if unknown:
        raise DataFormatError(f"unknown dataset contents {unknown}; known: {', '.join(CONTENTS)}")
    if part == REFS_PART:
        if "refs" not in contents:
            raise DataFormatError("part 'refs' was asked for, but data.contents has no 'refs'")
        return check_refs(layout)
    if part not in layout.splits:
        raise DataFormatError(f"unknown split {part!r}; data.splits has {', '.join(layout.splits)}")
    return check_split(layout, part, contents)


def check_dataset(layout: DataLayout, contents: Sequence[str] = CONTENTS) -> dict:
    """Every part of a dataset: counts per part (the generator's summary)."""
    parts = [*layout.splits, *([REFS_PART] if "refs" in contents else [])]
    return {part: check_part(layout, part, contents)["counts"] for part in parts}


def read_image_list(path: str | Path) -> list[CocoImage]:
    """The images of a split's check-data marker, sorted by id."""
    path = Path(path)
    return sorted(coco_images(path, read_json(path)).values(), key=lambda image: image.id)


# ---- CLI ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_layout_arguments(parser)
    parser.add_argument("--contents", nargs="+", choices=CONTENTS, default=list(CONTENTS),
                        help="which parts of the dataset the config has (config data.contents)")
    parser.add_argument("--part", required=True, help="a split name of --split, or 'refs'")
    parser.add_argument("--dataset", default="", help="name recorded in the marker")
    parser.add_argument("--out", required=True, help="marker to write (a split's marker is its image list)")


def run(args: argparse.Namespace) -> int:
    layout = layout_from_args(args)
    marker = check_part(layout, args.part, args.contents)
    write_json(args.out, {"dataset": args.dataset, **marker})
    log.info("%s of %s is valid: %s", args.part, layout.root, json.dumps(marker["counts"]))
    return 0
