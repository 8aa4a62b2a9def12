# Rules for the finetune stage: threshold fine-tuning on VQA and REC.
# Every config value a step uses goes through params, so changing it reruns the step.

FT = config["finetune"]
# Fine-tuned directories besides the main ones (paths derived from common.smk names).
VQA_BASE_DIR = f"{R}/finetune/vqa-base"          # T = 0, same settings: Base for the attention maps
REC_PREDICTIONS = f"{REC_DIR}/predictions.json"
REC_EVAL_SPLITS = [s for s in DATA["refs_splits"] if s != "train"]
# Torch threads of one fine-tuning job (a small model gains nothing from many more).
FT_THREADS = 8  # at most --cores: Snakemake caps threads at the cores it is given


# Inputs and data paths shared by every VQA fine-tuning run.
VQA_FT_INPUT = dict(
    ready=DATA_READY,
    pretrained=PRETRAIN_CKPT,
    train_features=FEATURES.format(split="train"),
    val_features=FEATURES.format(split="val"),
)
VQA_FT_PARAMS = dict(
    pretrained=lambda wildcards, input: os.path.dirname(input.pretrained),
    train_questions=data_file("vqa_questions", "train"),
    train_annotations=data_file("vqa_annotations", "train"),
    val_questions=data_file("vqa_questions", "val"),
    batch_size=FT["vqa"]["batch_size"],
    lr=FT["vqa"]["lr"],
    min_answer_count=FT["vqa"]["min_answer_count"],
    readout=FT["vqa"]["readout"],
    precision=PRECISION,
)
VQA_FT_SHELL = (
    "{params.launcher:q} finetune-vqa --pretrained {params.pretrained:q}"
    " --train-questions {params.train_questions:q} --train-annotations {params.train_annotations:q}"
    " --train-features {input.train_features:q} --eval-questions {params.val_questions:q}"
    " --eval-features {input.val_features:q} --out-dir {params.out_dir:q} --predictions {output.predictions:q}"
    " {params.attention:q} --epochs {params.epochs:q} --batch-size {params.batch_size:q} --lr {params.lr:q}"
    " --min-answer-count {params.min_answer_count:q} --readout {params.readout:q} --seed {params.seed:q} --threads {params.proc_threads:q}"
    " --precision {params.precision:q} > {log:q} 2>&1"
)

REC_FT_INPUT = dict(ready=DATA_READY, pretrained=PRETRAIN_CKPT, features=FEATURES.format(split="train"))
REC_FT_PARAMS = dict(
    pretrained=lambda wildcards, input: os.path.dirname(input.pretrained),
    refs=data_file("refs"),
    refs_instances=data_file("refs_instances"),
    eval_splits=REC_EVAL_SPLITS,
    batch_size=FT["rec"]["batch_size"],
    lr=FT["rec"]["lr"],
    precision=PRECISION,
)
REC_FT_SHELL = (
    "{params.launcher:q} finetune-rec --pretrained {params.pretrained:q} --refs {params.refs:q}"
    " --refs-instances {params.refs_instances:q} --features {input.features:q}"
    " --eval-splits {params.eval_splits:q} --out-dir {params.out_dir:q} --predictions {output.predictions:q}"
    " {params.attention:q} --epochs {params.epochs:q} --batch-size {params.batch_size:q} --lr {params.lr:q}"
    " --seed {params.seed:q} --threads {params.proc_threads:q} --precision {params.precision:q} > {log:q} 2>&1"
)


rule finetune_vqa:
    input: **VQA_FT_INPUT
    output:
        model=f"{VQA_DIR}/model.safetensors",
        head=f"{VQA_DIR}/head.safetensors",
        run=f"{VQA_DIR}/run.json",
        predictions=VQA_PREDICTIONS,
    params:
        **VQA_FT_PARAMS,
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
        attention=["--mode", "threshold", "--threshold", FT["threshold"]],
        epochs=FT["vqa"]["epochs"],
        seed=config["seed"],
        launcher=lambda wildcards, resources: training_launcher(resources.nproc),
        proc_threads=lambda wildcards, threads, resources: max(1, threads // resources.nproc),
    threads: FT_THREADS
    resources: mem_mb=6000, runtime=60, nproc=FT["nproc"]
    log: f"{LOGS}/finetune_vqa.log"
    benchmark: f"{BENCH}/finetune_vqa.tsv"
    conda: "../envs/tbkin.yaml"
    shell: VQA_FT_SHELL


rule finetune_vqa_base:
    input: **VQA_FT_INPUT
    output:
        model=f"{VQA_BASE_DIR}/model.safetensors",
        head=f"{VQA_BASE_DIR}/head.safetensors",
        run=f"{VQA_BASE_DIR}/run.json",
        predictions=f"{VQA_BASE_DIR}/predictions.json",
    params:
        **VQA_FT_PARAMS,
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
        attention=["--mode", "threshold", "--threshold", 0],
        epochs=FT["vqa"]["epochs"],
        seed=config["seed"],
        launcher=lambda wildcards, resources: training_launcher(resources.nproc),
        proc_threads=lambda wildcards, threads, resources: max(1, threads // resources.nproc),
    threads: FT_THREADS
    resources: mem_mb=6000, runtime=60, nproc=FT["nproc"]
    log: f"{LOGS}/finetune_vqa_base.log"
    benchmark: f"{BENCH}/finetune_vqa_base.tsv"
    conda: "../envs/tbkin.yaml"
    shell: VQA_FT_SHELL


rule finetune_rec:
    input: **REC_FT_INPUT
    output:
        model=f"{REC_DIR}/model.safetensors",
        head=f"{REC_DIR}/head.safetensors",
        run=f"{REC_DIR}/run.json",
        predictions=REC_PREDICTIONS,
    params:
        **REC_FT_PARAMS,
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
        attention=["--mode", "threshold", "--threshold", FT["threshold"]],
        epochs=FT["rec"]["epochs"],
        seed=config["seed"],
        launcher=lambda wildcards, resources: training_launcher(resources.nproc),
        proc_threads=lambda wildcards, threads, resources: max(1, threads // resources.nproc),
    threads: FT_THREADS
    resources: mem_mb=6000, runtime=60, nproc=FT["nproc"]
    log: f"{LOGS}/finetune_rec.log"
    benchmark: f"{BENCH}/finetune_rec.tsv"
    conda: "../envs/tbkin.yaml"
    shell: REC_FT_SHELL
