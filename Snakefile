# TBKIN pipeline. Default config: the offline `shapes` dataset.
#   snakemake --cores all results/vqa_eval.json
# Real data:  snakemake --cores all results/vqa2/vqa_eval.json --configfile config/vqa2.yaml
# Cluster:    snakemake --profile workflow/profiles/slurm results/vqa_eval.json

import os

from tbkin.config import validate as validate_config, ConfigError, deep_merge, read_config_file, typed_overrides

# Snakemake reports a broken YAML file without its name or line: read the default
# config first so that its error names both. (Files given with --configfile are read
# by Snakemake before this file runs; `tbkin check-config FILE...` locates their errors.)
if os.path.exists("config/config.yaml"):
    try:
        read_config_file("config/config.yaml")
    except ConfigError as err:
        raise WorkflowError(str(err)) from None

configfile: "config/config.yaml"

# `--config key=value` values reach us as text ('0.1', 'true'): read them as YAML
# scalars, as they would be in a config file (safe_load: no value can run code).
try:
    _overrides = typed_overrides(workflow.config_settings.overwrite_config)
    config.update(deep_merge(config, _overrides))
    _sources = [str(f) for f in workflow.configfiles] or ["config/config.yaml"]
    config.update(validate_config(config, sources=_sources + (["--config"] if _overrides else [])))
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
include: "rules/clutter.smk"


rule all:
    input:
        MAIN_TARGETS,
        PROBE_TARGETS,


rule all_results:
    """Every result the workflow report shows: `snakemake --report report.html all_results` after running it."""
    input:
        MAIN_TARGETS,
        [] if PT["checkpoint"] else [PRETRAIN_PLOT],
        PROBE_TARGETS,
        ABLATION_CSV,
        ABLATION_SUMMARY,
        ABLATION_VQA_PNG,
        ABLATION_REC_PNG,
        [ATTENTION_MAPS] if HAS_VQA else [],
        [DETECTOR_METRICS] if config["detector"]["train"] else [],
        [PARSER_METRICS] if config["dataset"] == "shapes" else [],
        expand(EDGE_METRICS, split=list(SPLITS)) if config["dataset"] == "shapes" else [],
