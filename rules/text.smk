# Text scene graphs: parse each distinct text once (sharded), join back to records,
# score the parser against the generator's gold scene graphs (shapes only).



rule parse_text_shard:
    input:
        unpack(text_record_inputs),
        image_list=IMAGE_LIST,
        refs_checked=lambda wildcards: [REFS_CHECKED] if HAS_REFS and wildcards.split == "train" else [],
    output:
        PARSE_SHARD,
    params:
        records=text_record_args,
        num_shards=N_TEXT_SHARDS,
        model=config["text"]["spacy_model"],
        batch_size=config["text"]["batch_size"],
        conventions=config["text"]["conventions"],
    wildcard_constraints:
        split="|".join(SPLITS),
        shard=r"\d+",
    threads: 1
    conda:
        "../envs/tbkin.yaml"
    resources:
        mem_mb=2000,
        runtime=120,
    log:
        f"{LOGS}/text/parse_{{split}}_{{shard}}.log",
    benchmark:
        f"{BENCH}/text/parse_{{split}}_{{shard}}.tsv"
    shell:
        "tbkin parse-text {params.records:q} --shard {wildcards.shard:q} --num-shards {params.num_shards:q}"
        " --spacy-model {params.model:q} --batch-size {params.batch_size:q} --conventions {params.conventions:q} --output {output:q} > {log:q} 2>&1"


rule combine_parses:
    input:
        unpack(text_record_inputs),
        shards=expand(PARSE_SHARD, shard=shard_ids(N_TEXT_SHARDS), allow_missing=True),
    output:
        PARSES,
    params:
        records=text_record_args,
    wildcard_constraints:
        split="|".join(SPLITS),
    threads: 1
    conda:
        "../envs/tbkin.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    log:
        f"{LOGS}/text/combine_{{split}}.log",
    benchmark:
        f"{BENCH}/text/combine_{{split}}.tsv"
    shell:
        "tbkin combine-parses {input.shards:q} {params.records:q} --output {output:q} > {log:q} 2>&1"


rule parser_metrics:
    input:
        gold=GOLD_SCENE_GRAPHS,
        parses=expand(PARSES, split=list(SPLITS)),
    output:
        report(PARSER_METRICS, caption="../workflow/report/parser_metrics.rst", category="2. Text scene graphs"),
    params:
        model=config["text"]["spacy_model"],
    threads: 1
    conda:
        "../envs/tbkin.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    log:
        f"{LOGS}/text/parser_metrics.log",
    benchmark:
        f"{BENCH}/text/parser_metrics.tsv"
    shell:
        "tbkin parser-metrics --gold {input.gold:q} --parses {input.parses:q} --spacy-model {params.model:q}"
        " --output {output:q} > {log:q} 2>&1"
