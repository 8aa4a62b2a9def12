"""Masking rules: MLM 15% with 80/10/10, MRM 15%, SKM probabilities' direction."""
import pytest
import torch

from tbkin.model import masking
from tbkin.model.tokenization import pieces_in_span


def test_skm_probability_directions():
    sims = torch.linspace(0, 1, 11)
    intra, cross = masking.intra_probability(sims), masking.cross_probability(sims)
    assert (intra.diff() > 0).all(), "intra-modal: more similar -> more likely masked"
    assert (cross.diff() < 0).all(), "cross-modal: more similar -> less likely masked"
    assert intra[0] == 0 and intra[-1] == 1 and cross[0] == 1 and cross[-1] == 0
    # out-of-range similarities are clipped to valid probabilities
    assert masking.intra_probability(1.7) == 1 and masking.cross_probability(-0.3) == 1
    same = torch.tensor([True, False])
    torch.testing.assert_close(masking.member_probability(same, torch.tensor([0.9, 0.9])), torch.tensor([0.9, 0.1]))


def test_skm_entry_sampling_masks_anchor_and_members_at_their_rates():
    entry = masking.EntryMembers(
        anchor_modality="text", anchor=3,
        member_modality=["text", "text", "image", "image"], member=[1, 5, 0, 2],
        similarity=[0.9, 0.1, 0.9, 0.1],
    )
    g = torch.Generator().manual_seed(0)
    counts = {("text", 1): 0, ("text", 5): 0, ("image", 0): 0, ("image", 2): 0}
    trials = 2000
    for _ in range(trials):
        chosen = masking.sample_entry(entry, g)
        assert 3 in chosen.text_tokens  # the anchor, always
        for t in chosen.text_tokens - {3}:
            counts[("text", t)] += 1
        for r in chosen.regions:
            counts[("image", r)] += 1
    rate = {k: v / trials for k, v in counts.items()}
    assert rate[("text", 1)] == pytest.approx(0.9, abs=0.04)   # similar intra member: mostly masked
    assert rate[("text", 5)] == pytest.approx(0.1, abs=0.04)
    assert rate[("image", 0)] == pytest.approx(0.1, abs=0.04)  # similar cross member: mostly visible
    assert rate[("image", 2)] == pytest.approx(0.9, abs=0.04)


def test_entries_from_rows_groups_by_entry_and_skips_anchor_rows():
    rows = [
        dict(entry=1, anchor_modality="image", anchor=2, member_modality="image", member=2, role="anchor", similarity=1.0),
        dict(entry=1, anchor_modality="image", anchor=2, member_modality="text", member=4, role="cross", similarity=0.7),
        dict(entry=0, anchor_modality="text", anchor=4, member_modality="text", member=4, role="anchor", similarity=1.0),
    ]
    entries = masking.entries_from_rows(rows)
    assert [e.anchor for e in entries] == [4, 2]
    assert entries[0].member == [] and entries[1].member == [4] and entries[1].member_modality == ["text"]


def test_mlm_chooses_fifteen_percent_of_candidates_with_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 100, (400, 50), generator=g)
    candidates = torch.ones_like(ids, dtype=torch.bool)
    candidates[:, 0] = False  # e.g. [CLS]
    chosen = masking.choose_words(candidates, 0.15, g)
    assert not chosen[:, 0].any()
    assert chosen.float().sum() / candidates.sum() == pytest.approx(0.15, abs=0.01)
    random_pool = torch.arange(10, 100)
    corrupted, labels = masking.corrupt_words(ids, chosen, mask_token_id=3, random_ids=random_pool, generator=g)
    assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == masking.IGNORE_INDEX).all()
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    n = chosen.sum()
    masked = (corrupted[chosen] == 3).sum() / n
    unchanged = (corrupted[chosen] == ids[chosen]).sum() / n
    assert masked == pytest.approx(0.8, abs=0.02)
    # 10% random (from the pool; ~1/90 of those hit the original by chance) and 10% kept
    assert unchanged == pytest.approx(0.1 + 0.1 / 90, abs=0.02)
    randomised = chosen & (corrupted != 3) & (corrupted != ids)
    assert ((corrupted[randomised] >= 10) & (corrupted[randomised] < 100)).all()


def test_mrm_chooses_fifteen_percent_of_real_regions_only():
    g = torch.Generator().manual_seed(1)
    region_mask = torch.zeros(500, 36, dtype=torch.bool)
    region_mask[:, :20] = True
    chosen = masking.choose_regions(region_mask, 0.15, g)
    assert not chosen[:, 20:].any()
    assert chosen.float().sum() / region_mask.sum() == pytest.approx(0.15, abs=0.01)


def test_char_span_maps_to_word_pieces():
    # "[CLS] a red ##dish circle [SEP]" for text "a reddish circle"
    offsets = [(0, 0), (0, 1), (2, 5), (5, 9), (10, 16), (0, 0)]
    assert pieces_in_span(offsets, 2, 9) == [2, 3]       # spaCy token "reddish"
    assert pieces_in_span(offsets, 10, 16) == [4]
    assert pieces_in_span(offsets, 20, 25) == []         # truncated away
