"""Pretraining: MLM, MRM, structural knowledge masking (SKM) and ITM on image captions.

``tbkin pretrain --parses P --features F --entries E --out-dir D [settings]`` writes
``D/model.safetensors`` + ``config.json`` + tokenizer files (a :class:`TbkinModel`
that fine-tuning loads with ``TbkinModel.from_pretrained(D)``), ``D/pretraining_heads.safetensors``
(the MLM / MRM / ITM heads, which the grounding probe reads), ``D/run.json`` (settings,
precision, steps, seconds, samples/s) and ``D/log.jsonl`` (one record per ``log_every``
steps: step, lr, loss, mlm, mrm, skm, itm, samples_per_s, data_share). Training runs
in the shared loop of :mod:`tbkin.train.loop`, with its state in ``D/state/``;
rerunning the same command after an interruption resumes from the last checkpoint. A
checkpoint written with different settings is discarded, not resumed.

Corpus: the caption records of the training split (``source == "caption"`` rows of
``parses.parquet``; pair id = row index, as in the knowledge-entry Parquet). Each step
draws ``batch_size`` captions (spread over the processes); a share
``itm_negative_ratio`` of them is paired with a random other image (ITM label 0).
Every pair is masked alike (so ITM cannot tell a mismatched pair by its lack of
masks), but only matched pairs have masking losses. Masking:

* SKM on one knowledge entry of the pair, drawn uniformly (none if the pair has no
  entry); text vertices are parse tokens, mapped to word pieces by char offsets;
* MLM on 15% of the remaining word pieces, MRM on 15% of the remaining regions.

Masked words use 80/10/10; masked regions have their feature zeroed. Losses: MLM and
SKM-text = CE over word pieces; MRM and SKM-region = SmoothL1 feature regression +
CE over the detector's labels; ITM = CE on [CLS]. Each is averaged over its own
positions; the total is their weighted sum (``task_weights``).

Determinism: batch ``s`` on rank ``r`` is drawn from a generator seeded by
``derive_seed(seed, s, r)``, and the loop reseeds dropout from the same function every
step, so a CPU run is reproducible and a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from tbkin.atomic import write_json
from tbkin.errors import TbkinError
from tbkin.features.hdf5 import RegionFeatureReader
from tbkin.model import masking
from tbkin.model.modeling_tbkin import TbkinInputs, TbkinModel, TbkinPretrainingHeads, save_pretraining_heads
from tbkin.model.tokenization import load_tokenizer, pieces_in_span, prune_tokenizer, resolve_bert_path
from tbkin.config import settings_from_json
from tbkin.train.data import EncodedText, RegionTensors, TextEncoder, collate, leave_out_skipped_images
from tbkin.train.loop import (
    DistributedContext,
    LoopSettings,
    cleanup_distributed,
    derive_seed,
    epoch_order,
    setup_distributed,
    train_loop,
    unwrap,
)

log = logging.getLogger(__name__)

TASKS = ("mlm", "mrm", "skm", "itm")


class PretrainDataError(TbkinError):
    """Pretraining inputs (parses, features, entries) are missing or do not fit together."""


@dataclass
class PretrainSettings:
    """Every value the pretraining step reads from the config (``model`` + ``pretrain`` + seed)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 30
    task_weights: dict = field(default_factory=lambda: {t: 1.0 for t in TASKS})
    itm_negative_ratio: float = 0.5
    mask_prob: float = 0.15
    log_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0
    precision: str = "auto"
    bert_path: str | None = None
    num_layers: int = 4
    encoder_init: str = "bert"
    hidden_size: int | None = None          # None = the checkpoint's (sizes only with encoder_init random)
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    max_text_len: int = 20
    prune_vocab: bool = True


# ---------------------------------------------------------------------------- data
@dataclass
class CaptionRecord:
    pair_id: int
    image_id: int
    text: EncodedText
    token_pieces: list[list[int]]       # parse token index -> word-piece positions
    entries: list[masking.EntryMembers]


@dataclass
class PretrainBatch:
    """Masked inputs and the targets of every task; -100 / False mark 'no target'."""

    inputs: TbkinInputs
    mlm_labels: torch.Tensor          # [B, T] long
    skm_text_labels: torch.Tensor     # [B, T] long
    mrm_regions: torch.Tensor         # [B, M] bool
    skm_regions: torch.Tensor         # [B, M] bool
    region_targets: torch.Tensor      # [B, M, D] original features
    region_label_targets: torch.Tensor  # [B, M] long (-1 = padding)
    itm_labels: torch.Tensor          # [B] long, 1 = matched

    def to(self, device) -> "PretrainBatch":
        moved = {k: getattr(self, k).to(device, non_blocking=True) for k in self.__dataclass_fields__ if k != "inputs"}
        return PretrainBatch(inputs=self.inputs.to(device, non_blocking=True), **moved)


