"""Start a training subcommand on one process, several local processes, or several nodes.

``tbkin launch --nproc-per-node N -- pretrain --parses ...`` runs ``tbkin pretrain ...``:

* N = 1 outside a multi-node SLURM allocation: one plain process (no torchrun);
* N > 1 on one machine: ``torchrun --standalone --nproc-per-node N`` (DDP, one
  process per GPU, or N CPU processes with gloo);
* inside a SLURM job that spans several nodes (``sbatch --nodes K``, the ``nodes``
  resource of a rule): ``srun`` starts one ``torchrun`` per node, which meet through
  torch's c10d rendezvous on the job's first node; the node list, the job id (the
  rendezvous id) and the port come from the SLURM environment
  (``SLURM_JOB_NODELIST``, expanded with ``scontrol show hostnames``; ``SLURM_JOB_ID``).

Every process then finds RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in
its environment, set by torchrun; that is all ``tbkin.train.loop.setup_distributed``
reads. The launcher replaces itself with the command (exec), so signals from SLURM or
Snakemake reach the training processes directly.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from typing import Mapping, Sequence

from tbkin.errors import TbkinError

log = logging.getLogger(__name__)

DEFAULT_MODULE = "tbkin.cli"
PORT_BASE, PORT_SPAN = 20000, 20000


class LaunchError(TbkinError):
    """The multi-node launch cannot be set up from this environment."""


def slurm_hosts(env: Mapping[str, str]) -> list[str]:
    """Host names of the SLURM job this process runs in ([] outside SLURM)."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not env.get("SLURM_JOB_ID") or not nodelist:
        return []
    if shutil.which("scontrol") is None:
        raise LaunchError(f"SLURM_JOB_NODELIST={nodelist} is set but `scontrol` is not on PATH")
    done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise LaunchError(f"`scontrol show hostnames {nodelist}` failed: {done.stderr.strip()}")
    return done.stdout.split()


def rendezvous_port(job_id: str) -> int:
    """A port derived from the job id, so two jobs sharing a first node do not collide."""
    return PORT_BASE + int(job_id) % PORT_SPAN if job_id.isdigit() else PORT_BASE


def launch_command(
    nproc_per_node: int,
    args: Sequence[str],
    hosts: Sequence[str] = (),
    job_id: str = "",
    module: str = DEFAULT_MODULE,
    python: str = sys.executable,
    force_rendezvous: bool = False,
) -> list[str]:
    """The command line that runs ``python -m module *args`` on every process.

    ``hosts``: nodes of the SLURM allocation (one torchrun per node when there are
    several, or when ``force_rendezvous`` is set).
    """
    if nproc_per_node < 1:
        raise LaunchError(f"--nproc-per-node must be at least 1, got {nproc_per_node}")
    torchrun = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if len(hosts) > 1 or (hosts and force_rendezvous):
        nnodes = len(hosts)
        return [
            # --overlap: the step Snakemake runs this rule in already holds the job's
            # CPUs/GPUs on the first node; the training step shares them.
            "srun", "--overlap", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1",
            *torchrun, f"--nnodes={nnodes}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={hosts[0]}:{rendezvous_port(job_id)}", f"--rdzv-id=tbkin-{job_id or 'job'}",
            "-m", module, *args,
        ]
    if nproc_per_node > 1:
        return [*torchrun, "--standalone", "-m", module, *args]
    return [python, "-m", module, *args]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc-per-node", type=int, default=1,
                        help="training processes per node (one per GPU; CPU processes use gloo)")
    parser.add_argument("--module", default=DEFAULT_MODULE,
                        help="Python module each process runs (default: the tbkin CLI)")
    parser.add_argument("--slurm-rendezvous", action="store_true",
                        help="use srun + c10d rendezvous even when the SLURM job has a single node")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the subcommand and its arguments, after `--`")


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise LaunchError("nothing to launch: give the subcommand after `--`, e.g. `tbkin launch -- pretrain ...`")
    env = os.environ
    cmd = launch_command(args.nproc_per_node, command, hosts=slurm_hosts(env), job_id=env.get("SLURM_JOB_ID", ""),
                         module=args.module, force_rendezvous=args.slurm_rendezvous)
    log.info("launching: %s", " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)
    return 0  # not reached
