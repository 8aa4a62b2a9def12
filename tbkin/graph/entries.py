"""Knowledge entries: one per anchor, merging the paper's three sub-graphs.

An anchor is a vertex with at least one cross-modal edge (text objects matched
to a region, regions matched to a text object; attribute and relation words
never have one). Its entry lists, besides the anchor itself (role ``anchor``,
similarity 1):

* ``intra``: its neighbours of the same modality, similarity = the normalised
  intra edge weight;
* ``cross``: its cross-modal neighbours, similarity = the cross edge weight;
* ``cross_intra``: the same-modality neighbours of those cross-modal neighbours.
  They have no edge to the anchor, so their similarity is derived along the path
  anchor -> bridge -> member as ``cross(anchor, bridge) * intra(bridge, member)``,
  maximised over bridges. A vertex that is already a ``cross`` member is not
  repeated as ``cross_intra``.

Entries are numbered within a pair in (modality, vertex) order: image anchors
first, by region index, then text anchors by token index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tbkin.graph.edges import CROSS, EdgeArrays, ragged_arange

ANCHOR, INTRA, CROSS_ROLE, CROSS_INTRA = 0, 1, 2, 3
ROLE_NAMES = ("anchor", "intra", "cross", "cross_intra")

# Limits of one batch (checked by the caller): pairs and vertex indices.
MAX_BATCH_PAIRS = 1 << 20
MAX_VERTEX_INDEX = 1 << 16


@dataclass
class EntryArrays:
    """One row per (pair, entry, member); ``pair`` is the batch-local pair index."""

    pair: np.ndarray             # int64
    entry: np.ndarray            # int32
    anchor_modality: np.ndarray  # int8
    anchor: np.ndarray           # int32
    member_modality: np.ndarray  # int8
    member: np.ndarray           # int32
    role: np.ndarray             # int8
    similarity: np.ndarray       # float32

    def __len__(self) -> int:
        return len(self.pair)


class _VertexIds:
    """Dense ids of a batch's vertices: pair * 2V + modality * V + index (V = largest index + 1)."""

    def __init__(self, edges: EdgeArrays):
        self.width = int(max(edges.src.max(initial=0), edges.dst.max(initial=0))) + 1
        self.per_pair = 2 * self.width
        self.count = (int(edges.pair.max(initial=0)) + 1) * self.per_pair

    def of(self, pair, modality, index) -> np.ndarray:
        return pair * self.per_pair + modality.astype(np.int64) * self.width + index.astype(np.int64)

    def split(self, vertex: np.ndarray):
        pair, local = np.divmod(vertex, self.per_pair)
        modality, index = np.divmod(local, self.width)
        return pair, modality.astype(np.int8), index.astype(np.int32)


def knowledge_entries(edges: EdgeArrays) -> EntryArrays:
    """All knowledge entries of the pairs in ``edges``."""
    ids = _VertexIds(edges)
    src = ids.of(edges.pair, edges.src_modality, edges.src)
    dst = ids.of(edges.pair, edges.dst_modality, edges.dst)
    is_cross = edges.kind == CROSS
    is_intra = ~is_cross
    # Directed views of the undirected edges.
    intra_from = np.concatenate([src[is_intra], dst[is_intra]])
    intra_to = np.concatenate([dst[is_intra], src[is_intra]])
    intra_w = np.concatenate([edges.weight[is_intra], edges.weight[is_intra]])
    cross_from = np.concatenate([src[is_cross], dst[is_cross]])
    cross_to = np.concatenate([dst[is_cross], src[is_cross]])
    cross_w = np.concatenate([edges.weight[is_cross], edges.weight[is_cross]])

    is_anchor = np.zeros(ids.count, bool)
    is_anchor[cross_from] = True
    anchors = np.flatnonzero(is_anchor)
    # (a) the anchor's own intra neighbours
    own = is_anchor[intra_from]
    a_anchor, a_member, a_sim = intra_from[own], intra_to[own], intra_w[own]
    # (c) intra neighbours of the anchor's cross neighbours: join cross_to == intra_from
    order = np.argsort(intra_from, kind="stable")
    fan_of_vertex = np.bincount(intra_from, minlength=ids.count)
    start_of_vertex = np.cumsum(fan_of_vertex) - fan_of_vertex
    fan = fan_of_vertex[cross_to]
    bridge = np.repeat(np.arange(len(cross_to)), fan)
    pick = order[np.repeat(start_of_vertex[cross_to], fan) + ragged_arange(fan)]
    c_anchor = cross_from[bridge]
    c_sim = cross_w[bridge] * intra_w[pick]
    # best path per (anchor, member); drop members that are direct cross neighbours
    c_key = c_anchor * ids.per_pair + intra_to[pick] % ids.per_pair
    by_key = np.argsort(c_key)
    c_key = c_key[by_key]
    starts = np.flatnonzero(np.r_[True, c_key[1:] != c_key[:-1]]) if len(c_key) else np.zeros(0, np.int64)
    c_sim = np.maximum.reduceat(c_sim[by_key], starts) if len(starts) else c_sim
    c_key = c_key[starts]
    direct = np.sort(cross_from * ids.per_pair + cross_to % ids.per_pair)
    keep = ~_member_of_sorted(c_key, direct)
    c_key, c_sim = c_key[keep], c_sim[keep]
    c_anchor = c_key // ids.per_pair
    c_member = (c_anchor // ids.per_pair) * ids.per_pair + c_key % ids.per_pair

    anchor_col = np.concatenate([anchors, a_anchor, cross_from, c_anchor])
    member_col = np.concatenate([anchors, a_member, cross_to, c_member])
    role = np.concatenate([
        np.full(len(anchors), ANCHOR, np.int8), np.full(len(a_anchor), INTRA, np.int8),
        np.full(len(cross_from), CROSS_ROLE, np.int8), np.full(len(c_anchor), CROSS_INTRA, np.int8),
    ])
    sim = np.concatenate([np.ones(len(anchors), np.float32), a_sim, cross_w, c_sim]).astype(np.float32)
    # rows ordered by (anchor, role, member) through one int64 key
    order = np.argsort((anchor_col * 4 + role) * ids.per_pair + member_col % ids.per_pair)
    anchor_col, member_col, role, sim = anchor_col[order], member_col[order], role[order], sim[order]

    pair, anchor_modality, anchor_index = ids.split(anchor_col)
    _, member_modality, member_index = ids.split(member_col)
    # entry = rank of the anchor within its pair (rows are grouped by anchor, pairs ascending)
    new_anchor = np.r_[True, anchor_col[1:] != anchor_col[:-1]] if len(anchor_col) else np.zeros(0, bool)
    anchor_rank = np.cumsum(new_anchor) - 1
    new_pair = np.r_[True, pair[1:] != pair[:-1]] if len(pair) else np.zeros(0, bool)
    first_rank_of_pair = np.maximum.accumulate(np.where(new_pair, anchor_rank, 0)) if len(pair) else anchor_rank
    entry = (anchor_rank - first_rank_of_pair).astype(np.int32)
    return EntryArrays(pair, entry, anchor_modality, anchor_index, member_modality, member_index, role, sim)


def _member_of_sorted(values: np.ndarray, sorted_table: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted table, by binary search (faster than hashing here)."""
    if len(sorted_table) == 0:
        return np.zeros(len(values), bool)
    pos = np.minimum(np.searchsorted(sorted_table, values), len(sorted_table) - 1)
    return sorted_table[pos] == values
