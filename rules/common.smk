# Paths and helpers shared by every rule file. All artifact names are defined here,
# once; rule files hold rules only.
import json
import os
from dataclasses import asdict

from tbkin.data.shapes import ShapesSpec

R = config["results"]
DATA = config["data"]
SPLITS = {k: v for k, v in DATA["splits"].items() if v}  # logical split -> file-name split (null: none)
CONTENTS = DATA["contents"]              # which official files the dataset has
LOGS = f"{R}/logs"
PRECISION = config["train"]["precision"]   # auto | bf16 | fp32, for every training and inference step
BENCH = f"{R}/benchmarks"
DET = config["detector"]
MODEL = config["model"]
PT = config["pretrain"]
FT = config["finetune"]


def data_file(key, split=None):
    """Path of an official-format file, e.g. data_file('vqa_questions', 'val')."""
    pattern = DATA[key]
    if split is not None:
        pattern = pattern.format(split=SPLITS[split])
    return os.path.join(DATA["root"], pattern)


# Stage 0: the dataset in official formats, then one check per part (split or refs).
# Markers live below results (the dataset folder may be a shared read-only copy).
GENERATED = f"{R}/data/generate_shapes.json"       # shapes: the generator's spec and counts
GOLD_SCENE_GRAPHS = os.path.join(DATA["root"], "gold_scene_graphs.json")  # shapes only
IMAGE_LIST = f"{R}/data/{{split}}/image_list.json"  # check-data of a split: counts, hashes, its images
REFS_CHECKED = f"{R}/data/refs_checked.json"        # check-data of the refs
DOWNLOAD_DONE = os.path.join(DATA["download_dir"], "{name}.done.json")


def split_files(split):
    """Official files of one split, by key, as data.contents has them."""
    keys = [k for k in ("instances", "captions") if k in CONTENTS]
    keys += ["vqa_questions", "vqa_annotations"] if "vqa" in CONTENTS else []
    return {key: data_file(key, split) for key in keys}


def refs_files():
    return {key: data_file(key) for key in ("refs", "refs_instances")} if "refs" in CONTENTS else {}


def required_data_files():
    """Every file and image folder the config reads, and detector.weights when it is a file to load."""
    files = [path for split in SPLITS for path in split_files(split).values()]
    files += list(refs_files().values()) + [data_file("images", split) for split in SPLITS]
    if not DET["train"] and DET["weights"]:
        files.append(DET["weights"])
    return files


def present(paths):
    """The paths a check reads that exist now (shapes: all, its generator writes them)."""
    return [p for p in paths if config["dataset"] == "shapes" or os.path.exists(p)]


def data_input(key, split=None):
    """A data file as a rule input, so editing it reruns the rule. Before a download has
    put it in place it is not there yet: the rule then waits on the check that follows
    the downloads (which every reader of data files also declares)."""
    path = data_file(key, split)
    if config["dataset"] == "shapes" or os.path.exists(path):
        return path
    return REFS_CHECKED if split is None else IMAGE_LIST.format(split=split)


def data_inputs(split, *keys):
    """{key: data_input} of one split's files plus its check marker ('image_list')."""
    return {key: data_input(key, split) for key in keys} | {"image_list": IMAGE_LIST.format(split=split)}


def refs_inputs():
    return {key: data_input(key) for key in refs_files()} | {"refs_checked": REFS_CHECKED}


def layout_args(root=DATA["root"]):
    """Options telling a tbkin data command where the files are (below `root`)."""
    words = ["--root", root]
    words += [word for logical, name in SPLITS.items() for word in ("--split", f"{logical}={name}")]
    for key in ("images", "instances", "captions", "vqa_questions", "vqa_annotations", "refs", "refs_instances"):
        words += [f"--{key.replace('_', '-')}", DATA[key]]
    return words


SHAPES_SPEC = json.dumps(asdict(ShapesSpec.from_config(config)), sort_keys=True)

# Stage 1: detector and region features
DETECTOR_WEIGHTS = f"{R}/detector/detector.safetensors"
DETECTOR_METRICS = f"{R}/detector/metrics.json"
N_FEATURE_SHARDS = config["features"]["shards"]
FEATURE_SHARD = f"{R}/features/{{split}}/shard-{{shard}}-of-{N_FEATURE_SHARDS}.h5"
FEATURES = f"{R}/features/{{split}}.h5"

