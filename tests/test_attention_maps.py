"""What threshold attention removes (hand-made matrices, hooks on a tiny model) and the
attention-map figure (layout, question choice, the CLI on tiny fine-tuned models)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tbkin.cli import main
from tbkin.data.loaders import CocoAnnotation, CocoCategory, CocoImage, CocoInstances, VqaQuestion
from tbkin.evaluate import attention_maps as maps
from tbkin.evaluate.attention_removal import PreThresholdAttention, removal_fractions, removed_mask

PNG = b"\x89PNG\r\n\x1a\n"

# ---- removal fractions on a hand-made attention matrix -----------------------------------
# Sequence: text slots [CLS] w1 [SEP] pad | region slots r1 r2 pad; T = 0.25.
TEXT_MASK = np.array([True, True, True, False])
REGION_MASK = np.array([True, True, False])
J = 0.5  # junk in padding rows: must never count
PROBS = np.array([
    #  CLS   w1    SEP   pad  r1    r2    pad
    [0.40, 0.05, 0.05, 0.0, 0.30, 0.20, 0.0],   # [CLS]: drops w1, SEP, r2
    [0.10, 0.10, 0.10, 0.0, 0.60, 0.10, 0.0],   # w1: keeps only r1
    [0.25, 0.35, 0.20, 0.0, 0.10, 0.10, 0.0],   # SEP: 0.25 == T is kept; drops SEP, r1, r2
    [J, J, J, J, J, J, J],                      # padding query
    [0.05, 0.30, 0.15, 0.0, 0.30, 0.20, 0.0],   # r1: keeps w1 and r1
    [0.20, 0.20, 0.20, 0.0, 0.24, 0.16, 0.0],   # r2: all below T, the guard keeps its maximum r1
    [J, J, J, J, J, J, J],                      # padding query
], dtype=np.float32)


def test_removal_fractions_hand_computed():
    out = removal_fractions(PROBS, 0.25, TEXT_MASK, REGION_MASK)
    # [CLS] -> {r1, r2}: r2 (0.20) removed: 1 of 2 weights, mass 0.20 of 0.50
    assert (out["cls_to_regions"]["removed"], out["cls_to_regions"]["total"]) == (1, 2)
    assert out["cls_to_regions"]["fraction"] == pytest.approx(0.5)
    assert out["cls_to_regions"]["mass_fraction"] == pytest.approx(0.20 / 0.50)
    # {w1, SEP} -> {r1, r2}: 0.6 kept; 0.1, 0.1, 0.1 removed: 3 of 4, mass 0.3 of 0.9
    assert (out["text_to_regions"]["removed"], out["text_to_regions"]["total"]) == (3, 4)
    assert out["text_to_regions"]["mass_fraction"] == pytest.approx(0.3 / 0.9)
    # {r1, r2} -> {w1, SEP} ([CLS] is not text): 0.30 kept; 0.15, 0.20, 0.20 removed: 3 of 4, mass 0.55 of 0.85
    assert (out["regions_to_text"]["removed"], out["regions_to_text"]["total"]) == (3, 4)
    assert out["regions_to_text"]["fraction"] == pytest.approx(0.75)
    assert out["regions_to_text"]["mass_fraction"] == pytest.approx(0.55 / 0.85)
    # all 5 x 5 real pairs: removed 3 + 4 + 3 + 3 + 4 = 17 (row r2 keeps its maximum)
    assert (out["all"]["removed"], out["all"]["total"]) == (17, 25)

    # heads are pooled: two identical heads double the counts, not the fractions
    two_heads = removal_fractions(np.stack([PROBS, PROBS]), 0.25, TEXT_MASK, REGION_MASK)
    assert two_heads["text_to_regions"]["removed"] == 6 and two_heads["text_to_regions"]["fraction"] == pytest.approx(0.75)
    # T = 0 (Base) removes nothing
    assert all(b["removed"] == 0 for b in removal_fractions(PROBS, 0.0, TEXT_MASK, REGION_MASK).values())
    with pytest.raises(ValueError, match="does not fit"):
        removal_fractions(PROBS[:6, :6], 0.25, TEXT_MASK, REGION_MASK)


def test_removed_mask_is_what_the_model_zeroes():
    """On random scores, the weights called removed are exactly those threshold attention sets to 0."""
    from tbkin.model.attention import threshold_softmax

    torch.manual_seed(0)
    scores = torch.randn(3, 4, 9, 9) * 2
    valid = np.ones(9, bool)
    for t in (0.05, 0.2, 0.5):
        removed = removed_mask(torch.softmax(scores, -1).numpy(), t, valid)
        assert np.array_equal(removed, threshold_softmax(scores, None, t).numpy() == 0)


def _tiny_model(mode: str, threshold: float = 0.0):
    from tbkin.model.modeling_tbkin import TbkinConfig, TbkinInputs, TbkinModel

    config = TbkinConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, region_feature_dim=4, num_region_labels=3, max_text_len=6,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = TbkinModel(config).eval()
    model.set_attention(mode, threshold=threshold)
    ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 8, 2, 0, 0, 0]])
    inputs = TbkinInputs(input_ids=ids, text_mask=ids != 0, region_features=torch.randn(2, 3, 4) * 3,
                         region_positions=torch.rand(2, 3, 5),
                         region_mask=torch.tensor([[True, True, True], [True, True, False]]))
    return model, inputs


@torch.no_grad()
def test_hooks_recompute_the_weights_before_the_threshold():
    # full attention: the recomputed weights are the model's own
    model, inputs = _tiny_model("full")
    with PreThresholdAttention(model) as pre:
        out = model(inputs, output_attentions=True)
    assert len(pre.probs) == 2
    for mine, theirs in zip(pre.probs, out.attentions):
        torch.testing.assert_close(mine, theirs)
    # threshold attention: renormalising the kept recomputed weights gives the model's weights
    model, inputs = _tiny_model("threshold", 0.2)
    with PreThresholdAttention(model) as pre:
        out = model(inputs, output_attentions=True)
    valid = inputs.attention_mask.numpy()
    for mine, theirs in zip(pre.probs, out.attentions):
        for b in range(2):
            keep = torch.from_numpy(~removed_mask(mine[b].numpy(), 0.2, valid[b])) & inputs.attention_mask[b]
            kept = mine[b] * keep
            rows = valid[b]
            torch.testing.assert_close((kept / kept.sum(-1, keepdim=True))[:, rows], theirs[b][:, rows])
    # the hooks are gone afterwards
    assert all(not m._forward_pre_hooks for m in pre.modules)


# ---- choosing questions --------------------------------------------------------------------

def _instances(anns):
    cats = {1: CocoCategory(1, "circle", "shape"), 2: CocoCategory(2, "square", "shape"), 3: CocoCategory(3, "bus", "")}
    return CocoInstances(Path("instances.json"), {1: CocoImage(1, "1.png", 64, 64)}, anns, cats)


def _ann(i, cat, color=None):
    return CocoAnnotation(i, 1, cat, (i * 10.0, 5.0, 8.0, 8.0), 64.0, 0, {"color": color} if color else {})


def _q(text, answer, answer_type="other"):
    return VqaQuestion(7, 1, text, "what color is the", answer_type, answer, ())


def test_find_target_needs_one_particular_object():
    anns = [_ann(1, 1, "red"), _ann(2, 2, "blue"), _ann(3, 2, "blue")]
    inst = _instances(anns)
    assert maps.find_target(_q("What color is the circle?", "red"), anns, inst) is anns[0]
    assert maps.find_target(_q("What shape is the red thing?", "circle"), anns, inst) is anns[0]
    # two blue objects: which one is asked is not clear
    assert maps.find_target(_q("What color is the small square?", "blue"), anns, inst) is None
    assert maps.find_target(_q("Is there a red circle?", "yes", "yes/no"), anns, inst) is None
    # COCO-style annotations without attributes: the only object of the named category
    coco = [_ann(1, 3), _ann(2, 1), _ann(3, 1)]
    assert maps.find_target(_q("What color is the bus?", "yellow"), coco, _instances(coco)) is coco[0]
    assert maps.find_target(_q("What color is the circle?", "yellow"), coco, _instances(coco)) is None


# ---- figure layout on synthetic inputs --------------------------------------------------------

def _synthetic_rows(n: int):
    boxes = np.array([[4, 4, 30, 30], [20, 20, 60, 50], [0, 40, 20, 64]], np.float32)
    rows, images = [], []
    for r in range(n):
        base = maps.RegionAttention("red", np.array([0.3, 0.3, 0.4]), boxes)
        tbkin = maps.RegionAttention("blue", np.array([0.0, 0.9, 0.0]), boxes)
        rows.append(maps.MapRow(f"what color is the circle number {r}?", "blue", "x.png",
                                [("Base", base), ("TBKIN (T=0.3)", tbkin)], (20.0, 20.0, 60.0, 50.0)))
        images.append(np.full((64, 48, 3), 0.5, np.float32))   # not square: letterboxed in the panel
    return rows, images


@pytest.mark.parametrize("num_rows", [1, 3])
def test_figure_panels_are_at_least_256_px(num_rows):
    import matplotlib.pyplot as plt

    rows, images = _synthetic_rows(num_rows)
    fig = maps.draw_figure(rows, images)
    try:
        panels = [ax for ax in fig.axes if ax.images]
        assert len(panels) == 2 * num_rows
        fig.canvas.draw()
        for ax in panels:
            extent = ax.get_window_extent()
            assert extent.width >= 256 and extent.height >= 256
            # the image itself (48 x 64 px) is drawn at least 256 px on its short side
            (x0, y0), (x1, y1) = ax.transData.transform([(0, 0), (48, 64)])
            assert abs(x1 - x0) >= 256 and abs(y1 - y0) >= 256
        # one shared colour bar, whose scale reaches the largest weight of any panel
        colorbars = [ax for ax in fig.axes if not ax.images]
        assert len(colorbars) == 1 and colorbars[0].get_ylim()[1] == pytest.approx(0.9)
        # every region box is drawn (fill + outline) in every panel, plus the gold box
        assert all(len(ax.patches) == 2 * 3 + 1 for ax in panels)
    finally:
        plt.close(fig)


def test_panel_size_fits_every_image_at_the_minimum_scale():
    assert maps.panel_size([np.zeros((128, 128, 3))]) == (maps.PANEL_IN, maps.PANEL_IN)
    # 4:3 landscape and 3:4 portrait in one figure: both fit with their short side at PANEL_IN
    w, h = maps.panel_size([np.zeros((480, 640, 3)), np.zeros((640, 480, 3))])
    assert (w, h) == (pytest.approx(maps.PANEL_IN * 4 / 3), pytest.approx(maps.PANEL_IN * 4 / 3))


def test_render_writes_a_png_of_the_layout_size(tmp_path):
    from PIL import Image

    rows, _ = _synthetic_rows(2)
    Image.new("RGB", (48, 64), (90, 90, 90)).save(tmp_path / "x.png")
    out = tmp_path / "maps.png"
    maps.render(rows, tmp_path, out)
    width, height = maps.figure_layout(2, maps.panel_size([np.zeros((64, 48, 3))]))["size"]
    with Image.open(out) as png:
        assert png.size == (round(width * maps.DPI), round(height * maps.DPI))
        assert png.size[0] >= 2 * 256 and png.size[1] >= 2 * 256
    rows[0].file_name = "missing.png"
    with pytest.raises(Exception, match="missing.png"):
        maps.render(rows, tmp_path, out)


# ---- the CLIs on tiny fine-tuned models ----------------------------------------------------------

COLORS = ["red", "green", "blue"]
SHAPES = ["circle", "square", "star"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Six 64 px images, each with a red, a green and a blue object; 'what color is the
    <shape>?' and 'is there a red shape?' questions; Base and T = 0.3 fine-tuned 1 epoch."""
    from PIL import Image

    from tbkin.features.hdf5 import RegionFeatureWriter
    from tbkin.model.modeling_tbkin import TbkinConfig, TbkinModel
    from tbkin.model.tokenization import default_bert_path, load_tokenizer, prune_tokenizer

    root = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    images, anns, questions, annotations = [], [], [], []
    with RegionFeatureWriter(root / "val.h5", 3, 6, SHAPES) as writer:
        for image_id in range(1, 7):
            shapes = rng.permutation(3)
            boxes = np.array([[4, 4, 24, 24], [36, 8, 60, 32], [16, 36, 44, 60]], np.float32)
            feats = np.zeros((3, 6), np.float32)
            feats[np.arange(3), np.arange(3)] = 1          # colour k for object k
            feats[np.arange(3), 3 + shapes] = 1
            writer.append(image_id, 64, 64, boxes, np.ones(3, np.float32), shapes.astype(np.int32), feats)
            Image.new("RGB", (64, 64), (200, 200, 200)).save(root / "images" / f"{image_id}.png")
            images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 64, "height": 64})
            for k in range(3):
                x1, y1, x2, y2 = (float(v) for v in boxes[k])
                anns.append({"id": image_id * 10 + k, "image_id": image_id, "category_id": int(shapes[k]) + 1,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                             "attributes": {"color": COLORS[k], "size": "large"}})
            asked = int(rng.integers(3))
            for text, answer, atype in [(f"what color is the {SHAPES[shapes[asked]]}?", COLORS[asked], "other"),
                                        ("is there a red shape?", "yes", "yes/no")]:
                qid = image_id * 100 + len(questions)
                questions.append({"image_id": image_id, "question": text, "question_id": qid})
                annotations.append({"question_id": qid, "image_id": image_id, "question_type": "what color is the",
                                    "answer_type": atype, "multiple_choice_answer": answer,
                                    "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1}
                                                for i in range(10)]})
    (root / "instances.json").write_text(json.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]}))
    (root / "questions.json").write_text(json.dumps({"questions": questions}))
    (root / "annotations.json").write_text(json.dumps({"annotations": annotations}))

    texts = [q["question"] for q in questions]
    tokenizer, keep = prune_tokenizer(load_tokenizer(default_bert_path()), texts)
    config = TbkinConfig(vocab_size=len(keep), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, region_feature_dim=6,
                         num_region_labels=3, max_text_len=12, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    TbkinModel(config, tokenizer=tokenizer).save_pretrained(root / "pretrain")
    runs = {}
    for name, threshold in (("base", "0"), ("tbkin", "0.3")):
        out = root / name
        assert main(["finetune-vqa", "--pretrained", str(root / "pretrain"),
                     "--train-questions", str(root / "questions.json"), "--train-annotations", str(root / "annotations.json"),
                     "--train-features", str(root / "val.h5"), "--eval-questions", str(root / "questions.json"),
                     "--eval-features", str(root / "val.h5"), "--out-dir", str(out), "--predictions",
                     str(root / f"{name}_pred.json"), "--settings", '{"epochs": 1, "batch_size": 4, "lr": 0.003}',
                     "--threshold", threshold, "--device", "cpu"]) == 0
        runs[name] = out
    return root, runs


def test_attention_maps_cli_picks_questions_about_one_object(tiny_runs, tmp_path):
    from PIL import Image

    from tbkin.data.loaders import load_coco_instances, load_vqa

    root, runs = tiny_runs
    out = tmp_path / "maps.png"
    assert main(["attention-maps", "--base", str(runs["base"]), "--tbkin", str(runs["tbkin"]),
                 "--questions", str(root / "questions.json"), "--annotations", str(root / "annotations.json"),
                 "--instances", str(root / "instances.json"), "--images-dir", str(root / "images"),
                 "--features", str(root / "val.h5"), "--num-questions", "3", "--output", str(out)]) == 0
    width, height = maps.figure_layout(3)["size"]
    with Image.open(out) as png:
        assert png.size == (round(width * maps.DPI), round(height * maps.DPI))
        assert png.size[0] >= 2 * 256 and png.size[1] >= 3 * 256

    # the rows are the colour questions, each with its object's gold box
    chosen = maps.pick_map_questions(load_vqa(root / "questions.json", root / "annotations.json").questions,
                                     load_coco_instances(root / "instances.json"), 3)
    assert len(chosen) == 3
    for q, target in chosen:
        assert q.question.startswith("what color is the") and target is not None
        assert target.attributes["color"] == q.multiple_choice_answer
    # more rows than colour questions: yes/no questions fill the rest, without a gold box
    chosen = maps.pick_map_questions(load_vqa(root / "questions.json", root / "annotations.json").questions,
                                     load_coco_instances(root / "instances.json"), 8)
    assert sum(t is not None for _, t in chosen) == 6 and len(chosen) == 8


def test_attention_removal_cli(tiny_runs, tmp_path):
    import pandas as pd

    root, runs = tiny_runs
    common = ["--questions", str(root / "questions.json"), "--features", str(root / "val.h5"), "--max-questions", "5"]
    out, csv = tmp_path / "removal.json", tmp_path / "removal.csv"
    # the TBKIN model: its own T; the hooks' removals are checked against its zeroed weights
    assert main(["attention-removal", "--model", str(runs["tbkin"]), *common, "--output", str(out), "--csv", str(csv)]) == 0
    doc = json.loads(out.read_text())
    assert doc["threshold"] == 0.3 and doc["num_questions"] == 5 and len(doc["layers"]) == 2
    for layer in doc["layers"]:
        for block in ("cls_to_regions", "text_to_regions", "regions_to_text", "all"):
            assert 0.0 <= layer[block]["fraction"] <= 1.0 and 0.0 <= layer[block]["mass_fraction"] <= 1.0
        # [CLS] -> 3 regions, 2 heads, 5 questions
        assert layer["cls_to_regions"]["total"] == 3 * 2 * 5
    table = pd.read_csv(csv)
    assert list(table.columns) == ["layer", "block", "removed", "total", "fraction", "mass_fraction"]
    assert len(table) == 2 * 4
    assert table[table.block == "all"]["removed"].sum() > 0    # with T = 0.3 of up to 3 + 12 keys, some go

    # Base: its own T = 0 removes nothing; --threshold asks what T would remove from its attention
    assert main(["attention-removal", "--model", str(runs["base"]), *common, "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["threshold"] == 0.0 and all(layer["all"]["removed"] == 0 for layer in doc["layers"])
    assert main(["attention-removal", "--model", str(runs["base"]), *common, "--threshold", "0.3",
                 "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["threshold"] == 0.3 and doc["model_attention"]["threshold"] == 0.0
    assert sum(layer["all"]["removed"] for layer in doc["layers"]) > 0
