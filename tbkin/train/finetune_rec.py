"""``tbkin finetune-rec``: threshold fine-tuning on referring expressions, then predictions.

Every region token of the TBKIN encoder gets a rank score and four box deltas from a
Linear -> GELU -> LN -> Linear head. Training targets (:mod:`tbkin.evaluate.rec_boxes`):
the rank target is a distribution over the regions with IoU >= 0.5 to the referred
box (soft cross-entropy), the deltas are regressed with SmoothL1 on those regions.
The prediction for an expression is the top-scoring region's refined box.

Outputs in ``--out-dir``: the fine-tuned encoder (``model.safetensors`` +
``config.json`` + tokenizer), ``head.safetensors``, ``run.json`` (attention setting,
seed, timing, and per split the share of expressions whose best region already has
IoU >= 0.5: the proposals' upper bound before refinement), ``log.jsonl``.
``--predictions``: ``{split: [{"sent_id", "ref_id", "image_id", "box": [x, y, w, h]}]}``.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from tbkin.atomic import write_json
from tbkin.data.loaders import Ref, load_refcoco
from tbkin.errors import DataFormatError
from tbkin.evaluate.rec_boxes import HIT_IOU, RecTargets, decode_deltas, rec_targets, xywh_to_xyxy, xyxy_to_xywh
from tbkin.features.hdf5 import RegionFeatureReader
from tbkin.model.modeling_tbkin import TbkinInputs, TbkinModel
from tbkin.precision import autocast
from tbkin.train.data import EncodedText, RegionTensors, TextEncoder, collate, leave_out_skipped_images
from tbkin.train.finetune_common import (
    AttentionSetting,
    FinetuneSettings,
    add_training_arguments,
    batched,
    load_backbone,
    load_head_state,
    make_head,
    run_distributed,
    save_finetuned,
    train,
)

log = logging.getLogger(__name__)


class RecScorer(nn.Module):
    """TBKIN encoder + per-region head; forward -> (scores [B, M], deltas [B, M, 4])."""

    def __init__(self, backbone: TbkinModel):
        super().__init__()
        self.backbone = backbone
        self.head = make_head(backbone.config.hidden_size, 5)

    def forward(self, inputs: TbkinInputs) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.backbone(inputs).regions)
        scores = out[..., 0].float().masked_fill(~inputs.region_mask, torch.finfo(torch.float32).min)
        return scores, out[..., 1:].float()

    @classmethod
    def load(cls, directory: str | Path) -> "RecScorer":
        model = cls(TbkinModel.from_pretrained(directory))
        model.head.load_state_dict(load_head_state(directory))
        return model.eval()


@dataclass
class RecExample:
    sent_id: int
    ref: Ref
    text: EncodedText
    targets: RecTargets


def load_examples(refs: list[Ref], encoder: TextEncoder, store: RegionFeatureReader,
                  left_out: list[int] | None = None) -> list[RecExample]:
    """One example per (expression, referred object); targets computed once per ref.

    Refs of images the feature extraction skipped are left out; the sent_ids of their
    expressions are appended to ``left_out`` when it is given."""
    refs, skipped = leave_out_skipped_images(refs, lambda r: r.image_id, store, "refs", "RefCOCO refs")
    if left_out is not None:
        left_out += [s.sent_id for ref in skipped for s in ref.sentences]
    missing = [r.image_id for r in refs if r.image_id not in store]
    if missing:
        raise DataFormatError(f"{store.path}: no regions for image {missing[0]} (a RefCOCO image)")
    sentences = [(ref, s) for ref in refs for s in ref.sentences]
    encoded = encoder.encode_many([s.sent for _, s in sentences])
    targets: dict[int, RecTargets] = {}
    examples = []
    for (ref, sent), text in zip(sentences, encoded):
        if ref.ref_id not in targets:
            regions = RegionTensors.from_regions(store.get(ref.image_id))
            targets[ref.ref_id] = rec_targets(regions.boxes, regions.num_boxes,
                                              xywh_to_xyxy(torch.tensor(ref.bbox, dtype=torch.float32)))
        examples.append(RecExample(sent.sent_id, ref, text, targets[ref.ref_id]))
    return examples


def make_inputs(examples: list[RecExample], store: RegionFeatureReader, device) -> TbkinInputs:
    regions = [RegionTensors.from_regions(store.get(e.ref.image_id)) for e in examples]
    return collate([e.text for e in examples], regions).to(device)


@dataclass
class RecBatch:
    inputs: TbkinInputs
    rank: torch.Tensor          # [B, M] target distribution over the batch's region slots
    positive: torch.Tensor      # [B, M] bool: regions with IoU >= 0.5 (box regression targets)
    deltas: torch.Tensor        # [B, M, 4] box refinement targets

    def to(self, device) -> "RecBatch":
        return RecBatch(self.inputs.to(device), self.rank.to(device), self.positive.to(device), self.deltas.to(device))


def make_batch(examples: list[RecExample], store: RegionFeatureReader) -> RecBatch:
    inputs = make_inputs(examples, store, "cpu")
    slots = inputs.region_mask.shape[1]   # the batch's region slots (see collate)
    return RecBatch(inputs,
                    rank=torch.stack([e.targets.rank[:slots] for e in examples]),
                    positive=torch.stack([e.targets.positive[:slots] for e in examples]),
                    deltas=torch.stack([e.targets.deltas[:slots] for e in examples]))


def rec_loss(model: nn.Module, batch: RecBatch) -> dict[str, torch.Tensor]:
    """Soft cross-entropy of the rank scores + SmoothL1 of the positives' deltas."""
    scores, deltas = model(batch.inputs)
    rank_loss = -(batch.rank * F.log_softmax(scores.float(), dim=-1)).sum(-1).mean()
    box_loss = F.smooth_l1_loss(deltas.float()[batch.positive], batch.deltas[batch.positive])
    return {"rec": rank_loss + box_loss}


@torch.no_grad()
def predict(model: RecScorer, examples: list[RecExample], store: RegionFeatureReader, batch_size: int, device,
            precision: str = "fp32") -> list[dict]:
    model.eval()
    out = []
    for idx in batched(len(examples), batch_size):
        batch = [examples[i] for i in idx]
        with autocast(device, precision):
            scores, deltas = model(make_inputs(batch, store, device))
        scores, deltas = scores.float(), deltas.float()
        best = scores.argmax(dim=-1)
        for row, e in enumerate(batch):
            region = torch.from_numpy(store.get(e.ref.image_id).boxes[int(best[row])])
            box = decode_deltas(region, deltas[row, int(best[row])].cpu())
            out.append({"sent_id": e.sent_id, "ref_id": e.ref.ref_id, "image_id": e.ref.image_id,
                        "box": [round(float(v), 2) for v in xyxy_to_xywh(box)]})
    return out


def proposal_upper_bound(examples: list[RecExample]) -> float:
    """Percent of expressions whose best region has IoU >= 0.5 before refinement."""
    return round(100.0 * sum(e.targets.best_iou >= HIT_IOU for e in examples) / max(1, len(examples)), 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", required=True, help="pretrained TBKIN directory")
    parser.add_argument("--refs", required=True, help="refs(*).p pickle")
    parser.add_argument("--refs-instances", required=True, help="instances.json of the refs")
    parser.add_argument("--features", required=True, help="region features HDF5 of the refs' images")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--eval-splits", nargs="+", required=True, help="e.g. val testA testB")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--predictions", required=True, help="JSON of predicted boxes per split")
    add_training_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_distributed(args, FinetuneSettings, _run)


def _run(args: argparse.Namespace, attention: AttentionSetting, settings: FinetuneSettings, ctx) -> int:
    by_split = load_refcoco(args.refs, args.refs_instances).by_split()
    for split in [args.train_split, *args.eval_splits]:
        if not by_split.get(split):
            raise DataFormatError(f"{args.refs}: no refs in split '{split}' (has: {', '.join(sorted(by_split))})")
    backbone = load_backbone(args.pretrained, attention)
    encoder = TextEncoder(backbone.tokenizer, backbone.config.max_text_len)
    store = RegionFeatureReader(args.features, cache=True)
    left_out: dict[str, list[int]] = {s: [] for s in [args.train_split, *args.eval_splits]}
    train_set = load_examples(by_split[args.train_split], encoder, store, left_out[args.train_split])
    eval_sets = {s: load_examples(by_split[s], encoder, store, left_out[s]) for s in args.eval_splits}
    torch.manual_seed(settings.seed)
    model = RecScorer(backbone)

    stats = train(model, len(train_set), lambda indices: make_batch([train_set[i] for i in indices], store),
                  rec_loss, settings, ctx, args.out_dir, desc="finetune-rec")
    if not ctx.is_main:
        return 0
    predictions = {s: predict(model, ex, store, 4 * settings.batch_size, ctx.device, stats["precision"])
                   for s, ex in eval_sets.items()}
    run_info = {"task": "rec", "attention": asdict(attention), "seed": settings.seed, "settings": asdict(settings),
                "train_expressions": len(train_set),
                # expressions about images skipped at extraction; eval-rec leaves these sent_ids out
                "left_out_train_expressions": len(left_out[args.train_split]),
                "left_out_eval_expressions": {s: left_out[s] for s in args.eval_splits},
                "proposal_upper_bound": {s: proposal_upper_bound(ex) for s, ex in eval_sets.items()},
                "world_size": ctx.world_size, "threads": args.threads, **stats}
    save_finetuned(args.out_dir, model.backbone, model.head, run_info)
    write_json(args.predictions, predictions, indent=None)
    log.info("finetune-rec: %d steps in %.0f s (%.1f samples/s)", stats["steps"], stats["train_seconds"],
             stats["samples_per_second"])
    return 0
