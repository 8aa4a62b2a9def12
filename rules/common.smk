# Paths shared by every rule file. All artifact names are defined here, once.
import os

R = config["results"]
DATA = config["data"]
SPLITS = dict(DATA["splits"])            # logical split -> file-name split
LOGS = f"{R}/logs"
PRECISION = config["train"]["precision"]   # auto | bf16 | fp32, for every training and inference step
BENCH = f"{R}/benchmarks"


def data_file(key, split=None):
    """Path of an official-format file, e.g. data_file('vqa_questions', 'val')."""
    pattern = DATA[key]
    if split is not None:
        pattern = pattern.format(split=SPLITS[split])
    return os.path.join(DATA["root"], pattern)


# Stage 0: dataset in official formats. For `shapes` the generator writes this
# marker after every file of the dataset is in place.
DATA_READY = os.path.join(DATA["root"], "DATASET_READY.json")

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

# Stage 5: pretraining
PRETRAIN_DIR = f"{R}/pretrain"
PRETRAIN_CKPT = f"{PRETRAIN_DIR}/model.safetensors"
PRETRAIN_LOG = f"{PRETRAIN_DIR}/log.jsonl"
PRETRAIN_PLOT = f"{PRETRAIN_DIR}/loss_curves.png"
PROBE = f"{PRETRAIN_DIR}/probe.json"  # shapes only: masked colour/shape words, own vs random image

# Stage 6-7: fine-tuning and evaluation
VQA_DIR = f"{R}/finetune/vqa"
VQA_PREDICTIONS = f"{R}/vqa_predictions.json"
VQA_EVAL = f"{R}/vqa_eval.json"
REC_DIR = f"{R}/finetune/rec"
REC_EVAL = f"{R}/rec_eval.json"
ABLATION_DIR = f"{R}/ablation"
ATTENTION_MAPS = f"{R}/figures/attention_maps.png"


def shard_ids(n):
    return [str(i) for i in range(n)]


# Params that hold several command-line words are lists of words: the shell commands
# use them with `:q`, which quotes each word, so no value is ever parsed by the shell.


# Helpers of rules/features.smk (functions live here: rule files hold rules only).

def feature_image_list(split):
    """COCO-format JSON listing the split's images: its instances file, or for
    datasets that have none (RefCOCO) the refs' instances (train images only)."""
    if "instances" in DATA.get("contents", ["instances"]):
        return data_file("instances", split)
    return data_file("refs_instances") if split == "train" else None


def detector_args():
    if DET["train"]:
        return ["--weights", DETECTOR_WEIGHTS]
    label_map = ["--label-map", DET["label_map"]] if DET["label_map"] else []
    return ["--weights", DET["weights"], *label_map, "--backend", DET["backend"],
            "--architecture", DET["architecture"], "--min-size", DET["min_size"], "--max-size", DET["max_size"]]


# Helpers of rules/text.smk.

def text_record_files(split):
    """Official-format files holding the split's texts (see docs/configuration.md)."""
    files = {}
    if config["dataset"] in ("shapes", "vqa2"):
        files["captions"] = data_file("captions", split)
        files["questions"] = data_file("vqa_questions", split)
    if config["dataset"] != "vqa2" and split == "train":  # refs use train images
        files["refs"] = data_file("refs")
        files["refs_instances"] = data_file("refs_instances")
    return files


def text_record_args(wildcards):
    files = text_record_files(wildcards.split)
    return [word for key, path in files.items() for word in (f"--{key.replace('_', '-')}", path)]


# Helpers of rules/evaluate.smk.

def ablation_attention(wildcards):
    """Command-line attention flags of an ablation setting name."""
    if wildcards.setting.startswith("local"):
        return ["--mode", "local", "--window", int(wildcards.setting[len("local"):])]
    return ["--mode", "threshold", "--threshold", float(wildcards.setting[1:])]


# Helpers of the training rules (rules/pretrain.smk, finetune.smk).

def training_launcher(nproc):
    """Start a training subcommand on `nproc` processes per node: one plain process,
    torchrun on this machine, or one torchrun per node inside a multi-node SLURM job
    (see `tbkin launch --help` and README, "Running on a cluster")."""
    return ["tbkin", "launch", "--nproc-per-node", nproc, "--"]
