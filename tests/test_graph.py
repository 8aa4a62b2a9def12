"""Unified scene graph edges, knowledge entries, build-graph, word vectors, inspect."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from gensim.models import KeyedVectors

from tbkin.features.hdf5 import RegionFeatureWriter
from tbkin.graph.build import GraphParams, build_graph
from tbkin.graph.edges import image_intra_edges, normalise_by_group, pairwise_iou, text_intra_edges
from tbkin.graph.inspect import format_tables, load_pair, draw_pair
from tbkin.graph.wordvec import (
    WordVectorError, load_vector_file, load_vectors, save_vectors, similarity_matrix, train_word2vec, vector_source,
)
from tbkin.text.parse_combine import join_parses, write_parses
from tbkin.text.records import TextRecords
from tbkin.text.scene_graph import (
    SceneAttribute, SceneObject, SceneRelation, TextSceneGraph, graphs_to_table,
)

LABELS = ["circle", "square", "star", "blob"]


def keyed_vectors():
    """circle ~ ring (0.8), square orthogonal, star orthogonal; 'blob' has no vector."""
    kv = KeyedVectors(vector_size=3)
    kv.add_vectors(["circle", "ring", "square", "star"],
                   np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1], [0, 1, 0]], np.float32))
    return kv


def sg(tokens, objects, attributes=(), relations=()):
    """A hand-made text scene graph: objects (name, token), attributes (object, word, token), ..."""
    text = " ".join(tokens)
    starts = list(np.cumsum([0] + [len(t) + 1 for t in tokens[:-1]])) if tokens else []
    return TextSceneGraph(
        text=text, tokens=list(tokens), token_starts=[int(s) for s in starts],
        objects=[SceneObject(n, t) for n, t in objects],
        attributes=[SceneAttribute(o, a, t) for o, a, t in attributes],
        relations=[SceneRelation(s, p, o, tuple(ts)) for s, p, o, ts in relations],
    )


RED_CIRCLE_LEFT_OF_SQUARE = sg(
    ["a", "red", "circle", "left", "of", "a", "square"],
    [("circle", 2), ("square", 6)], [(0, "red", 1)], [(0, "left of", 1, (3, 4))],
)


def write_parses_file(path, rows):
    """rows: (source, record_id, image_id, TextSceneGraph)."""
    rec = TextRecords()
    for source, rid, iid, g in rows:
        rec.add(source, rid, iid, g.text)
    distinct = {g.text: g for *_, g in rows}
    write_parses(join_parses(rec, [graphs_to_table(list(distinct.values()))]), path)


def write_features(path, images, m=4):
    """images: image_id -> list of (box, label, score)."""
    with RegionFeatureWriter(path, num_regions=m, feature_dim=2, label_names=LABELS) as writer:
        for image_id in sorted(images):
            regions = images[image_id]
            boxes = np.array([r[0] for r in regions], np.float32).reshape(-1, 4)
            writer.append(image_id, 100, 100, boxes, np.array([r[2] for r in regions], np.float32),
                          np.array([r[1] for r in regions], np.int32), np.zeros((len(regions), 2), np.float32))


def test_iou_edges_only_for_overlap_and_normalised_per_image():
    boxes = np.array([[[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10], [50, 50, 60, 60]]], np.float32)
    iou = pairwise_iou(boxes)[0]
    assert iou[0, 1] == pytest.approx(1 / 3) and iou[0, 2] == 0  # touching boxes do not overlap
    image, i, j, w = image_intra_edges(boxes, np.array([4]))
    assert list(zip(i, j)) == [(0, 1), (1, 2)]  # IoU > 0 only, i < j
    assert w.max() == pytest.approx(1.0) and w[0] == pytest.approx(w[1])
    # padding rows never get edges even if they overlap
    image, i, j, w = image_intra_edges(boxes, np.array([1]))
    assert len(i) == 0


def test_normalisation_is_per_group_and_keeps_ratios():
    w = normalise_by_group(np.array([0, 0, 1, 1, 1]), np.array([2.0, 4.0, 10.0, 5.0, 1.0]))
    np.testing.assert_allclose(w, [0.5, 1.0, 1.0, 0.5, 0.1])
    pair, obj, word, weight = text_intra_edges(np.array([0, 0, 0]), np.array([2, 2, 6]), np.array([1, 1, 3]),
                                               np.array([30.0, 10.0, 60.0]))
    assert list(zip(obj, word)) == [(2, 1), (6, 3)]  # duplicate kept once, with its largest count
    np.testing.assert_allclose(weight, [0.5, 1.0])


@pytest.fixture
def built(tmp_path):
    kv = keyed_vectors()
    ring = sg(["a", "ring"], [("ring", 1)])
    blob_text = sg(["a", "blob"], [("blob", 1)])
    rows = [
        ("caption", 10, 1, RED_CIRCLE_LEFT_OF_SQUARE),  # pair 0
        ("question", 11, 1, sg([], [])),                 # pair 1: empty text
        ("question", 12, 1, sg(["what", "is", "it", "?"], [])),  # pair 2: no objects
        ("caption", 13, 2, RED_CIRCLE_LEFT_OF_SQUARE),  # pair 3: image without regions
        ("ref", 14, 1, RED_CIRCLE_LEFT_OF_SQUARE),      # refs are not pairs
        ("caption", 15, 1, ring),                        # pair 5: similar word, 0.8
        ("caption", 16, 1, blob_text),                   # pair 6: no vector for "blob"
        ("caption", 17, 3, RED_CIRCLE_LEFT_OF_SQUARE),  # pair 7: image missing from the features
        ("ref", 18, 1, sg(["a", "red", "circle"], [("circle", 2)], [(0, "red", 1)])),  # counted, not a pair
    ]
    parses = tmp_path / "parses.parquet"
    write_parses_file(parses, rows)
    features = tmp_path / "features.h5"
    write_features(features, {
        1: [([0, 0, 10, 10], 0, 0.9),   # circle, overlaps region 1
            ([5, 0, 15, 10], 1, 0.5),   # square, exactly at the confidence cut
            ([40, 40, 50, 50], 0, 0.49),  # circle below the cut
            ([80, 80, 90, 90], 3, 0.9)],  # blob: label without a vector
        2: [],
    })
    out = tmp_path / "graph"
    edges_path = out / "edges" / "split=train" / "part-0.parquet"
    entries_path = out / "entries" / "split=train" / "part-0.parquet"
    summary = build_graph(parses, [parses], features, kv, GraphParams(0.5, 0.5), edges_path, entries_path,
                          batch_size=3, progress=False)
    edges = pd.read_parquet(edges_path)
    entries = pd.read_parquet(entries_path)
    return dict(summary=summary, edges=edges, entries=entries, parses=parses, features=features,
                edges_path=edges_path, entries_path=entries_path, out=out, kv=kv)


def test_edges_of_a_pair(built):
    e = built["edges"]
    pair0 = e[e.pair_id == 0]
    image = pair0[pair0.kind == "image_intra"]
    assert list(zip(image.src, image.dst)) == [(0, 1)] and image.weight.iloc[0] == pytest.approx(1.0)
    text = pair0[pair0.kind == "text_intra"]
    assert set(zip(text.src, text.dst)) == {(2, 1), (2, 3), (6, 3)}  # circle-red, circle-left, square-left
    assert (text.src_modality == "text").all() and (text.weight <= 1).all() and text.weight.max() == 1
    cross = pair0[pair0.kind == "cross"]
    # region 0 (circle, 0.9) - circle; region 1 (square, score 0.5 = cut) - square;
    # region 2 (circle, 0.49) is below the cut; region 3 (blob) has no vector
    assert set(zip(cross.src, cross.dst)) == {(0, 2), (1, 6)}
    assert (cross.src_modality == "image").all() and (cross.dst_modality == "text").all()
    np.testing.assert_allclose(cross.weight, 1.0, rtol=1e-6)


def test_similarity_threshold(built, tmp_path):
    e = built["edges"]
    ring = e[(e.pair_id == 5) & (e.kind == "cross")]
    assert set(zip(ring.src, ring.dst)) == {(0, 1)} and ring.weight.iloc[0] == pytest.approx(0.8)
    strict = tmp_path / "strict"
    build_graph(built["parses"], [built["parses"]], built["features"], built["kv"], GraphParams(0.5, 0.9),
                strict / "e.parquet", strict / "n.parquet", progress=False)
    strict_edges = pd.read_parquet(strict / "e.parquet")
    assert not ((strict_edges.pair_id == 5) & (strict_edges.kind == "cross")).any()
    assert ((strict_edges.pair_id == 0) & (strict_edges.kind == "cross")).sum() == 2


def test_text_weights_from_dataset_counts(built):
    e = built["edges"]
    text = e[(e.pair_id == 0) & (e.kind == "text_intra")].set_index(["src", "dst"]).weight
    # counts over all records (refs included): circle-red 5, circle-left of 4, square-left of 4;
    # divided by the pair's largest count
    assert text[(2, 1)] == pytest.approx(1.0)
    assert text[(2, 3)] == pytest.approx(0.8) and text[(6, 3)] == pytest.approx(0.8)


def test_anchors_and_three_part_entries(built):
    n = built["entries"]
    pair0 = n[n.pair_id == 0]
    anchors = pair0[pair0.role == "anchor"]
    assert list(zip(anchors.anchor_modality, anchors.anchor)) == [("image", 0), ("image", 1), ("text", 2), ("text", 6)]
    assert list(anchors.entry) == [0, 1, 2, 3]
    # attribute and relation words are never anchors
    assert not ((pair0.anchor_modality == "text") & pair0.anchor.isin([1, 3, 4])).any()
    circle_word = pair0[(pair0.anchor_modality == "text") & (pair0.anchor == 2)]
    parts = {role: set(zip(g.member_modality, g.member)) for role, g in circle_word.groupby("role")}
    assert parts["anchor"] == {("text", 2)}
    assert parts["intra"] == {("text", 1), ("text", 3)}        # red, left
    assert parts["cross"] == {("image", 0)}                     # the circle region
    assert parts["cross_intra"] == {("image", 1)}               # region overlapping the circle region
    bridge = circle_word.set_index(["role", "member_modality", "member"]).similarity
    assert bridge[("cross_intra", "image", 1)] == pytest.approx(1.0 * 1.0)  # cross 1.0 x IoU weight 1.0
    region0 = pair0[(pair0.anchor_modality == "image") & (pair0.anchor == 0)]
    parts = {role: set(zip(g.member_modality, g.member)) for role, g in region0.groupby("role")}
    assert parts["intra"] == {("image", 1)} and parts["cross"] == {("text", 2)}
    assert parts["cross_intra"] == {("text", 1), ("text", 3)}
    sims = region0.set_index(["role", "member"]).similarity
    assert sims[("cross_intra", 1)] == pytest.approx(1.0) and sims[("cross_intra", 3)] == pytest.approx(0.8)
    assert (pair0.image_id == 1).all()


def test_no_entries_for_empty_text_no_objects_or_no_regions(built):
    n, e = built["entries"], built["edges"]
    for pair in (1, 2, 3, 6, 7):
        assert not (n.pair_id == pair).any()
    assert not ((e.pair_id == 3) & (e.kind != "text_intra")).any()  # no regions: text edges only
    # questions (pairs 1, 2) and refs (4) are fine-tuning data: pretraining reads captions only
    assert not e.pair_id.isin([1, 2, 4]).any()
    assert built["summary"]["pairs"] == 5 and built["summary"]["pairs_without_regions"] == 1


def test_batching_does_not_change_output(built, tmp_path):
    build_graph(built["parses"], [built["parses"]], built["features"], built["kv"], GraphParams(0.5, 0.5),
                tmp_path / "e.parquet", tmp_path / "n.parquet", batch_size=4096, progress=False)
    assert pq.read_table(tmp_path / "e.parquet").equals(pq.read_table(built["edges_path"]))
    assert pq.read_table(tmp_path / "n.parquet").equals(pq.read_table(built["entries_path"]))


def test_partitioned_read(built):
    entries = pd.read_parquet(built["out"] / "entries")
    assert list(entries.split.unique()) == ["train"]
    assert len(entries) == len(built["entries"])


def test_word2vec_and_vector_files(tmp_path):
    sentences = [["a", "red", "circle"], ["a", "blue", "square"]] * 20
    kv = train_word2vec(sentences, vector_size=8, epochs=2, seed=0)
    again = train_word2vec(sentences, vector_size=8, epochs=2, seed=0)
    np.testing.assert_array_equal(kv["circle"], again["circle"])
    sim = similarity_matrix(kv, ["circle", "traffic light"], ["circle", "red square"])
    assert sim[0, 0] == pytest.approx(1.0, abs=1e-5) and np.isnan(sim[1]).all() and np.isfinite(sim[0, 1])
    glove = tmp_path / "glove.txt"
    glove.write_text("circle 1 0\nring 0.6 0.8\n")
    vectors = load_vector_file(glove)
    assert similarity_matrix(vectors, ["circle"], ["ring"])[0, 0] == pytest.approx(0.6)
    w2v = tmp_path / "w2v.txt"
    w2v.write_text("2 2\ncircle 1 0\nring 0.6 0.8\n")
    assert load_vector_file(w2v).key_to_index.keys() == {"circle", "ring"}


def test_inspect(built, tmp_path):
    view = load_pair(built["parses"], built["features"], built["out"] / "edges", built["out"] / "entries", 0)
    table = format_tables(view)
    assert "object:circle" in table and "cross_intra" in table
    assert view.regions.anchor.tolist() == [True, True, False, False]
    png = tmp_path / "pair.png"
    draw_pair(view, None, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = load_pair(built["parses"], built["features"], built["edges_path"], built["entries_path"], 1)
    assert "(empty text)" in format_tables(empty)
    draw_pair(empty, None, tmp_path / "empty.png")


def test_bert_checkpoint_input_embeddings(tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "vocab.txt").write_text("[PAD]\n##ing\ncircle\nring\nRed\n")
    emb = np.array([[0, 0], [1, 1], [1, 0], [0.6, 0.8], [0, 1]], np.float32)
    save_file({"embeddings.word_embeddings.weight": emb}, str(tmp_path / "model.safetensors"))
    kv = load_vector_file(tmp_path)
    assert set(kv.key_to_index) == {"circle", "ring"}  # whole lower-case words only
    assert similarity_matrix(kv, ["circle"], ["ring"])[0, 0] == pytest.approx(0.6)


def test_saved_vectors_are_word2vec_binary(tmp_path):
    kv = keyed_vectors()
    out = tmp_path / "vectors.bin"
    save_vectors(kv, out)
    assert out.read_bytes().startswith(b"4 3\n")  # word2vec header: nothing pickled
    again = load_vectors(out)
    np.testing.assert_array_equal(again["ring"], kv["ring"])
    assert load_vector_file(out).key_to_index.keys() == kv.key_to_index.keys()  # also accepted as a user file


def test_pickled_vectors_are_refused_and_never_run(tmp_path):
    import pickle

    class Payload:
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):  # unpickling calls open(marker, "w"): the file appears
            return open, (str(self.marker), "w")

    probe = tmp_path / "probe-ran"
    pickle.loads(pickle.dumps(Payload(probe))).close()
    assert probe.exists()  # the payload is live

    marker = tmp_path / "payload-ran"
    for name in ("vectors.kv", "vectors.txt", "vectors.bin"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Payload(marker)))
        with pytest.raises(WordVectorError, match=f"{name}.*word2vec text or binary, GloVe text.*BERT"):
            load_vector_file(path)
        with pytest.raises(WordVectorError, match=name):
            load_vectors(path)
    assert not marker.exists()


def test_vector_source_settings(tmp_path):
    assert vector_source("word2vec", None).path is None
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    assert vector_source("bert", str(folder)).files == [str(folder / "vocab.txt"), str(folder / "model.safetensors")]
    assert vector_source(str(folder), None).files == vector_source("bert", str(folder)).files
    glove = tmp_path / "glove.txt"
    assert vector_source(str(glove), str(folder)).files == [str(glove)]


def test_default_word_vectors_separate_shape_names():
    from pathlib import Path

    from tbkin.config import load_config
    from tbkin.data.vocab import SHAPES

    config = load_config(Path(__file__).resolve().parent.parent / "config" / "config.yaml")
    source = vector_source(config["text"]["word_vectors"], config["model"]["bert_path"])
    sim = similarity_matrix(load_vector_file(source.path), SHAPES, SHAPES)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)
    different = sim[~np.eye(len(SHAPES), dtype=bool)]
    # every other shape name stays below the threshold a cross edge needs
    assert different.max() < config["text"]["cross_modal_min_similarity"]
