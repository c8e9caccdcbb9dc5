"""The configuration base model and its loader: YAML file, then environment.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key
fails at start-up with its name instead of being silently ignored. Values are
merged in this order, later wins:

1. the defaults in the models (documented in docs/config.md),
2. an optional YAML file (``--config PATH`` or ``$CLOUDTUTOR_CONFIG``),
3. environment variables: ``CLOUDTUTOR_<SECTION>__<KEY>`` for the cloud,
   ``CLOUDTUTOR_EDGE__<SECTION>__<KEY>`` for the edge agent (``__`` nests).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

CONFIG_ENV = "CLOUDTUTOR_CONFIG"
DATA_ENV = "CLOUDTUTOR_DATA"  # the data root (models, videos); read by config.common
# Variables under the prefix that are not settings, so not "unknown keys".
NOT_SETTINGS = frozenset({CONFIG_ENV, DATA_ENV})


class Section(BaseModel):
    """Base of every configuration model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True, validate_assignment=True)


class ConfigError(ValueError):
    """The configuration is invalid; the message names each bad key and its source."""


M = TypeVar("M", bound=BaseModel)


def load_config(
    model: type[M],
    *,
    env_prefix: str,
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    reserved: tuple[str, ...] = (),
) -> M:
    """Build ``model`` from defaults, a YAML file, the environment and overrides.

    ``reserved`` names first-level env segments that belong to another root
    (the cloud's ``CLOUDTUTOR_`` prefix contains the edge's ``CLOUDTUTOR_EDGE__``).
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    data: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    if path is not None:
        data = _read_yaml(Path(path))
        for key_path in _leaf_paths(data):
            sources[key_path] = f"file {path}"
    fields = set(model.model_fields)
    for name, raw in sorted(env.items()):
        if not name.startswith(env_prefix) or name in NOT_SETTINGS:
            continue
        parts = tuple(p.lower() for p in name[len(env_prefix):].split("__"))
        if not parts[0] or parts[0] in reserved:
            continue
        if parts[0] not in fields:
            raise ConfigError(f"unknown setting {name!r}: {parts[0]!r} is not one of {sorted(fields)}")
        _deep_set(data, parts, _parse_env_value(raw))
        sources[parts] = f"env {name}"
    if overrides:
        for key, value in overrides.items():
            parts = tuple(key.split("."))
            _deep_set(data, parts, value)
            sources[parts] = "override"
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, not {type(data).__name__}")
    return data


def _parse_env_value(raw: str) -> Any:
    # Scalars stay strings (pydantic's lax mode turns "5" into 5 and "true"
    # into True where the field asks for it); lists and maps come as JSON.
    stripped = raw.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    return raw


def _deep_set(data: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _leaf_paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in data.items():
        here = prefix + (str(key),)
        out.extend(_leaf_paths(value, here) if isinstance(value, Mapping) else [here])
    return out


def _source_of(loc: tuple[str, ...], sources: Mapping[tuple[str, ...], str]) -> str:
    # The key itself or a section holding it; else, for a section-level
    # check, the keys given inside that section.
    for i in range(len(loc), 0, -1):
        if loc[:i] in sources:
            return sources[loc[:i]]
    inside = sorted({src for key, src in sources.items() if key[: len(loc)] == loc})
    return ", ".join(inside) if inside else "default"


def _explain(exc: ValidationError, sources: Mapping[tuple[str, ...], str]) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        where = _source_of(loc, sources)
        dotted = ".".join(loc) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown setting {dotted!r} (from {where})")
        else:
            lines.append(f"invalid setting {dotted!r} (from {where}): {err['msg']}")
    return "; ".join(lines)
