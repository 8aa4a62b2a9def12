"""Load the workflow config and validate it against the JSON schema.

The Snakefile calls :func:`validate` before any job starts; the CLI and tests call
:func:`load_config`. Errors name the offending key and the file it came from.
Numbers must be finite: YAML's ``.nan`` and ``.inf`` pass every ``minimum`` /
``maximum`` of a JSON schema, so they are refused here, naming the key.

``tbkin check-config FILE...`` validates config files the way the workflow merges
them (``config/config.yaml`` first) and names the file and line of a YAML error,
which Snakemake's own message for ``--configfile`` does not.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import jsonschema

from tbkin.errors import TbkinError
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "config.yaml"


class ConfigError(TbkinError, ValueError):
    """A config file has a missing, misspelt, mistyped or out-of-range key."""


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        # The message lists the unexpected key(s); point at them, not at their parent.
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts.append(",".join(extra))
    elif error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        parts.append(",".join(missing))
    return ".".join(parts) or "<top level>"


def _is_non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _non_finite_numbers(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, float]]:
    """(key path, value) of every NaN / infinity anywhere in the config."""
    if _is_non_finite(value):
        yield ".".join(path) or "<top level>", value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _non_finite_numbers(item, (*path, str(key)))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _non_finite_numbers(item, (*path, str(index)))


def _is_hash_read_as_number(err: jsonschema.ValidationError) -> bool:
    path = list(err.absolute_path)
    return (len(path) == 3 and path[0] == "downloads" and path[2] == "sha256"
            and isinstance(err.instance, (int, float)) and not isinstance(err.instance, bool))


def validate(config: Mapping[str, Any], sources: Sequence[str | Path] = ("config",)) -> dict:
    """Validate ``config`` (filling schema defaults); raise ConfigError naming key and file."""
    config = copy.deepcopy(dict(config))
    validator = jsonschema.Draft202012Validator(load_schema())
    lines = [f"  key '{key}': {value} is not a finite number" for key, value in _non_finite_numbers(config)]
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    for err in errors:
        if _is_non_finite(err.instance):
            continue  # reported above, once
        if err.validator == "additionalProperties":
            what = "unknown key (misspelt?)"
        elif err.validator == "required":
            what = "required key is missing"
        elif _is_hash_read_as_number(err):
            # YAML reads an all-digit hash as a number (and drops leading zeros): it
            # cannot be turned back into the text that was meant.
            what = f"{err.instance!r} was read as a number; quote the hash so that YAML keeps it as text"
        else:
            what = err.message
        lines.append(f"  key '{_key_path(err)}': {what}")
    if lines:
        where = ", ".join(str(s) for s in sources)
        raise ConfigError("\n".join([f"invalid config in {where}:", *lines]))
    return config


def typed_overrides(overrides: Mapping[str, Any]) -> dict:
    """Command-line ``--config`` values with every text leaf read as a YAML scalar.

    Snakemake reads ``--config finetune="{threshold: 0.1}"`` with YAML's base loader,
    which keeps every leaf as text ('0.1'); a config file would give the number.
    """
    def typed(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: typed(item) for key, item in value.items()}
        if isinstance(value, list):
            return [typed(item) for item in value]
        if isinstance(value, str):
            try:
                parsed = yaml.safe_load(value) if value.strip() else value
            except yaml.YAMLError:
                return value
            if isinstance(parsed, str):  # YAML 1.1 reads '1e-3' as text; a number was meant
                try:
                    return float(parsed)
                except ValueError:
                    return parsed
            return parsed
        return value

    return {key: typed(value) for key, value in overrides.items()}


def deep_merge(base: dict, override: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | Path) -> dict:
    """The mapping a YAML (or JSON) config file holds; ConfigError naming the file and line."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error_message(path, exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys at top level, not {type(data).__name__}")
    return data


def _yaml_error_message(path: str | Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = "; ".join(p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p) or str(exc)
    hint = ""
    if "\t" in problem or "'\\t'" in problem:
        hint = " (YAML indents with spaces, never tabs)"
    return f"config file {where}: not valid YAML: {problem}{hint}"


def load_config(*paths: str | Path) -> dict:
    """Read one or more YAML files (later ones override earlier ones) and validate."""
    merged: dict = {}
    for path in paths:
        merged = deep_merge(merged, read_config_file(path))
    return validate(merged, paths)


# ---- a stage's settings, passed whole -------------------------------------------

def settings_from_mapping(cls: type, values: Mapping[str, Any], what: str) -> Any:
    """Settings dataclass ``cls`` from ``values`` (a config section passed whole to a command).

    Unknown keys are an error naming them; missing ones take the dataclass defaults;
    lists become tuples where the field's default is a tuple.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{what}: expected a mapping of settings, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{what}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for key, value in values.items():
        default = fields[key].default
        kwargs[key] = tuple(value) if isinstance(value, list) and isinstance(default, tuple) else value
    return cls(**kwargs)


def settings_from_json(cls: type, text: str, what: str) -> Any:
    """:func:`settings_from_mapping` of a JSON object given on the command line."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: not a JSON object: {exc}") from None
    return settings_from_mapping(cls, values, what)


# ---- CLI: tbkin check-config -----------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configfiles", nargs="*", metavar="FILE",
                        help="config files as given to snakemake --configfile (later ones override earlier ones)")
    parser.add_argument("--no-default", action="store_true",
                        help=f"do not read {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parent.parent)} first")


def run(args: argparse.Namespace) -> int:
    paths = ([] if args.no_default else [DEFAULT_CONFIG]) + [Path(p) for p in args.configfiles]
    if not paths:
        raise ConfigError("check-config: no config file given")
    load_config(*paths)
    print(f"config is valid: {', '.join(map(str, paths))}", file=sys.stderr)
    return 0
