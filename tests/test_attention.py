"""Threshold and local attention: exactness at T = 0, the two-softmax formula, no NaN, gradients."""
import pytest
import torch
from transformers.models.bert.modeling_bert import eager_attention_forward

from tbkin.model.attention import (
    attention_weights,
    local_window_mask,
    naive_threshold_softmax,
    tbkin_attention_forward,
    threshold_softmax,
)


class _Module(torch.nn.Module):
    def __init__(self, mode="full", threshold=0.0, window=None):
        super().__init__()
        self.config = type("C", (), {"attention_mode": mode, "attention_threshold": threshold, "local_window": window})()


def _additive(valid: torch.Tensor) -> torch.Tensor:
    """[B, n] bool -> [B, 1, 1, n] additive mask, as the model builds it."""
    return torch.zeros(valid.shape).masked_fill(~valid, torch.finfo(torch.float32).min)[:, None, None, :]


def _qkv(b=3, h=2, n=7, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) * 2 for _ in range(3)]


def _padding(b=3, n=7):
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2, 1:] = False  # every key padded except one
    return valid


def test_threshold_zero_equals_standard_attention_exactly():
    q, k, v = _qkv()
    mask = _additive(_padding())
    reference, ref_w = eager_attention_forward(_Module().eval(), q, k, v, mask, scaling=0.5)
    for mode in ("full", "threshold"):
        out, w = tbkin_attention_forward(_Module(mode, 0.0).eval(), q, k, v, mask, scaling=0.5)
        assert torch.equal(out, reference) and torch.equal(w, ref_w)


@pytest.mark.parametrize("threshold", [0.01, 0.1, 0.2, 0.5, 0.9])
def test_threshold_matches_naive_two_softmax_formula_values_and_gradients(threshold):
    g = torch.Generator().manual_seed(1)
    scores = (torch.randn(3, 2, 7, 7, generator=g) * 3).requires_grad_()
    mask = _additive(_padding())
    fast = threshold_softmax(scores, mask, threshold)
    upstream = torch.randn(fast.shape, generator=g)
    (grad_fast,) = torch.autograd.grad((fast * upstream).sum(), scores)
    naive = naive_threshold_softmax(scores, mask, threshold)
    (grad_naive,) = torch.autograd.grad((naive * upstream).sum(), scores)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_fast, grad_naive, rtol=1e-4, atol=1e-6)
    # Weights below T really are dropped (except the guarded row maximum).
    first = torch.softmax(scores.detach() + mask, -1)
    dropped = (first < threshold) & (first < first.amax(-1, keepdim=True))
    assert dropped.any() and (fast.detach()[dropped] == 0).all()


def test_threshold_keeps_row_maximum_and_never_nans():
    g = torch.Generator().manual_seed(2)
    for trial in range(30):
        n = int(torch.randint(1, 9, (1,), generator=g))
        scores = torch.randn(2, 3, n, n, generator=g) * float(torch.rand(1, generator=g) * 5)
        valid = torch.rand(2, n, generator=g) < 0.5
        valid[:, int(torch.randint(n, (1,), generator=g))] = True  # at least one real key
        mask = _additive(valid)
        for threshold in torch.linspace(0, 1, 11).tolist():
            w = threshold_softmax(scores, mask, threshold)
            assert not torch.isnan(w).any()
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
            # the first-pass arg-max key always keeps weight > 0
            best = torch.softmax(scores + mask, -1).argmax(-1, keepdim=True)
            assert (w.gather(-1, best) > 0).all()
            padded = (~valid)[:, None, None, :].expand_as(w)
            assert (w[padded] == 0).all()


def test_uniform_row_above_one_over_n_keeps_only_arg_max():
    scores = torch.zeros(1, 1, 1, 4)
    scores[..., 2] = 1e-3
    w = threshold_softmax(scores, None, 0.5)
    assert torch.equal(w, torch.tensor([[[[0.0, 0.0, 1.0, 0.0]]]]))


@pytest.mark.parametrize("mode,kwargs", [("threshold", {"threshold": 0.2}), ("local", {"window": 3}), ("full", {})])
def test_gradients_flow_to_queries_keys_values(mode, kwargs):
    q, k, v = (t.requires_grad_() for t in _qkv())
    module = _Module(mode, kwargs.get("threshold", 0.0), kwargs.get("window")).train()
    out, _ = tbkin_attention_forward(module, q, k, v, _additive(_padding()), scaling=0.5)
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_local_window_counts_only_real_tokens():
    # [CLS] w1 [SEP] pad pad r1 r2 : real positions 0 1 2 - - 3 4
    valid = torch.tensor([[1, 1, 1, 0, 0, 1, 1]], dtype=torch.bool)
    allowed = local_window_mask(valid[:, None, None, :], 7, window=3)[0, 0]
    assert allowed[2, 5] and allowed[5, 2]            # [SEP] and first region are neighbours
    assert not allowed[1, 5] and not allowed[0, 2]    # two real positions apart: outside ±1
    w = attention_weights(torch.zeros(1, 1, 7, 7), _additive(valid), mode="local", window=3)
    assert not torch.isnan(w).any()
    assert w[0, 0, 0, 2] == 0 and w[0, 0, 0, 1] > 0 and w[0, 0, 5, 6] > 0 and w[0, 0, 5, 3] == 0


def test_local_window_covering_everything_equals_full():
    scores = torch.randn(2, 2, 6, 6)
    mask = _additive(torch.ones(2, 6, dtype=torch.bool))
    torch.testing.assert_close(attention_weights(scores, mask, "local", window=13), attention_weights(scores, mask, "full"))


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError):
        attention_weights(torch.zeros(1, 1, 2, 2), None, mode="sparse")
