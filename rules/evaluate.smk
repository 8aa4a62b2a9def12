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

wildcard_constraints:
    setting=r"t[0-9.]+|local[0-9]+",
    seed=r"[0-9]+",


VQA_EVAL_PARAMS = dict(
    dataset=config["dataset"],
    val_questions=data_file("vqa_questions", "val"),
    val_annotations=data_file("vqa_annotations", "val"),
    train_questions=data_file("vqa_questions", "train"),
    train_annotations=data_file("vqa_annotations", "train"),
)
VQA_EVAL_SHELL = (
    "tbkin eval-vqa --predictions {input.predictions:q} --run-info {input.run:q}"
    " --questions {params.val_questions:q} --annotations {params.val_annotations:q}"
    " --train-questions {params.train_questions:q} --train-annotations {params.train_annotations:q}"
    " --dataset {params.dataset:q} --split val --output {output:q} > {log:q} 2>&1"
)
REC_EVAL_PARAMS = dict(dataset=config["dataset"], refs=data_file("refs"), refs_instances=data_file("refs_instances"))
REC_EVAL_SHELL = (
    "tbkin eval-rec --predictions {input.predictions:q} --run-info {input.run:q}"
    " --refs {params.refs:q} --refs-instances {params.refs_instances:q}"
    " --dataset {params.dataset:q} --output {output:q} > {log:q} 2>&1"
)


rule eval_vqa:
    input:
        ready=DATA_READY,
        predictions=VQA_PREDICTIONS,
        run=f"{VQA_DIR}/run.json",
        # shapes: the grounding probe joins the main target's DAG (eval-vqa itself does not read it)
        probe=[PROBE] if config["dataset"] == "shapes" else [],
    output: report(VQA_EVAL, caption="../workflow/report/vqa_eval.rst", category="4. Evaluation")
    params: **VQA_EVAL_PARAMS
    threads: 1
    resources: mem_mb=2000, runtime=10
    log: f"{LOGS}/eval_vqa.log"
    benchmark: f"{BENCH}/eval_vqa.tsv"
    conda: "../envs/tbkin.yaml"
    shell: VQA_EVAL_SHELL


rule eval_rec:
    input: ready=DATA_READY, predictions=REC_PREDICTIONS, run=f"{REC_DIR}/run.json"
    output: report(REC_EVAL, caption="../workflow/report/rec_eval.rst", category="4. Evaluation")
    params: **REC_EVAL_PARAMS
    threads: 1
    resources: mem_mb=2000, runtime=10
    log: f"{LOGS}/eval_rec.log"
    benchmark: f"{BENCH}/eval_rec.tsv"
    conda: "../envs/tbkin.yaml"
    shell: REC_EVAL_SHELL


# ---- threshold ablation: one single-threaded job per (setting, seed), run side by side

rule ablation_finetune_vqa:
    input: **VQA_FT_INPUT
    output:
        predictions=f"{ABLATION_VQA_RUN}/predictions.json",
        run=f"{ABLATION_VQA_RUN}/run.json",
    params:
        **VQA_FT_PARAMS,
        out_dir=lambda wc: ABLATION_RUN.format(task="vqa", setting=wc.setting, seed=wc.seed),
        attention=ablation_attention,
        epochs=ABL["epochs"],
        seed=lambda wc: wc.seed,
        launcher="tbkin",
        proc_threads=1,
    threads: 1
    resources: mem_mb=4000, runtime=60
    log: f"{LOGS}/ablation/finetune_vqa-{{setting}}-seed{{seed}}.log"
    benchmark: f"{BENCH}/ablation/finetune_vqa-{{setting}}-seed{{seed}}.tsv"
    conda: "../envs/tbkin.yaml"
    shell: VQA_FT_SHELL


rule ablation_finetune_rec:
    input: **REC_FT_INPUT
    output:
        predictions=f"{ABLATION_REC_RUN}/predictions.json",
        run=f"{ABLATION_REC_RUN}/run.json",
    params:
        **REC_FT_PARAMS,
        out_dir=lambda wc: ABLATION_RUN.format(task="rec", setting=wc.setting, seed=wc.seed),
        attention=ablation_attention,
        epochs=ABL["epochs"],
        seed=lambda wc: wc.seed,
        launcher="tbkin",
        proc_threads=1,
    threads: 1
    resources: mem_mb=4000, runtime=60
    log: f"{LOGS}/ablation/finetune_rec-{{setting}}-seed{{seed}}.log"
    benchmark: f"{BENCH}/ablation/finetune_rec-{{setting}}-seed{{seed}}.tsv"
    conda: "../envs/tbkin.yaml"
    shell: REC_FT_SHELL


