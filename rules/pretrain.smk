# Pretraining (MLM, MRM, SKM, ITM) and its loss-curve figure.
# Every config value the step reads goes through params, so changing one reruns it.
# Interrupted runs resume from {PRETRAIN_DIR}/state/ when the rule is run again.
import json

PT = config["pretrain"]
MODEL = config["model"]


rule pretrain:
    input:
        parses=PARSES.format(split="train"),
        features=FEATURES.format(split="train"),
        entries=ENTRIES.format(split="train"),
    output:
        model=PRETRAIN_CKPT,
        config=f"{PRETRAIN_DIR}/config.json",
        log=PRETRAIN_LOG,
    params:
        launcher=lambda wildcards, resources: training_launcher(resources.nproc),
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
        bert_path=MODEL["bert_path"] or "null",
        num_layers=MODEL["num_layers"],
        encoder_init=MODEL["encoder_init"],
        sizes=["--hidden-size", MODEL["hidden_size"] or "null", "--num-attention-heads",
               MODEL["num_attention_heads"] or "null", "--intermediate-size", MODEL["intermediate_size"] or "null"],
        max_text_len=MODEL["max_text_len"],
        prune_vocab=MODEL["prune_vocab"],
        steps=PT["steps"],
        batch_size=PT["batch_size"],
        lr=PT["lr"],
        warmup_steps=PT["warmup_steps"],
        task_weights=json.dumps(PT["task_weights"], sort_keys=True),
        itm_negative_ratio=PT["itm_negative_ratio"],
        mask_prob=PT["mask_prob"],
        log_every=PT["log_every"],
        checkpoint_every=PT["checkpoint_every"],
        seed=config["seed"],
        precision=PRECISION,
        proc_threads=lambda wildcards, threads, resources: max(1, threads // resources.nproc),
    threads: 256  # all of --cores (Snakemake caps threads at the cores it is given)
    resources:
        nproc=PT["nproc"],  # processes per node; a profile may override it
        mem_mb=6000,
        runtime=60,
    log:
        f"{LOGS}/pretrain/pretrain.log",
    benchmark:
        f"{BENCH}/pretrain/pretrain.tsv"
    conda: "../envs/tbkin.yaml"
    shell:
        "{params.launcher:q} pretrain --parses {input.parses:q} --features {input.features:q}"
        " --entries {input.entries:q} --out-dir {params.out_dir:q} --bert-path {params.bert_path:q}"
        " --num-layers {params.num_layers:q} --encoder-init {params.encoder_init:q} {params.sizes:q} --max-text-len {params.max_text_len:q} --prune-vocab {params.prune_vocab:q}"
        " --steps {params.steps:q} --batch-size {params.batch_size:q} --lr {params.lr:q}"
        " --warmup-steps {params.warmup_steps:q} --task-weights {params.task_weights:q}"
        " --itm-negative-ratio {params.itm_negative_ratio:q} --mask-prob {params.mask_prob:q}"
        " --log-every {params.log_every:q} --checkpoint-every {params.checkpoint_every:q} --seed {params.seed:q}"
        " --threads {params.proc_threads:q} --precision {params.precision:q} > {log:q} 2>&1"


rule plot_pretrain_losses:
    input:
        PRETRAIN_LOG,
    output:
        report(PRETRAIN_PLOT, caption="../workflow/report/loss_curves.rst", category="3. Pretraining"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    log:
        f"{LOGS}/pretrain/plot_losses.log",
    benchmark:
        f"{BENCH}/pretrain/plot_losses.tsv"
    conda: "../envs/tbkin.yaml"
    shell:
        "tbkin plot-losses {input:q} --output {output:q} --title pretraining > {log:q} 2>&1"


rule probe_pretrain:
    """Grounding probe: masked colour/shape words of val captions, own image vs a random one (shapes only)."""
    input:
        model=PRETRAIN_CKPT,
        config=f"{PRETRAIN_DIR}/config.json",
        parses=PARSES.format(split="val"),
        features=FEATURES.format(split="val"),
    output:
        PROBE,
    params:
        checkpoint=lambda wildcards, input: os.path.dirname(input.model),
        seed=config["seed"],
        precision=PRECISION,
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    log:
        f"{LOGS}/pretrain/probe.log",
    benchmark:
        f"{BENCH}/pretrain/probe.tsv"
    conda: "../envs/tbkin.yaml"
    shell:
        "tbkin probe --checkpoint {params.checkpoint:q} --parses {input.parses:q} --features {input.features:q}"
        " --seed {params.seed:q} --precision {params.precision:q} --threads {threads:q}"
        " --output {output:q} > {log:q} 2>&1"


rule pretrain_all:
    """The pretrained checkpoint and its loss curves."""
    input:
        PRETRAIN_CKPT,
        PRETRAIN_PLOT,
