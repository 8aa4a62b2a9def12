"""``tbkin attention-maps``: where [CLS] looks, Base (T = 0) beside TBKIN (like the paper's Fig 6).

For a few validation questions, each fine-tuned VQA model is run with attention
weights captured; the weights of the last layer's [CLS] query over the region tokens,
averaged over heads, are drawn on the image: every region box is filled with the
colour of its weight, on one colour scale shared by all panels (one colour bar), more
opaque and with a thicker outline the larger the weight. The figure is a compact
grid, one row per question with Base beside TBKIN; every image is drawn with its
short side at least :data:`PANEL_PX` pixels (all panels share one size that fits
every image of the figure at that scale); each row says the question and the true answer, each panel the
model's answer (green: right, red: wrong).

Questions are chosen so that the answer needs one particular object: "what ..."
questions (answer type ``other``) whose answer identifies a single annotated object of
the image (:func:`find_target`: the only object with that colour / shape / size, or
else the only object of a category the question names). That object's gold box
(from ``--instances``) is outlined with a dashed blue line, so the reader sees whether
the attention went to it. The questions are spread evenly over those candidates (by
question id), so the figure is the same on every run; if there are too few, other
questions fill the remaining rows (without a gold box).
"""
from __future__ import annotations

import argparse
import logging
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tbkin.atomic import atomic_path
from tbkin.data.loaders import CocoAnnotation, CocoInstances, load_coco_instances, load_vqa
from tbkin.errors import DataFormatError
from tbkin.features.hdf5 import RegionFeatureReader
from tbkin.train.data import RegionTensors, TextEncoder, collate, leave_out_skipped_images
from tbkin.train.finetune_vqa import VqaClassifier

log = logging.getLogger(__name__)

# Figure geometry (inches at DPI): every image's short side is drawn with PANEL_PX pixels or more.
DPI = 100
PANEL_PX = 300
PANEL_IN = PANEL_PX / DPI
MARGIN_IN = 0.15      # left, right of the colour bar's labels, bottom
GAP_IN = 0.2          # between the Base and the TBKIN panel
HEADER_IN = 0.75      # question + true answer above each row, then the panel titles
ROW_GAP_IN = 0.15
TOP_IN = 0.6          # figure title
CBAR_IN = (0.25, 0.18, 0.85)   # gap before, width of, room for the labels of the colour bar
CMAP = "YlOrRd"
GOLD_COLOR = "tab:blue"


@dataclass
class RegionAttention:
    answer: str
    weights: np.ndarray   # (num_boxes,) [CLS] -> region attention, last layer, mean over heads
    boxes: np.ndarray     # (num_boxes, 4) x1, y1, x2, y2 pixels


@dataclass
class MapRow:
    """One row of the figure: a question, its image, each model's attention, the gold object."""

    question: str
    answer: str                      # the true (most common) answer
    file_name: str                   # image, relative to --images-dir
    results: list[tuple[str, RegionAttention]]
    gold_box: tuple[float, float, float, float] | None = None   # x1, y1, x2, y2 pixels


def load_vqa_model(name: str, directory: str | Path):
    """(label, model, answer vocab, text encoder) of a finetune-vqa directory; the label
    names the threshold, e.g. ``TBKIN (T=0.1)``."""
    model, vocab = VqaClassifier.load(directory)
    cfg = model.backbone.config
    label = name if cfg.attention_mode != "threshold" or cfg.attention_threshold <= 0 \
        else f"{name} (T={cfg.attention_threshold:g})"
    return label, model, vocab, TextEncoder(model.backbone.tokenizer, cfg.max_text_len)


@torch.no_grad()
def cls_region_attention(model: VqaClassifier, vocab, encoder: TextEncoder, store: RegionFeatureReader,
                         question: str, image_id: int) -> RegionAttention:
    regions = RegionTensors.from_regions(store.get(image_id))
    inputs = collate([encoder.encode(question)], [regions])
    out = model.backbone(inputs, output_attentions=True)
    answer = vocab.answers[int(model.classify(out, inputs.region_mask).argmax(-1))]
    last = out.attentions[-1][0].mean(dim=0)                  # [L, L], mean over heads
    n = regions.num_boxes
    weights = last[0, out.text_length: out.text_length + n]   # [CLS] row, region columns
    return RegionAttention(answer, weights.float().numpy(), regions.boxes[:n].numpy())


# ---- choosing the questions ---------------------------------------------------------

def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "


