"""``tbkin probe``: does pretraining ground colour and shape words in the image's regions?

For every validation caption and every colour or shape word in it, that one word is
masked (all of its word pieces become [MASK]; no 80/10/10) and the pretrained
encoder with its MLM head predicts it twice: once with the regions of the caption's
own image and once with the regions of a random other validation image. A word is a
hit when the argmax of the MLM head is the original piece at every one of its
pieces. Templated captions give the text alone little hint of which colour or shape
follows ("a small ___ circle"), so a model that reads words from regions is right
far more often with its own image than with a random one; a model that ignores the
image scores about the same with both.

Colour and shape words are the closed vocabulary of the ``shapes`` dataset
(:data:`tbkin.data.vocab.COLORS`, :data:`tbkin.data.vocab.SHAPES`, and the shapes'
plurals, "two blue stars"), matched case-insensitively against the parse tokens of
``parses.parquet``; tokens are mapped to word pieces by their character offsets, as
pretraining does. A word whose pieces were cut off by ``max_text_len`` is not probed.
The random image of a caption is drawn uniformly from the other images with
validation captions by a ``torch.Generator`` seeded with ``--seed``, one draw per
caption in file order, so the result is deterministic.

Output (``probe.json``)::

    {
      "color": {                 # masked colour words
        "own_image": 91.35,      # accuracy in %, with the caption's own image
        "random_image": 18.02,   # accuracy in %, with a random other image
        "difference": 73.33,     # own_image - random_image, in percentage points
        "masked_words": 673,     # words probed (each masked on its own)
        "chance": 16.67          # 100 / number of colours
      },
      "shape": {...},            # the same for shape words; chance = 100 / number of shapes
      "all": {...},              # both together; chance = the groups' chance weighted by masked_words
      "precision": "bf16",       # the resolved --precision the encoder ran under
      "device": "cpu",
      "seed": 0,                 # seed of the random-image draw
      "checkpoint": "results/pretrain",
      "parses": "...", "features": "...",
      "captions": 600,           # validation captions read
      "images": 200,             # images with validation captions (the random-image pool)
      "truncated_words": 0       # colour/shape words left out: cut off by max_text_len
    }

Accuracies are rounded to 2 decimals; a group without words has null accuracies.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tbkin.atomic import write_json
from tbkin.data.vocab import COLORS, SHAPES, plural
from tbkin.errors import DataFormatError
from tbkin.features.hdf5 import RegionFeatureReader
from tbkin.model.modeling_tbkin import CheckpointError, TbkinInputs, TbkinModel, load_pretraining_heads
from tbkin.model.tokenization import pieces_in_span
from tbkin.precision import PRECISIONS, autocast, resolve_precision
from tbkin.train.data import EncodedText, RegionTensors, TextEncoder, collate, leave_out_skipped_images, pad_text
from tbkin.train.loop import progress_bar

log = logging.getLogger(__name__)

GROUP_WORDS = {
    "color": frozenset(COLORS),
    "shape": frozenset(SHAPES) | frozenset(plural(shape) for shape in SHAPES),
}
CHANCE = {"color": 100.0 / len(COLORS), "shape": 100.0 / len(SHAPES)}
GROUPS = ("color", "shape")


def word_group(token: str) -> str | None:
    """"color", "shape" or None for a parse token."""
    word = token.lower()
    return next((group for group in GROUPS if word in GROUP_WORDS[group]), None)


@dataclass
class ProbeCaption:
    """One validation caption and the word-piece positions of its colour and shape words."""

    record: int            # row of parses.parquet
    image_id: int
    text: EncodedText
    words: list[tuple[str, list[int]]]  # (group, piece positions) per colour/shape word


@dataclass
class ProbeExample:
    """One masked word of one caption, with the image it is probed against."""

    caption: ProbeCaption
    group: str
    pieces: list[int]


def read_probe_captions(parses_path: str | Path, encoder: TextEncoder) -> tuple[list[ProbeCaption], int]:
    """Caption rows of ``parses.parquet`` with their colour/shape words; also the number
    of such words left out because truncation cut their pieces off."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(parses_path, columns=["source", "image_id", "text", "tokens", "token_starts"]).to_pylist()
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"cannot read text parses {parses_path}: {exc}") from None
    captions = [(index, row) for index, row in enumerate(rows) if row["source"] == "caption"]
    if not captions:
        raise DataFormatError(f"{parses_path}: no caption records to probe")
    encoded = encoder.encode_many([row["text"] for _, row in captions])
    out, truncated = [], 0
    for (index, row), text in zip(captions, encoded):
        tokens, starts = row["tokens"] or [], row["token_starts"] or []
        if len(tokens) != len(starts):
            raise DataFormatError(f"{parses_path}: row {index} has {len(tokens)} tokens but {len(starts)} token_starts")
        words = []
        for token, start in zip(tokens, starts):
            group = word_group(token)
            if group is None:
                continue
            end = start + len(token)
            pieces = pieces_in_span(text.offsets, start, end)
            # truncation drops whole pieces: a word is complete when its last piece reaches its end
            if not pieces or text.offsets[pieces[-1]][1] < end:
                truncated += 1
                continue
            words.append((group, pieces))
        out.append(ProbeCaption(record=index, image_id=int(row["image_id"]), text=text, words=words))
    return out, truncated


