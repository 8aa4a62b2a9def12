# Unified scene graph and knowledge entries (Parquet, hive-partitioned by split).
ALL_PARSES = expand(PARSES, split=list(SPLITS))


rule word_vectors:
    input:
        # trained on the dataset's texts unless a GloVe / word2vec file is configured
        parses=ALL_PARSES if not config["text"]["word_vectors"] else [],
        vectors_file=config["text"]["word_vectors"] or [],
    output:
        WORD_VECTORS,
    params:
        vectors_file=lambda wildcards, input: f"--vectors-file {shlex.quote(input.vectors_file)}" if input.vectors_file else "",
        vector_size=config["text"]["word2vec"]["vector_size"],
        epochs=config["text"]["word2vec"]["epochs"],
        seed=config["seed"],
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
        "tbkin word-vectors {input.parses:q} {params.vectors_file} --vector-size {params.vector_size}"
        " --epochs {params.epochs} --seed {params.seed} --output {output:q} > {log:q} 2>&1"


rule build_graph:
    input:
        parses=PARSES,
        all_parses=ALL_PARSES,
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
        "tbkin build-graph --parses {input.parses:q} --count-parses {input.all_parses:q}"
        " --features {input.features:q} --word-vectors {input.word_vectors:q}"
        " --min-confidence {params.min_confidence} --min-similarity {params.min_similarity}"
        " --edges {output.edges:q} --entries {output.entries:q} > {log:q} 2>&1"


rule graph_all:
    """Every text and graph artifact: parses, edges, entries (and parser metrics on shapes)."""
    input:
        expand(EDGES, split=list(SPLITS)),
        expand(ENTRIES, split=list(SPLITS)),
        [PARSER_METRICS] if config["dataset"] == "shapes" else [],