# Stage 2: text scene graphs
N_TEXT_SHARDS = config["text"]["shards"]
PARSE_SHARD = f"{R}/text/{{split}}/shard-{{shard}}-of-{N_TEXT_SHARDS}.parquet"
PARSES = f"{R}/text/{{split}}/parses.parquet"
PARSER_METRICS = f"{R}/text/parser_metrics.json"

# Stage 3-4: unified scene graph and knowledge entries
WORD_VECTORS = f"{R}/graph/word_vectors.bin"
EDGES = f"{R}/graph/edges/split={{split}}/part-0.parquet"
EDGE_METRICS = f"{R}/graph/edge_metrics_{{split}}.json"  # shapes only: cross edges vs gold
ENTRIES = f"{R}/graph/entries/split={{split}}/part-0.parquet"

# Stage 5: pretraining, or another run's pretrained checkpoint (pretrain.checkpoint)
PRETRAIN_DIR = PT["checkpoint"] or f"{R}/pretrain"
PRETRAIN_CKPT = f"{PRETRAIN_DIR}/model.safetensors"
PRETRAIN_LOG = f"{R}/pretrain/log.jsonl"
PRETRAIN_PLOT = f"{R}/pretrain/loss_curves.png"
PROBE = f"{R}/pretrain/probe.json"  # shapes only: masked colour/shape words, own vs random image
# The probe reads this run's own pretraining, on shapes (its colour and shape words)
PROBE_TARGETS = [PROBE] if config["dataset"] == "shapes" and not PT["checkpoint"] else []
# Every setting pretraining reads, passed whole as one JSON object
PRETRAIN_SETTINGS = json.dumps(
    {**MODEL, **{k: v for k, v in PT.items() if k not in ("nproc", "checkpoint")}, "seed": config["seed"],
     "precision": PRECISION},
    sort_keys=True,
)

# Stage 6-7: fine-tuning and evaluation
VQA_DIR = f"{R}/finetune/vqa"
VQA_PREDICTIONS = f"{R}/vqa_predictions.json"
VQA_EVAL = f"{R}/vqa_eval.json"
REC_DIR = f"{R}/finetune/rec"
REC_EVAL = f"{R}/rec_eval.json"
ABLATION_DIR = f"{R}/ablation"
ATTENTION_MAPS = f"{R}/figures/attention_maps.png"
HAS_VQA = "vqa" in CONTENTS
HAS_REFS = "refs" in CONTENTS
if HAS_VQA and "val" not in SPLITS:
    raise WorkflowError("data.contents has vqa, so data.splits needs a val split (its questions are evaluated)")
MAIN_TARGETS = ([VQA_EVAL] if HAS_VQA else []) + ([REC_EVAL] if HAS_REFS else [])


def params_except(parent, **replaced):
    """The params of `parent` (a rule) with some replaced: `use ... with: params:` replaces them all."""
    return {name: value for name, value in parent.params.items() if name not in replaced} | replaced


def shard_ids(n):
    return [str(i) for i in range(n)]


# Params that hold several command-line words are lists of words: the shell commands
# use them with `:q`, which quotes each word, so no value is ever parsed by the shell.


# Helpers of rules/data.smk.

def download_options(name):
    spec = config["downloads"][name]
    words = ["--url", spec["url"]]
    words += ["--sha256", str(spec["sha256"])] if spec.get("sha256") else []
    words += ["--size", spec["size"]] if spec.get("size") else []
    if spec.get("extract_to") is not None:
        words += ["--extract-to", os.path.normpath(os.path.join(DATA["root"], spec["extract_to"]))]
    return words


def planned_downloads():
    """Downloads to run: none when every file the config reads is already in place, or
    when data.download is false (then a missing file is an error naming it)."""
    missing = [path for path in required_data_files() if not os.path.exists(path)]
    if not missing or config["dataset"] == "shapes":
        return []
    if not DATA["download"]:
        raise WorkflowError(
            "data.download is false, but these files of the config are missing:\n  " + "\n  ".join(missing))
    return list(config["downloads"])


# Helpers of rules/features.smk.

