"""Reading a TOML table and ``KI67NODE_*`` variables into a settings dataclass.

Generic over the section dataclasses of :mod:`daemon.settings`: each value is
checked against the field's type and every problem is collected with its key;
unknown keys are problems, retired keys (:data:`RETIRED_KEYS`) only a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV_PREFIX = "KI67NODE_"
# Keys that nothing reads any more: accepted (old files stay valid), warned about, ignored.
RETIRED_KEYS = {
    "node.dimse_timeout_seconds": "nothing reads it (node.network_timeout_seconds bounds "
    "every read of an association); remove it from the configuration",
}


def parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_env(
    raw: dict[str, Any],
    env: Mapping[str, str],
    sections: Collection[str],
    problems: list[tuple[str, str]],
) -> None:
    """``KI67NODE_<SECTION>__<KEY>`` values (TOML syntax, else text) into ``raw``."""
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        section, key = section.lower(), key.lower()
        if section not in sections:
            problems.append((name, f"unknown section '{section}'"))
            continue
        raw.setdefault(section, {})[key] = parse_env_value(value)


def coerce(key: str, value: Any, annotation: Any, problems: list[tuple[str, str]]) -> Any:
    """``value`` as the field's type, else None with the problem recorded."""
    ann = str(annotation)
    if ann == "bool":
        if isinstance(value, bool):
            return value
        problems.append((key, f"must be true or false, got {value!r}"))
    elif ann == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append((key, f"must be an integer, got {value!r}"))
    elif ann == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        problems.append((key, f"must be a number, got {value!r}"))
    elif ann == "str":
        if isinstance(value, str):
            return value
        problems.append((key, f"must be a string, got {value!r}"))
    elif ann == "Path":
        if isinstance(value, str) and value:
            return Path(value)
        problems.append((key, f"must be a non-empty path, got {value!r}"))
    elif ann.startswith("tuple[str"):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        problems.append((key, f"must be a list of strings, got {value!r}"))
    else:  # pragma: no cover - programming error
        raise TypeError(f"unsupported settings type {ann} for {key}")
    return None


def parse_section(name: str, cls: type, raw: Any, problems: list[tuple[str, str]]) -> Any:
    """One TOML table as the dataclass ``cls``: unknown keys are problems, retired ones warnings."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        problems.append((name, "must be a table"))
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if f"{name}.{key}" in RETIRED_KEYS:
            log.warning("config key %s.%s is retired: %s", name, key, RETIRED_KEYS[f"{name}.{key}"])
            continue
        if key not in fields:
            problems.append((f"{name}.{key}", f"unknown key (known: {', '.join(fields)})"))
            continue
        coerced = coerce(f"{name}.{key}", value, fields[key].type, problems)
        if coerced is not None:
            kwargs[key] = coerced
    return cls(**kwargs)