def find_target(question, annotations: list[CocoAnnotation], instances: CocoInstances) -> CocoAnnotation | None:
    """The one annotated object a "what ..." question is about, or None.

    The asked object has the answer as its category (shape) or as an attribute value
    (colour, size); when exactly one object of the image does, it is that object.
    Without such attributes (e.g. COCO), the only object of a category the question
    names ("what color is the bus?") is taken. Anything ambiguous gives None.
    """
    if question.answer_type != "other" or not question.question.lower().startswith("what"):
        return None
    answer = (question.multiple_choice_answer or "").strip().lower()
    names = {a.id: instances.categories[a.category_id].name.lower() for a in annotations}
    by_answer = [a for a in annotations
                 if answer == names[a.id] or answer in {str(v).lower() for v in a.attributes.values()}]
    if by_answer:
        return by_answer[0] if len(by_answer) == 1 else None
    text = _words(question.question)
    named = [a for a in annotations if f" {names[a.id]} " in text]
    return named[0] if len(named) == 1 else None


def spread(items: list, num: int) -> list:
    """``num`` items evenly spaced over the list (all of them if there are fewer)."""
    if num >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, num)]


def pick_questions(questions, num: int):
    """``num`` questions spread evenly over the split by question id (all if there are fewer)."""
    return spread(sorted(questions, key=lambda q: q.question_id), num)


def pick_map_questions(questions, instances: CocoInstances, num: int):
    """[(question, gold annotation or None)]: questions about one particular object first."""
    by_image = instances.annotations_by_image()
    targeted = [(q, t) for q in sorted(questions, key=lambda q: q.question_id)
                if (t := find_target(q, by_image.get(q.image_id, []), instances)) is not None]
    chosen = spread(targeted, num)
    if len(chosen) < num:
        log.warning("only %d questions whose answer needs one particular object; %d others fill the figure",
                    len(chosen), num - len(chosen))
        used = {q.question_id for q, _ in chosen}
        chosen += [(q, None) for q in pick_questions([q for q in questions if q.question_id not in used],
                                                     num - len(chosen))]
    return chosen


# ---- drawing ----------------------------------------------------------------------------

def panel_size(images: list[np.ndarray]) -> tuple[float, float]:
    """(width, height) in inches of one image panel: every image, scaled so that its
    short side is PANEL_IN, fits (square images: PANEL_IN square; 4:3 landscape: 4/3 wide)."""
    shapes = [image.shape[:2] for image in images] or [(1, 1)]
    width = max(w / min(h, w) for h, w in shapes)
    height = max(h / min(h, w) for h, w in shapes)
    return PANEL_IN * width, PANEL_IN * height


def figure_layout(num_rows: int, panel: tuple[float, float] = (PANEL_IN, PANEL_IN)) -> dict:
    """Figure size (inches) and axes rectangles (figure fractions) of the grid.

    ``panel``: (width, height) of each image panel in inches (:func:`panel_size`).
    Returns ``{"size": (w, h), "panels": [[rect_base, rect_tbkin] per row], "header":
    [(x, y) per row], "colorbar": rect}``.
    """
    panel_w, panel_h = panel
    width = MARGIN_IN + 2 * panel_w + GAP_IN + sum(CBAR_IN) + MARGIN_IN
    row_h = HEADER_IN + panel_h + ROW_GAP_IN
    height = TOP_IN + num_rows * row_h + MARGIN_IN
    panels, headers = [], []
    for r in range(num_rows):
        top = height - TOP_IN - r * row_h                 # inches from the bottom
        bottom = top - HEADER_IN - panel_h
        row = []
        for c in range(2):
            left = MARGIN_IN + c * (panel_w + GAP_IN)
            row.append((left / width, bottom / height, panel_w / width, panel_h / height))
        panels.append(row)
        headers.append((MARGIN_IN / width, (top - 0.05) / height))
    cbar_left = MARGIN_IN + 2 * panel_w + GAP_IN + CBAR_IN[0]
    cbar_bottom = MARGIN_IN + ROW_GAP_IN
    cbar = (cbar_left / width, cbar_bottom / height, CBAR_IN[1] / width,
            (height - TOP_IN - HEADER_IN - cbar_bottom) / height)
    return {"size": (width, height), "panels": panels, "header": headers, "colorbar": cbar}


