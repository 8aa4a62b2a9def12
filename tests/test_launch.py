"""`tbkin launch`: one process, torchrun on one machine, srun + c10d rendezvous on SLURM."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tbkin.train.launch import LaunchError, launch_command, rendezvous_port, slurm_hosts

TESTS = Path(__file__).resolve().parent


def test_single_process_runs_the_cli_directly():
    assert launch_command(1, ["pretrain", "--steps", "3"], python="py") == ["py", "-m", "tbkin.cli", "pretrain",
                                                                             "--steps", "3"]


def test_several_local_processes_use_standalone_torchrun():
    cmd = launch_command(4, ["pretrain"], python="py")
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in cmd and "--standalone" in cmd
    assert cmd[-3:] == ["-m", "tbkin.cli", "pretrain"]


def test_multi_node_job_starts_one_torchrun_per_node_meeting_on_the_first():
    cmd = launch_command(2, ["finetune-vqa", "--epochs", "1"], hosts=["gpu07", "gpu08", "gpu11"], job_id="4242",
                         python="py")
    srun, torchrun = cmd[:cmd.index("py")], cmd[cmd.index("py"):]
    assert srun[0] == "srun" and "--overlap" in srun
    assert {"--nodes=3", "--ntasks=3", "--ntasks-per-node=1"} <= set(srun)
    assert {"--nnodes=3", "--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-id=tbkin-4242",
            f"--rdzv-endpoint=gpu07:{rendezvous_port('4242')}"} <= set(torchrun)
    assert "--standalone" not in torchrun
    assert torchrun[-5:] == ["-m", "tbkin.cli", "finetune-vqa", "--epochs", "1"]


def test_single_node_job_needs_no_rendezvous_unless_asked():
    assert launch_command(2, ["x"], hosts=["n1"], job_id="7", python="py")[0] == "py"
    assert launch_command(2, ["x"], hosts=["n1"], job_id="7", python="py", force_rendezvous=True)[0] == "srun"


def test_outside_slurm_there_are_no_hosts_and_bad_counts_are_refused():
    assert slurm_hosts({"PATH": os.environ.get("PATH", "")}) == []
    assert rendezvous_port("123") != rendezvous_port("124")
    with pytest.raises(LaunchError, match="at least 1"):
        launch_command(0, ["x"])


@pytest.mark.slow
def test_two_local_processes_join_one_process_group(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1")
    env.pop("SLURM_JOB_ID", None)
    done = subprocess.run([sys.executable, "-m", "tbkin.cli", "launch", "--nproc-per-node", "2", "--module",
                           "ddp_probe", "--", str(tmp_path)], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["sum"] for r in reports] == [3.0, 3.0]  # 1 + 2, all-reduced
