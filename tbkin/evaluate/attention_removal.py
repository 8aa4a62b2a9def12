"""``tbkin attention-removal``: what threshold attention removes, per layer and block.

Threshold attention (:mod:`tbkin.model.attention`, the paper's Methodology) computes
the ordinary weights ``W = softmax(QKᵀ·scale + mask)``, sets every weight below T to
zero (each row keeps at least its largest weight) and renormalises the rest. This
command runs a fine-tuned VQA model over validation questions and counts, per layer,
how many of the weights W it zeroes, in three blocks of the attention matrix over
``[CLS] text [SEP] regions``:

* ``cls_to_regions``: the [CLS] query over the region keys;
* ``text_to_regions``: the text queries (word pieces and [SEP], not [CLS]) over the regions;
* ``regions_to_text``: the region queries over the text keys (word pieces and [SEP]);

plus ``all``, every query and key of the sequence. Only real tokens count (no
padding). Per block it reports ``fraction`` = removed weights / weights (over
questions x heads x queries x keys) and ``mass_fraction`` = the share of the block's
attention mass W that the removed weights carried.

The model returns only the weights *after* the threshold, so the weights before it are
recomputed by forward pre-hooks on every layer's self-attention module, from the
module's own query / key projections, scale and padding mask; the model is not
changed. Where T is the model's own threshold, every run checks that exactly the
weights the hooks call removed are zero in the model's own (post-threshold) weights.

By default T is the model's own threshold (0 for Base, where nothing is removed).
``--threshold`` counts with another T instead, without changing the model's forward
pass: e.g. what T = 0.1 would remove from the Base model's attention.
"""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from tbkin.atomic import write_json
from tbkin.data.loaders import load_vqa
from tbkin.errors import DataFormatError, TbkinError
from tbkin.evaluate.ablation import write_csv
from tbkin.evaluate.attention_maps import load_vqa_model, pick_questions
from tbkin.features.hdf5 import RegionFeatureReader
from tbkin.model.attention import masked_scores
from tbkin.train.data import RegionTensors, collate, leave_out_skipped_images

log = logging.getLogger(__name__)

BLOCKS = ("cls_to_regions", "text_to_regions", "regions_to_text", "all")


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def removed_mask(probs: np.ndarray, threshold: float, key_valid: np.ndarray) -> np.ndarray:
    """Boolean (..., n, n): weights that threshold attention sets to zero.

    A weight is removed when it is below T, unless it is its row's largest weight over
    the valid keys (the guard of :mod:`tbkin.model.attention`). Padding keys never count.
    """
    # compare in the weights' own precision, as the model does (T rounded to that dtype)
    t = np.asarray(threshold, dtype=probs.dtype)
    row_max = np.where(key_valid, probs, -np.inf).max(axis=-1, keepdims=True)
    return key_valid & (probs < t) & (probs < row_max)


def removal_fractions(probs, threshold: float, text_mask, region_mask) -> dict[str, dict[str, float]]:
    """What threshold T removes from one example's attention, per block.

    ``probs``: pre-threshold attention weights (..., n, n) of one example (leading dims,
    e.g. heads, are pooled), rows = queries, columns = keys, over ``[text slots][region
    slots]`` with n = len(text_mask) + len(region_mask); ``text_mask`` (T,) bool: real text
    tokens, [CLS] first; ``region_mask`` (M,) bool: real regions.

    Returns ``{block: {"removed", "total", "removed_mass", "mass", "fraction",
    "mass_fraction"}}`` for the blocks of :data:`BLOCKS`; counts and masses add up over
    examples, fractions are NaN for an empty block.
    """
    probs = _as_numpy(probs)
    text_mask = _as_numpy(text_mask).astype(bool)
    region_mask = _as_numpy(region_mask).astype(bool)
    n_text, n = len(text_mask), len(text_mask) + len(region_mask)
    if probs.shape[-2:] != (n, n):
        raise ValueError(f"attention of shape {probs.shape} does not fit "
                         f"{n_text} text + {len(region_mask)} region slots")
    valid = np.concatenate([text_mask, region_mask])
    cls = np.zeros(n, bool)
    cls[0] = bool(text_mask[0])
    text = np.concatenate([text_mask, np.zeros(len(region_mask), bool)]) & ~cls
    regions = np.concatenate([np.zeros(n_text, bool), region_mask])
    removed = removed_mask(probs, threshold, valid)
    pooled_removed = removed.reshape(-1, n, n)
    pooled_probs = probs.reshape(-1, n, n).astype(np.float64)
    out = {}
    for block, (queries, keys) in {"cls_to_regions": (cls, regions), "text_to_regions": (text, regions),
                                   "regions_to_text": (regions, text), "all": (valid, valid)}.items():
        cell = np.outer(queries, keys)
        total = int(cell.sum()) * pooled_probs.shape[0]
        removed_here = int((pooled_removed & cell).sum())
        mass = float((pooled_probs * cell).sum())
        removed_mass = float((pooled_probs * (pooled_removed & cell)).sum())
        out[block] = {"removed": removed_here, "total": total, "removed_mass": removed_mass, "mass": mass,
                      **_fractions(removed_here, total, removed_mass, mass)}
    return out


