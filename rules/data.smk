# Stage 0: the dataset in official formats, then one check per part.
#   dataset == shapes : generate_shapes renders it offline.
#   real datasets     : one `download` job per entry of config.downloads, planned only
#                       while a file the config reads is missing (data.download: false
#                       never downloads). Then check_data validates each split (and the
#                       refs) with the loaders and writes the split's image list.
import re


if config["dataset"] == "shapes":

    rule generate_shapes:
        output:
            marker=GENERATED,
            files=[path for split in SPLITS for path in split_files(split).values()] + list(refs_files().values()),
            gold=GOLD_SCENE_GRAPHS,
        params:
            layout=lambda wildcards: layout_args(),
            spec=SHAPES_SPEC,
        log:
            f"{LOGS}/data/generate_shapes.log",
        benchmark:
            f"{BENCH}/data/generate_shapes.tsv"
        threads: 1
        conda:
            "../envs/tbkin.yaml"
        resources:
            mem_mb=1000,
            runtime=15,
        shell:
            "tbkin generate-shapes {params.layout:q} --spec {params.spec:q} --marker {output.marker:q}"
            " --no-progress > {log:q} 2>&1"

else:

    rule download:
        output:
            DOWNLOAD_DONE,
        wildcard_constraints:
            name="|".join(re.escape(n) for n in config["downloads"]) or "(?!)",
        params:
            options=lambda wildcards: download_options(wildcards.name),
            dest_dir=DATA["download_dir"],
        log:
            f"{LOGS}/data/download_{{name}}.log",
        benchmark:
            f"{BENCH}/data/download_{{name}}.tsv"
        threads: 1
        conda:
            "../envs/tbkin.yaml"
        resources:
            mem_mb=500,
            runtime=600,
        retries: 2
        shell:
            "tbkin download --name {wildcards.name:q} {params.options:q} --dest-dir {params.dest_dir:q}"
            " --marker {output:q} --no-progress > {log:q} 2>&1"


rule check_data:
    """One split's files (or, for part refs, the refs): validated, hashed, its image list written."""
    input:
        files=lambda wildcards: present(split_files(wildcards.part).values()),
        downloads=expand(DOWNLOAD_DONE, name=planned_downloads()),
        generated=[GENERATED] if config["dataset"] == "shapes" else [],
    output:
        f"{R}/data/{{part}}/image_list.json",
    wildcard_constraints:
        part="|".join(re.escape(s) for s in SPLITS),
    params:
        layout=lambda wildcards: layout_args(),
        contents=CONTENTS,
        dataset=config["dataset"],
    log:
        f"{LOGS}/data/check_data_{{part}}.log",
    benchmark:
        f"{BENCH}/data/check_data_{{part}}.tsv"
    threads: 1
    conda:
        "../envs/tbkin.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "tbkin check-data {params.layout:q} --contents {params.contents:q} --part {wildcards.part:q}"
        " --dataset {params.dataset:q} --out {output:q} > {log:q} 2>&1"


rule check_refs:
    """The refs and their instances file, validated and hashed."""
    input:
        files=present(refs_files().values()),
        downloads=expand(DOWNLOAD_DONE, name=planned_downloads()),
        generated=[GENERATED] if config["dataset"] == "shapes" else [],
    output:
        REFS_CHECKED,
    params:
        layout=lambda wildcards: layout_args(),
        contents=CONTENTS,
        dataset=config["dataset"],
    log:
        f"{LOGS}/data/check_refs.log",
    benchmark:
        f"{BENCH}/data/check_refs.tsv"
    threads: 1
    conda:
        "../envs/tbkin.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "tbkin check-data {params.layout:q} --contents {params.contents:q} --part refs"
        " --dataset {params.dataset:q} --out {output:q} > {log:q} 2>&1"
