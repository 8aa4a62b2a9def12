# Rules for the finetune stage: threshold fine-tuning on VQA and REC.
# Every config value a step uses goes through params, so changing it reruns the step.
# The Base run (T = 0) and the ablation runs reuse these rules (`use rule ... with:`).

VQA_BASE_DIR = f"{R}/finetune/vqa-base"          # T = 0, same settings: Base for the attention maps
REC_PREDICTIONS = f"{REC_DIR}/predictions.json"
REC_EVAL_SPLITS = [s for s in DATA["refs_splits"] if s != "train"]
FT_THREADS = 8  # at most --cores: Snakemake caps threads at the cores it is given


if HAS_VQA:

    rule finetune_vqa:
        input:
            **data_inputs("train", "vqa_questions", "vqa_annotations"),
            val_questions=data_input("vqa_questions", "val"),
            val_checked=IMAGE_LIST.format(split="val"),
            pretrained=PRETRAIN_CKPT,
            train_features=FEATURES.format(split="train"),
            val_features=FEATURES.format(split="val"),
        output:
            model=f"{VQA_DIR}/model.safetensors",
            head=f"{VQA_DIR}/head.safetensors",
            run=f"{VQA_DIR}/run.json",
            predictions=VQA_PREDICTIONS,
        params:
            pretrained=lambda wildcards, input: os.path.dirname(input.pretrained),
            out_dir=lambda wildcards, output: os.path.dirname(output.run),
            attention=["--mode", "threshold", "--threshold", FT["threshold"]],
            settings=finetune_settings("vqa"),
            launcher=lambda wildcards, resources: training_launcher(resources.nproc),
            proc_threads=lambda wildcards, threads, resources: max(1, threads // resources.nproc),
        threads: FT_THREADS
        resources: mem_mb=6000, runtime=60, nproc=FT["nproc"]
        log: f"{LOGS}/finetune_vqa.log"
        benchmark: f"{BENCH}/finetune_vqa.tsv"
        conda: "../envs/tbkin.yaml"
        shell:
            "{params.launcher:q} finetune-vqa --pretrained {params.pretrained:q}"
            " --train-questions {input.vqa_questions:q} --train-annotations {input.vqa_annotations:q}"
            " --train-features {input.train_features:q} --eval-questions {input.val_questions:q}"
            " --eval-features {input.val_features:q} --out-dir {params.out_dir:q} --predictions {output.predictions:q}"
            " {params.attention:q} --settings {params.settings:q} --threads {params.proc_threads:q}"
            " > {log:q} 2>&1"


    use rule finetune_vqa as finetune_vqa_base with:
        output:
            model=f"{VQA_BASE_DIR}/model.safetensors",
            head=f"{VQA_BASE_DIR}/head.safetensors",
            run=f"{VQA_BASE_DIR}/run.json",
            predictions=f"{VQA_BASE_DIR}/predictions.json",
        params: **params_except(rules.finetune_vqa.rule, attention=["--mode", "threshold", "--threshold", 0])
        log: f"{LOGS}/finetune_vqa_base.log"
        benchmark: f"{BENCH}/finetune_vqa_base.tsv"


if HAS_REFS:

    rule finetune_rec:
        input:
            **refs_inputs(),
            pretrained=PRETRAIN_CKPT,
            features=FEATURES.format(split="train"),
        output:
            model=f"{REC_DIR}/model.safetensors",
            head=f"{REC_DIR}/head.safetensors",
            run=f"{REC_DIR}/run.json",
            predictions=REC_PREDICTIONS,
        params:
            pretrained=lambda wildcards, input: os.path.dirname(input.pretrained),
            out_dir=lambda wildcards, output: os.path.dirname(output.run),
            eval_splits=REC_EVAL_SPLITS,
            attention=["--mode", "threshold", "--threshold", FT["threshold"]],
            settings=finetune_settings("rec"),
            launcher=lambda wildcards, resources: training_launcher(resources.nproc),
            proc_threads=lambda wildcards, threads, resources: max(1, threads // resources.nproc),
        threads: FT_THREADS
        resources: mem_mb=6000, runtime=60, nproc=FT["nproc"]
        log: f"{LOGS}/finetune_rec.log"
        benchmark: f"{BENCH}/finetune_rec.tsv"
        conda: "../envs/tbkin.yaml"
        shell:
            "{params.launcher:q} finetune-rec --pretrained {params.pretrained:q} --refs {input.refs:q}"
            " --refs-instances {input.refs_instances:q} --features {input.features:q}"
            " --eval-splits {params.eval_splits:q} --out-dir {params.out_dir:q} --predictions {output.predictions:q}"
            " {params.attention:q} --settings {params.settings:q} --threads {params.proc_threads:q}"
            " > {log:q} 2>&1"
