"""The workflow through the SLURM profile, on a real single-node SLURM cluster.

Starts slurmctld + slurmd + munge on 127.0.0.1 (tests/slurm_cluster.py; installs
Debian's packages when missing), then runs

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
from pathlib import Path

import pytest
import yaml

from slurm_cluster import CannotInstall, SlurmCluster, install_packages
from workflow_helpers import REPO, snakemake, tail, tool_env, write_override

SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"

# Both sharded stages (their shards run as parallel jobs) and the detector training,
# which like the model training asks for a GPU. Paths are relative to the results folder.
TARGETS = ("features/val.h5", "text/val/parses.parquet")
# The detector's quality does not matter here: train it for two iterations only.
CONFIG = {"detector": {"iterations": 2}}
EXPECTED_RULE_JOBS = {"extract_features": 2, "parse_text_shard": 2}


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
        "slurm-init-seconds-before-status-checks": 2,
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
    slurm = SlurmCluster()
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
def test_launcher_rendezvous_from_the_slurm_environment(cluster, tmp_path):
    """`tbkin launch` inside a job step, as a training rule runs under the slurm profile:
    srun starts torchrun per node, which meet at the rendezvous taken from SLURM's env."""
    out = tmp_path / "ranks"
    env = tool_env(cluster.env)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent)
    # Like Snakemake's jobstep: the rule's command runs in a one-task step.
    step = (f"srun -n1 --cpus-per-task=1 {sys.executable} -m tbkin.cli launch --slurm-rendezvous"
            f" --nproc-per-node 2 --module ddp_probe -- {out}")
    submitted = cluster.run("sbatch", "--parsable", "--export=ALL", "--cpus-per-task=1",
                            f"--output={tmp_path / 'job.log'}", "--wrap", step, env=env)
    job_id = submitted.stdout.strip().split(";")[0]
    state = wait_for_job(cluster, job_id)
    log = (tmp_path / "job.log").read_text(errors="replace") if (tmp_path / "job.log").exists() else ""
    assert state == "COMPLETED", f"{state}\n{log[-4000:]}"
    assert "--rdzv-backend=c10d" in log and f"--rdzv-id=tbkin-{job_id}" in log, log[-4000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["sum"] for r in reports] == [3.0, 3.0]


def job_logs(folder: Path, chars: int = 3000) -> str:
    return "\n".join(f"--- {path} ---\n{path.read_text(errors='replace')[-chars:]}"
                     for path in sorted((folder / "slurm-logs").rglob("*.log")))


@pytest.mark.slow
def test_pipeline_runs_through_slurm_profile(cluster, tmp_path):
    override, results = write_override(tmp_path, **CONFIG)
    profile = site_profile(cluster, tmp_path)
    proc = snakemake("--profile", str(profile), *(str(results / t) for t in TARGETS),
                     configfiles=(override,), env=cluster.env, timeout=480)
    # This workflow's jobs (other tests share the cluster); the plugin tags each with its rule.
    jobs = [job for job in squeue_jobs(cluster) if job["comment"].startswith("rule_")]
    assert proc.returncode == 0, "\n".join([tail(proc), *map(str, jobs), job_logs(tmp_path), cluster.logs()])

    for target in TARGETS:
        assert (results / target).is_file(), target
    assert not list(results.rglob("*.partial")), "half-written files left behind"

    # Every step ran as its own SLURM job, and all of them completed.
    assert jobs and all(job["state"] == "COMPLETED" for job in jobs), jobs
    ran = [job["comment"] for job in jobs]
    for rule, count in EXPECTED_RULE_JOBS.items():
        assert sum(c.startswith(f"rule_{rule}_") or c == f"rule_{rule}" for c in ran) == count, (rule, ran)
    # Rules the profile gives a GPU asked SLURM for one (the node's stand-in GPUs).
    gpu_rules = {rule for rule, res in yaml.safe_load(SLURM_PROFILE.read_text())["set-resources"].items()
                 if res.get("gpu")}
    for job in jobs:
        rule = next((r for r in gpu_rules if job["comment"] == f"rule_{r}" or job["comment"].startswith(f"rule_{r}_")),
                    None)
        assert ("gpu" in job["tres"]) == (rule is not None), job
    logs = list((tmp_path / "slurm-logs").rglob("*.log"))
    assert len(logs) == len(jobs), (logs, jobs)

    # A second run finds nothing to do.
    again = snakemake("--profile", str(profile), "-n", *(str(results / t) for t in TARGETS),
                      configfiles=(override,), env=cluster.env, timeout=120)
    assert again.returncode == 0, tail(again)
    assert "Nothing to be done" in again.stdout + again.stderr, tail(again)