def draw_random_images(image_ids: list[int], pool: list[int], seed: int) -> list[int]:
    """For each image id, a uniformly drawn *other* image of ``pool`` (sorted, distinct ids)."""
    if len(pool) < 2:
        raise DataFormatError(f"the random-image probe needs at least two images, got {len(pool)}")
    position = {image_id: i for i, image_id in enumerate(pool)}
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(pool) - 1, (len(image_ids),), generator=generator).tolist()
    # draw among the n - 1 others: indices at or past the own image's shift up by one
    return [pool[d + (d >= position[image_id])] for image_id, d in zip(image_ids, draws)]


@torch.no_grad()
def masked_word_hits(model: TbkinModel, heads, inputs: TbkinInputs, original_ids: torch.Tensor,
                     masked: torch.Tensor) -> torch.Tensor:
    """[B] bool: row b's masked word is predicted right at every one of its pieces.

    ``inputs.input_ids`` hold [MASK] where ``masked`` [B, T] is True; ``original_ids``
    [B, T] the pieces before masking. ``heads`` has ``mlm_logits(hidden, word_embedding)``.
    Rows without a masked piece are not hits.
    """
    out = model(inputs)
    hidden = out.text[masked]  # [N, H], masked positions in row-major order
    logits = heads.mlm_logits(hidden, model.embeddings.word_embeddings.weight)
    predicted = logits.float().argmax(-1)
    wrong = torch.zeros_like(masked)
    wrong[masked] = predicted != original_ids[masked]
    return masked.any(dim=1) & ~wrong.any(dim=1)


def _masked_batch(examples: list[ProbeExample], images: list[int], store: RegionFeatureReader, mask_token_id: int):
    """Inputs with each example's word masked over ``images``' regions; original ids; the mask."""
    texts, originals = [], []
    for example in examples:
        ids = list(example.caption.text.input_ids)
        originals.append(ids)
        masked_ids = list(ids)
        for p in example.pieces:
            masked_ids[p] = mask_token_id
        texts.append(masked_ids)
    inputs = collate(texts, [RegionTensors.from_regions(store.get(image_id)) for image_id in images])
    original_ids = pad_text(originals, inputs.input_ids.shape[1])
    masked = torch.zeros(original_ids.shape, dtype=torch.bool)
    for b, example in enumerate(examples):
        masked[b, example.pieces] = True
    return inputs, original_ids, masked


def probe(model: TbkinModel, heads, captions: list[ProbeCaption], store: RegionFeatureReader, mask_token_id: int, *,
          seed: int = 0, batch_size: int = 64, device: torch.device | str = "cpu", precision: str = "fp32") -> dict:
    """Hits and counts per group: {"color": {"own_image": hits, "random_image": hits, "masked_words": n}, ...}."""
    device = torch.device(device)
    pool = sorted({c.image_id for c in captions})
    random_images = draw_random_images([c.image_id for c in captions], pool, seed)
    examples = [(ProbeExample(c, group, pieces), other)
                for c, other in zip(captions, random_images) for group, pieces in c.words]
    # Batches of similar caption lengths pad less (a hit does not depend on its batch).
    examples.sort(key=lambda item: len(item[0].caption.text))
    counts = {group: {"own_image": 0, "random_image": 0, "masked_words": 0} for group in GROUPS}
    model.eval()
    heads.eval()
    starts = range(0, len(examples), batch_size)
    bar = progress_bar(len(starts), 0, "probe", enabled=True)
    for start in starts:
        bar.update(1)
        chunk = examples[start: start + batch_size]
        batch_examples = [example for example, _ in chunk]
        groups = [example.group for example in batch_examples]
        for group in groups:
            counts[group]["masked_words"] += 1
        for condition, images in (("own_image", [e.caption.image_id for e in batch_examples]),
                                  ("random_image", [other for _, other in chunk])):
            inputs, original_ids, masked = _masked_batch(batch_examples, images, store, mask_token_id)
            with autocast(device, precision):
                hits = masked_word_hits(model, heads, inputs.to(device), original_ids.to(device), masked.to(device))
            for group, hit in zip(groups, hits.tolist()):
                counts[group][condition] += int(hit)
    bar.close()
    return counts


