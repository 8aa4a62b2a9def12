"""Masking rules of the pretraining tasks (MLM, MRM, structural knowledge masking).

All random draws take an explicit ``torch.Generator`` so a batch is a pure function
of its seed (deterministic, and resumable without saving generator state).

* **MLM** (BERT): choose each word piece (never [CLS], [SEP], [PAD]) with probability
  ``prob`` (0.15); a chosen piece becomes [MASK] 80% of the time, a random word piece
  10%, and stays unchanged 10%; the model predicts the original piece.
* **MRM** (UNITER / ROSITA): choose each real region with probability ``prob``; its
  feature is zeroed (the position is kept); the model regresses the original feature
  (SmoothL1) and classifies the detector's label (CE).
* **SKM** (ROSITA's structural knowledge masking), for one knowledge entry:
  the anchor is always masked; a member in the anchor's modality is masked with
  :func:`intra_probability` (grows with its similarity to the anchor, so the model
  cannot fill the anchor in from co-occurring same-modality context such as
  "green" → "grass"); a member in the other modality is masked with
  :func:`cross_probability` (falls with similarity, so the best cross-modal evidence
  stays visible and the model learns to reconstruct the anchor from it). Roles
  "cross" and "cross_intra" are both other-modality members; "intra" members share the
  anchor's modality. Similarities are clipped to [0, 1] first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

IGNORE_INDEX = -100


def intra_probability(similarity: torch.Tensor | float) -> torch.Tensor:
    """P(mask) of a same-modality member: its similarity to the anchor, clipped to [0, 1]."""
    return torch.as_tensor(similarity, dtype=torch.float32).clamp(0.0, 1.0)


def cross_probability(similarity: torch.Tensor | float) -> torch.Tensor:
    """P(mask) of an other-modality member: 1 - similarity (clipped): similar evidence stays visible."""
    return 1.0 - torch.as_tensor(similarity, dtype=torch.float32).clamp(0.0, 1.0)


def member_probability(same_modality: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Vectorised SKM rule: intra rule where ``same_modality``, cross rule elsewhere."""
    return torch.where(same_modality, intra_probability(similarity), cross_probability(similarity))


def bernoulli(probability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(probability.shape, generator=generator) < probability


def choose_words(candidates: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Bool [B, T]: each candidate piece chosen independently with ``prob``."""
    return bernoulli(torch.full(candidates.shape, float(prob)), generator) & candidates


def choose_regions(region_mask: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Bool [B, M]: each real region chosen independently with ``prob``."""
    return bernoulli(torch.full(region_mask.shape, float(prob)), generator) & region_mask


def corrupt_words(
    input_ids: torch.Tensor,
    chosen: torch.Tensor,
    mask_token_id: int,
    random_ids: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 replacement of the chosen pieces.

    ``random_ids``: 1-d tensor of ordinary (non-special) piece ids to draw from.
    Returns (corrupted ids, labels) with labels = original id where chosen, else -100.
    """
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    draw = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (draw < 0.8)
    to_random = chosen & (draw >= 0.8) & (draw < 0.9)
    replacement = random_ids[torch.randint(len(random_ids), input_ids.shape, generator=generator)]
    corrupted = input_ids.masked_fill(to_mask, mask_token_id)
    corrupted = torch.where(to_random, replacement, corrupted)
    return corrupted, labels


@dataclass
class EntryMembers:
    """One knowledge entry: the anchor and its members, each with its modality and vertex."""

    anchor_modality: str          # "image" | "text"
    anchor: int
    member_modality: Sequence[str]
    member: Sequence[int]
    similarity: Sequence[float]


@dataclass
class SkmSelection:
    """Vertices SKM masks in one pair: token indices of the parse and region indices."""

    text_tokens: set[int]
    regions: set[int]


def sample_entry(entry: EntryMembers, generator: torch.Generator) -> SkmSelection:
    """Mask the anchor, then each member with the intra / cross probability."""
    selection = SkmSelection(text_tokens=set(), regions=set())
    _add(selection, entry.anchor_modality, entry.anchor)
    if len(entry.member):
        same = torch.tensor([m == entry.anchor_modality for m in entry.member_modality])
        probability = member_probability(same, torch.as_tensor(entry.similarity, dtype=torch.float32))
        for modality, vertex, hit in zip(entry.member_modality, entry.member, bernoulli(probability, generator)):
            if hit:
                _add(selection, modality, vertex)
    return selection


def _add(selection: SkmSelection, modality: str, vertex: int) -> None:
    if modality == "text":
        selection.text_tokens.add(int(vertex))
    elif modality == "image":
        selection.regions.add(int(vertex))
    else:
        raise ValueError(f"unknown modality {modality!r} in a knowledge entry")


def entries_from_rows(rows: Iterable[dict]) -> list[EntryMembers]:
    """Group knowledge-entry Parquet rows (one pair) into entries, in entry order.

    Rows have ``entry``, ``anchor_modality``, ``anchor``, ``member_modality``, ``member``,
    ``role`` and ``similarity``; the row with role "anchor" carries no member to sample.
    """
    grouped: dict[int, EntryMembers] = {}
    for row in rows:
        entry = grouped.setdefault(
            int(row["entry"]), EntryMembers(row["anchor_modality"], int(row["anchor"]), [], [], [])
        )
        if row["role"] == "anchor":
            continue
        entry.member_modality.append(row["member_modality"])
        entry.member.append(int(row["member"]))
        entry.similarity.append(float(row["similarity"]))
    return [grouped[k] for k in sorted(grouped)]
