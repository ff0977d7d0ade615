"""Reading configs: YAML files, `--set key.path=value` overrides, flattened keys, and validation errors worded
as one line per problem that names the key path and what is allowed there."""

from __future__ import annotations

import reprlib
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config problem, worded for one line on stderr."""


def set_by_path(tree: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c = value` inside nested dicts, creating levels as needed."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {key!r} holds a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` with the value read as YAML, so lists, numbers and booleans work. Anchors and aliases are
    refused: a one-line value never needs them, and a few nested aliases (a "billion laughs") expand to billions."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    try:
        if any(isinstance(token, (yaml.AliasToken, yaml.AnchorToken)) for token in yaml.scan(raw, Loader=yaml.SafeLoader)):
            raise ConfigError(f"--set {key.strip()}: YAML anchors and aliases (&name, *name) are not accepted in a "
                              "--set value; write the value out")
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({err.__class__.__name__})") from None


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    for text in overrides:
        set_by_path(tree, *parse_override(text))
    return tree


def load_yaml(path: str) -> dict:
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _config_model(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds, also where it is optional (`DesignConfig | None`)."""
    for candidate in typing.get_args(annotation) or (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _allowed_keys(model_cls: type[BaseModel], path: tuple) -> list[str]:
    cls = model_cls
    for key in path:
        cls = _config_model(getattr(cls.model_fields.get(str(key)), "annotation", None))
        if cls is None:
            return []
    return sorted(cls.model_fields)


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxstring, _SHOWN.maxother = 3, 8, 8, 80, 80
MAX_SHOWN = 200


def shown_value(value: Any) -> str:
    """A given value for an error line, bounded: in full, a huge value (YAML aliases expand) takes minutes to print."""
    text = _SHOWN.repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def describe_validation_error(err: ValidationError, model_cls: type[BaseModel], prefix: str = "") -> str:
    """One line per problem, each naming the key path and what is allowed."""
    lines = []
    for problem in err.errors():
        loc = tuple(problem["loc"])
        key = prefix + ".".join(str(p) for p in loc)
        if problem["type"] == "extra_forbidden":
            allowed = _allowed_keys(model_cls, loc[:-1])
            lines.append(f"{key}: unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else ""))
            continue
        message = problem["msg"].removeprefix("Value error, ")
        given = problem.get("input")
        shown = "" if isinstance(given, dict) else f" (got {shown_value(given)})"
        lines.append(f"{key or '(config)'}: {message}{shown}")
    return "; ".join(lines)


def validate(model_cls: type[BaseModel], data: dict, prefix: str = ""):
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, model_cls, prefix)) from None


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b.c': value}: the form trial params take in MLflow and Parquet."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat
