# Stage 1: Faster R-CNN detector and top-m region features (HDF5, sharded).
#   detector.train: true  -> train_detector fits the small detector on the dataset's
#                            boxes (shapes) and writes its val box mAP to DETECTOR_METRICS.
#   detector.train: false -> extraction loads detector.weights (a local state dict or a
#                            detector.safetensors written by another run's train_detector,
#                            or a file the download rule fetches); no training runs.
# Target: `snakemake --cores all features_all`.

FEAT = config["features"]


if DET["train"]:

    rule train_detector:
        input:
            train_instances=data_input("instances", "train"),
            val_instances=data_input("instances", "val"),
            train_checked=IMAGE_LIST.format(split="train"),  # not val's: a val question edit keeps the detector
        output:
            weights=DETECTOR_WEIGHTS,
            metrics=report(DETECTOR_METRICS, caption="../workflow/report/detector_metrics.rst", category="1. Detector"),
        params:
            train_images=data_file("images", "train"),
            val_images=data_file("images", "val"),
            iterations=DET["iterations"],
            batch_size=DET["batch_size"],
            lr=DET["lr"],
            min_size=DET["min_size"],
            max_size=DET["max_size"],
            seed=config["seed"],
            precision=PRECISION,
        threads: 8  # at most --cores: Snakemake caps threads at the cores it is given
        resources:
            mem_mb=4000,
            runtime=60,
        log:
            f"{LOGS}/features/train_detector.log",
        benchmark:
            f"{BENCH}/features/train_detector.tsv"
        conda:
            "../envs/tbkin.yaml"
        shell:
            "tbkin train-detector --train-instances {input.train_instances:q} --train-images {params.train_images:q}"
            " --val-instances {input.val_instances:q} --val-images {params.val_images:q}"
            " --weights {output.weights:q} --metrics {output.metrics:q} --iterations {params.iterations:q}"
            " --batch-size {params.batch_size:q} --lr {params.lr:q} --min-size {params.min_size:q}"
            " --max-size {params.max_size:q} --seed {params.seed:q} --threads {threads:q}"
            " --precision {params.precision:q} > {log:q} 2>&1"


rule extract_features:
    input:
        image_list=IMAGE_LIST,
        weights=detector_input(),
    output:
        FEATURE_SHARD,
    params:
        detector=detector_args(),
        images=lambda wildcards: data_file("images", wildcards.split),
        num_shards=N_FEATURE_SHARDS,
        num_regions=FEAT["num_regions"],
        min_score=FEAT["min_score"],
        nms_iou=FEAT["nms_iou"],
        batch_size=FEAT["batch_size"],
        precision=PRECISION,
        flags=(["--float16"] if FEAT["float16"] else []) + (["--skip-bad-images"] if FEAT["skip_bad_images"] else []),
    wildcard_constraints:
        split="|".join(SPLITS),
        shard=r"\d+",
    threads: 4  # at most --cores; the same for every shard count, so shards match an unsharded run bit for bit
    resources:
        mem_mb=4000,
        runtime=120,
    log:
        f"{LOGS}/features/extract_{{split}}_{{shard}}.log",
    benchmark:
        f"{BENCH}/features/extract_{{split}}_{{shard}}.tsv"
    conda:
        "../envs/tbkin.yaml"
    shell:
        "tbkin extract-features {params.detector:q} --image-list {input.image_list:q} --images {params.images:q}"
        " --shard {wildcards.shard:q} --num-shards {params.num_shards:q} --num-regions {params.num_regions:q}"
        " --min-score {params.min_score:q} --nms-iou {params.nms_iou:q} --batch-size {params.batch_size:q}"
        " {params.flags:q} --threads {threads:q} --precision {params.precision:q} --output {output:q} > {log:q} 2>&1"


rule combine_features:
    input:
        lambda wildcards: expand(FEATURE_SHARD, split=wildcards.split, shard=shard_ids(N_FEATURE_SHARDS)),
    output:
        FEATURES,
    wildcard_constraints:
        split="|".join(SPLITS),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    log:
        f"{LOGS}/features/combine_{{split}}.log",
    benchmark:
        f"{BENCH}/features/combine_{{split}}.tsv"
    conda:
        "../envs/tbkin.yaml"
    shell:
        "tbkin combine-features {input:q} --output {output:q} > {log:q} 2>&1"


rule features_all:
    input:
        expand(FEATURES, split=list(SPLITS)),
        DETECTOR_METRICS if DET["train"] else [],