rule ablation_eval_vqa:
    input:
        ready=DATA_READY,
        predictions=f"{ABLATION_VQA_RUN}/predictions.json",
        run=f"{ABLATION_VQA_RUN}/run.json",
    output: f"{ABLATION_VQA_RUN}/eval.json"
    params: **VQA_EVAL_PARAMS
    threads: 1
    resources: mem_mb=2000, runtime=10
    log: f"{LOGS}/ablation/eval_vqa-{{setting}}-seed{{seed}}.log"
    benchmark: f"{BENCH}/ablation/eval_vqa-{{setting}}-seed{{seed}}.tsv"
    conda: "../envs/tbkin.yaml"
    shell: VQA_EVAL_SHELL


rule ablation_eval_rec:
    input:
        ready=DATA_READY,
        predictions=f"{ABLATION_REC_RUN}/predictions.json",
        run=f"{ABLATION_REC_RUN}/run.json",
    output: f"{ABLATION_REC_RUN}/eval.json"
    params: **REC_EVAL_PARAMS
    threads: 1
    resources: mem_mb=2000, runtime=10
    log: f"{LOGS}/ablation/eval_rec-{{setting}}-seed{{seed}}.log"
    benchmark: f"{BENCH}/ablation/eval_rec-{{setting}}-seed{{seed}}.tsv"
    conda: "../envs/tbkin.yaml"
    shell: REC_EVAL_SHELL


rule ablation:
    input:
        vqa=expand(f"{ABLATION_RUN}/eval.json", task="vqa", setting=ABLATION_VQA_SETTINGS, seed=ABL["seeds"]),
        rec=expand(f"{ABLATION_RUN}/eval.json", task="rec", setting=ABLATION_REC_SETTINGS, seed=ABL["seeds"]),
    output:
        csv=report(ABLATION_CSV, caption="../workflow/report/ablation.rst", category="5. Threshold ablation"),
        summary=report(ABLATION_SUMMARY, caption="../workflow/report/ablation.rst", category="5. Threshold ablation"),
        vqa_png=report(ABLATION_VQA_PNG, caption="../workflow/report/ablation.rst", category="5. Threshold ablation"),
        rec_png=report(ABLATION_REC_PNG, caption="../workflow/report/ablation.rst", category="5. Threshold ablation"),
    threads: 1
    resources: mem_mb=2000, runtime=10
    log: f"{LOGS}/ablation/ablation.log"
    benchmark: f"{BENCH}/ablation.tsv"
    conda: "../envs/tbkin.yaml"
    shell:
        "tbkin ablation --vqa-evals {input.vqa:q} --rec-evals {input.rec:q} --csv {output.csv:q}"
        " --summary {output.summary:q} --vqa-png {output.vqa_png:q} --rec-png {output.rec_png:q} > {log:q} 2>&1"


rule attention_maps:
    input:
        ready=DATA_READY,
        base=f"{VQA_BASE_DIR}/run.json",
        tbkin=f"{VQA_DIR}/run.json",
        features=FEATURES.format(split="val"),
    output: report(ATTENTION_MAPS, caption="../workflow/report/attention_maps.rst", category="4. Evaluation")
    params:
        base=lambda wildcards, input: os.path.dirname(input.base),
        tbkin=lambda wildcards, input: os.path.dirname(input.tbkin),
        questions=data_file("vqa_questions", "val"),
        annotations=data_file("vqa_annotations", "val"),
        instances=data_file("instances", "val"),
        images=data_file("images", "val"),
        num_questions=config["attention_maps"]["num_questions"],
    threads: 1
    resources: mem_mb=2000, runtime=10
    log: f"{LOGS}/attention_maps.log"
    benchmark: f"{BENCH}/attention_maps.tsv"
    conda: "../envs/tbkin.yaml"
    shell:
        "tbkin attention-maps --base {params.base:q} --tbkin {params.tbkin:q} --questions {params.questions:q}"
        " --annotations {params.annotations:q} --instances {params.instances:q} --images-dir {params.images:q}"
        " --features {input.features:q} --num-questions {params.num_questions:q} --output {output:q} > {log:q} 2>&1"
