"""Paths from the config reach shell commands quoted: spaces, quotes and `$(...)` stay
part of one path, nothing in them runs, and nothing is written outside `results`."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from workflow_helpers import REPO, snakemake, tail, write_override

# One folder name per hazard: a space, both quote characters, a command substitution
# (it would create the file named by $INJECT_MARK if a shell ever ran it).
HOSTILE_PARTS = ("sp ace", "it's \"quoted\"", '$(touch "$INJECT_MARK")')


def hostile_results(tmp_path: Path) -> Path:
    return tmp_path.joinpath(*HOSTILE_PARTS) / "results"


def shell_commands(dry_run_output: str) -> list[str]:
    prefix = "Shell command:"
    return [line[len(prefix):].strip() for line in dry_run_output.splitlines() if line.startswith(prefix)]


def split_paths(commands: list[str], path: Path) -> list[tuple[str, str]]:
    """(command, word) pairs where a shell word holds a piece of ``path`` but not all of it."""
    pieces = ("ace/", "quoted", "touch")
    broken = []
    for cmd in commands:
        try:
            words = shlex.split(cmd)
        except ValueError as exc:  # an unquoted quote in the path: the shell cannot even parse it
            broken.append((cmd, str(exc)))
            continue
        broken += [(cmd, word) for word in words if any(p in word for p in pieces) and str(path) not in word]
    return broken


def test_every_planned_command_keeps_a_hostile_results_path_in_one_word(tmp_path):
    results = hostile_results(tmp_path)
    override, _ = write_override(tmp_path, results=str(results),
                                 data={"root": str(results / "data" / "shapes")})
    proc = snakemake("-n", "-p", "--nolock", "all_results", configfiles=(override,))
    assert proc.returncode == 0, tail(proc)
    commands = shell_commands(proc.stdout + proc.stderr)
    assert len(commands) > 20, tail(proc)  # every rule of the DAG printed its command
    assert not split_paths(commands, results), split_paths(commands, results)[:3]


def test_download_commands_keep_a_hostile_data_path_in_one_word(tmp_path):
    results = hostile_results(tmp_path)
    override, _ = write_override(tmp_path, results=str(results),
                                 data={"root": str(results / "vqa2"), "download_dir": str(results / "dl")})
    ready = results / "data" / "train" / "image_list.json"
    proc = snakemake("-n", "-p", "--nolock", str(ready),
                     configfiles=(REPO / "config" / "vqa2.yaml", override))
    assert proc.returncode == 0, tail(proc)
    commands = shell_commands(proc.stdout + proc.stderr)
    assert any(c.startswith("tbkin download") for c in commands), tail(proc)
    assert any(c.startswith("tbkin check-data") for c in commands), tail(proc)
    assert not split_paths(commands, results), split_paths(commands, results)[:3]


def test_dataset_rule_runs_with_a_hostile_results_path_and_writes_only_inside_it(tmp_path):
    results = hostile_results(tmp_path)
    override, _ = write_override(tmp_path, results=str(results),
                                 data={"root": str(results / "data" / "shapes")})
    marker = tmp_path / "INJECTED"
    repo_before = set(os.listdir(REPO))
    ready = results / "data" / "generate_shapes.json"
    proc = snakemake("--cores", "1", "--nolock", str(ready), configfiles=(override,),
                     env={**os.environ, "INJECT_MARK": str(marker)})
    assert proc.returncode == 0, tail(proc)
    assert ready.is_file() and (results / "logs" / "data" / "generate_shapes.log").is_file()
    assert not marker.exists(), "a command substitution in the results path was run"
    outside = [str(p) for p in tmp_path.rglob("*")
               if p.is_file() and p != override and results not in p.parents]
    assert not outside, outside
    stray = {name for name in set(os.listdir(REPO)) - repo_before if not name.startswith(".")}
    assert not stray, f"files created in the repository: {stray}"
