"""``tbkin attention-maps``: where [CLS] looks, Base (T = 0) beside TBKIN (like the paper's Fig 6).

For a few validation questions, each fine-tuned VQA model is run with attention
weights captured; the weights of the last layer's [CLS] query over the region tokens,
averaged over heads, shade the image: every region's box is brightened in proportion
to the attention it receives (overlapping boxes add up), everything else is dimmed.
The three most-attended boxes are outlined with their weights. Each row is one
question (with its ground-truth answer); the left column is the Base model, the right
one TBKIN, each titled with its prediction.

The questions are spread evenly over the split (by question id), so the figure is
the same on every run.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tbkin.atomic import atomic_path
from tbkin.data.loaders import load_coco_instances, load_vqa
from tbkin.errors import DataFormatError
from tbkin.train.data import RegionStore, TextEncoder, collate, leave_out_skipped_images
from tbkin.train.finetune_vqa import VqaClassifier

log = logging.getLogger(__name__)


@dataclass
class RegionAttention:
    answer: str
    weights: np.ndarray   # (num_boxes,) [CLS] -> region attention, last layer, mean over heads
    boxes: np.ndarray     # (num_boxes, 4) x1, y1, x2, y2 pixels


@torch.no_grad()
def cls_region_attention(model: VqaClassifier, vocab, encoder: TextEncoder, store: RegionStore,
                         question: str, image_id: int) -> RegionAttention:
    regions = store.get(image_id)
    inputs = collate([encoder.encode(question)], [regions])
    out = model.backbone(inputs, output_attentions=True)
    answer = vocab.answers[int(model.classify(out, inputs.region_mask).argmax(-1))]
    last = out.attentions[-1][0].mean(dim=0)                  # [L, L], mean over heads
    n = regions.num_boxes
    weights = last[0, out.text_length: out.text_length + n]   # [CLS] row, region columns
    return RegionAttention(answer, weights.float().numpy(), regions.boxes[:n].numpy())


def shade(image: np.ndarray, att: RegionAttention) -> np.ndarray:
    """Image (H, W, 3) in [0, 1] brightened where the attended boxes are."""
    h, w = image.shape[:2]
    heat = np.zeros((h, w), np.float32)
    for weight, (x1, y1, x2, y2) in zip(att.weights, att.boxes):
        heat[max(0, int(y1)): min(h, int(np.ceil(y2))), max(0, int(x1)): min(w, int(np.ceil(x2)))] += weight
    if heat.max() > 0:
        heat /= heat.max()
    return image * (0.15 + 0.85 * heat[..., None])


def pick_questions(questions, num: int):
    ordered = sorted(questions, key=lambda q: q.question_id)
    if num >= len(ordered):
        return ordered
    return [ordered[int(i)] for i in np.linspace(0, len(ordered) - 1, num)]


def render(rows, images_dir: Path, out_png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    fig, axes = plt.subplots(len(rows), 2, figsize=(7, 3.6 * len(rows)), squeeze=False)
    for r, (question, file_name, results) in enumerate(rows):
        image = np.asarray(Image.open(images_dir / file_name).convert("RGB"), dtype=np.float32) / 255.0
        for c, (name, att) in enumerate(results):
            ax = axes[r, c]
            ax.imshow(shade(image, att))
            for k in np.argsort(-att.weights)[:3]:
                x1, y1, x2, y2 = att.boxes[k]
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="yellow", linewidth=1))
                ax.text(x1, y1, f"{att.weights[k]:.2f}", color="yellow", fontsize=7, va="bottom")
            ax.set_title(f"{name}: {att.answer}", fontsize=9)
            ax.axis("off")
        axes[r, 0].text(0, -0.12, f"Q: {question.question}  (answer: {question.multiple_choice_answer})",
                        transform=axes[r, 0].transAxes, fontsize=8, va="top")
    fig.suptitle("[CLS] attention over regions, last layer, mean over heads", fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="finetune-vqa directory trained with T = 0")
    parser.add_argument("--tbkin", required=True, help="finetune-vqa directory trained with threshold T")
    parser.add_argument("--questions", required=True)
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--instances", required=True, help="COCO instances of the split (image file names)")
    parser.add_argument("--images-dir", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--num-questions", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    models = []
    for name, directory in (("Base", args.base), ("TBKIN", args.tbkin)):
        model, vocab = VqaClassifier.load(directory)
        cfg = model.backbone.config
        label = name if cfg.attention_mode != "threshold" or cfg.attention_threshold <= 0 \
            else f"{name} (T={cfg.attention_threshold:g})"
        models.append((label, model, vocab, TextEncoder(model.backbone.tokenizer, cfg.max_text_len)))
    images = load_coco_instances(args.instances).images
    store = RegionStore(args.features)
    rows = []
    # questions about images skipped at extraction have no regions to attend to
    questions, _ = leave_out_skipped_images(load_vqa(args.questions, args.annotations).questions,
                                            lambda q: q.image_id, store, "questions", args.questions)
    for q in pick_questions(questions, args.num_questions):
        if q.image_id not in images:
            raise DataFormatError(f"{args.instances}: no image {q.image_id} (question {q.question_id})")
        results = [(label, cls_region_attention(m, v, enc, store, q.question, q.image_id))
                   for label, m, v, enc in models]
        rows.append((q, images[q.image_id].file_name, results))
        log.info("q%d %r: %s", q.question_id, q.question,
                 "; ".join(f"{label} -> {att.answer}, max weight {att.weights.max():.2f}" for label, att in results))
    render(rows, Path(args.images_dir), args.output)
    return 0
