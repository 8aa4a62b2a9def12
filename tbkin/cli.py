"""The ``tbkin`` command. Each subcommand lives in its stage module.

A stage module exposes ``add_arguments(parser)`` and ``run(args)``; it is imported
only when its subcommand runs, so ``tbkin --help`` stays fast (no torch import).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help). Keep sorted by pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "check-config": ("tbkin.config", "validate config files (names the file and line of a YAML error)"),
    "generate-shapes": ("tbkin.data.shapes", "render the embedded `shapes` dataset in official formats"),
    "download": ("tbkin.data.download", "fetch, verify and extract a real-data archive"),
    "check-data": ("tbkin.data.check", "validate one split (or the refs) of a dataset and write its image list"),
    "train-detector": ("tbkin.features.train_detector", "train Faster R-CNN on the dataset's boxes"),
    "extract-features": ("tbkin.features.extract", "write top-m region features of one shard to HDF5"),
    "combine-features": ("tbkin.features.hdf5", "merge HDF5 feature shards into one file"),
    "parse-text": ("tbkin.text.parse", "SPICE-style scene graphs of one text shard (Parquet)"),
    "combine-parses": ("tbkin.text.parse_combine", "merge text-parse shards into one Parquet file"),
    "parser-metrics": ("tbkin.text.metrics", "score the parser against gold scene graphs"),
    "word-vectors": ("tbkin.graph.wordvec", "train or load word vectors for cross-modal edges"),
    "build-graph": ("tbkin.graph.build", "unified scene graph edges and knowledge entries (Parquet)"),
    "edge-metrics": ("tbkin.graph.edge_metrics", "precision / recall of cross-modal edges against shapes gold"),
    "inspect": ("tbkin.graph.inspect", "show one image-text pair: regions, parse, edges, entries"),
    "pretrain": ("tbkin.train.pretrain", "pretrain with MLM, MRM, SKM and ITM"),
    "probe": ("tbkin.evaluate.probe", "grounding probe: masked colour/shape words with own vs random image"),
    "launch": ("tbkin.train.launch", "run a training subcommand on 1 process, torchrun, or several SLURM nodes"),
    "plot-losses": ("tbkin.train.plots", "plot a training log's loss curves"),
    "finetune-vqa": ("tbkin.train.finetune_vqa", "fine-tune with threshold attention on VQA"),
    "finetune-rec": ("tbkin.train.finetune_rec", "fine-tune with threshold attention on REC"),
    "eval-vqa": ("tbkin.evaluate.vqa", "official VQA accuracy of a predictions file"),
    "eval-rec": ("tbkin.evaluate.rec", "REC accuracy per split"),
    "ablation": ("tbkin.evaluate.ablation", "threshold / local-window sweep over seeds"),
    "attention-maps": ("tbkin.evaluate.attention_maps", "Base vs TBKIN [CLS] attention over regions"),
    "attention-removal": ("tbkin.evaluate.attention_removal",
                          "per layer, the share of attention weights threshold T removes ([CLS]/text/regions blocks)"),
    "clutter": ("tbkin.evaluate.clutter", "clutter experiment: TBKIN - Base (paired by seed) against clutter level"),
    "summary": ("tbkin.evaluate.summary", "the run's figures as one Markdown table (reads only)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tbkin", description="TBKIN pipeline stages")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
            sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        result = args._run(args)
    except (KeyboardInterrupt, BrokenPipeError):
        return 130
    except Exception as exc:  # one clear line for users; full trace with -v
        from tbkin.errors import TbkinError

        if isinstance(exc, TbkinError) and not args.verbose:
            print(f"tbkin {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
