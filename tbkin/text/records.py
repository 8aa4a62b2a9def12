"""The text records of one split: captions, VQA questions and referring expressions.

Record order (and so the row order of ``parses.parquet``): captions in file
order, then questions, then every sentence of every ref (refs of all RefCOCO
splits go with the train split, whose images they use). A ref sentence's text
is its ``raw`` form (``sent`` when ``raw`` is empty).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from tbkin.data import loaders


@dataclass
class TextRecords:
    source: list[str] = field(default_factory=list)
    record_id: list[int] = field(default_factory=list)
    image_id: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def add(self, source: str, record_id: int, image_id: int, text: str) -> None:
        self.source.append(source)
        self.record_id.append(int(record_id))
        self.image_id.append(int(image_id))
        self.text.append(text)

    def __len__(self) -> int:
        return len(self.text)


def load_records(captions=None, questions=None, refs=None, refs_instances=None) -> TextRecords:
    records = TextRecords()
    if captions:
        for cap in loaders.load_coco_captions(captions).captions:
            records.add("caption", cap.id, cap.image_id, cap.caption)
    if questions:
        for q in loaders.load_vqa(questions).questions:
            records.add("question", q.question_id, q.image_id, q.question)
    if refs:
        for ref in loaders.load_refcoco(refs, refs_instances).refs:
            for sent in ref.sentences:
                records.add("ref", sent.sent_id, ref.image_id, sent.raw or sent.sent)
    return records


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("text records of the split (each optional)")
    group.add_argument("--captions", help="COCO captions JSON")
    group.add_argument("--questions", help="VQA v2 questions JSON")
    group.add_argument("--refs", help="RefCOCO refs pickle (train split only)")
    group.add_argument("--refs-instances", help="RefCOCO instances JSON (with --refs)")


def records_from_args(args: argparse.Namespace) -> TextRecords:
    return load_records(args.captions, args.questions, args.refs, args.refs_instances)