def _fractions(removed: int, total: int, removed_mass: float, mass: float) -> dict[str, float]:
    return {"fraction": removed / total if total else math.nan,
            "mass_fraction": removed_mass / mass if mass > 0 else math.nan}


@dataclass
class RemovalTally:
    """Counts of :func:`removal_fractions` summed over examples, per layer and block."""

    layers: list[dict[str, dict[str, float]]] = field(default_factory=list)

    def add(self, layer: int, fractions: dict[str, dict[str, float]]) -> None:
        while len(self.layers) <= layer:
            self.layers.append({b: {"removed": 0, "total": 0, "removed_mass": 0.0, "mass": 0.0} for b in BLOCKS})
        for block, counts in fractions.items():
            for key in ("removed", "total", "removed_mass", "mass"):
                self.layers[layer][block][key] += counts[key]

    def table(self) -> list[dict]:
        """One row per layer and block: layer, block, removed, total, fraction, mass_fraction."""
        rows = []
        for layer, blocks in enumerate(self.layers):
            for block in BLOCKS:
                c = blocks[block]
                rows.append({"layer": layer, "block": block, "removed": int(c["removed"]), "total": int(c["total"]),
                             **_fractions(c["removed"], c["total"], c["removed_mass"], c["mass"])})
        return rows


class PreThresholdAttention:
    """Context manager: the attention weights *before* the threshold, per layer.

    A forward pre-hook on every layer's self-attention module recomputes
    ``softmax(QKᵀ·scale + mask)`` from the module's own projections and the padding
    mask it is called with; ``self.probs`` is then a list (one per layer, in order) of
    [B, heads, n, n] tensors. The model's forward pass is not changed.
    """

    def __init__(self, backbone):
        self.modules = [layer.attention.self for layer in backbone.encoder.layer]
        self.probs: list[torch.Tensor] = []
        self._hooks = []

    def _hook(self, module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        heads = (*hidden.shape[:-1], -1, module.attention_head_size)
        query = module.query(hidden).view(heads).transpose(1, 2)
        key = module.key(hidden).view(heads).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(2, 3)) * module.scaling
        self.probs.append(torch.softmax(masked_scores(scores, mask), dim=-1))

    def __enter__(self) -> "PreThresholdAttention":
        self.probs = []
        self._hooks = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


@torch.no_grad()
def tally_removal(model, encoder, store: RegionFeatureReader, questions, threshold: float,
                  batch_size: int = 32, check: bool = True) -> RemovalTally:
    """Removal counts of ``threshold`` over ``questions`` (loader records with .question, .image_id).

    ``check``: the model itself thresholds with ``threshold``; then its own post-threshold
    weights must be zero exactly where the recomputed ones are removed.
    """
    backbone = model.backbone
    tally = RemovalTally()
    for start in range(0, len(questions), batch_size):
        batch = questions[start: start + batch_size]
        inputs = collate(encoder.encode_many([q.question for q in batch]),
                         [RegionTensors.from_regions(store.get(q.image_id)) for q in batch])
        with PreThresholdAttention(backbone) as pre:
            out = backbone(inputs, output_attentions=check)
        if len(pre.probs) != len(backbone.encoder.layer):
            raise TbkinError(f"captured {len(pre.probs)} attention layers of {len(backbone.encoder.layer)}: "
                             "the hooks no longer fit this transformers version")
        for layer, probs in enumerate(pre.probs):
            probs = probs.float().cpu().numpy()
            for b in range(len(batch)):
                text_mask, region_mask = inputs.text_mask[b].numpy(), inputs.region_mask[b].numpy()
                tally.add(layer, removal_fractions(probs[b], threshold, text_mask, region_mask))
                if check:
                    _check_against_model(out.attentions[layer][b], probs[b], threshold, text_mask, region_mask, layer)
    return tally


