"""Loaders for the official annotation formats, shared by every stage.

COCO instances / captions JSON, VQA v2 questions + annotations JSON, and RefCOCO
``refs(*).p`` + ``instances.json``. Each loader checks the fields the pipeline reads
and raises :class:`tbkin.errors.DataFormatError` naming the file and the record at
fault. Pickles are read by :func:`safe_load_pickle`, which refuses every global, so
a pickle carrying code is rejected before anything runs.

``tbkin check-data`` (:mod:`tbkin.data.check`) validates a dataset with these loaders.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from tbkin.errors import DataFormatError, UnsafePickleError

log = logging.getLogger(__name__)

VQA_ANSWERS_PER_QUESTION = 10
ANSWER_TYPES = ("yes/no", "number", "other")
CONTENTS = ("instances", "captions", "vqa", "refs")


# ---- records ---------------------------------------------------------------------

@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class CocoCategory:
    id: int
    name: str
    supercategory: str


@dataclass(frozen=True)
class CocoAnnotation:
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    area: float
    iscrowd: int
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass
class CocoInstances:
    path: Path
    images: dict[int, CocoImage]
    annotations: list[CocoAnnotation]
    categories: dict[int, CocoCategory]

    def annotations_by_image(self) -> dict[int, list[CocoAnnotation]]:
        out: dict[int, list[CocoAnnotation]] = {i: [] for i in self.images}
        for ann in self.annotations:
            out[ann.image_id].append(ann)
        return out

    @property
    def category_names(self) -> list[str]:
        return [c.name for c in sorted(self.categories.values(), key=lambda c: c.id)]


@dataclass(frozen=True)
class Caption:
    id: int
    image_id: int
    caption: str


@dataclass
class CocoCaptions:
    path: Path
    images: dict[int, CocoImage]
    captions: list[Caption]


@dataclass(frozen=True)
class VqaAnswer:
    answer: str
    answer_confidence: str
    answer_id: int


@dataclass(frozen=True)
class VqaQuestion:
    question_id: int
    image_id: int
    question: str
    # from the annotations file (None when only questions were loaded)
    question_type: Optional[str] = None
    answer_type: Optional[str] = None
    multiple_choice_answer: Optional[str] = None
    answers: Optional[tuple[VqaAnswer, ...]] = None


@dataclass
class VqaDataset:
    questions_path: Path
    annotations_path: Optional[Path]
    data_subtype: str
    questions: list[VqaQuestion]

    @property
    def image_ids(self) -> set[int]:
        return {q.image_id for q in self.questions}


@dataclass(frozen=True)
class RefSentence:
    sent_id: int
    raw: str
    sent: str
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class Ref:
    ref_id: int
    ann_id: int
    image_id: int
    split: str
    category_id: int
    file_name: str  # as in the refs file; the image file is `image.file_name`
    sentences: tuple[RefSentence, ...]
    bbox: tuple[float, float, float, float]  # of the referred annotation (x, y, w, h)
    image: CocoImage


@dataclass
class RefcocoDataset:
    refs_path: Path
    instances: CocoInstances
    refs: list[Ref]

    def by_split(self) -> dict[str, list[Ref]]:
        out: dict[str, list[Ref]] = {}
        for ref in self.refs:
            out.setdefault(ref.split, []).append(ref)
        return out


# ---- field checks ----------------------------------------------------------------

class _Record:
    """Reads fields of one JSON record; errors name the file and the record."""

    def __init__(self, path: Path, where: str, record: Any):
        self.path, self.where, self.record = path, where, record
        if not isinstance(record, dict):
            self.fail(f"expected an object, got {type(record).__name__}")

    def fail(self, what: str) -> None:
        raise DataFormatError(f"{self.path}: {self.where}: {what}")

    def get(self, key: str, types: type | tuple[type, ...], optional: bool = False, default: Any = None) -> Any:
        if key not in self.record:
            if optional:
                return default
            self.fail(f"missing field '{key}'")
        value = self.record[key]
        # bool is an int subclass: never accept it where a number is meant
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            self.fail(f"field '{key}' should be {_type_names(types)}, got {type(value).__name__}")
        return value


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))


def read_json(path: str | os.PathLike) -> Any:
    """Parsed JSON file; a DataFormatError naming the file when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not valid JSON: {exc}") from None


def _top_list(path: Path, data: Any, key: str) -> list:
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: top level should be an object with '{key}'")
    if key not in data:
        raise DataFormatError(f"{path}: missing top-level field '{key}'")
    if not isinstance(data[key], list):
        raise DataFormatError(f"{path}: top-level field '{key}' should be a list")
    return data[key]


def coco_images(path: Path, data: Any) -> dict[int, CocoImage]:
    """The ``images`` list of a COCO-format document, by id (errors name the record)."""
    images: dict[int, CocoImage] = {}
    for i, raw in enumerate(_top_list(path, data, "images")):
        rec = _Record(path, f"images[{i}]", raw)
        image = CocoImage(rec.get("id", int), rec.get("file_name", str), rec.get("width", int), rec.get("height", int))
        if image.id in images:
            rec.fail(f"duplicate image id {image.id}")
        images[image.id] = image
    return images


def _list_files(directory: Path) -> set[str]:
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        raise DataFormatError(f"{directory}: image folder not found") from None


def check_image_files(path: Path, images: Iterable[CocoImage], images_dir: str | os.PathLike) -> None:
    """Every image record must have its file in ``images_dir``."""
    present = _list_files(Path(images_dir))
    for image in images:
        if image.file_name not in present:
            raise DataFormatError(
                f"{path}: image id {image.id}: file {Path(images_dir) / image.file_name} does not exist")


# ---- COCO --------------------------------------------------------------------------