def _draw_panel(ax, image: np.ndarray, att: RegionAttention, norm, cmap, gold_box) -> None:
    from matplotlib.patches import Rectangle

    h, w = image.shape[:2]
    ax.imshow(image, interpolation="nearest", extent=(0, w, h, 0))
    # the largest weights last, so they stay visible where boxes overlap
    for k in np.argsort(att.weights, kind="stable"):
        x1, y1, x2, y2 = (float(v) for v in att.boxes[k])
        level = float(norm(att.weights[k]))
        color = cmap(level)
        # a light fill keeps the objects' own colours readable (many questions ask for them);
        # the outline, thicker for larger weights, carries the rest
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, facecolor=color, alpha=0.08 + 0.4 * level,
                               edgecolor="none"))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=0.8 + 2.2 * level))
    if gold_box is not None:
        x1, y1, x2, y2 = gold_box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=GOLD_COLOR,
                               linewidth=2.5, linestyle="--"))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    # keep the panel's box (the grid stays aligned); an image of another shape is centred in it
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_facecolor("white")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_figure(rows: list[MapRow], images: list[np.ndarray]):
    """The grid figure of ``rows`` (``images``: each row's image, (H, W, 3) in [0, 1]); returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if not rows:
        raise DataFormatError("no questions to draw")
    layout = figure_layout(len(rows), panel_size(images))
    fig = plt.figure(figsize=layout["size"], dpi=DPI)
    cmap = plt.get_cmap(CMAP)
    vmax = max((float(att.weights.max()) for row in rows for _, att in row.results if att.weights.size), default=1.0)
    norm = Normalize(0.0, vmax if vmax > 0 else 1.0)
    for row, image, rects, (hx, hy) in zip(rows, images, layout["panels"], layout["header"]):
        question = textwrap.shorten(row.question, 80, placeholder="...")
        fig.text(hx, hy, f"Q: {question}\ntrue answer: {row.answer}", fontsize=10, va="top", ha="left")
        for rect, (label, att) in zip(rects, row.results):
            ax = fig.add_axes(rect)
            _draw_panel(ax, image, att, norm, cmap, row.gold_box)
            right = att.answer == row.answer
            ax.set_title(f"{label}: {att.answer} ({'right' if right else 'wrong'})", fontsize=9,
                         color="tab:green" if right else "tab:red", pad=3)
    cax = fig.add_axes(layout["colorbar"])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="attention weight")
    fig.suptitle("[CLS] → region attention (last layer, mean over heads): Base beside TBKIN\n"
                 "each region box shaded by its weight; dashed blue: the object the answer needs",
                 fontsize=10, y=1 - 0.08 / layout["size"][1])
    return fig


def render(rows: list[MapRow], images_dir: Path, out_png: str | Path) -> None:
    import matplotlib.pyplot as plt
    from PIL import Image

    images = []
    for row in rows:
        path = Path(images_dir) / row.file_name
        try:
            images.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"{path}: cannot read the image ({exc})") from None
    fig = draw_figure(rows, images)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")   # no bbox_inches="tight": it would rescale the panels
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="finetune-vqa directory trained with T = 0")
    parser.add_argument("--tbkin", required=True, help="finetune-vqa directory trained with threshold T")
    parser.add_argument("--questions", required=True)
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--instances", required=True,
                        help="COCO instances of the split (image file names; boxes of the asked objects)")
    parser.add_argument("--images-dir", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--num-questions", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    models = [load_vqa_model(name, directory) for name, directory in (("Base", args.base), ("TBKIN", args.tbkin))]
    instances = load_coco_instances(args.instances)
    store = RegionFeatureReader(args.features, cache=True)
    # questions about images skipped at extraction have no regions to attend to
    questions, _ = leave_out_skipped_images(load_vqa(args.questions, args.annotations).questions,
                                            lambda q: q.image_id, store, "questions", args.questions)
    rows = []
    for q, target in pick_map_questions(questions, instances, args.num_questions):
        if q.image_id not in instances.images:
            raise DataFormatError(f"{args.instances}: no image {q.image_id} (question {q.question_id})")
        results = [(label, cls_region_attention(m, v, enc, store, q.question, q.image_id))
                   for label, m, v, enc in models]
        gold = None
        if target is not None:
            x, y, w, h = target.bbox
            gold = (x, y, x + w, y + h)
        rows.append(MapRow(q.question, q.multiple_choice_answer or "", instances.images[q.image_id].file_name,
                           results, gold))
        log.info("q%d %r (answer %s): %s", q.question_id, q.question, q.multiple_choice_answer,
                 "; ".join(f"{label} -> {att.answer}, max weight {att.weights.max():.2f}" for label, att in results))
    render(rows, Path(args.images_dir), args.output)
    return 0
