"""``tbkin finetune-vqa``: threshold fine-tuning on VQA, then val predictions.

Starts from the pretrained TBKIN directory, switches every attention layer to
threshold attention with T = ``finetune.threshold`` (or another setting for the
ablation), puts the classifier Linear -> GELU -> LN -> Linear on [CLS] (or, with
``--readout cls_and_regions``, on [CLS] + the mean region output) over the answer
vocabulary (:mod:`tbkin.train.answers`) and trains with BCE on the soft scores
(summed over answers, averaged over the batch, as in ROSITA / MCAN). Then predicts
the arg-max answer of every question of the evaluation split and writes them in the
official results format ``[{"question_id", "answer"}]``.

Outputs in ``--out-dir``: ``model.safetensors`` + ``config.json`` + tokenizer files
(the fine-tuned encoder; attention setting and readout in its config),
``head.safetensors``, ``answers.json``, ``run.json``, ``log.jsonl``.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tbkin.atomic import write_json
from tbkin.errors import DataFormatError
from tbkin.data.loaders import VqaQuestion, load_vqa
from tbkin.features.hdf5 import RegionFeatureReader
from tbkin.model.modeling_tbkin import TbkinInputs, TbkinModel, TbkinOutput
from tbkin.precision import autocast
from tbkin.train.answers import AnswerVocab
from tbkin.train.data import EncodedText, RegionTensors, TextEncoder, collate, leave_out_skipped_images
from tbkin.train.finetune_common import (
    AttentionSetting,
    VqaSettings,
    add_training_arguments,
    batched,
    load_backbone,
    load_head_state,
    make_head,
    read_run_info,
    run_distributed,
    save_finetuned,
    train,
)

log = logging.getLogger(__name__)


READOUTS = ("cls", "cls_and_regions")


class VqaClassifier(nn.Module):
    """TBKIN encoder + answer classifier; forward -> logits [B, num_answers].

    ``readout="cls"`` (the paper) feeds the [CLS] output to the classifier.
    ``"cls_and_regions"`` feeds [CLS] + the mean of the real regions' outputs: every
    region output then gets a direct gradient from the answer loss, instead of only
    through [CLS]'s attention to the regions, which learns slowly from BERT weights.
    The readout is kept in the backbone's config (``vqa_readout``), so the saved
    ``config.json`` alone rebuilds the same classifier.
    """

    def __init__(self, backbone: TbkinModel, num_answers: int, readout: str = "cls"):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown VQA readout {readout!r}; expected one of {READOUTS}")
        backbone.config.vqa_readout = readout
        self.backbone = backbone
        self.head = make_head(backbone.config.hidden_size, num_answers)

    @property
    def readout(self) -> str:
        return self.backbone.config.vqa_readout

    def forward(self, inputs: TbkinInputs) -> torch.Tensor:
        return self.classify(self.backbone(inputs), inputs.region_mask)

    def classify(self, out: TbkinOutput, region_mask: torch.Tensor) -> torch.Tensor:
        """Answer logits from a backbone output (callers that also need the attentions)."""
        features = out.cls
        if self.readout == "cls_and_regions":
            real = region_mask[..., None].to(out.regions.dtype)
            features = features + (out.regions * real).sum(1) / real.sum(1).clamp(min=1)
        return self.head(features)

    @classmethod
    def load(cls, directory: str | Path) -> tuple["VqaClassifier", AnswerVocab]:
        """A model written by finetune-vqa, with the attention setting and readout of its config.json."""
        directory = Path(directory)
        vocab = AnswerVocab.load(directory / "answers.json")
        backbone = TbkinModel.from_pretrained(directory)
        # run.json: the readout of models saved before config.json carried it
        readout = backbone.config.vqa_readout or read_run_info(directory).get("readout", "cls")
        model = cls(backbone, len(vocab), readout)
        model.head.load_state_dict(load_head_state(directory))
        return model.eval(), vocab


@dataclass
class VqaExample:
    """A question of the split, encoded, with its soft answer targets."""

    question: VqaQuestion
    text: EncodedText
    targets: dict[int, float]   # answer index -> soft score (empty without annotations)


def load_questions(questions_path: str, annotations_path: str | None, encoder: TextEncoder,
                   store: RegionFeatureReader, vocab: AnswerVocab | None,
                   left_out: list[int] | None = None) -> list[VqaExample]:
    """Questions of a split (with soft targets when ``vocab`` and annotations are given).

    Questions about images the feature extraction skipped are left out; their ids are
    appended to ``left_out`` when it is given."""
    dataset = load_vqa(questions_path, annotations_path)
    questions, skipped = leave_out_skipped_images(dataset.questions, lambda q: q.image_id, store,
                                                  "questions", questions_path)
    if left_out is not None:
        left_out += [q.question_id for q in skipped]
    missing = [q.image_id for q in questions if q.image_id not in store]
    if missing:
        raise DataFormatError(f"{store.path}: no regions for image {missing[0]} (asked by {questions_path})")
    encoded = encoder.encode_many([q.question for q in questions])
    out = []
    for q, text in zip(questions, encoded):
        targets = vocab.soft_targets([a.answer for a in q.answers]) if vocab is not None and q.answers else {}
        out.append(VqaExample(q, text, targets))
    return out


def make_inputs(examples: list[VqaExample], store: RegionFeatureReader, device) -> TbkinInputs:
    regions = [RegionTensors.from_regions(store.get(e.question.image_id)) for e in examples]
    return collate([e.text for e in examples], regions).to(device)


def soft_target_matrix(examples: list[VqaExample], num_answers: int) -> torch.Tensor:
    target = torch.zeros(len(examples), num_answers)
    for row, e in enumerate(examples):
        for idx, score in e.targets.items():
            target[row, idx] = score
    return target


@dataclass
class VqaBatch:
    inputs: TbkinInputs
    targets: torch.Tensor      # [B, num_answers] soft scores

    def to(self, device) -> "VqaBatch":
        return VqaBatch(self.inputs.to(device), self.targets.to(device))


def vqa_loss(model: nn.Module, batch: VqaBatch) -> dict[str, torch.Tensor]:
    """BCE on the soft scores, summed over answers and averaged over the batch (ROSITA / MCAN)."""
    logits = model(batch.inputs).float()
    bce = nn.functional.binary_cross_entropy_with_logits(logits, batch.targets, reduction="sum")
    return {"vqa": bce / len(batch.targets)}


@torch.no_grad()
def predict(model: VqaClassifier, examples: list[VqaExample], store: RegionFeatureReader, vocab: AnswerVocab,
            batch_size: int, device, precision: str = "fp32") -> list[dict]:
    model.eval()
    predictions = []
    for idx in batched(len(examples), batch_size):
        batch = [examples[i] for i in idx]
        with autocast(device, precision):
            logits = model(make_inputs(batch, store, device))
        best = logits.float().argmax(dim=-1).tolist()
        predictions += [{"question_id": e.question.question_id, "answer": vocab.answers[a]} for e, a in zip(batch, best)]
    return predictions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", required=True, help="pretrained TBKIN directory")
    parser.add_argument("--train-questions", required=True)
    parser.add_argument("--train-annotations", required=True)
    parser.add_argument("--train-features", required=True, help="region features HDF5 of the training images")
    parser.add_argument("--eval-questions", required=True, help="questions to predict (val)")
    parser.add_argument("--eval-features", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--predictions", required=True, help="official results JSON to write")
    add_training_arguments(parser)  # --settings: VqaSettings (min_answer_count, readout: cls | cls_and_regions)


def run(args: argparse.Namespace) -> int:
    return run_distributed(args, VqaSettings, _run)


def _run(args: argparse.Namespace, attention: AttentionSetting, settings: VqaSettings, ctx) -> int:
    backbone = load_backbone(args.pretrained, attention)
    encoder = TextEncoder(backbone.tokenizer, backbone.config.max_text_len)
    train_store = RegionFeatureReader(args.train_features, cache=True)
    eval_store = RegionFeatureReader(args.eval_features, cache=True)
    consensus = [q.multiple_choice_answer for q in load_vqa(args.train_questions, args.train_annotations).questions]
    vocab = AnswerVocab.build(consensus, settings.min_answer_count)
    log.info("answer vocabulary: %d answers (min count %d)", len(vocab), settings.min_answer_count)
    left_out_train: list[int] = []
    left_out_eval: list[int] = []
    train_set = load_questions(args.train_questions, args.train_annotations, encoder, train_store, vocab, left_out_train)
    eval_set = load_questions(args.eval_questions, None, encoder, eval_store, None, left_out_eval)
    torch.manual_seed(settings.seed)   # the head's initialisation depends on the seed only
    model = VqaClassifier(backbone, len(vocab), settings.readout)

    def make_batch(indices: list[int]) -> VqaBatch:
        examples = [train_set[i] for i in indices]
        return VqaBatch(make_inputs(examples, train_store, "cpu"), soft_target_matrix(examples, len(vocab)))

    stats = train(model, len(train_set), make_batch, vqa_loss, settings, ctx, args.out_dir, desc="finetune-vqa")
    if not ctx.is_main:
        return 0
    predictions = predict(model, eval_set, eval_store, vocab, 4 * settings.batch_size, ctx.device, stats["precision"])
    vocab.save(Path(args.out_dir) / "answers.json")
    run_info = {"task": "vqa", "attention": asdict(attention), "readout": settings.readout, "seed": settings.seed,
                "settings": asdict(settings),
                "num_answers": len(vocab), "train_questions": len(train_set), "eval_questions": len(eval_set),
                # questions about images skipped at extraction; eval-vqa leaves these ids out of the score
                "left_out_train_questions": len(left_out_train), "left_out_eval_questions": left_out_eval,
                "world_size": ctx.world_size, "threads": args.threads, **stats}
    save_finetuned(args.out_dir, model.backbone, model.head, run_info)
    write_json(args.predictions, predictions, indent=None)
    log.info("finetune-vqa: %d steps in %.0f s (%.1f samples/s); %d predictions -> %s",
             stats["steps"], stats["train_seconds"], stats["samples_per_second"], len(predictions), args.predictions)
    return 0
