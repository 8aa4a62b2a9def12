# Stage 0: the dataset in official formats, marked complete by DATA_READY.
#   dataset == shapes : generate_shapes renders it offline.
#   real datasets     : one `download` job per entry of config.downloads, then
#                       check_data validates every annotation file with the loaders.
import re

DOWNLOADS = config.get("downloads", {})
DOWNLOAD_DONE = os.path.join(DATA["download_dir"], "{name}.done.json")
LAYOUT_KEYS = ["images", "instances", "captions", "vqa_questions", "vqa_annotations", "refs", "refs_instances"]
# Options telling a tbkin data command where the files are (patterns hold {split}, so
# rules pass this through a lambda: Snakemake would expand it as a wildcard).
LAYOUT_ARGS = (
    ["--root", DATA["root"]]
    + [word for logical, name in SPLITS.items() for word in ("--split", f"{logical}={name}")]
    + [word for key in LAYOUT_KEYS for word in (f"--{key.replace('_', '-')}", DATA[key])]
)
# download name -> its command-line options (absent values stay absent)
DOWNLOAD_OPTIONS = {
    name: (
        ["--url", spec["url"]]
        + (["--sha256", str(spec["sha256"])] if spec.get("sha256") else [])
        + (["--size", spec["size"]] if spec.get("size") else [])
        + (
            ["--extract-to", os.path.normpath(os.path.join(DATA["root"], spec["extract_to"]))]
            if spec.get("extract_to") is not None
            else []
        )
    )
    for name, spec in DOWNLOADS.items()
}


if config["dataset"] == "shapes":

    rule generate_shapes:
        output:
            DATA_READY,
        params:
            layout=lambda wildcards: LAYOUT_ARGS,
            seed=config["seed"],
            shapes=config["shapes"],
            refs_splits=DATA["refs_splits"],
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
            "tbkin generate-shapes {params.layout:q} --seed {params.seed:q}"
            " --image-size {params.shapes[image_size]:q}"
            " --train-images {params.shapes[train_images]:q} --val-images {params.shapes[val_images]:q}"
            " --objects-per-image {params.shapes[objects_per_image][0]:q} {params.shapes[objects_per_image][1]:q}"
            " --distractors-per-image {params.shapes[distractors_per_image][0]:q} {params.shapes[distractors_per_image][1]:q}"
            " --captions-per-image {params.shapes[captions_per_image]:q}"
            " --questions-per-image {params.shapes[questions_per_image]:q}"
            " --refs-per-image {params.shapes[refs_per_image]:q}"
            " --sentences-per-ref {params.shapes[sentences_per_ref]:q}"
            " --answer-noise {params.shapes[answer_noise]:q}"
            " --refs-splits {params.refs_splits:q} --no-progress > {log:q} 2>&1"

else:

    rule download:
        output:
            DOWNLOAD_DONE,
        wildcard_constraints:
            name="|".join(re.escape(n) for n in DOWNLOADS) or "(?!)",
        params:
            options=lambda wildcards: DOWNLOAD_OPTIONS[wildcards.name],
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
        input:
            expand(DOWNLOAD_DONE, name=DOWNLOADS),
        output:
            DATA_READY,
        params:
            layout=lambda wildcards: LAYOUT_ARGS,
            contents=DATA["contents"],
            dataset=config["dataset"],
        log:
            f"{LOGS}/data/check_data.log",
        benchmark:
            f"{BENCH}/data/check_data.tsv"
        threads: 1
        conda:
            "../envs/tbkin.yaml"
        resources:
            mem_mb=8000,
            runtime=60,
        shell:
            "tbkin check-data {params.layout:q} --contents {params.contents:q}"
            " --dataset {params.dataset:q} --out {output:q} > {log:q} 2>&1"
