"""Attention functions of TBKIN, plugged into transformers' attention registry.

Importing this module registers the function ``"tbkin"`` with
``transformers.AttentionInterface``. A BERT block whose config has
``_attn_implementation = "tbkin"`` then calls :func:`tbkin_attention_forward`,
which reads three config fields of the calling module:

* ``module.config.attention_mode``: ``"full"`` | ``"threshold"`` | ``"local"``;
* ``module.config.attention_threshold``: T in [0, 1] (``"threshold"`` mode);
* ``module.config.local_window``: window size in tokens (``"local"`` mode).

Threshold attention (the paper's explicit selection, used in fine-tuning and
inference, never in pretraining)::

    W  = softmax(Q Kᵀ · scale + padding mask)
    H' = H where W >= T, else -inf
    W' = softmax(H')

**Guard.** Every row keeps its largest weight even when it is below T. Without the
guard, T > 1/n can drop every key of a row (all weights of an n-key row can be
close to 1/n), leaving a row of -inf and NaN after the second softmax. With it,
a row whose largest weight is below T attends to its arg-max key only.

T = 0 is the Base model: no weight is below 0, so the function returns exactly
standard attention (it takes the standard code path).

Implementation note: the second softmax over the kept keys equals the first
softmax renormalised over the kept keys (``W' = W·keep / Σ W·keep``, the common
factor exp(-logsumexp) cancels). :class:`_ThresholdSoftmax` computes that in its
forward pass (softmax, one fused threshold pass, a row sum and a division; the guard
costs extra passes only when some row has lost every key) and uses the ordinary
softmax backward with W' as the output, so the backward pass costs what standard
attention's does. :func:`naive_threshold_softmax`
spells the two softmaxes out; the tests check both agree (values and gradients).

Local attention (the paper's Table 2 baseline): each query attends to the keys
within ``±(window // 2)`` positions. Positions are counted over the *valid* tokens
only (those the padding mask keeps), in sequence order ``[CLS] text [SEP] regions``:
the padding between the text and the regions is skipped, so the last words and
the first regions (in their stored order, by detector confidence) are neighbours.
A query always sees itself, so no row is empty.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from transformers import AttentionInterface

ATTENTION_NAME = "tbkin"
ATTENTION_MODES = ("full", "threshold", "local")


def _key_is_valid(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Additive (0 / very negative) or boolean mask -> boolean 'key is valid' of mask's shape."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def masked_scores(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Add a padding mask (additive float, or boolean with True = keep) to attention scores."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores + mask


class _ThresholdSoftmax(torch.autograd.Function):
    """Softmax over the keys whose first-pass weight is >= T (plus each row's arg-max)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        weights = torch.softmax(scores, dim=-1)
        # One fused pass keeps w > below(T), i.e. w >= T in the weights' own precision.
        kept = nn.functional.threshold(weights, _just_below(threshold, weights.dtype), 0.0)
        total = kept.sum(dim=-1, keepdim=True)
        empty = total == 0
        if bool(empty.any()):
            # The guard: a row whose weights are all below T keeps its largest one.
            row_max = weights == weights.amax(dim=-1, keepdim=True)
            kept = torch.where(empty & row_max, weights, kept)
            total = kept.sum(dim=-1, keepdim=True)
        kept.div_(total)
        ctx.save_for_backward(kept)
        return kept

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (kept,) = ctx.saved_tensors
        # Softmax's own backward with the renormalised weights as its output; dropped keys
        # (weight 0) get zero gradient, exactly as through the second softmax.
        return torch._softmax_backward_data(grad_output, kept, -1, kept.dtype), None


@functools.lru_cache(maxsize=64)
def _just_below(threshold: float, dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` below ``threshold``: ``w > it`` is ``w >= threshold``."""
    t = torch.tensor(threshold, dtype=dtype)
    return float(torch.nextafter(t, torch.tensor(float("-inf"), dtype=dtype)))


def threshold_softmax(scores: torch.Tensor, mask: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """Attention weights with threshold selection over the last dimension.

    ``scores``: raw scaled scores (..., n_keys); ``mask``: additive padding mask
    broadcastable to ``scores`` (0 keep, dtype-min drop), boolean (True keep) or None;
    ``threshold``: T in [0, 1]. T <= 0 returns ``softmax(scores + mask)`` exactly.
    """
    scores = masked_scores(scores, mask)
    if threshold <= 0:
        return torch.softmax(scores, dim=-1)
    return _ThresholdSoftmax.apply(scores, float(threshold))


def naive_threshold_softmax(scores: torch.Tensor, mask: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """The paper's formula written out: softmax, set scores with W < T to -inf, softmax again.

    Includes the same keep-the-row-maximum guard. Reference for tests; slower.
    """
    scores = masked_scores(scores, mask)
    weights = torch.softmax(scores, dim=-1)
    drop = (weights < threshold) & (weights < weights.amax(dim=-1, keepdim=True))
    return torch.softmax(scores.masked_fill(drop, float("-inf")), dim=-1)


def local_window_mask(key_valid: torch.Tensor | None, n: int, window: int, device=None) -> torch.Tensor:
    """Boolean [B or 1, 1, n, n] mask, True where |pos(query) - pos(key)| <= window // 2.

    ``key_valid``: boolean [B, 1, 1, n] (or broadcastable); positions count valid tokens only.
    """
    if key_valid is None:
        pos = torch.arange(n, device=device).view(1, 1, n)
    else:
        valid = key_valid.expand(*key_valid.shape[:-1], n)[:, :, -1, :]  # [B, 1, n]; rows share keys
        pos = valid.long().cumsum(dim=-1) - 1
    distance = (pos.unsqueeze(-1) - pos.unsqueeze(-2)).abs()
    return distance <= window // 2


def attention_weights(
    scores: torch.Tensor,
    mask: torch.Tensor | None,
    mode: str = "full",
    threshold: float = 0.0,
    window: int | None = None,
) -> torch.Tensor:
    """Softmax weights of one attention call in the given mode; see the module docstring."""
    if mode == "full" or (mode == "threshold" and threshold <= 0):
        return torch.softmax(masked_scores(scores, mask), dim=-1)
    if mode == "threshold":
        return threshold_softmax(scores, mask, threshold)
    if mode == "local":
        if window is None or window < 1:
            raise ValueError(f"local attention needs local_window >= 1, got {window!r}")
        if mask is not None and mask.dim() != 4:
            raise ValueError(f"local attention expects a [B, 1, q, k] mask, got shape {tuple(mask.shape)}")
        in_window = local_window_mask(_key_is_valid(mask, scores), scores.shape[-1], window, scores.device)
        scores = masked_scores(scores, mask).masked_fill(~in_window, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)
    raise ValueError(f"attention_mode must be one of {ATTENTION_MODES}, got {mode!r}")


def tbkin_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for transformers' eager attention: q/k/v [B, H, n, d] -> ([B, n, H, d], [B, H, n, n])."""
    config = module.config
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    weights = attention_weights(
        scores,
        attention_mask,
        mode=getattr(config, "attention_mode", "full"),
        threshold=float(getattr(config, "attention_threshold", 0.0) or 0.0),
        window=getattr(config, "local_window", None),
    )
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


AttentionInterface.register(ATTENTION_NAME, tbkin_attention_forward)

__all__ = [
    "ATTENTION_MODES",
    "ATTENTION_NAME",
    "attention_weights",
    "local_window_mask",
    "naive_threshold_softmax",
    "tbkin_attention_forward",
    "threshold_softmax",
]
