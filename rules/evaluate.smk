# Rules for the evaluate stage: VQA / REC scores, threshold ablation, attention maps.
# Targets: VQA_EVAL, REC_EVAL, the ablation files below ABLATION_DIR, ATTENTION_MAPS.

ABL = config["ablation"]
# One fine-tuning run of the ablation: task (vqa | rec), attention setting, seed.
#   setting "t<T>" = threshold attention with T (t0 = Base), "local<w>" = local window w.
ABLATION_RUN = f"{ABLATION_DIR}/runs/{{task}}-{{setting}}-seed{{seed}}"
ABLATION_VQA_RUN = ABLATION_RUN.replace("{task}", "vqa")
ABLATION_REC_RUN = ABLATION_RUN.replace("{task}", "rec")
ABLATION_VQA_SETTINGS = [f"t{t:g}" for t in ABL["thresholds"]] + [f"local{w}" for w in ABL["local_windows"]]
ABLATION_REC_SETTINGS = [f"t{t:g}" for t in ABL["thresholds"]]
ABLATION_CSV = f"{ABLATION_DIR}/ablation.csv"
ABLATION_SUMMARY = f"{ABLATION_DIR}/ablation_summary.csv"
ABLATION_VQA_PNG = f"{ABLATION_DIR}/ablation_vqa.png"
ABLATION_REC_PNG = f"{ABLATION_DIR}/ablation_rec.png"
ABLATION_PAIRED = f"{ABLATION_DIR}/paired.csv"            # TBKIN(T) - Base per seed: mean and 95% t-interval
ABLATION_PAIRED_PNG = f"{ABLATION_DIR}/paired.png"

wildcard_constraints:
    setting=r"t[0-9.]+|local[0-9]+",
    seed=r"[0-9]+",


if HAS_VQA:

    rule eval_vqa:
        input:
            questions=data_input("vqa_questions", "val"),
            annotations=data_input("vqa_annotations", "val"),
            train_questions=data_input("vqa_questions", "train"),
            train_annotations=data_input("vqa_annotations", "train"),
            val_checked=IMAGE_LIST.format(split="val"),
            predictions=VQA_PREDICTIONS,
            run=f"{VQA_DIR}/run.json",
            # shapes: the grounding probe joins the main target's DAG (eval-vqa itself does not read it)
            probe=PROBE_TARGETS,
        output: report(VQA_EVAL, caption="../workflow/report/vqa_eval.rst", category="4. Evaluation")
        params: dataset=config["dataset"]
        threads: 1
        resources: mem_mb=2000, runtime=10
        log: f"{LOGS}/eval_vqa.log"
        benchmark: f"{BENCH}/eval_vqa.tsv"
        conda: "../envs/tbkin.yaml"
        shell:
            "tbkin eval-vqa --predictions {input.predictions:q} --run-info {input.run:q}"
            " --questions {input.questions:q} --annotations {input.annotations:q}"
            " --train-questions {input.train_questions:q} --train-annotations {input.train_annotations:q}"
            " --dataset {params.dataset:q} --split val --output {output:q} > {log:q} 2>&1"


    use rule finetune_vqa as ablation_finetune_vqa with:
        output:
            predictions=f"{ABLATION_VQA_RUN}/predictions.json",
            run=f"{ABLATION_VQA_RUN}/run.json",
        # the main run's schedule, with this run's attention setting and seed
        params: **params_except(rules.finetune_vqa.rule, attention=ablation_attention, settings=ablation_vqa_settings)
        threads: 1
        resources: mem_mb=4000, runtime=60, nproc=1
        log: f"{LOGS}/ablation/finetune_vqa-{{setting}}-seed{{seed}}.log"
        benchmark: f"{BENCH}/ablation/finetune_vqa-{{setting}}-seed{{seed}}.tsv"


    use rule eval_vqa as ablation_eval_vqa with:
        input:
            questions=data_input("vqa_questions", "val"),
            annotations=data_input("vqa_annotations", "val"),
            train_questions=data_input("vqa_questions", "train"),
            train_annotations=data_input("vqa_annotations", "train"),
            predictions=f"{ABLATION_VQA_RUN}/predictions.json",
            run=f"{ABLATION_VQA_RUN}/run.json",
        output: f"{ABLATION_VQA_RUN}/eval.json"
        log: f"{LOGS}/ablation/eval_vqa-{{setting}}-seed{{seed}}.log"
        benchmark: f"{BENCH}/ablation/eval_vqa-{{setting}}-seed{{seed}}.tsv"


    rule attention_maps:
        input:
            questions=data_input("vqa_questions", "val"),
            annotations=data_input("vqa_annotations", "val"),
            instances=data_input("instances", "val"),
            val_checked=IMAGE_LIST.format(split="val"),
            base=f"{VQA_BASE_DIR}/run.json",
            tbkin=f"{VQA_DIR}/run.json",
            features=FEATURES.format(split="val"),
        output: report(ATTENTION_MAPS, caption="../workflow/report/attention_maps.rst", category="4. Evaluation")
        params:
            base=lambda wildcards, input: os.path.dirname(input.base),
            tbkin=lambda wildcards, input: os.path.dirname(input.tbkin),
            images=data_file("images", "val"),
            num_questions=config["attention_maps"]["num_questions"],
        threads: 1
        resources: mem_mb=2000, runtime=10
        log: f"{LOGS}/attention_maps.log"
        benchmark: f"{BENCH}/attention_maps.tsv"
        conda: "../envs/tbkin.yaml"
        shell:
            "tbkin attention-maps --base {params.base:q} --tbkin {params.tbkin:q} --questions {input.questions:q}"
            " --annotations {input.annotations:q} --instances {input.instances:q} --images-dir {params.images:q}"
            " --features {input.features:q} --num-questions {params.num_questions:q} --output {output:q} > {log:q} 2>&1"


