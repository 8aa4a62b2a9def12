"""The workflow through the SLURM profile, on a real two-node SLURM cluster.

Starts slurmctld + two slurmd + munge on 127.0.0.1 (tests/slurm_cluster.py; installs
Debian's packages when missing). A two-node job checks the multi-node launch of the
training commands (one torchrun per node, c10d rendezvous); then the whole tiny DAG runs

    snakemake --profile <slurm profile> --configfile config/test.yaml <targets>

where the profile is ``workflow/profiles/slurm`` with the edits README tells a user
to make for their own cluster: the partition, resource requests that fit the node
(here: this machine) and a short first status check. Every step runs as its own
SLURM job; jobs find ``tbkin`` on the PATH they inherit from the submitting shell
(the plugin submits with ``sbatch --export=ALL``), as with an activated venv.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from slurm_cluster import CannotInstall, SlurmCluster, install_packages
from workflow_helpers import REPO, snakemake, tail, tool_env, write_override

SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"

# The whole tiny DAG: data, both sharded stages (their shards run as parallel jobs),
# the detector, graph, pre-training, fine-tuning (GPU rules) and the evaluations.
# Paths are relative to the results folder.
TARGETS = ("vqa_eval.json", "rec_eval.json")
# The detector's quality does not matter here: train it for two iterations only.
CONFIG = {"detector": {"iterations": 2}}
# Sharded rules: shards (config/test.yaml) x splits (train, val) jobs each.
EXPECTED_RULE_JOBS = {"extract_features": 4, "parse_text_shard": 4}


def site_profile(cluster: SlurmCluster, folder: Path) -> Path:
    """The repository's slurm profile with the site edits README describes."""
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    hardware = cluster.hardware()
    profile["default-resources"]["slurm_partition"] = cluster.partition
    for resources in profile.get("set-resources", {}).values():
        # Requests sized for a real cluster, shrunk to this node (SLURM rejects more).
        if "mem_mb" in resources:
            resources["mem_mb"] = min(resources["mem_mb"], hardware["mem_mb"] // 2)
        if "gpu" in resources:
            resources["gpu"] = min(resources["gpu"], hardware["gpus"])
    # Half the node per job at most, so that two shards run side by side as on a cluster.
    profile["max-threads"] = max(1, hardware["cpus"] // 2)
    profile.update({
        "latency-wait": 5,
        # The plugin polls squeue this long after a submission or a finished job, then
        # adds 10 s per poll that finds nothing finished (fixed in plugin 2.8): most of
        # the test's time beyond the jobs' own is that wait, so start it at the minimum.
        "slurm-init-seconds-before-status-checks": 1,
        "slurm-logdir": str(folder / "slurm-logs"),
        "slurm-keep-successful-logs": True,
    })
    path = folder / "profile" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path.parent


@pytest.fixture(scope="module")
def cluster():
    try:
        install_packages()
    except CannotInstall as exc:
        pytest.skip(f"no SLURM cluster possible here: {exc}")
    # Two nodes (two slurmd daemons on this machine): multi-node jobs can be tested.
    slurm = SlurmCluster(nodes=2)
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.cleanup()
        assert not slurm.leftover_pids(), "processes of the test cluster survived its shutdown"


def squeue_jobs(cluster: SlurmCluster) -> list[dict[str, str]]:
    """Every job the cluster still remembers (MinJobAge is an hour): id, state, comment, GPUs etc."""
    out = cluster.run("squeue", "--states=all", "--noheader",
                      "--Format=JobID:|,State:|,Comment:|,tres-per-job:|,tres-per-node:|").stdout
    return [dict(zip(("id", "state", "comment", "tres"), (*line.split("|")[:3], "|".join(line.split("|")[3:]))))
            for line in out.splitlines() if line]


def wait_for_job(cluster: SlurmCluster, job_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = next((j["state"] for j in squeue_jobs(cluster) if j["id"] == job_id), "")
        if state and state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return state
        time.sleep(1)
    return "TIMEOUT"


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_launcher_rendezvous_across_the_nodes_of_a_slurm_job(cluster, tmp_path, nproc):
    """`tbkin launch` inside a job step of a two-node job, as a training rule with
    `nodes: 2` runs under the slurm profile: srun starts one torchrun per node, which
    meet at the rendezvous taken from SLURM's env, and all processes all-reduce."""
    nodes = len(cluster.nodes)
    assert nodes >= 2, "the module's cluster has a single node"
    out = tmp_path / "ranks"
    env = tool_env(cluster.env)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent)
    # Like Snakemake's jobstep: the rule's command runs in a one-task step (on the first node).
    step = (f"srun -n1 --cpus-per-task=1 {sys.executable} -m tbkin.cli launch"
            f" --nproc-per-node {nproc} --module ddp_probe -- {out}")
    submitted = cluster.run("sbatch", "--parsable", "--export=ALL", f"--nodes={nodes}", "--cpus-per-task=1",
                            f"--output={tmp_path / 'job.log'}", "--wrap", step, env=env)
    job_id = submitted.stdout.strip().split(";")[0]
    state = wait_for_job(cluster, job_id)
    log = (tmp_path / "job.log").read_text(errors="replace") if (tmp_path / "job.log").exists() else ""
    assert state == "COMPLETED", f"{state}\n{log[-4000:]}\n{cluster.logs()}"
    assert "--rdzv-backend=c10d" in log and f"--rdzv-id=tbkin-{job_id}" in log, log[-4000:]
    assert f"--nnodes={nodes}" in log and f"--rdzv-endpoint={cluster.nodes[0]}:" in log, log[-4000:]
    # The training step ran on every node of the job, each with its own slurmd.
    for node in cluster.nodes:
        assert f"launch task StepId={job_id}.1 " in cluster.slurmd_log(node), (node, cluster.logs())
    world = nodes * nproc
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["world_size"] for r in reports] == [world] * world
    assert sorted(r["local_rank"] for r in reports) == sorted(list(range(nproc)) * nodes)
    assert [r["sum"] for r in reports] == [world * (world + 1) / 2] * world  # 1 + 2 + ... + world, all-reduced


def job_logs(folder: Path, chars: int = 3000) -> str:
    return "\n".join(f"--- {path} ---\n{path.read_text(errors='replace')[-chars:]}"
                     for path in sorted((folder / "slurm-logs").rglob("*.log")))


def job_rule(comment: str) -> str:
    """The rule of a job, from the comment the plugin gives it: rule_<rule>[_wildcards_<...>]."""
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def planned_jobs(output: str) -> dict[str, int]:
    """Snakemake's first "Job stats" table: jobs per rule it is about to run."""
    lines = output[output.index("Job stats:"):].splitlines()[3:]
    counts = {}
    for line in lines:
        rule, count = line.split()
        if rule == "total":
            return counts
        counts[rule] = int(count)
    raise AssertionError(f"no total in the job stats:\n{output[-3000:]}")


@pytest.mark.slow
def test_pipeline_runs_through_slurm_profile(cluster, tmp_path):
    override, results = write_override(tmp_path, **CONFIG)
    profile = site_profile(cluster, tmp_path)
    proc = snakemake("--profile", str(profile), *(str(results / t) for t in TARGETS),
                     configfiles=(override,), env=cluster.env, timeout=900)
    # This workflow's jobs (other tests share the cluster); the plugin tags each with its rule.
    jobs = [job for job in squeue_jobs(cluster) if job["comment"].startswith("rule_")]
    assert proc.returncode == 0, "\n".join([tail(proc), *map(str, jobs), job_logs(tmp_path), cluster.logs()])

    vqa = json.loads((results / "vqa_eval.json").read_text())
    predictions = json.loads((results / "vqa_predictions.json").read_text())
    assert vqa["num_questions"] == len(predictions) > 0, vqa
    rec = json.loads((results / "rec_eval.json").read_text())
    assert "val" in rec["accuracy"], rec
    assert not list(results.rglob("*.partial")), "half-written files left behind"

    # Every step ran as its own SLURM job (none on the submitting machine), and all of
    # them completed; sharded rules ran one job per shard and split.
    assert jobs and all(job["state"] == "COMPLETED" for job in jobs), jobs
    ran = Counter(job_rule(job["comment"]) for job in jobs)
    assert ran == planned_jobs(proc.stderr), (ran, tail(proc))
    for rule, count in EXPECTED_RULE_JOBS.items():
        assert ran[rule] == count, (rule, ran)
    # Rules the profile gives a GPU asked SLURM for one (the node's stand-in GPUs).
    gpu_rules = {rule for rule, res in yaml.safe_load(SLURM_PROFILE.read_text())["set-resources"].items()
                 if res.get("gpu")}
    assert gpu_rules & set(ran), (gpu_rules, ran)
    for job in jobs:
        assert ("gpu" in job["tres"]) == (job_rule(job["comment"]) in gpu_rules), job
    logs = list((tmp_path / "slurm-logs").rglob("*.log"))
    assert len(logs) == len(jobs), (logs, jobs)

    # A second run finds nothing to do.
    again = snakemake("--profile", str(profile), "-n", *(str(results / t) for t in TARGETS),
                      configfiles=(override,), env=cluster.env, timeout=120)
    assert again.returncode == 0, tail(again)
    assert "Nothing to be done" in again.stdout + again.stderr, tail(again)
