"""The TBKIN model: a single-stream BERT transformer over ``[CLS] text [SEP] regions``.

Interface (used by pretraining and fine-tuning)::

    config = TbkinConfig(region_feature_dim=D, num_region_labels=L, ...)  # a BertConfig
    model = TbkinModel.from_bert(bert_dir, num_layers=4, region_feature_dim=D, ...)
    out = model(TbkinInputs(...), output_attentions=False)   # -> TbkinOutput
    out.sequence [B, T+M, H]; out.cls [B, H]; out.regions [B, M, H]; out.attentions
    model.set_attention("threshold", threshold=0.05)          # or "full", "local"
    model.save_pretrained(dir); TbkinModel.from_pretrained(dir, attention_mode=...)

Embeddings (the paper's "Feature representations"):

* text: BERT's word + position (+ token-type 0) embeddings, LayerNorm, dropout —
  :class:`transformers.models.bert.modeling_bert.BertEmbeddings`, initialised from
  the BERT checkpoint (word rows pruned to the dataset's pieces, see tokenization).
* region a: ``LN(W_f · feature_a) + LN(W_p · position_a)``, position = (x1/W, y1/H,
  x2/W, y2/H, area/(W·H)); fresh init. The feature is first standardised per
  dimension with the training regions' mean and standard deviation (buffers saved
  with the checkpoint, set by :meth:`TbkinRegionEmbeddings.set_feature_statistics`):
  detector features are non-negative with a large shared component, and unscaled
  they barely differ after ``W_f`` and LayerNorm: a one-word "is there a <shape>?"
  probe fine-tuned from the BERT initialisation stayed at its base rate for 300
  steps on raw features and reached 98% on standardised ones.

The sequence is the text (``[CLS] … [SEP]``, at most ``max_text_len`` slots, padded
to the batch's longest) followed by the regions (at most the feature file's m slots,
padded to the batch's largest detection count); the padding mask hides padded slots
from every key. The encoder is transformers' :class:`BertEncoder`
whose attention is the registry function ``"tbkin"`` (:mod:`tbkin.model.attention`),
so :meth:`TbkinModel.set_attention` switches full / threshold / local attention
without touching the weights.

Heads: :class:`TbkinPretrainingHeads` (MLM over the word pieces, tied to the word
embedding; region feature regression and region label classification; ITM on [CLS]).
Fine-tuning heads live with their tasks (``tbkin.train.finetune_*``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from huggingface_hub.dataclasses import strict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder, BertPredictionHeadTransform

from tbkin.atomic import atomic_path
from tbkin.errors import TbkinError
from tbkin.model import attention as _attention  # registers "tbkin" with AttentionInterface
from tbkin.model.tokenization import load_tokenizer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
ENCODER_INITS = ("bert", "random")  # model.encoder_init: the checkpoint's blocks, or fresh ones


class CheckpointError(TbkinError):
    """A checkpoint directory is missing files or does not match the model."""


@strict
class TbkinConfig(BertConfig):
    """BERT config plus the region stream, the attention mode and the VQA readout."""

    model_type = "tbkin"

    region_feature_dim: int = 2048
    region_position_dim: int = 5
    num_region_labels: int = 1600
    max_text_len: int = 20
    attention_mode: str = "full"
    attention_threshold: float = 0.0
    local_window: int | None = None
    # the VQA classifier's input (tbkin.train.finetune_vqa): saved here so that a
    # fine-tuned model's config.json alone rebuilds it; None outside VQA fine-tuning
    vqa_readout: str | None = None


@dataclass
class TbkinInputs:
    """One batch of model inputs.

    input_ids [B, T] long (``[CLS] … [SEP]`` then 0 = [PAD]); text_mask [B, T] bool;
    region_features [B, M, D] float; region_positions [B, M, 5] float;
    region_mask [B, M] bool (True = a real region).
    """

    input_ids: torch.Tensor
    text_mask: torch.Tensor
    region_features: torch.Tensor
    region_positions: torch.Tensor
    region_mask: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "TbkinInputs":
        return TbkinInputs(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def attention_mask(self) -> torch.Tensor:
        """[B, T+M] bool, True for every real token of the joint sequence."""
        return torch.cat([self.text_mask, self.region_mask], dim=1)


@dataclass
class TbkinOutput:
    """sequence [B, T+M, H]; text_length T; attentions: per layer [B, heads, T+M, T+M] or None."""

    sequence: torch.Tensor
    text_length: int
    attentions: tuple[torch.Tensor, ...] | None = None

    @property
    def cls(self) -> torch.Tensor:
        return self.sequence[:, 0]

    @property
    def text(self) -> torch.Tensor:
        return self.sequence[:, : self.text_length]

    @property
    def regions(self) -> torch.Tensor:
        return self.sequence[:, self.text_length :]


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation for freshly created modules."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=std)
            if sub.padding_idx is not None:
                with torch.no_grad():
                    sub.weight[sub.padding_idx].zero_()
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


class TbkinRegionEmbeddings(nn.Module):
    """Region token = LN(W_f · feature) + LN(W_p · position), then dropout."""

    def __init__(self, config: TbkinConfig):
        super().__init__()
        self.feature_proj = nn.Linear(config.region_feature_dim, config.hidden_size)
        self.feature_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.position_proj = nn.Linear(config.region_position_dim, config.hidden_size)
        self.position_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("feature_mean", torch.zeros(config.region_feature_dim))
        self.register_buffer("feature_std", torch.ones(config.region_feature_dim))

    @torch.no_grad()
    def set_feature_statistics(self, mean, std) -> None:
        """Standardise features with these per-dimension statistics (of the training regions)."""
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=self.feature_mean.dtype))
        # Constant dimensions (std 0) are only centred.
        std = torch.as_tensor(std, dtype=self.feature_std.dtype)
        self.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    @torch.no_grad()
    def match_scale(self, text_norm: nn.LayerNorm) -> None:
        """Start both LayerNorm gains at the text embedding's gain / sqrt(2).

        With unit gains a region token has ~3x the norm of a pretrained word token
        (sqrt(2 * hidden) against the text LayerNorm's learnt gain), and the pretrained
        layers then attend mostly within the text. Matching the scale keeps the
        formula LN(W_f f) + LN(W_p p) and only changes where its gains start.
        """
        for norm in (self.feature_norm, self.position_norm):
            norm.weight.copy_(text_norm.weight / 2**0.5)

    def forward(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        features = (features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std
        features = features.to(self.feature_proj.weight.dtype)
        positions = positions.to(self.position_proj.weight.dtype)
        embedded = self.feature_norm(self.feature_proj(features)) + self.position_norm(self.position_proj(positions))
        return self.dropout(embedded)


class TbkinModel(nn.Module):
    """Text + region embeddings and a BERT encoder with the "tbkin" attention function."""

    def __init__(self, config: TbkinConfig, tokenizer=None):
        super().__init__()
        config._attn_implementation = _attention.ATTENTION_NAME
        self.config = config
        self.tokenizer = tokenizer
        self.embeddings = BertEmbeddings(config)
        self.region_embeddings = TbkinRegionEmbeddings(config)
        self.encoder = BertEncoder(config)
        init_weights(self, config.initializer_range)

    # ----------------------------------------------------------------- forward
    def forward(self, inputs: TbkinInputs, output_attentions: bool = False) -> TbkinOutput:
        text = self.embeddings(input_ids=inputs.input_ids)
        regions = self.region_embeddings(inputs.region_features, inputs.region_positions)
        hidden = torch.cat([text, regions.to(text.dtype)], dim=1)
        valid = inputs.attention_mask
        # Additive key mask [B, 1, 1, T+M]: 0 for real tokens, dtype-min for padding.
        additive = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
        additive = additive.masked_fill(~valid, torch.finfo(hidden.dtype).min)[:, None, None, :]

        captured: list[torch.Tensor] = []
        hooks = []
        if output_attentions:
            for layer in self.encoder.layer:
                hooks.append(layer.attention.self.register_forward_hook(lambda _m, _i, out: captured.append(out[1])))
        try:
            sequence = self.encoder(hidden, attention_mask=additive).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        return TbkinOutput(
            sequence=sequence,
            text_length=inputs.input_ids.shape[1],
            attentions=tuple(captured) if output_attentions else None,
        )

    def set_attention(self, mode: str, threshold: float = 0.0, window: int | None = None) -> None:
        """Switch every layer to ``mode`` ("full" | "threshold" | "local"); weights are unchanged."""
        if mode not in _attention.ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {_attention.ATTENTION_MODES}, got {mode!r}")
        if mode == "local" and (window is None or window < 1):
            raise ValueError("local attention needs a window >= 1")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.config.attention_mode = mode
        self.config.attention_threshold = float(threshold)
        self.config.local_window = window

    # ----------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path, tokenizer=None) -> None:
        """Write ``model.safetensors``, ``config.json`` and the tokenizer files into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
        with atomic_path(directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path, **config_overrides) -> "TbkinModel":
        """Load a directory written by :meth:`save_pretrained`; ``config_overrides`` set config fields."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise CheckpointError(f"{directory}: missing {name} (not a TBKIN checkpoint)")
        config = load_model_config(directory / CONFIG_NAME, **config_overrides)
        tokenizer = load_tokenizer(directory) if (directory / "tokenizer_config.json").is_file() else None
        model = cls(config, tokenizer=tokenizer)
        state = load_file(str(directory / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{directory / WEIGHTS_NAME} does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        return model

    @classmethod
    def from_bert(
        cls,
        bert_dir: str | Path,
        num_layers: int,
        keep_piece_ids: list[int] | None = None,
        tokenizer=None,
        encoder_init: str = "bert",
        hidden_size: int | None = None,
        num_attention_heads: int | None = None,
        intermediate_size: int | None = None,
        **config_fields,
    ) -> "TbkinModel":
        """Initialise text embeddings and the first ``num_layers`` blocks from a HF BERT directory.

        ``keep_piece_ids`` (from :func:`tbkin.model.tokenization.prune_tokenizer`) selects the
        word-embedding rows to keep; ``config_fields`` set the region / attention fields.
        Region embeddings and anything not in the checkpoint start fresh.
        ``encoder_init="random"`` copies only the text embeddings and leaves the blocks
        at BERT's random initialisation (an ablation of the checkpoint's layers).
        ``hidden_size`` / ``num_attention_heads`` / ``intermediate_size`` (``None`` = the
        checkpoint's) resize the fresh blocks and are only allowed with ``encoder_init="random"``;
        a hidden size other than the checkpoint's leaves the text embeddings fresh too.
        """
        if encoder_init not in ENCODER_INITS:
            raise CheckpointError(f"model.encoder_init must be one of {ENCODER_INITS}, got {encoder_init!r}")
        bert_dir = Path(bert_dir)
        bert_config = BertConfig.from_pretrained(str(bert_dir))
        if num_layers > bert_config.num_hidden_layers:
            raise CheckpointError(
                f"{bert_dir} has {bert_config.num_hidden_layers} layers; model.num_layers={num_layers} is too many"
            )
        base = {k: v for k, v in bert_config.to_dict().items() if k in _bert_field_names()}
        base.update(num_hidden_layers=num_layers)
        if keep_piece_ids is not None:
            base.update(vocab_size=len(keep_piece_ids))
        sizes = {k: v for k, v in (("hidden_size", hidden_size), ("num_attention_heads", num_attention_heads),
                                   ("intermediate_size", intermediate_size)) if v is not None}
        if sizes and encoder_init != "random":
            raise CheckpointError(f"{sorted(sizes)} can only be changed with encoder_init='random'")
        base.update(sizes)
        base.update(config_fields)
        model = cls(TbkinConfig(**base), tokenizer=tokenizer)
        if base["hidden_size"] != bert_config.hidden_size:
            model.region_embeddings.match_scale(model.embeddings.LayerNorm)
            return model  # nothing of the checkpoint fits: fresh text embeddings and blocks

        state = _load_bert_state(bert_dir)
        if keep_piece_ids is not None:
            key = "embeddings.word_embeddings.weight"
            state[key] = state[key][torch.as_tensor(keep_piece_ids)]
        copy_layers = encoder_init == "bert"
        copied = ("embeddings.", "encoder.") if copy_layers else ("embeddings.",)
        wanted = {k: v for k, v in state.items()
                  if k.startswith("embeddings.") or (copy_layers and _layer_index(k) < num_layers)}
        wanted.pop("embeddings.position_ids", None)
        missing, unexpected = model.load_state_dict(wanted, strict=False)
        not_loaded = [k for k in missing if k.startswith(copied)]
        if not_loaded or unexpected:
            raise CheckpointError(f"{bert_dir}: BERT weights do not fit: missing {not_loaded[:5]}, unexpected {unexpected[:5]}")
        model.region_embeddings.match_scale(model.embeddings.LayerNorm)
        return model


def _bert_field_names() -> set[str]:
    return set(BertConfig().to_dict()) - {"transformers_version", "model_type"}


def _layer_index(key: str) -> int:
    """``encoder.layer.3.…`` -> 3; any other key -> a huge number (not a layer)."""
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "encoder" and parts[1] == "layer":
        return int(parts[2])
    return 1 << 30


def _load_bert_state(bert_dir: Path) -> dict[str, torch.Tensor]:
    path = bert_dir / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{bert_dir}: no {WEIGHTS_NAME} (only safetensors BERT checkpoints are read)")
    state = load_file(str(path))
    # BertForPreTraining / BertForMaskedLM checkpoints prefix the backbone with "bert.".
    if any(k.startswith("bert.") for k in state):
        state = {k[len("bert.") :]: v for k, v in state.items() if k.startswith("bert.")}
    return state


def load_model_config(path: str | Path, **overrides) -> TbkinConfig:
    """Read a TBKIN model's ``config.json`` and apply ``overrides``."""
    data = json.loads(Path(path).read_text())
    data.pop("transformers_version", None)
    data.pop("model_type", None)
    data.pop("max_regions", None)  # written by older versions, never read
    data.update(overrides)
    try:
        return TbkinConfig(**data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid TBKIN config: {exc}") from None


class TbkinPretrainingHeads(nn.Module):
    """MLM (decoder tied to the word embedding), region feature regression, region label CE, ITM."""

    def __init__(self, config: TbkinConfig):
        super().__init__()
        self.mlm_transform = BertPredictionHeadTransform(config)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.region_transform = BertPredictionHeadTransform(config)
        self.region_feature = nn.Linear(config.hidden_size, config.region_feature_dim)
        self.region_label = nn.Linear(config.hidden_size, config.num_region_labels)
        self.itm = nn.Linear(config.hidden_size, 2)
        init_weights(self, config.initializer_range)

    def mlm_logits(self, hidden: torch.Tensor, word_embedding: torch.Tensor) -> torch.Tensor:
        """hidden [N, H] of masked text positions, word embedding [V, H] -> logits [N, V]."""
        return nn.functional.linear(self.mlm_transform(hidden), word_embedding, self.mlm_bias)

    def region_outputs(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [N, H] of masked regions -> (features [N, D], label logits [N, L])."""
        transformed = self.region_transform(hidden)
        return self.region_feature(transformed), self.region_label(transformed)

    def itm_logits(self, cls: torch.Tensor) -> torch.Tensor:
        """[CLS] [B, H] -> [B, 2] (index 1 = image and text match)."""
        return self.itm(cls)


PRETRAINING_HEADS_NAME = "pretraining_heads.safetensors"


def load_pretraining_heads(directory: str | Path, config: TbkinConfig) -> TbkinPretrainingHeads:
    """The :class:`TbkinPretrainingHeads` saved beside a pretrained model (``pretraining_heads.safetensors``).

    The MLM decoder is tied to the model's word embedding, so only the heads' own
    weights are in the file; ``config`` is the model's (it sets every head's size).
    """
    path = Path(directory) / PRETRAINING_HEADS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (pretraining heads are written by `tbkin pretrain`)")
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None
    heads = TbkinPretrainingHeads(config)
    try:
        missing, unexpected = heads.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise CheckpointError(f"{path} does not match the model config: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the pretraining heads: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return heads


def save_pretraining_heads(directory: str | Path, heads: TbkinPretrainingHeads) -> None:
    """Write ``pretraining_heads.safetensors`` (read back by :func:`load_pretraining_heads`)."""
    with atomic_path(Path(directory) / PRETRAINING_HEADS_NAME) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}, str(tmp))