def summarize(counts: dict) -> dict:
    """Accuracies in %, their difference, word counts and chance level per group and for all words."""
    def percent(hits: int, total: int) -> float | None:
        return round(100.0 * hits / total, 2) if total else None

    def group_summary(own: int, random: int, total: int, chance: float | None) -> dict:
        own_pct, random_pct = percent(own, total), percent(random, total)
        return {
            "own_image": own_pct,
            "random_image": random_pct,
            "difference": round(own_pct - random_pct, 2) if total else None,
            "masked_words": total,
            "chance": None if chance is None else round(chance, 2),
        }

    summary = {group: group_summary(c["own_image"], c["random_image"], c["masked_words"], CHANCE[group])
               for group, c in counts.items()}
    total = sum(c["masked_words"] for c in counts.values())
    chance = sum(CHANCE[g] * c["masked_words"] for g, c in counts.items()) / total if total else None
    summary["all"] = group_summary(sum(c["own_image"] for c in counts.values()),
                                   sum(c["random_image"] for c in counts.values()), total, chance)
    return summary


def probe_checkpoint(checkpoint: str | Path, parses: str | Path, features: str | Path, output: str | Path, *,
                     seed: int = 0, batch_size: int = 64, device: str | None = None, precision: str = "auto") -> dict:
    """Probe a pretrained checkpoint folder on the validation captions and write ``output``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolved = resolve_precision(precision, device)
    model = TbkinModel.from_pretrained(checkpoint)
    if model.tokenizer is None:
        raise CheckpointError(f"{checkpoint}: no tokenizer files (the probe needs the pretraining tokenizer)")
    heads = load_pretraining_heads(checkpoint, model.config)
    model.to(device)
    heads.to(device)
    store = RegionFeatureReader(features, cache=True)
    captions, truncated = read_probe_captions(parses, TextEncoder(model.tokenizer, model.config.max_text_len))
    captions, _ = leave_out_skipped_images(captions, lambda c: c.image_id, store, "captions", parses)
    missing = sorted({c.image_id for c in captions if c.image_id not in store})
    if missing:
        raise DataFormatError(f"{parses}: {len(missing)} caption images have no regions in {features} (e.g. {missing[:3]})")
    if not any(c.words for c in captions):
        raise DataFormatError(f"{parses}: no colour or shape words in the captions (the probe is for the shapes dataset)")
    counts = probe(model, heads, captions, store, model.tokenizer.mask_token_id,
                   seed=seed, batch_size=batch_size, device=device, precision=resolved)
    result = summarize(counts)
    result.update(
        precision=resolved,
        device=str(device),
        seed=seed,
        checkpoint=str(checkpoint),
        parses=str(parses),
        features=str(features),
        captions=len(captions),
        images=len({c.image_id for c in captions}),
        truncated_words=truncated,
    )
    write_json(output, result)
    return result


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="pretraining output folder (model, config, tokenizer, pretraining_heads.safetensors)")
    parser.add_argument("--parses", required=True, help="val split parses.parquet")
    parser.add_argument("--features", required=True, help="val split region features HDF5")
    parser.add_argument("--output", required=True, help="probe.json to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-image draw")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="train.precision (default auto)")
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="masked words per forward pass")
    parser.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    result = probe_checkpoint(args.checkpoint, args.parses, args.features, args.output, seed=args.seed,
                              batch_size=args.batch_size, device=args.device, precision=args.precision)
    for group in (*GROUPS, "all"):
        r = result[group]
        log.info("%s words (%d): own image %s%%, random image %s%%, difference %s points (chance %s%%)",
                 group, r["masked_words"], r["own_image"], r["random_image"], r["difference"], r["chance"])
    return 0