def load_coco_instances(path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> CocoInstances:
    """COCO ``instances`` JSON; with ``images_dir``, also check every image file exists."""
    path = Path(path)
    data = read_json(path)
    images = coco_images(path, data)
    categories: dict[int, CocoCategory] = {}
    for i, raw in enumerate(_top_list(path, data, "categories")):
        rec = _Record(path, f"categories[{i}]", raw)
        cat = CocoCategory(rec.get("id", int), rec.get("name", str), rec.get("supercategory", str, optional=True, default=""))
        categories[cat.id] = cat
    annotations = []
    for i, raw in enumerate(_top_list(path, data, "annotations")):
        rec = _Record(path, f"annotations[{i}] (id {raw.get('id') if isinstance(raw, dict) else '?'})", raw)
        bbox = rec.get("bbox", list)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            rec.fail(f"field 'bbox' should be 4 numbers [x, y, w, h], got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            rec.fail(f"field 'bbox' has a negative width or height: {bbox!r}")
        ann = CocoAnnotation(
            id=rec.get("id", int), image_id=rec.get("image_id", int), category_id=rec.get("category_id", int),
            bbox=tuple(float(v) for v in bbox), area=float(rec.get("area", (int, float))),
            iscrowd=rec.get("iscrowd", int, optional=True, default=0),
            attributes=rec.get("attributes", dict, optional=True, default={}),
        )
        if ann.image_id not in images:
            rec.fail(f"image_id {ann.image_id} is not in 'images'")
        if ann.category_id not in categories:
            rec.fail(f"category_id {ann.category_id} is not in 'categories'")
        annotations.append(ann)
    if images_dir is not None:
        check_image_files(path, images.values(), images_dir)
    return CocoInstances(path, images, annotations, categories)


def load_coco_captions(path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> CocoCaptions:
    path = Path(path)
    data = read_json(path)
    images = coco_images(path, data)
    captions = []
    for i, raw in enumerate(_top_list(path, data, "annotations")):
        rec = _Record(path, f"annotations[{i}]", raw)
        cap = Caption(rec.get("id", int), rec.get("image_id", int), rec.get("caption", str))
        if cap.image_id not in images:
            rec.fail(f"caption id {cap.id}: image_id {cap.image_id} is not in 'images'")
        captions.append(cap)
    if images_dir is not None:
        check_image_files(path, images.values(), images_dir)
    return CocoCaptions(path, images, captions)


# ---- VQA ---------------------------------------------------------------------------

def load_vqa(questions_path: str | os.PathLike, annotations_path: str | os.PathLike | None = None,
             known_image_ids: Optional[set[int]] = None) -> VqaDataset:
    """VQA v2 questions (+ annotations). ``known_image_ids``: every question's image
    must be one of them (e.g. the ids of the split's COCO images)."""
    qpath = Path(questions_path)
    qdata = read_json(qpath)
    raw_questions = _top_list(qpath, qdata, "questions")
    questions: dict[int, VqaQuestion] = {}
    for i, raw in enumerate(raw_questions):
        rec = _Record(qpath, f"questions[{i}]", raw)
        q = VqaQuestion(rec.get("question_id", int), rec.get("image_id", int), rec.get("question", str))
        if not q.question.strip():
            rec.fail(f"question_id {q.question_id}: the question text is empty")
        if q.question_id in questions:
            rec.fail(f"duplicate question_id {q.question_id}")
        if known_image_ids is not None and q.image_id not in known_image_ids:
            rec.fail(f"question_id {q.question_id}: image id {q.image_id} has no image")
        questions[q.question_id] = q
    subtype = qdata.get("data_subtype", "") if isinstance(qdata, dict) else ""
    if annotations_path is None:
        return VqaDataset(qpath, None, subtype, list(questions.values()))

    apath = Path(annotations_path)
    adata = read_json(apath)
    annotated: dict[int, VqaQuestion] = {}
    for i, raw in enumerate(_top_list(apath, adata, "annotations")):
        qid = raw.get("question_id") if isinstance(raw, dict) else None
        rec = _Record(apath, f"annotations[{i}] (question_id {qid})", raw)
        qid = rec.get("question_id", int)
        if qid not in questions:
            rec.fail(f"question_id {qid} is not in {qpath}")
        question = questions[qid]
        if rec.get("image_id", int) != question.image_id:
            rec.fail(f"image_id {raw['image_id']} differs from the question's image_id {question.image_id}")
        answers_raw = rec.get("answers", list)
        if len(answers_raw) != VQA_ANSWERS_PER_QUESTION:
            rec.fail(f"'answers' has {len(answers_raw)} entries, expected {VQA_ANSWERS_PER_QUESTION}")
        answers = []
        for j, a in enumerate(answers_raw):
            if not (isinstance(a, dict) and isinstance(a.get("answer"), str) and type(a.get("answer_id")) is int):
                # slow path only to build the error message
                arec = _Record(apath, f"annotations[{i}] (question_id {qid}) answers[{j}]", a)
                arec.get("answer", str), arec.get("answer_id", int)
            answers.append(VqaAnswer(a["answer"], str(a.get("answer_confidence", "yes")), a["answer_id"]))
        answer_type = rec.get("answer_type", str)
        if answer_type not in ANSWER_TYPES:
            rec.fail(f"answer_type {answer_type!r} is not one of {', '.join(ANSWER_TYPES)}")
        annotated[qid] = VqaQuestion(
            question_id=qid, image_id=question.image_id, question=question.question,
            question_type=rec.get("question_type", str), answer_type=answer_type,
            multiple_choice_answer=rec.get("multiple_choice_answer", str), answers=tuple(answers),
        )
    missing = [qid for qid in questions if qid not in annotated]
    if missing:
        raise DataFormatError(f"{apath}: no annotation for question_id {missing[0]} "
                              f"({len(missing)} questions of {qpath} lack one)")
    return VqaDataset(qpath, apath, subtype, [annotated[qid] for qid in questions])


# ---- pickles and RefCOCO -------------------------------------------------------------

class _NoGlobalsUnpickler(pickle.Unpickler):
    """Plain containers and scalars need no globals; anything else is refused,
    except the (module, name) pairs a caller allows."""

    def __init__(self, fh, path: Path, allowed_globals: frozenset[tuple[str, str]] = frozenset(),
                 encoding: str = "utf-8"):
        # RefCOCO pickles come from Python 2; their byte strings are text
        super().__init__(fh, encoding=encoding)
        self.path = path
        self.allowed_globals = allowed_globals

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed_globals:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.path}: refused to load global '{module}.{name}': the pickle wants to "
            "import or call code, which a data file never needs (file is untrusted)")


def safe_load_pickle(path: str | os.PathLike, allowed_globals: Iterable[tuple[str, str]] = (),
                     encoding: str = "utf-8") -> Any:
    """Load a pickle made only of lists, dicts, tuples, strings and numbers.

    ``allowed_globals``: (module, name) pairs that may be loaded besides, e.g. the
    functions that rebuild a numpy array; each must be unable to run other code.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    try:
        return _NoGlobalsUnpickler(io.BytesIO(data), path, frozenset(allowed_globals), encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not a valid pickle: {exc}") from None


def load_refcoco(refs_path: str | os.PathLike, instances_path: str | os.PathLike,
                 images_dir: str | os.PathLike | None = None) -> RefcocoDataset:
    refs_path = Path(refs_path)
    instances = load_coco_instances(instances_path, images_dir)
    anns = {a.id: a for a in instances.annotations}
    raw_refs = safe_load_pickle(refs_path)
    if not isinstance(raw_refs, list):
        raise DataFormatError(f"{refs_path}: should hold a list of refs, got {type(raw_refs).__name__}")
    refs = []
    for i, raw in enumerate(raw_refs):
        rid = raw.get("ref_id") if isinstance(raw, dict) else None
        rec = _Record(refs_path, f"refs[{i}] (ref_id {rid})", raw)
        ann_id = rec.get("ann_id", int)
        if ann_id not in anns:
            rec.fail(f"ann_id {ann_id} is not in {instances.path}")
        ann = anns[ann_id]
        image_id = rec.get("image_id", int)
        if image_id != ann.image_id:
            rec.fail(f"image_id {image_id} differs from annotation {ann_id}'s image_id {ann.image_id}")
        sentences = []
        for j, s in enumerate(rec.get("sentences", list)):
            srec = _Record(refs_path, f"refs[{i}] (ref_id {rid}) sentences[{j}]", s)
            tokens = srec.get("tokens", list)
            sentences.append(RefSentence(srec.get("sent_id", int), srec.get("raw", str), srec.get("sent", str),
                                         tuple(str(t) for t in tokens)))
        if not sentences:
            rec.fail("no sentences")
        refs.append(Ref(
            ref_id=rec.get("ref_id", int), ann_id=ann_id, image_id=image_id, split=rec.get("split", str),
            category_id=rec.get("category_id", int), file_name=rec.get("file_name", str, optional=True, default=""),
            sentences=tuple(sentences), bbox=ann.bbox, image=instances.images[image_id],
        ))
    return RefcocoDataset(refs_path, instances, refs)


# ---- whole dataset -------------------------------------------------------------------

@dataclass(frozen=True)
class DataLayout:
    """Where a dataset's files are: ``root`` plus the patterns of ``config.data``."""

    root: Path
    splits: Mapping[str, str]  # logical split -> name used in file names
    images: str = "images/{split}"
    instances: str = "annotations/instances_{split}.json"
    captions: str = "annotations/captions_{split}.json"
    vqa_questions: str = "vqa/v2_OpenEnded_mscoco_{split}_questions.json"
    vqa_annotations: str = "vqa/v2_mscoco_{split}_annotations.json"
    refs: str = "refcoco/refs(unc).p"
    refs_instances: str = "refcoco/instances.json"

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> "DataLayout":
        keys = ("images", "instances", "captions", "vqa_questions", "vqa_annotations", "refs", "refs_instances")
        splits = {logical: name for logical, name in data["splits"].items() if name}  # null: no such split
        return cls(root=Path(data["root"]), splits=splits, **{k: data[k] for k in keys if k in data})

    def file(self, key: str, split: str | None = None) -> Path:
        pattern = getattr(self, key)
        if split is not None:
            pattern = pattern.format(split=self.splits[split])
        return self.root / pattern


# ---- layout options (shared by generate-shapes and check-data) ----------------------

def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    """--root, --split and one option per file pattern (shared with generate-shapes)."""
    parser.add_argument("--root", required=True, help="dataset root (config data.root)")
    parser.add_argument("--split", action="append", metavar="LOGICAL=NAME",
                        help="split and its name in file names, e.g. train=train2014 "
                             "(repeat; default train=train and val=val)")
    for key, default in DataLayout.__dataclass_fields__.items():
        if key not in ("root", "splits"):
            parser.add_argument(f"--{key.replace('_', '-')}", default=default.default,
                                help="file pattern relative to the root (default: %(default)s)")


def layout_from_args(args: argparse.Namespace) -> DataLayout:
    splits = {}
    for item in args.split or ["train=train", "val=val"]:
        logical, sep, name = item.partition("=")
        if not sep or not logical or not name:
            raise DataFormatError(f"--split expects LOGICAL=NAME, got {item!r}")
        splits[logical] = name
    patterns = {k: getattr(args, k) for k in DataLayout.__dataclass_fields__ if k not in ("root", "splits")}
    return DataLayout(root=Path(args.root), splits=splits, **patterns)
