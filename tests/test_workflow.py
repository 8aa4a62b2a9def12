"""Static checks of the Snakemake workflow: lint, the full DAG, rule declarations, profiles."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from workflow_helpers import REPO, rule_names, snakemake, tail, write_override

PROFILES = REPO / "workflow" / "profiles"
TRAINING_RULES = ("pretrain", "finetune_vqa", "finetune_vqa_base", "finetune_rec",
                  "ablation_finetune_vqa", "ablation_finetune_rec")
# A rule without one of these only collects targets: no job of its own.
ACTIONS = {"shell", "run", "script", "wrapper", "notebook", "cwl"}
RULE_HEADER = re.compile(r"^([ \t]*)(?:(?:rule|checkpoint) (\w+)|use rule (\w+) as (\w+) with):", re.MULTILINE)


@pytest.fixture(scope="module")
def rules() -> list[str]:
    return rule_names()


def parse_rules(text: str) -> dict[str, dict[str, str]]:
    """Rule name -> {directive (input, threads, log, ...): its source text}.

    A `use rule A as B with:` rule has A's directives, replaced by those of its block."""
    rules = {}
    for match in RULE_HEADER.finditer(text):
        name = match.group(2) or match.group(4)
        indent = match.group(1)
        directives = {}
        current = None
        # The body: following lines indented deeper than the header (blank lines included).
        for line in text[match.end():].split("\n")[1:]:
            if line.strip() and not (line.startswith(indent) and line[len(indent):len(indent) + 1] in " \t"):
                break
            directive = re.match(rf"{indent}[ \t]+(\w+):(.*)", line)
            if directive and len(line) - len(line.lstrip()) == len(indent) + 4:
                current = directive.group(1)
                directives[current] = directive.group(2)
            elif current is not None:
                directives[current] += "\n" + line
        rules[name] = {**rules.get(match.group(3), {}), **directives} if match.group(3) else directives
    return rules


def rule_directives() -> dict[str, dict[str, str]]:
    """parse_rules over the Snakefile and rules/*.smk."""
    rules = {}
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        rules.update(parse_rules(path.read_text()))
    return rules


def test_lint_is_clean():
    proc = snakemake("--lint")
    assert proc.returncode == 0, tail(proc)
    assert "Lints for" not in proc.stdout + proc.stderr, tail(proc)


def test_dry_run_builds_the_full_dag_for_vqa_eval(tmp_path):
    override, results = write_override(tmp_path)
    proc = snakemake("-n", "--summary", str(results / "vqa_eval.json"), configfiles=(override,))
    assert proc.returncode == 0, tail(proc)
    planned = proc.stdout
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    n_features, n_text = cfg["features"]["shards"], cfg["text"]["shards"]
    expected = [
        results / "data" / "generate_shapes.json",
        results / "data" / "train" / "image_list.json",
        results / "data" / "val" / "image_list.json",
        results / "detector" / "detector.safetensors",
        *(results / "features" / split / f"shard-{i}-of-{n_features}.h5" for split in ("train", "val")
          for i in range(n_features)),
        results / "features" / "train.h5",
        results / "features" / "val.h5",
        *(results / "text" / split / f"shard-{i}-of-{n_text}.parquet" for split in ("train", "val")
          for i in range(n_text)),
        results / "text" / "train" / "parses.parquet",
        results / "graph" / "edges" / "split=train" / "part-0.parquet",
        results / "graph" / "entries" / "split=train" / "part-0.parquet",
        results / "pretrain" / "model.safetensors",
        results / "vqa_eval.json",
    ]
    missing = [str(p) for p in expected if str(p) not in planned]
    assert not missing, f"not in the DAG of vqa_eval.json: {missing}\n{planned[-4000:]}"


def test_every_rule_declares_threads_resources_log_and_benchmark(rules):
    declared = rule_directives()
    assert set(rules) <= set(declared), f"rules not found in the rule files: {set(rules) - set(declared)}"
    problems = []
    for name in rules:
        if not declared[name].keys() & ACTIONS:
            continue
        missing = {"threads", "resources", "log", "benchmark"} - declared[name].keys()
        if missing:
            problems.append(f"{name}: no {', '.join(sorted(missing))}")
        for resource in ("mem_mb", "runtime"):
            if not re.search(rf"\b{resource}\b", declared[name].get("resources", "")):
                problems.append(f"{name}: no {resource} in resources")
    assert not problems, "\n".join(problems)


def test_rule_parser_sees_nested_rules_and_their_directives():
    """The check above must be able to fail: missing directives are seen as missing."""
    text = ("rule a:\n    output: 'x'\n    threads: 1\n\n    log: 'l'\n    shell: (\n        'x'\n    )\n"
            "if cond:\n\n    rule b:\n        benchmark: 'b'\n        params:\n            log='y',\nrule c:\n"
            "    input: 'x'\nuse rule a as d with:\n    log: 'm'\n    params: p=1\n")
    rules = parse_rules(text)
    assert {name: set(directives) for name, directives in rules.items()} == {
        "a": {"output", "threads", "log", "shell"}, "b": {"benchmark", "params"}, "c": {"input"},
        "d": {"output", "threads", "log", "shell", "params"}}
    assert rules["d"]["log"] == " 'm'"
    assert rules["b"]["params"] == "\n            log='y',"


@pytest.mark.parametrize("name", ["local", "slurm"])
def test_profiles_name_existing_rules(name, rules):
    profile = yaml.safe_load((PROFILES / name / "config.yaml").read_text())
    named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
    unknown = named - set(rules)
    assert not unknown, f"{name} profile names rules that do not exist: {unknown}"


def test_slurm_profile_essentials(rules):
    profile = yaml.safe_load((PROFILES / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["jobs"] >= 1
    # Without SLURM accounting the plugin's default status command (sacct) never
    # sees a job end.
    assert profile["slurm-status-command"] == "squeue"
    assert {"mem_mb", "runtime"} <= set(profile["default-resources"])
    for rule in TRAINING_RULES:
        if rule in rules:
            assert profile["set-resources"][rule].get("gpu", 0) >= 1, rule


def test_report_captions_exist():
    """Every caption a rule's report() names is a file, and every caption file is used."""
    rule_text = "".join(p.read_text() for p in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")])
    named = set(re.findall(r"""caption=["'](?:\.\./)?(workflow/report/[\w.-]+\.rst)["']""", rule_text))
    named |= set(re.findall(r"""^report:\s*["'](workflow/report/[\w.-]+\.rst)["']""", rule_text, re.MULTILINE))
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "workflow" / "report").glob("*.rst")}
    assert named, "no report() captions in the rules"
    assert named <= on_disk, named - on_disk
    assert on_disk <= named, f"caption files no rule uses: {on_disk - named}"


def test_profiles_are_accepted_by_snakemake(tmp_path):
    """Snakemake parses each profile (dry run; nothing is submitted)."""
    override, results = write_override(tmp_path)
    for name in ("local", "slurm"):
        proc = snakemake("--profile", str(PROFILES / name), "-n", str(results / "vqa_eval.json"),
                         configfiles=(override,))
        assert proc.returncode == 0, f"{name}: {tail(proc)}"
