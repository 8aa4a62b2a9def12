"""Run the repository's Snakemake workflow from tests, with results in a temp folder.

The workflow runs from the repository (its Snakefile, rules and config are used as a
user would), on ``config/test.yaml`` plus an override that moves ``results`` and
``data.root`` below the test's temporary folder, so tests never touch ``results-test/``
of the checkout nor each other's outputs.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TEST_CONFIG = REPO / "config" / "test.yaml"


def tool_env(base: dict | None = None) -> dict:
    """The environment ``make test`` gives: the venv's ``bin`` (``tbkin``, ``snakemake``) first on PATH."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def deep_update(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_override(folder: Path, name: str = "override.yaml", **sections) -> tuple[Path, Path]:
    """Config override putting results (and the generated dataset) below ``folder``.

    Extra keyword arguments are merged into the override, e.g.
    ``features={"shards": 1}``. Returns (override file, results folder).
    """
    results = folder / "results"
    test_cfg = yaml.safe_load(TEST_CONFIG.read_text())
    data = dict(test_cfg.get("data", {}), root=str(results / "data" / "shapes"))
    override = deep_update({"results": str(results), "data": data}, sections)
    path = folder / name
    path.write_text(yaml.safe_dump(override))
    return path, results


def snakemake(*args: str, configfiles: tuple[Path, ...] = (), env: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m snakemake`` in the repository with the test config (+ overrides)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO)]
    # --configfile takes several values: it goes last so that nothing after it is read as one.
    cmd += [*args, "--configfile", str(TEST_CONFIG), *map(str, configfiles)]
    return subprocess.run(cmd, cwd=REPO, env=tool_env(env), capture_output=True, text=True, timeout=timeout)


def tail(proc: subprocess.CompletedProcess, chars: int = 6000) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-chars:]}\n--- stderr ---\n{proc.stderr[-chars:]}"


def rule_names() -> list[str]:
    proc = snakemake("--list-rules")
    assert proc.returncode == 0, tail(proc)
    # One rule a line, a docstring's first line in parentheses after the name.
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def planned_rules(proc: subprocess.CompletedProcess) -> set[str]:
    """Rules with a job in a (dry) run's output."""
    return set(re.findall(r"^rule (\w+):", proc.stdout + proc.stderr, re.MULTILINE))
