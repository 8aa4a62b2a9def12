"""REC: hit rule, box refinement targets, refined prediction."""
import pytest
import torch

from tbkin.evaluate.rec_boxes import (
    decode_deltas,
    encode_deltas,
    is_hit,
    rec_targets,
    refined_box,
    xywh_to_xyxy,
    xyxy_to_xywh,
)


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_hit_rule_threshold_is_inclusive():
    gt = t(0, 0, 10, 10)
    assert is_hit(t(0, 0, 10, 10), gt)
    # IoU = 50 / 100 exactly -> hit (>= 0.5)
    assert is_hit(t(0, 0, 10, 5), gt)
    # IoU = 49 / 100 -> miss
    assert not is_hit(t(0, 0, 10, 4.9), gt)
    # disjoint -> miss
    assert not is_hit(t(20, 20, 30, 30), gt)


def test_xywh_roundtrip():
    box = t(3, 4, 10, 20)
    assert torch.equal(xywh_to_xyxy(box), t(3, 4, 13, 24))
    assert torch.equal(xyxy_to_xywh(xywh_to_xyxy(box)), box)


def test_deltas_roundtrip_and_identity():
    regions = torch.tensor([[0, 0, 10, 10], [5, 5, 25, 15]], dtype=torch.float32)
    targets = torch.tensor([[2, 1, 12, 9], [0, 0, 30, 30]], dtype=torch.float32)
    deltas = encode_deltas(regions, targets)
    assert torch.allclose(decode_deltas(regions, deltas), targets, atol=1e-4)
    assert torch.allclose(encode_deltas(regions, regions), torch.zeros(2, 4), atol=1e-6)
    # hand-worked: centre (5,5)->(7,5), size 10x10 -> 10x8: dx=.2, dy=0, dw=0, dh=log(.8)
    assert torch.allclose(deltas[0], t(0.2, 0.0, 0.0, torch.log(t(0.8)).item()), atol=1e-6)


def test_rank_target_uses_regions_with_iou_at_least_half():
    gt = t(0, 0, 10, 10)
    regions = torch.tensor([
        [0, 0, 10, 10],     # IoU 1
        [0, 0, 10, 5],      # IoU .5 (inclusive)
        [0, 0, 10, 4],      # IoU .4 -> not a positive
        [50, 50, 60, 60],   # disjoint
        [0, 0, 10, 10],     # padding (beyond num_boxes): never a target
    ], dtype=torch.float32)
    tg = rec_targets(regions, num_boxes=4, referred_box=gt)
    assert tg.positive.tolist() == [True, True, False, False, False]
    assert torch.allclose(tg.rank, t(1 / 1.5, 0.5 / 1.5, 0, 0, 0))
    assert tg.best_iou == pytest.approx(1.0)
    # deltas of a positive take that region onto the referred box; others are zero
    assert torch.allclose(decode_deltas(regions[1], tg.deltas[1]), gt, atol=1e-4)
    assert torch.equal(tg.deltas[2:], torch.zeros(3, 4))


def test_rank_target_falls_back_to_best_region():
    gt = t(0, 0, 10, 10)
    regions = torch.tensor([[0, 0, 10, 3], [0, 0, 10, 4], [40, 40, 50, 50]], dtype=torch.float32)
    tg = rec_targets(regions, num_boxes=3, referred_box=gt)
    assert tg.positive.tolist() == [False, True, False]
    assert tg.rank.tolist() == [0.0, 1.0, 0.0]
    assert tg.best_iou == pytest.approx(0.4)


def test_refined_box_uses_top_real_region_and_its_deltas():
    regions = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 1, 1]], dtype=torch.float32)
    scores = t(0.1, 0.9, 5.0)            # region 2 is padding (num_boxes=2)
    deltas = torch.zeros(3, 4)
    deltas[1] = encode_deltas(regions[1], t(22, 20, 32, 30))
    box = refined_box(scores, regions, deltas, num_boxes=2)
    assert torch.allclose(box, t(22, 20, 32, 30), atol=1e-4)
    # the refinement turns a miss into a hit
    gt = t(24, 20, 34, 30)
    assert not is_hit(regions[1], gt) and is_hit(box, gt)
