# TBKIN pipeline. Default config: the offline `shapes` dataset.
#   snakemake --cores all results/vqa_eval.json
# Real data:  snakemake --cores all --configfile config/vqa2.yaml results/vqa_eval.json
# Cluster:    snakemake --profile workflow/profiles/slurm results/vqa_eval.json

import os

from tbkin.config import validate as validate_config, ConfigError, read_config_file

# Snakemake reports a broken YAML file without its name or line: read the default
# config first so that its error names both. (Files given with --configfile are read
# by Snakemake before this file runs; `tbkin check-config FILE...` locates their errors.)
if os.path.exists("config/config.yaml"):
    try:
        read_config_file("config/config.yaml")
    except ConfigError as err:
        raise WorkflowError(str(err)) from None

configfile: "config/config.yaml"

try:
    config.update(validate_config(config, sources=[str(f) for f in workflow.configfiles] or ["config/config.yaml"]))
except ConfigError as err:
    raise WorkflowError(str(err)) from None

report: "workflow/report/workflow.rst"

include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/text.smk"
include: "rules/graph.smk"
include: "rules/pretrain.smk"
include: "rules/finetune.smk"
include: "rules/evaluate.smk"


rule all:
    input:
        VQA_EVAL,
        REC_EVAL,
        [PROBE] if config["dataset"] == "shapes" else [],


rule all_results:
    """Every result the workflow report shows: `snakemake --report report.html all_results` after running it."""
    input:
        VQA_EVAL,
        REC_EVAL,
        PRETRAIN_PLOT,
        [PROBE] if config["dataset"] == "shapes" else [],
        ABLATION_CSV,
        ABLATION_SUMMARY,
        ABLATION_VQA_PNG,
        ABLATION_REC_PNG,
        ATTENTION_MAPS,
        [DETECTOR_METRICS] if config["detector"]["train"] else [],
        [PARSER_METRICS] if config["dataset"] == "shapes" else [],
        expand(EDGE_METRICS, split=list(SPLITS)) if config["dataset"] == "shapes" else [],