if HAS_REFS:

    rule eval_rec:
        input: **refs_inputs(), predictions=REC_PREDICTIONS, run=f"{REC_DIR}/run.json"
        output: report(REC_EVAL, caption="../workflow/report/rec_eval.rst", category="4. Evaluation")
        params: dataset=config["dataset"]
        threads: 1
        resources: mem_mb=2000, runtime=10
        log: f"{LOGS}/eval_rec.log"
        benchmark: f"{BENCH}/eval_rec.tsv"
        conda: "../envs/tbkin.yaml"
        shell:
            "tbkin eval-rec --predictions {input.predictions:q} --run-info {input.run:q}"
            " --refs {input.refs:q} --refs-instances {input.refs_instances:q}"
            " --dataset {params.dataset:q} --output {output:q} > {log:q} 2>&1"


    use rule finetune_rec as ablation_finetune_rec with:
        output:
            predictions=f"{ABLATION_REC_RUN}/predictions.json",
            run=f"{ABLATION_REC_RUN}/run.json",
        params: **params_except(rules.finetune_rec.rule, attention=ablation_attention, settings=ablation_rec_settings)
        threads: 1
        resources: mem_mb=4000, runtime=60, nproc=1
        log: f"{LOGS}/ablation/finetune_rec-{{setting}}-seed{{seed}}.log"
        benchmark: f"{BENCH}/ablation/finetune_rec-{{setting}}-seed{{seed}}.tsv"


    use rule eval_rec as ablation_eval_rec with:
        input: **refs_inputs(), predictions=f"{ABLATION_REC_RUN}/predictions.json", run=f"{ABLATION_REC_RUN}/run.json"
        output: f"{ABLATION_REC_RUN}/eval.json"
        log: f"{LOGS}/ablation/eval_rec-{{setting}}-seed{{seed}}.log"
        benchmark: f"{BENCH}/ablation/eval_rec-{{setting}}-seed{{seed}}.tsv"


# ---- threshold ablation: one single-threaded job per (setting, seed), run side by side

checkpoint ablation:  # a checkpoint: the clutter experiment reads the best T from its paired.csv
    input:
        vqa=expand(f"{ABLATION_RUN}/eval.json", task="vqa", setting=ABLATION_VQA_SETTINGS, seed=ABL["seeds"]) if HAS_VQA else [],
        rec=expand(f"{ABLATION_RUN}/eval.json", task="rec", setting=ABLATION_REC_SETTINGS, seed=ABL["seeds"]) if HAS_REFS else [],
    output:
        csv=report(ABLATION_CSV, caption="../workflow/report/ablation.rst", category="5. Threshold ablation"),
        summary=report(ABLATION_SUMMARY, caption="../workflow/report/ablation.rst", category="5. Threshold ablation"),
        vqa_png=report(ABLATION_VQA_PNG, caption="../workflow/report/ablation.rst", category="5. Threshold ablation"),
        rec_png=report(ABLATION_REC_PNG, caption="../workflow/report/ablation.rst", category="5. Threshold ablation"),
        paired=report(ABLATION_PAIRED, caption="../workflow/report/ablation.rst", category="5. Threshold ablation"),
        paired_png=report(ABLATION_PAIRED_PNG, caption="../workflow/report/ablation.rst", category="5. Threshold ablation"),
    threads: 1
    resources: mem_mb=2000, runtime=10
    log: f"{LOGS}/ablation/ablation.log"
    benchmark: f"{BENCH}/ablation.tsv"
    conda: "../envs/tbkin.yaml"
    shell:
        "tbkin ablation --vqa-evals {input.vqa:q} --rec-evals {input.rec:q} --csv {output.csv:q}"
        " --summary {output.summary:q} --vqa-png {output.vqa_png:q} --rec-png {output.rec_png:q}"
        " --paired {output.paired:q} --paired-png {output.paired_png:q} > {log:q} 2>&1"




if HAS_VQA:

    rule attention_removal:
        """Per layer, the share of attention weights T removes ([CLS]/text -> regions, regions -> text), on val."""
        input:
            questions=data_input("vqa_questions", "val"),
            features=FEATURES.format(split="val"),
            run=f"{ABLATION_DIR}/runs/vqa-{{setting}}-seed{ABL['seeds'][0]}/run.json",
        output:
            json=f"{ABLATION_DIR}/attention_removal/{{setting}}.json",
            csv=f"{ABLATION_DIR}/attention_removal/{{setting}}.csv",
        wildcard_constraints:
            setting=r"t[0-9.]+",
        params:
            model=lambda wildcards, input: os.path.dirname(input.run),
        threads: 1
        resources: mem_mb=3000, runtime=20
        log: f"{LOGS}/ablation/attention_removal-{{setting}}.log"
        benchmark: f"{BENCH}/ablation/attention_removal-{{setting}}.tsv"
        conda: "../envs/tbkin.yaml"
        shell:
            "tbkin attention-removal --model {params.model:q} --questions {input.questions:q}"
            " --features {input.features:q} --output {output.json:q} --csv {output.csv:q} --threads {threads:q}"
            " > {log:q} 2>&1"


rule ablation_all:
    """The threshold ablation: paired.csv and its plots, and what each T removes (VQA)."""
    input:
        ABLATION_PAIRED,
        expand(f"{ABLATION_DIR}/attention_removal/{{setting}}.json",
               setting=[f"t{t:g}" for t in ABL["thresholds"] if t > 0]) if HAS_VQA else [],
