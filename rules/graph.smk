# Unified scene graph and knowledge entries (Parquet, hive-partitioned by split).
from tbkin.graph.wordvec import vector_source

TRAIN_PARSES = PARSES.format(split="train")  # statistics the model uses come from train only
# text.word_vectors: bert (model.bert_path's input embeddings), word2vec, or a path
WORD_VECTOR_SOURCE = vector_source(config["text"]["word_vectors"], config["model"]["bert_path"])
TRAIN_WORD_VECTORS = WORD_VECTOR_SOURCE.path is None


rule word_vectors:
    input:
        # Word2Vec reads the train split's texts; otherwise the vector file / checkpoint files
        parses=TRAIN_PARSES if TRAIN_WORD_VECTORS else [],
        source_files=WORD_VECTOR_SOURCE.files,
    output:
        WORD_VECTORS,
    params:
        # only the settings of the chosen source, so changing another one reruns nothing
        source=(
            ["--vector-size", config["text"]["word2vec"]["vector_size"],
             "--epochs", config["text"]["word2vec"]["epochs"], "--seed", config["seed"]]
            if TRAIN_WORD_VECTORS
            else ["--vectors-file", str(WORD_VECTOR_SOURCE.path)]
        ),
    threads: 1
    conda:
        "../envs/tbkin.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        f"{LOGS}/graph/word_vectors.log",
    benchmark:
        f"{BENCH}/graph/word_vectors.tsv"
    shell:
        "tbkin word-vectors {input.parses:q} {params.source:q} --output {output:q} > {log:q} 2>&1"


rule build_graph:
    input:
        parses=PARSES,
        count_parses=TRAIN_PARSES,
        features=FEATURES,
        word_vectors=WORD_VECTORS,
    output:
        edges=EDGES,
        entries=ENTRIES,
    params:
        min_confidence=config["text"]["min_detection_confidence"],
        min_similarity=config["text"]["cross_modal_min_similarity"],
    wildcard_constraints:
        split="|".join(SPLITS),
    threads: 1
    conda:
        "../envs/tbkin.yaml"
    resources:
        mem_mb=3000,
        runtime=60,
    log:
        f"{LOGS}/graph/build_{{split}}.log",
    benchmark:
        f"{BENCH}/graph/build_{{split}}.tsv"
    shell:
        "tbkin build-graph --parses {input.parses:q} --count-parses {input.count_parses:q}"
        " --features {input.features:q} --word-vectors {input.word_vectors:q}"
        " --min-confidence {params.min_confidence:q} --min-similarity {params.min_similarity:q}"
        " --edges {output.edges:q} --entries {output.entries:q} > {log:q} 2>&1"


rule edge_metrics:
    """Cross edges against the shapes generator's gold."""
    input:
        gold=GOLD_SCENE_GRAPHS,
        instances=lambda wildcards: data_input("instances", wildcards.split),
        edges=EDGES,
        parses=PARSES,
        features=FEATURES,
    output:
        EDGE_METRICS,
    params:
        min_confidence=config["text"]["min_detection_confidence"],
    wildcard_constraints:
        split="|".join(SPLITS),
    threads: 1
    conda:
        "../envs/tbkin.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    log:
        f"{LOGS}/graph/edge_metrics_{{split}}.log",
    benchmark:
        f"{BENCH}/graph/edge_metrics_{{split}}.tsv"
    shell:
        "tbkin edge-metrics --edges {input.edges:q} --parses {input.parses:q} --features {input.features:q}"
        " --instances {input.instances:q} --gold {input.gold:q} --min-confidence {params.min_confidence:q}"
        " --output {output:q} > {log:q} 2>&1"


rule graph_all:
    """Every text and graph artifact: parses, edges, entries (and parser and edge metrics on shapes)."""
    input:
        expand(EDGES, split=list(SPLITS)),
        expand(ENTRIES, split=list(SPLITS)),
        [PARSER_METRICS] if config["dataset"] == "shapes" else [],
        expand(EDGE_METRICS, split=list(SPLITS)) if config["dataset"] == "shapes" else [],
