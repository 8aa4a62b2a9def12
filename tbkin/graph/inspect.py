"""Show one image-text pair: regions, parse, edges and knowledge entries; CLI ``inspect``.

Prints the pair as tables (regions, tokens with their scene-graph role, edges,
entries) and draws a PNG: the image with every region box (anchors thick and
coloured, regions below the confidence cut dashed) and the text underneath with
anchor words highlighted in the colour of their most similar region.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tbkin.atomic import atomic_path
from tbkin.errors import TbkinError
from tbkin.features.hdf5 import RegionFeatureReader

log = logging.getLogger(__name__)


class InspectError(TbkinError):
    """The requested pair does not exist in the given files."""


@dataclass
class PairView:
    pair_id: int
    record: dict
    regions: pd.DataFrame
    tokens: pd.DataFrame
    edges: pd.DataFrame
    entries: pd.DataFrame
    width: int
    height: int


def _rows_of_pair(path, pair_id: int) -> pd.DataFrame:
    table = ds.dataset(path, format="parquet").to_table(filter=ds.field("pair_id") == pair_id)
    return table.to_pandas()


def load_pair(parses, features, edges, entries, pair_id: int, min_confidence: float = 0.5) -> PairView:
    pf = pq.ParquetFile(parses)
    if not 0 <= pair_id < pf.metadata.num_rows:
        raise InspectError(f"{parses}: no row {pair_id} (the file has {pf.metadata.num_rows} rows)")
    record = pq.read_table(parses).slice(pair_id, 1).to_pylist()[0]
    with RegionFeatureReader(features) as reader:
        regions = reader.get(record["image_id"]).valid() if record["image_id"] in reader else None
    edge_rows = _rows_of_pair(edges, pair_id)
    entry_rows = _rows_of_pair(entries, pair_id)
    anchors = set(zip(entry_rows.loc[entry_rows.role == "anchor", "anchor_modality"],
                      entry_rows.loc[entry_rows.role == "anchor", "anchor"]))
    if regions is not None:
        region_table = pd.DataFrame({
            "region": np.arange(regions.num_boxes),
            "label": [regions.label_names[int(l)] for l in regions.labels],
            "score": regions.scores.round(3),
            "box": [tuple(np.round(b, 1)) for b in regions.boxes],
            "confident": regions.scores >= min_confidence,
            "anchor": [("image", i) in anchors for i in range(regions.num_boxes)],
        })
        width, height = regions.width, regions.height
    else:
        region_table = pd.DataFrame(columns=["region", "label", "score", "box", "confident", "anchor"])
        width = height = 0
    role = [""] * len(record["tokens"])
    for obj in record["objects"]:
        role[obj["token"]] = f"object:{obj['name']}"
    for attr in record["attributes"]:
        role[attr["token"]] = f"attribute of {record['objects'][attr['object']]['name']}"
    for rel in record["relations"]:
        for t in rel["tokens"]:
            role[t] = f"relation:{rel['predicate']}"
    tokens = pd.DataFrame({
        "token": np.arange(len(record["tokens"])), "text": record["tokens"], "start": record["token_starts"],
        "role": role, "anchor": [("text", i) in anchors for i in range(len(record["tokens"]))],
    })
    return PairView(pair_id, record, region_table, tokens, edge_rows, entry_rows, width, height)


def format_tables(view: PairView) -> str:
    rec = view.record
    parts = [
        f"pair {view.pair_id}: {rec['source']} {rec['record_id']} of image {rec['image_id']}",
        f"text: {rec['text']!r}",
        "", "regions:", view.regions.to_string(index=False) if len(view.regions) else "  (none)",
        "", "tokens:", view.tokens.to_string(index=False) if len(view.tokens) else "  (empty text)",
        "", "edges:", view.edges.drop(columns="pair_id").to_string(index=False) if len(view.edges) else "  (none)",
        "", "entries:",
        view.entries.drop(columns=["pair_id", "image_id"]).to_string(index=False) if len(view.entries) else "  (none)",
    ]
    return "\n".join(parts)


def draw_pair(view: PairView, image_path: Path | None, output) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colours = plt.get_cmap("tab10")
    cross = view.edges[view.edges.kind == "cross"]
    region_colour = {int(r): colours(k % 10) for k, r in enumerate(sorted(set(cross.src)))}
    fig, (ax_img, ax_txt) = plt.subplots(2, 1, figsize=(6, 7.5), gridspec_kw={"height_ratios": [4, 1.4]})
    if image_path is not None and Path(image_path).is_file():
        from PIL import Image

        ax_img.imshow(np.asarray(Image.open(image_path).convert("RGB")))
    else:
        ax_img.imshow(np.full((max(view.height, 1), max(view.width, 1), 3), 240, np.uint8))
    for row in view.regions.itertuples():
        x1, y1, x2, y2 = row.box
        anchor = row.region in region_colour
        colour = region_colour.get(row.region, (0.5, 0.5, 0.5, 1))
        ax_img.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                                   linewidth=2.5 if anchor else 0.8, linestyle="-" if row.confident else "--"))
        ax_img.text(x1, y1, f"{row.region}:{row.label} {row.score:.2f}", fontsize=6, color="black",
                    bbox={"facecolor": colour, "alpha": 0.6 if anchor else 0.2, "pad": 0.5, "linewidth": 0})
    ax_img.set_axis_off()
    ax_img.set_title(f"pair {view.pair_id} (image {view.record['image_id']}): anchors thick, "
                     "below confidence cut dashed", fontsize=8)
    # text: anchor tokens in the colour of their most similar region
    token_colour = {}
    for row in cross.sort_values("weight", ascending=False, kind="stable").itertuples():
        token_colour.setdefault(int(row.dst), region_colour[int(row.src)])
    ax_txt.set_axis_off()
    x, y = 0.0, 0.8
    renderer = fig.canvas.get_renderer()
    for i, word in enumerate(view.record["tokens"]):
        colour = token_colour.get(i)
        t = ax_txt.text(x, y, word, fontsize=11, transform=ax_txt.transAxes,
                        weight="bold" if colour else "normal",
                        bbox={"facecolor": colour, "alpha": 0.5, "pad": 1, "linewidth": 0} if colour else None)
        width = t.get_window_extent(renderer=renderer).transformed(ax_txt.transAxes.inverted()).width
        x += width + 0.015
        if x > 0.92:
            x, y = 0.0, y - 0.25
    lines = [f"{int(r.src)}:{view.regions.label.iloc[int(r.src)] if int(r.src) < len(view.regions) else '?'}"
             f" - {view.record['tokens'][int(r.dst)]} ({r.weight:.2f})" for r in cross.itertuples()]
    ax_txt.text(0, 0.0, "cross edges: " + ("; ".join(lines) if lines else "none"), fontsize=7,
                transform=ax_txt.transAxes, wrap=True)
    with atomic_path(output, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parses", required=True, help="parses.parquet of the split")
    parser.add_argument("--features", required=True, help="region features HDF5 of the split")
    parser.add_argument("--edges", required=True, help="edges Parquet (file or split=... folder)")
    parser.add_argument("--entries", required=True, help="entries Parquet (file or split=... folder)")
    parser.add_argument("--pair-id", type=int, required=True, help="row of parses.parquet")
    parser.add_argument("--instances", help="COCO instances JSON, to find the image file")
    parser.add_argument("--images-dir", help="folder of the split's images")
    parser.add_argument("--min-confidence", type=float, default=0.5, help="text.min_detection_confidence")
    parser.add_argument("--output", help="PNG to write")


def run(args: argparse.Namespace) -> int:
    view = load_pair(args.parses, args.features, args.edges, args.entries, args.pair_id, args.min_confidence)
    print(format_tables(view))
    if args.output:
        image_path = None
        if args.instances and args.images_dir:
            from tbkin.data.loaders import load_coco_instances

            image = load_coco_instances(args.instances).images.get(int(view.record["image_id"]))
            image_path = Path(args.images_dir) / image.file_name if image else None
        draw_pair(view, image_path, args.output)
        log.info("wrote %s", args.output)
    return 0