def read_caption_records(parses_path: str | Path, entries_path: str | Path | None, encoder: TextEncoder,
                         store: RegionFeatureReader):
    """Caption rows of ``parses.parquet`` with their word pieces and knowledge entries.

    Captions of images that feature extraction skipped as unreadable are left out (and
    counted in the log); pair ids stay the parses' row indices."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(parses_path, columns=["source", "image_id", "text", "tokens", "token_starts"]).to_pylist()
    except (OSError, ValueError) as exc:
        raise PretrainDataError(f"cannot read text parses {parses_path}: {exc}") from None
    captions = [(pair_id, row) for pair_id, row in enumerate(table) if row["source"] == "caption"]
    captions, _ = leave_out_skipped_images(captions, lambda c: int(c[1]["image_id"]), store, "captions", parses_path)
    entries_by_pair: dict[int, list[dict]] = {}
    if entries_path is not None:
        import pyarrow.compute as pc

        try:
            entries = pq.read_table(entries_path)
        except (OSError, ValueError) as exc:
            raise PretrainDataError(f"cannot read knowledge entries {entries_path}: {exc}") from None
        caption_ids = pa.array([pair_id for pair_id, _ in captions], type=pa.int64())
        for row in entries.filter(pc.is_in(entries["pair_id"], value_set=caption_ids)).to_pylist():
            entries_by_pair.setdefault(int(row["pair_id"]), []).append(row)
    missing = sorted(i for i in {int(r["image_id"]) for _, r in captions} if i not in store)
    if missing:
        raise PretrainDataError(f"{parses_path}: {len(missing)} caption images have no region features (e.g. {missing[:3]})")
    if not captions:
        raise PretrainDataError(f"{parses_path}: no caption records to pretrain on")
    encoded = encoder.encode_many([row["text"] for _, row in captions])
    records = []
    for (pair_id, row), text in zip(captions, encoded):
        token_pieces = [
            pieces_in_span(text.offsets, start, start + len(token))
            for token, start in zip(row["tokens"], row["token_starts"])
        ]
        records.append(
            CaptionRecord(
                pair_id=pair_id,
                image_id=int(row["image_id"]),
                text=text,
                token_pieces=token_pieces,
                entries=masking.entries_from_rows(entries_by_pair.get(pair_id, [])),
            )
        )
    return records


class PretrainBatches:
    """Builds the batch of any (step, rank) from the in-memory corpus."""

    def __init__(self, records: list[CaptionRecord], store: RegionFeatureReader, tokenizer, settings: PretrainSettings, world_size: int = 1):
        if settings.batch_size % world_size:
            raise PretrainDataError(f"pretrain.batch_size={settings.batch_size} is not divisible by {world_size} processes")
        self.records = records
        self.store = store
        self.settings = settings
        self.world_size = world_size
        self.per_rank = settings.batch_size // world_size
        self.image_ids = sorted({r.image_id for r in records})
        self.mask_token_id = tokenizer.mask_token_id
        special = set(tokenizer.all_special_ids)
        self.random_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
        self.special_ids = torch.tensor(sorted(special))
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(len(self.records), self.settings.seed, epoch)}
        return self._orders[epoch]

    def indices(self, step: int, rank: int) -> list[int]:
        """Record indices of this rank's share of the global batch ``step`` (epochs reshuffled)."""
        n, size = len(self.records), self.settings.batch_size
        out = []
        for k in range(rank * self.per_rank, (rank + 1) * self.per_rank):
            position = step * size + k
            out.append(int(self._order(position // n)[position % n]))
        return out

    def batch(self, step: int, rank: int = 0) -> PretrainBatch:
        s = self.settings
        g = torch.Generator().manual_seed(derive_seed(s.seed, step, rank))
        records = [self.records[i] for i in self.indices(step, rank)]
        matched = torch.rand(len(records), generator=g) >= s.itm_negative_ratio
        regions: list[RegionTensors] = []
        for record, is_match in zip(records, matched.tolist()):
            image_id = record.image_id
            if not is_match:
                image_id = self._other_image(image_id, g)
            regions.append(RegionTensors.from_regions(self.store.get(image_id)))
        inputs = collate([r.text for r in records], regions)

        # Every pair is masked the same way, mismatched ones included: otherwise "nothing is
        # masked" would tell ITM the pair is mismatched. Only matched pairs get masking losses.
        # SKM selections, as word-piece positions and region indices:
        length, num_regions = inputs.input_ids.shape[1], inputs.region_mask.shape[1]
        skm_text = torch.zeros(inputs.input_ids.shape, dtype=torch.bool)
        skm_regions = torch.zeros(inputs.region_mask.shape, dtype=torch.bool)
        for b, record in enumerate(records):
            if not record.entries:
                continue
            entry = record.entries[int(torch.randint(len(record.entries), (1,), generator=g))]
            chosen = masking.sample_entry(entry, g)
            for token in chosen.text_tokens:
                if token < len(record.token_pieces):
                    skm_text[b, [p for p in record.token_pieces[token] if p < length]] = True
            for region in chosen.regions:
                if region < num_regions:
                    skm_regions[b, region] = True
        skm_text &= inputs.text_mask & ~torch.isin(inputs.input_ids, self.special_ids)
        skm_regions &= inputs.region_mask

        word_candidates = inputs.text_mask & ~torch.isin(inputs.input_ids, self.special_ids) & ~skm_text
        mlm = masking.choose_words(word_candidates, s.mask_prob, g)
        mrm = masking.choose_regions(inputs.region_mask & ~skm_regions, s.mask_prob, g)

        corrupted, labels = masking.corrupt_words(inputs.input_ids, mlm | skm_text, self.mask_token_id, self.random_ids, g)
        ignore = torch.full_like(labels, masking.IGNORE_INDEX)
        region_targets = inputs.region_features
        label_targets = torch.stack([r.labels[:num_regions] for r in regions])
        masked_features = region_targets.masked_fill((mrm | skm_regions)[..., None], 0.0)
        masked_inputs = TbkinInputs(
            input_ids=corrupted,
            text_mask=inputs.text_mask,
            region_features=masked_features,
            region_positions=inputs.region_positions,
            region_mask=inputs.region_mask,
        )
        positives = matched[:, None]
        return PretrainBatch(
            inputs=masked_inputs,
            mlm_labels=torch.where(mlm & positives, labels, ignore),
            skm_text_labels=torch.where(skm_text & positives, labels, ignore),
            mrm_regions=mrm & positives,
            skm_regions=skm_regions & positives,
            region_targets=region_targets,
            region_label_targets=label_targets,
            itm_labels=matched.long(),
        )

    def _other_image(self, image_id: int, g: torch.Generator) -> int:
        if len(self.image_ids) < 2:
            raise PretrainDataError("ITM negatives need at least two training images")
        while True:
            other = self.image_ids[int(torch.randint(len(self.image_ids), (1,), generator=g))]
            if other != image_id:
                return other


# --------------------------------------------------------------------------- model
class PretrainingModel(nn.Module):
    """TBKIN backbone + pretraining heads; ``forward(batch)`` returns every task's loss."""

    def __init__(self, model: TbkinModel):
        super().__init__()
        self.tbkin = model
        self.heads = TbkinPretrainingHeads(model.config)

    def forward(self, batch: PretrainBatch) -> dict[str, torch.Tensor]:
        out = self.tbkin(batch.inputs)
        # Heads run on every position (cheap at these sizes) and losses are masked means, so
        # every parameter gets a gradient each step, as DDP expects.
        text_logits = self.heads.mlm_logits(out.text, self.tbkin.embeddings.word_embeddings.weight).float()
        feature_pred, label_logits = self.heads.region_outputs(out.regions)
        itm_logits = self.heads.itm_logits(out.cls).float()

        word_ce = nn.functional.cross_entropy(
            text_logits.flatten(0, 1),
            torch.where(batch.mlm_labels >= 0, batch.mlm_labels, batch.skm_text_labels).flatten(),
            ignore_index=masking.IGNORE_INDEX,
            reduction="none",
        ).view(batch.mlm_labels.shape)
        feature_l1 = nn.functional.smooth_l1_loss(
            feature_pred.float(), batch.region_targets.float(), reduction="none"
        ).mean(-1)
        label_ce = nn.functional.cross_entropy(
            label_logits.float().flatten(0, 1), batch.region_label_targets.clamp(min=0).flatten(), reduction="none"
        ).view(batch.region_label_targets.shape)
        has_label = batch.region_label_targets >= 0

        def masked_mean(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
            return (values * where).sum() / where.sum().clamp(min=1)

        mlm_positions = batch.mlm_labels >= 0
        skm_positions = batch.skm_text_labels >= 0
        losses = {
            "mlm": masked_mean(word_ce, mlm_positions),
            "mrm": masked_mean(feature_l1, batch.mrm_regions) + masked_mean(label_ce, batch.mrm_regions & has_label),
            "skm": masked_mean(word_ce, skm_positions)
            + masked_mean(feature_l1, batch.skm_regions)
            + masked_mean(label_ce, batch.skm_regions & has_label),
            "itm": nn.functional.cross_entropy(itm_logits, batch.itm_labels),
        }
        return losses


# ---------------------------------------------------------------------------- loop
def build(settings: PretrainSettings, parses: str, features: str, entries: str | None, world_size: int = 1):
    """Tokenizer, corpus, batch builder and model, all from the inputs and settings."""
    bert_dir = resolve_bert_path(settings.bert_path)
    tokenizer = load_tokenizer(bert_dir)
    store = RegionFeatureReader(features, cache=True)
    keep_ids = None
    if settings.prune_vocab:
        import pyarrow.parquet as pq

        texts = pq.read_table(parses, columns=["text"]).column("text").to_pylist()
        tokenizer, keep_ids = prune_tokenizer(tokenizer, texts)
    encoder = TextEncoder(tokenizer, settings.max_text_len)
    records = read_caption_records(parses, entries, encoder, store)
    batches = PretrainBatches(records, store, tokenizer, settings, world_size)
    model = TbkinModel.from_bert(
        bert_dir,
        settings.num_layers,
        keep_piece_ids=keep_ids,
        encoder_init=settings.encoder_init,
        hidden_size=settings.hidden_size,
        num_attention_heads=settings.num_attention_heads,
        intermediate_size=settings.intermediate_size,
        tokenizer=tokenizer,
        region_feature_dim=store.feature_dim,
        num_region_labels=max(1, len(store.label_names)),
        max_text_len=settings.max_text_len,
    )
    model.region_embeddings.set_feature_statistics(*store.feature_statistics())
    return tokenizer, batches, PretrainingModel(model)


def train(settings: PretrainSettings, parses: str, features: str, entries: str | None, out_dir: str | Path,
          device: str | None = None) -> dict:
    """Run (or resume) pretraining; returns the last logged record."""
    ctx = setup_distributed(device)
    try:
        return _train(ctx, settings, parses, features, entries, Path(out_dir))
    finally:
        cleanup_distributed()


def _settings_fingerprint(settings: PretrainSettings) -> dict:
    fingerprint = asdict(settings)
    fingerprint.pop("log_every")
    fingerprint.pop("checkpoint_every")
    return fingerprint


def _train(ctx: DistributedContext, s: PretrainSettings, parses, features, entries, out_dir: Path) -> dict:
    torch.manual_seed(s.seed)
    tokenizer, batches, module = build(s, parses, features, entries, ctx.world_size)
    state_dir = out_dir / "state"
    loop = LoopSettings(steps=s.steps, lr=s.lr, warmup_steps=s.warmup_steps, seed=s.seed, precision=s.precision,
                        log_every=s.log_every, checkpoint_every=s.checkpoint_every, samples_per_step=s.batch_size,
                        task_weights=dict(s.task_weights))
    result = train_loop(module, batches.batch, lambda model, batch: model(batch), loop, ctx, state_dir,
                        state_dir / "log.jsonl", desc="pretrain", fingerprint=_settings_fingerprint(s))
    if ctx.is_main:
        shutil.copyfile(state_dir / "log.jsonl", out_dir / "log.jsonl.partial")
        (out_dir / "log.jsonl.partial").replace(out_dir / "log.jsonl")
        trained = unwrap(module)
        save_pretraining_heads(out_dir, trained.heads)
        write_json(out_dir / "run.json", {"task": "pretrain", "settings": asdict(s), "world_size": ctx.world_size,
                                          **result.stats()})
        trained.tbkin.save_pretrained(out_dir, tokenizer=tokenizer)  # model.safetensors last: marks completion
    if ctx.distributed:
        torch.distributed.barrier()
    return {**result.last_record, "precision": result.precision}


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parses", required=True, help="train split parses.parquet")
    parser.add_argument("--features", required=True, help="train split region features HDF5")
    parser.add_argument("--entries", help="train split knowledge entries Parquet (omit: no SKM)")
    parser.add_argument("--out-dir", required=True, help="checkpoint folder (model, config, tokenizer, log)")
    parser.add_argument("--settings", default="{}",
                        help="one JSON object with PretrainSettings' fields: the config's `model` and "
                             "`pretrain` sections, seed and precision; missing fields take their defaults")
    parser.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_json(PretrainSettings, args.settings, "pretrain --settings")
    record = train(settings, args.parses, args.features, args.entries, args.out_dir, args.device)
    if record:
        log.info("last losses: %s", json.dumps(record))
    return 0
