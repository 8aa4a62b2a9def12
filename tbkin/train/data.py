"""Model inputs shared by pretraining and fine-tuning: regions, text, collate.

Interface::

    reader = RegionFeatureReader(features_h5, cache=True)   # tbkin.features.hdf5
    regions = RegionTensors.from_regions(reader.get(image_id))  # torch, padded to m rows
    encoder = TextEncoder(tokenizer, max_len=20)
    text = encoder.encode("a red circle ...")     # -> EncodedText (ids incl. [CLS]/[SEP], char offsets)
    inputs = collate([text, ...], [regions, ...]) # -> TbkinInputs (text padded with 0 to the longest)

Training and evaluation open the reader with ``cache=True``: every image of the file
stays in memory after its first read (a few MB for ``shapes``); the reader reopens its
file after a fork, so DataLoader workers can share it.

Images that feature extraction skipped as unreadable (``features.skip_bad_images``)
are listed in the feature file; :func:`leave_out_skipped_images` drops the texts
about them, and says how many, instead of failing on their missing regions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import torch

from tbkin.features.hdf5 import Regions, RegionFeatureReader, skipped_list_path
from tbkin.model.modeling_tbkin import TbkinInputs

log = logging.getLogger(__name__)
Item = TypeVar("Item")


@dataclass
class RegionTensors:
    """Regions of one image as tensors with m rows; rows past ``num_boxes`` are padding."""

    image_id: int
    features: torch.Tensor   # [m, D] float32
    positions: torch.Tensor  # [m, 5] float32
    boxes: torch.Tensor      # [m, 4] float32 pixels x1, y1, x2, y2
    labels: torch.Tensor     # [m] long, -1 for padding
    scores: torch.Tensor     # [m] float32
    num_boxes: int
    width: int
    height: int

    @property
    def mask(self) -> torch.Tensor:
        return torch.arange(self.features.shape[0]) < self.num_boxes

    @classmethod
    def from_regions(cls, r: Regions) -> "RegionTensors":
        """The tensors of regions read from a feature file; float16 features become float32."""
        return cls(
            image_id=r.image_id,
            features=torch.from_numpy(r.features).float(),
            positions=torch.from_numpy(r.position).float(),
            boxes=torch.from_numpy(r.boxes).float(),
            labels=torch.from_numpy(r.labels).long(),
            scores=torch.from_numpy(r.scores).float(),
            num_boxes=r.num_boxes,
            width=r.width,
            height=r.height,
        )


def leave_out_skipped_images(items: Iterable[Item], image_id: Callable[[Item], int], store: RegionFeatureReader,
                             what: str, source: str | Path) -> tuple[list[Item], list[Item]]:
    """(kept, left out): ``items`` (questions, expressions, ...) about images the
    extraction skipped are left out, and their number logged. Items about images that
    are neither in the file nor skipped are kept, for the caller's missing-region error."""
    items = list(items)
    skipped = store.skipped_image_ids
    if not skipped:
        return items, []
    kept, left_out = [], []
    for item in items:
        (left_out if image_id(item) in skipped else kept).append(item)
    if left_out:
        log.warning("%s: left out %d of %d %s about %d images that feature extraction skipped as unreadable "
                    "(listed in %s)", source, len(left_out), len(items), what,
                    len({image_id(i) for i in left_out}), skipped_list_path(store.path))
    return kept, left_out


@dataclass
class EncodedText:
    """Word pieces of one text: ids with [CLS] … [SEP], char offsets per piece ((0, 0) for specials)."""

    input_ids: list[int]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.input_ids)


class TextEncoder:
    """Tokenise texts to at most ``max_len`` pieces (including [CLS] and [SEP])."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer = tokenizer
        self.max_len = int(max_len)

    def encode_many(self, texts: Sequence[str]) -> list[EncodedText]:
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_len, return_offsets_mapping=True
        )
        return [
            EncodedText(list(ids), [tuple(o) for o in offs])
            for ids, offs in zip(encoded["input_ids"], encoded["offset_mapping"])
        ]

    def encode(self, text: str) -> EncodedText:
        return self.encode_many([text])[0]

    @property
    def special_ids(self) -> set[int]:
        return set(self.tokenizer.all_special_ids)


def pad_text(texts: Sequence[EncodedText | Sequence[int] | torch.Tensor], length: int | None = None) -> torch.Tensor:
    """[B, T] long ids padded with 0 ([PAD]) to ``length`` (default: the longest)."""
    rows = [t.input_ids if isinstance(t, EncodedText) else t for t in texts]
    length = length or max(len(r) for r in rows)
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row[:length], dtype=torch.long)
    return out


def collate(
    texts: Sequence[EncodedText | Sequence[int] | torch.Tensor],
    regions: Sequence[RegionTensors],
    text_length: int | None = None,
) -> TbkinInputs:
    """Batch texts and regions into :class:`TbkinInputs`.

    Region slots past the batch's largest ``num_boxes`` are dropped: they are padding in
    every row, and most images have far fewer detections than m, so the sequence (and
    the cost of every layer) shrinks. Per-region targets are cut to the same
    ``region_mask.shape[1]`` slots by their users.
    """
    input_ids = pad_text(texts, text_length)
    slots = max(1, max(r.num_boxes for r in regions))
    return TbkinInputs(
        input_ids=input_ids,
        text_mask=input_ids != 0,
        region_features=torch.stack([r.features[:slots] for r in regions]),
        region_positions=torch.stack([r.positions[:slots] for r in regions]),
        region_mask=torch.stack([r.mask[:slots] for r in regions]),
    )
