"""Word vectors for cross-modal edges; CLI ``word-vectors``.

By default a gensim Word2Vec model is trained on the dataset's own text (the
lower-cased spaCy tokens of every parsed text, each distinct text once, since a
duplicated question would only reweight the corpus). With ``text.word_vectors``
set, a GloVe (no header) or word2vec (text with header, or ``.bin``) file is
loaded instead, or, for a folder holding a BERT checkpoint (``vocab.txt`` +
``model.safetensors``), the input embeddings of its whole-word vocabulary entries
(an offline source of pretrained vectors). Either way the result is saved as
gensim ``KeyedVectors``.

Vectors trained on a small templated corpus cannot tell apart words used in the
same contexts: on `shapes` every shape name is ~0.95 similar to every other,
because captions place them in identical frames. Pretrained vectors do not have
that problem (README: Unified scene graph).

Similarity of two phrases (a region label such as "traffic light", an object
lemma) is the cosine of their mean word vectors; a phrase with no known word has
no vector, hence no similarity (NaN) and no cross edge.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow.parquet as pq

from tbkin.atomic import atomic_path
from tbkin.errors import TbkinError

log = logging.getLogger(__name__)


class WordVectorError(TbkinError):
    """A word-vector file is missing or unreadable."""


def corpus_from_parses(paths: Iterable[str | Path]) -> list[list[str]]:
    sentences: dict[tuple[str, ...], None] = {}
    for path in paths:
        table = pq.read_table(path, columns=["tokens"])
        for tokens in table.column("tokens").to_pylist():
            sentences.setdefault(tuple(t.lower() for t in tokens if t.strip()), None)
    return [list(s) for s in sentences if s]


def train_word2vec(sentences: Sequence[Sequence[str]], vector_size: int, epochs: int, seed: int):
    from gensim.models import Word2Vec

    if not sentences:
        raise WordVectorError("cannot train word vectors: the parsed texts hold no tokens")
    # workers=1 makes training deterministic for a given seed.
    model = Word2Vec(
        sentences=[list(s) for s in sentences], vector_size=vector_size, window=5, min_count=1,
        epochs=epochs, seed=seed, workers=1, sg=1,
    )
    return model.wv


def load_vector_file(path: str | Path):
    from gensim.models import KeyedVectors

    path = Path(path)
    if path.is_dir():
        return load_bert_input_embeddings(path)
    if not path.is_file():
        raise WordVectorError(f"word-vector file not found: {path} (config text.word_vectors)")
    try:
        if path.suffix == ".kv":
            return KeyedVectors.load(str(path))
        if path.suffix == ".bin":
            return KeyedVectors.load_word2vec_format(str(path), binary=True)
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline().split()
        has_header = len(first) == 2 and all(p.isdigit() for p in first)
        return KeyedVectors.load_word2vec_format(str(path), binary=False, no_header=not has_header)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise WordVectorError(f"cannot read word vectors from {path}: {exc}") from None


def load_bert_input_embeddings(folder: str | Path):
    """Word-piece input embeddings of a BERT checkpoint, restricted to whole lower-case words."""
    from gensim.models import KeyedVectors
    from safetensors import safe_open

    folder = Path(folder)
    vocab_path, weights_path = folder / "vocab.txt", folder / "model.safetensors"
    if not vocab_path.is_file() or not weights_path.is_file():
        raise WordVectorError(f"{folder}: a BERT checkpoint folder needs vocab.txt and model.safetensors")
    vocab = vocab_path.read_text(encoding="utf-8").split("\n")
    with safe_open(str(weights_path), framework="numpy") as weights:
        key = next((k for k in weights.keys() if k.endswith("word_embeddings.weight")), None)
        if key is None:
            raise WordVectorError(f"{weights_path}: no word_embeddings.weight tensor")
        matrix = weights.get_tensor(key)
    keep = [i for i, w in enumerate(vocab[: len(matrix)]) if w.isalpha() and w.islower()]
    kv = KeyedVectors(vector_size=matrix.shape[1])
    kv.add_vectors([vocab[i] for i in keep], matrix[keep].astype(np.float32))
    return kv


def save_vectors(kv, output: str | Path) -> None:
    with atomic_path(output, suffix=".kv") as tmp:
        kv.save(str(tmp), separately=[])  # one self-contained file, so the rename is atomic


def load_vectors(path: str | Path):
    from gensim.models import KeyedVectors

    try:
        return KeyedVectors.load(str(path))
    except (OSError, ValueError, EOFError) as exc:
        raise WordVectorError(f"cannot load word vectors {path}: {exc}") from None


def phrase_vectors(kv, phrases: Sequence[str]) -> np.ndarray:
    """Unit-length mean vector of each phrase's known words; NaN rows for unknown phrases."""
    out = np.full((len(phrases), kv.vector_size), np.nan, np.float32)
    for row, phrase in enumerate(phrases):
        words = [w for w in phrase.lower().replace("_", " ").split() if w in kv.key_to_index]
        if words:
            v = np.mean([kv[w] for w in words], axis=0)
            norm = np.linalg.norm(v)
            if norm > 0:
                out[row] = v / norm
    return out


def similarity_matrix(kv, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
    """Cosine similarity (len(left), len(right)); NaN where a phrase has no vector."""
    return phrase_vectors(kv, left) @ phrase_vectors(kv, right).T


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("parses", nargs="*", help="parses.parquet files whose tokens form the corpus")
    parser.add_argument("--vectors-file", default=None,
                        help="GloVe / word2vec file, or BERT checkpoint folder, to load instead of training")
    parser.add_argument("--vector-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="KeyedVectors file (.kv)")


def run(args: argparse.Namespace) -> int:
    if args.vectors_file:
        kv = load_vector_file(args.vectors_file)
        log.info("loaded %d vectors of dim %d from %s", len(kv.key_to_index), kv.vector_size, args.vectors_file)
    else:
        sentences = corpus_from_parses(args.parses)
        kv = train_word2vec(sentences, args.vector_size, args.epochs, args.seed)
        log.info("trained %d vectors of dim %d on %d distinct texts", len(kv.key_to_index), kv.vector_size, len(sentences))
    save_vectors(kv, args.output)
    return 0
