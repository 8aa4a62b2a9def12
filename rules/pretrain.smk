# Pretraining (MLM, MRM, SKM, ITM) and its loss-curve figure. With pretrain.checkpoint
# set, no pretraining runs: fine-tuning starts from that folder (another run's
# results/pretrain, e.g. the VQA v2 run's for RefCOCO).
# Its settings reach the command whole (PRETRAIN_SETTINGS), so changing one reruns it.
# Interrupted runs resume from {R}/pretrain/state/ when the rule is run again.


if not PT["checkpoint"]:

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
            settings=PRETRAIN_SETTINGS,
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
            " --entries {input.entries:q} --out-dir {params.out_dir:q} --settings {params.settings:q}"
            " --threads {params.proc_threads:q} > {log:q} 2>&1"


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
        val_checked=IMAGE_LIST.format(split="val"),
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