def detector_args():
    if DET["train"]:
        return ["--weights", DETECTOR_WEIGHTS]
    label_map = ["--label-map", DET["label_map"]] if DET["label_map"] else []
    return ["--weights", DET["weights"], *label_map, "--backend", DET["backend"],
            "--architecture", DET["architecture"], "--min-size", DET["min_size"], "--max-size", DET["max_size"]]


def detector_input():
    """The weights extraction loads: trained here, a local file, or one a download writes."""
    if DET["train"]:
        return DETECTOR_WEIGHTS
    if DET["weights"] and os.path.exists(DET["weights"]):
        return DET["weights"]
    return [DOWNLOAD_DONE.format(name=name) for name in planned_downloads()]


# Helpers of rules/text.smk.

def text_record_inputs(wildcards):
    """Official files holding the split's texts: captions, questions, and (train) refs."""
    files = {}
    if "captions" in CONTENTS:
        files["captions"] = data_input("captions", wildcards.split)
    if HAS_VQA:
        files["questions"] = data_input("vqa_questions", wildcards.split)
    if HAS_REFS and wildcards.split == "train":  # refs are about train images
        files["refs"] = data_input("refs")
        files["refs_instances"] = data_input("refs_instances")
    return files


def text_record_args(wildcards, input):
    return [word for key in ("captions", "questions", "refs", "refs_instances") if key in input.keys()
            for word in (f"--{key.replace('_', '-')}", input[key])]


# Helpers of rules/evaluate.smk.

def ablation_vqa_settings(wildcards):
    return finetune_settings("vqa", wildcards.seed)


def ablation_rec_settings(wildcards):
    return finetune_settings("rec", wildcards.seed)


def ablation_attention(wildcards):
    """Command-line attention flags of an ablation setting name."""
    if wildcards.setting.startswith("local"):
        return ["--mode", "local", "--window", int(wildcards.setting[len("local"):])]
    return ["--mode", "threshold", "--threshold", float(wildcards.setting[1:])]


# The clutter experiment (rules/clutter.smk)
CLUTTER = config["clutter"]
CLUTTER_DIR = f"{R}/clutter"
CLUTTER_LEVEL = f"{CLUTTER_DIR}/level{{level}}"
CLUTTER_DATA = f"{CLUTTER_LEVEL}/data"
CLUTTER_IMAGE_LIST = f"{CLUTTER_LEVEL}/checked/{{split}}.json"
CLUTTER_FEATURES = f"{CLUTTER_LEVEL}/features/{{split}}.h5"
CLUTTER_RUN = f"{CLUTTER_LEVEL}/{{task}}-{{setting}}-seed{{seed}}"
CLUTTER_CSV = f"{CLUTTER_DIR}/clutter.csv"
CLUTTER_PNG = f"{CLUTTER_DIR}/clutter.png"


def clutter_file(key, split=None):
    """A data file of one clutter level ({level} stays a wildcard)."""
    pattern = DATA[key] if split is None else DATA[key].format(split=SPLITS[split])
    return os.path.join(CLUTTER_DATA, pattern)


def clutter_images(wildcards):
    return clutter_file("images", wildcards.split).format(level=wildcards.level)


def clutter_settings(wildcards):
    """Base and the compared T: clutter.threshold, or the main ablation's best."""
    if CLUTTER["threshold"] is not None:
        return ["t0", f"t{CLUTTER['threshold']:g}"]
    from tbkin.evaluate.paired import best_threshold

    return ["t0", best_threshold(checkpoints.ablation.get().output.paired)]


def clutter_evals(wildcards):
    return expand(f"{CLUTTER_RUN}/eval.json", level=CLUTTER["levels"], task=["vqa", "rec"],
                  setting=clutter_settings(wildcards), seed=CLUTTER["seeds"])


# Helpers of the training rules (rules/pretrain.smk, finetune.smk).

def finetune_settings(task, seed=config["seed"]):
    """A fine-tuning run's settings as one JSON object: config finetune.<task>, seed, precision."""
    return json.dumps({**FT[task], "seed": int(seed), "precision": PRECISION}, sort_keys=True)


def training_launcher(nproc):
    """Start a training subcommand on `nproc` processes per node: one plain process,
    torchrun on this machine, or one torchrun per node inside a multi-node SLURM job
    (see `tbkin launch --help` and docs/cluster.md)."""
    return ["tbkin", "launch", "--nproc-per-node", nproc, "--"]
