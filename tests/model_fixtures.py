"""Tiny fixtures for model and training tests: a random BERT folder and a shapes-like corpus.

``write_tiny_bert(folder)`` -> a 2-layer, 32-wide BERT with the packaged tokenizer;
``write_corpus(folder)`` -> features HDF5, parses.parquet and knowledge entries for a
dozen images (paths in a dict: parses, features, entries).
"""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tbkin.model.tokenization import default_bert_path

COLORS = ["red", "green", "blue"]
SHAPES = ["circle", "square", "triangle"]


def write_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide random BERT with the packaged checkpoint's tokenizer."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    BertModel(config).save_pretrained(str(folder))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        source = default_bert_path() / name
        if source.exists():
            (folder / name).write_bytes(source.read_bytes())
    return folder


def write_corpus(folder: Path, num_images: int = 12, num_regions: int = 4, feature_dim: int = 8,
                  captions_per_image: int = 2, seed: int = 0) -> dict:
    """Features HDF5 + parses + knowledge entries for a shapes-like corpus (tiny by default)."""
    from tbkin.features.hdf5 import RegionFeatureWriter

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parse_rows, entry_rows = [], []
    m, dim = num_regions, feature_dim
    with RegionFeatureWriter(folder / "train.h5", m, dim, SHAPES) as writer:
        for image_id in range(1, num_images + 1):
            k = int(rng.integers(2, m + 1))
            colors, shapes = rng.integers(0, 3, k), rng.integers(0, 3, k)
            feats = np.zeros((k, dim), np.float32)
            feats[np.arange(k), colors] = 1
            feats[np.arange(k), 3 + shapes] = 1
            feats += rng.normal(0, 0.05, feats.shape).astype(np.float32)
            x = rng.uniform(0, 60, (k, 2))
            boxes = np.concatenate([x, x + 30], axis=1).astype(np.float32)
            writer.append(image_id, 96, 96, boxes, np.ones(k, np.float32), shapes.astype(np.int32), feats)
            for caption in range(captions_per_image):
                a, b = rng.choice(k, 2, replace=False)
                text = f"a {COLORS[colors[a]]} {SHAPES[shapes[a]]} and a {COLORS[colors[b]]} {SHAPES[shapes[b]]}"
                tokens = text.split(" ")
                starts = [sum(len(t) + 1 for t in tokens[:i]) for i in range(len(tokens))]
                pair_id = len(parse_rows)
                parse_rows.append(dict(source="caption", record_id=pair_id, image_id=image_id, text=text,
                                       tokens=tokens, token_starts=starts))
                # anchor: the noun of the first object; intra: its colour; cross: its region
                entry = dict(pair_id=pair_id, image_id=image_id, entry=0, anchor_modality="text", anchor=2)
                entry_rows += [
                    {**entry, "member_modality": "text", "member": 2, "role": "anchor", "similarity": 1.0},
                    {**entry, "member_modality": "text", "member": 1, "role": "intra", "similarity": 0.8},
                    {**entry, "member_modality": "image", "member": int(a), "role": "cross", "similarity": 0.9},
                    {**entry, "member_modality": "image", "member": int(b), "role": "cross_intra", "similarity": 0.2},
                ]
            parse_rows.append(dict(source="question", record_id=10_000 + image_id, image_id=image_id,
                                   text="what color is the circle?", tokens=["what", "color", "is", "the", "circle", "?"],
                                   token_starts=[0, 5, 11, 14, 18, 24]))
    pq.write_table(pa.Table.from_pylist(parse_rows), folder / "parses.parquet")
    pq.write_table(pa.Table.from_pylist(entry_rows), folder / "entries.parquet")
    return {"parses": str(folder / "parses.parquet"), "features": str(folder / "train.h5"),
            "entries": str(folder / "entries.parquet")}