def _check_against_model(post, probs, threshold, text_mask, region_mask, layer: int) -> None:
    valid = np.concatenate([text_mask, region_mask]).astype(bool)
    zero = (post.float().cpu().numpy() == 0) & valid[None, None, :] & valid[None, :, None]
    mine = removed_mask(probs, threshold, valid) & valid[None, :, None]
    if not np.array_equal(zero, mine):
        raise TbkinError(f"layer {layer}: the recomputed pre-threshold weights disagree with the model's "
                         f"({int((zero != mine).sum())} weights); the attention hooks do not match the model")


def model_threshold(config) -> float:
    if config.attention_mode == "local":
        raise DataFormatError("attention-removal needs a threshold (or full) attention model, "
                              f"this one uses local attention (window {config.local_window})")
    return float(config.attention_threshold) if config.attention_mode == "threshold" else 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="finetune-vqa output directory (model, head, answers.json)")
    parser.add_argument("--questions", required=True, help="official VQA questions JSON of the val split")
    parser.add_argument("--features", required=True, help="region features HDF5 of the val split")
    parser.add_argument("--max-questions", type=int, default=500,
                        help="questions to use, spread evenly over the split by question id (default 500)")
    parser.add_argument("--threshold", type=float,
                        help="count removals with this T instead of the model's own (the forward pass is unchanged)")
    parser.add_argument("--output", required=True, help="JSON: per layer x block removed fractions, and T")
    parser.add_argument("--csv", help="the same as a table: layer, block, removed, total, fraction, mass_fraction")
    parser.add_argument("--batch-size", type=int, default=32, help="questions per forward pass (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.max_questions < 1:
        raise DataFormatError(f"--max-questions must be at least 1, got {args.max_questions}")
    _, model, _, encoder = load_vqa_model("model", args.model)
    config = model.backbone.config
    own = model_threshold(config)
    threshold = own if args.threshold is None else float(args.threshold)
    if not 0.0 <= threshold <= 1.0:
        raise DataFormatError(f"--threshold must be in [0, 1], got {threshold}")
    if threshold <= 0:
        log.warning("T = 0: threshold attention removes nothing; give --threshold to count what a T would remove")
    store = RegionFeatureReader(args.features, cache=True)
    questions, _ = leave_out_skipped_images(load_vqa(args.questions).questions, lambda q: q.image_id, store,
                                            "questions", args.questions)
    missing = [q for q in questions if q.image_id not in store]
    if missing:
        raise DataFormatError(f"{args.features}: no regions for image {missing[0].image_id} "
                              f"(asked by question {missing[0].question_id} of {args.questions})")
    chosen = pick_questions(questions, args.max_questions)
    tally = tally_removal(model, encoder, store, chosen, threshold, args.batch_size, check=0 < threshold == own)
    rows = tally.table()
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    doc = {
        "model": str(args.model),
        "threshold": threshold,
        "model_attention": {"mode": config.attention_mode, "threshold": own, "window": config.local_window},
        "questions": str(args.questions),
        "features": str(args.features),
        "num_questions": len(chosen),
        "blocks": list(BLOCKS),
        "definition": "fraction: share of the block's attention weights (questions x heads x queries x keys, "
                      "real tokens only) that T sets to zero; mass_fraction: share of the block's pre-threshold "
                      "attention mass they carried; text excludes [CLS], includes [SEP]",
        "layers": [{"layer": layer, **{r["block"]: {k: r[k] for k in ("fraction", "mass_fraction", "removed", "total")}
                                       for r in clean if r["layer"] == layer}}
                   for layer in range(len(tally.layers))],
    }
    write_json(args.output, doc)
    if args.csv:
        write_csv(pd.DataFrame(rows), args.csv)
    for r in rows:
        if r["block"] != "all":
            log.info("layer %d %-16s removed %.3f of the weights (%.3f of the mass)", r["layer"], r["block"],
                     r["fraction"], r["mass_fraction"])
    return 0
