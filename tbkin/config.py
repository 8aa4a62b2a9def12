"""Load the workflow config and validate it against the JSON schema.

The Snakefile calls :func:`validate` before any job starts; the CLI and tests call
:func:`load_config`. Errors name the offending key and the file it came from.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

import jsonschema

from tbkin.errors import TbkinError
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


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


def validate(config: Mapping[str, Any], sources: Sequence[str | Path] = ("config",)) -> dict:
    """Validate ``config`` (filling schema defaults); raise ConfigError naming key and file."""
    config = copy.deepcopy(dict(config))
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        where = ", ".join(str(s) for s in sources)
        lines = [f"invalid config in {where}:"]
        for err in errors:
            if err.validator == "additionalProperties":
                what = "unknown key (misspelt?)"
            elif err.validator == "required":
                what = "required key is missing"
            else:
                what = err.message
            lines.append(f"  key '{_key_path(err)}': {what}")
        raise ConfigError("\n".join(lines))
    return config


def deep_merge(base: dict, override: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(*paths: str | Path) -> dict:
    """Read one or more YAML files (later ones override earlier ones) and validate."""
    merged: dict = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
        merged = deep_merge(merged, data)
    return validate(merged, paths)
