# Paths shared by every rule file. All artifact names are defined here, once.
import os

R = config["results"]
DATA = config["data"]
SPLITS = dict(DATA["splits"])            # logical split -> file-name split
LOGS = f"{R}/logs"
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
FEATURE_SHARD = R + "/features/{split}/shard-{shard}-of-" + str(N_FEATURE_SHARDS) + ".h5"
FEATURES = R + "/features/{split}.h5"

# Stage 2: text scene graphs
N_TEXT_SHARDS = config["text"]["shards"]
PARSE_SHARD = R + "/text/{split}/shard-{shard}-of-" + str(N_TEXT_SHARDS) + ".parquet"
PARSES = R + "/text/{split}/parses.parquet"
PARSER_METRICS = f"{R}/text/parser_metrics.json"

# Stage 3-4: unified scene graph and knowledge entries
WORD_VECTORS = f"{R}/graph/word_vectors.kv"
EDGES = R + "/graph/edges/split={split}/part-0.parquet"
ENTRIES = R + "/graph/entries/split={split}/part-0.parquet"

# Stage 5: pretraining
PRETRAIN_DIR = f"{R}/pretrain"
PRETRAIN_CKPT = f"{PRETRAIN_DIR}/model.safetensors"
PRETRAIN_LOG = f"{PRETRAIN_DIR}/log.jsonl"
PRETRAIN_PLOT = f"{PRETRAIN_DIR}/loss_curves.png"

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
