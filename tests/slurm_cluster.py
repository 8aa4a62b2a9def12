"""A throw-away SLURM cluster on 127.0.0.1, for tests: one node, or several.

Uses Debian's ``slurmctld``, ``slurmd`` and ``munge`` packages (installed with
``apt-get`` when missing, which needs root). Everything the cluster writes lives in
one fresh temporary folder: its own munge key and socket, ``slurm.conf``, state,
spool, logs and pid files, and free TCP ports, so it neither touches nor collides
with a system-wide SLURM or munge, nor with a second test cluster.
The daemons run in the foreground as children of this process and are stopped by
:meth:`SlurmCluster.stop` (also on failure: use it as a context manager).

Several nodes (``SlurmCluster(nodes=2)``) are several ``slurmd`` daemons on this
machine, started with ``slurmd -N <node>``, each on its own port and with its own
spool folder, pid file and log (``%n`` in slurm.conf); Debian's build supports that.
The first node is named after this machine, so that its name resolves (jobs use it,
e.g. as a rendezvous address); the others are ``<host>-node2`` ... and are reached
only through their NodeAddr, 127.0.0.1. Every node offers all of this machine's
CPUs, memory and (fake) GPUs, so a job spanning nodes oversubscribes the machine.

Client commands (``sbatch``, ``squeue``, ``srun`` ...) find the cluster through
``SLURM_CONF``; :attr:`SlurmCluster.env` is ``os.environ`` plus that variable, and a
folder first on ``PATH`` with an ``srun`` wrapper that sets it again: inside a job,
Snakemake's jobstep executor removes every ``SLURM_*`` variable but a few before it
calls ``srun``, and a real cluster's nodes find ``/etc/slurm/slurm.conf`` instead,
which this throw-away cluster leaves alone.

    with SlurmCluster() as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env, check=True)
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "debug"
# Stand-ins for GPU device files: SLURM schedules `--gpus` requests against them and
# sets CUDA_VISIBLE_DEVICES, so GPU rules of a profile are submitted unchanged; with
# TaskPlugin=task/none nothing is constrained, and code sees no real GPU.
FAKE_GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


class ClusterUnavailable(RuntimeError):
    """The cluster did not come up (a daemon exited, or the node never became idle)."""


class CannotInstall(ClusterUnavailable):
    """SLURM is not installed and this machine cannot install it (not root, or no apt-get)."""


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, "mungekey", "sinfo", "sbatch") if shutil.which(name) is None]


def install_packages(timeout: float = 300) -> None:
    """Install Debian's SLURM and munge packages if a binary is missing (root + apt-get)."""
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise CannotInstall(f"SLURM binaries {missing_binaries()} missing and not root, cannot apt-get install")
    if shutil.which("apt-get") is None:
        raise CannotInstall(f"SLURM binaries {missing_binaries()} missing and no apt-get on this machine")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    if missing_binaries():
        raise RuntimeError(f"still missing after apt-get install: {missing_binaries()}")


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 (held open together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_hardware() -> str:
    """``slurmd -C``'s description of this machine (CPUs, sockets, cores, RealMemory)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    line = next(l for l in out.splitlines() if l.startswith("NodeName="))
    # Drop the machine's own name; keep CPUs=... RealMemory=...
    return line.split(None, 1)[1]


SLURM_CONF = """\
# Test cluster on 127.0.0.1 (written by tests/slurm_cluster.py)
ClusterName=tbkintest
GresTypes=gpu
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Start jobs within a second or two of submission (defaults: every 30-60 s).
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
ReturnToService=2
# Keep finished jobs visible to squeue (the executor polls squeue, not sacct).
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
{node_lines}PartitionName={partition} Nodes={nodes} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """Start with :meth:`start` (or ``with``); always :meth:`stop`."""

    def __init__(self, base_dir: str | Path | None = None, start_timeout: float = 60, fake_gpus: int = 2,
                 nodes: int = 1):
        if not 0 <= fake_gpus <= len(FAKE_GPU_FILES):
            raise ValueError(f"fake_gpus must be between 0 and {len(FAKE_GPU_FILES)}")
        if nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        self.fake_gpus = fake_gpus
        # The first node is named after this machine, as on a real cluster, so that its
        # name resolves (jobs use it, e.g. as a rendezvous address; SLURM lists a job's
        # nodes in the order of slurm.conf). Further nodes are more slurmd daemons here.
        self.host = socket.gethostname().split(".")[0]
        self.nodes = [self.host] + [f"{self.host}-node{i}" for i in range(2, nodes + 1)]
        self.node = self.nodes[0]
        self.root = Path(tempfile.mkdtemp(prefix="tbkin-slurm-", dir=base_dir))
        self.start_timeout = start_timeout
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.bin = self.root / "bin"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf),
                        PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        # The daemons get a bare system environment, as under systemd: whatever a job
        # sees beyond that comes from the submitting process (sbatch --export).
        self.daemon_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "SLURM_CONF": str(self.conf), "LANG": "C.UTF-8"}
        self._procs: dict[str, subprocess.Popen] = {}

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        install_packages()
        for sub in ("state", "spool", "log", "bin"):
            (self.root / sub).mkdir(mode=0o700)
        self._write_srun_wrapper()
        (self.root / "munge").mkdir(mode=0o755)  # munged wants its socket folder searchable
        self._start_munge()
        ctld_port, *slurmd_ports = free_ports(1 + len(self.nodes))
        # slurmd reads gres.conf from the folder of slurm.conf.
        (self.root / "gres.conf").write_text("AutoDetect=off\n" + "".join(
            f"NodeName={node} Name=gpu File={dev}\n"
            for node in self.nodes for dev in FAKE_GPU_FILES[:self.fake_gpus]))
        # Every node offers all of this machine's CPUs and memory (slurmd checks them).
        hardware, gres = node_hardware(), f"Gres=gpu:{self.fake_gpus} " if self.fake_gpus else ""
        self.conf.write_text(SLURM_CONF.format(
            host=self.host, ctld_port=ctld_port, munge_socket=self.munge_socket, root=self.root,
            partition=PARTITION, nodes=",".join(self.nodes), node_lines="".join(
                f"NodeName={node} NodeAddr=127.0.0.1 NodeHostname={self.host} Port={port} {hardware} {gres}"
                "State=UNKNOWN\n" for node, port in zip(self.nodes, slurmd_ports)),
        ))
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        for node in self.nodes:
            (self.root / "spool" / node).mkdir(mode=0o700)
            self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-N", node, "-f", str(self.conf)])
        self._wait_idle()

    def stop(self) -> None:
        """Stop every job and daemon of this cluster (SIGTERM, then SIGKILL); idempotent."""
        ctld = self._procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            # Job steps (slurmstepd) outlive a stopped slurmd by design: cancel them first.
            subprocess.run(["scancel", "--full", "--quiet", f"--user={os.getuid()}"], env=self.env,
                           capture_output=True, timeout=20)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.run(
                    "squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,SUSPENDED", check=False).stdout.strip():
                time.sleep(0.5)
        for name in (*(f"slurmd-{node}" for node in self.nodes), "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        # Anything still carrying this cluster's SLURM_CONF was started by it.
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftover_pids(self) -> list[int]:
        """Processes (daemons, job steps, jobs) whose environment names this cluster's slurm.conf."""
        marker = f"SLURM_CONF={self.conf}".encode() + b"\0"
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes() + b"\0"
            except OSError:  # gone, or not ours to read
                continue
            if marker in environ:
                pids.append(int(entry.name))
        return pids

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------
    @property
    def partition(self) -> str:
        return PARTITION

    def hardware(self) -> dict[str, int]:
        """CPUs, RealMemory (MB) and (fake) GPUs of each node, as configured."""
        text = self.conf.read_text()
        return {
            "cpus": int(re.search(r"\bCPUs=(\d+)", text).group(1)),
            "mem_mb": int(re.search(r"\bRealMemory=(\d+)", text).group(1)),
            "gpus": self.fake_gpus,
        }

    def run(self, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        """A client command (sinfo, sbatch, ...) against this cluster."""
        return subprocess.run(list(cmd), env=self.env if env is None else env, capture_output=True, text=True,
                              check=check, timeout=30)

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {path.name} ---\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def slurmd_log(self, node: str) -> str:
        """The log of one node's slurmd (e.g. its "launch task StepId=..." lines)."""
        path = self.root / "log" / f"slurmd-{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_srun_wrapper(self) -> None:
        srun = shutil.which("srun", path=self.daemon_env["PATH"])
        wrapper = self.bin / "srun"
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf}\nexport SLURM_CONF\nexec {srun} "$@"\n')
        wrapper.chmod(0o755)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "wb")
        self._procs[name] = subprocess.Popen(cmd, env=self.daemon_env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        log.close()

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True, timeout=30)
        key.chmod(0o400)
        self._spawn("munged", [
            "munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
        ])
        self._wait(lambda: self.munge_socket.exists(), "munged socket")

    def _wait_idle(self) -> None:
        def nodes_idle() -> bool:
            out = self.run("sinfo", "--noheader", "--Node", "--format=%N %T", check=False).stdout
            states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
            return all(states.get(node, "").rstrip("*") == "idle" for node in self.nodes)

        self._wait(nodes_idle, f"nodes {','.join(self.nodes)} idle in sinfo")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ClusterUnavailable(f"{name} exited with {proc.returncode} while waiting for {what}\n"
                                             + self.logs() + self._stdout_logs())
            if ready():
                return
            time.sleep(0.5)
        raise ClusterUnavailable(f"timed out after {self.start_timeout}s waiting for {what}\n" + self.logs()
                                 + self._stdout_logs())

    def _stdout_logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*.stdout")):
            parts.append(f"--- {path.name} ---\n" + path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)
