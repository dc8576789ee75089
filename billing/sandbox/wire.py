"""JSON on the wire: Decimal in and out (never float), and Plexo's lenient key casing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

# Keys whose values are the caller's own data: their keys are kept exactly as sent.
_OPAQUE_KEYS = frozenset({"metadata"})


class BadJson(ValueError):
    """The request body is not a JSON object."""


def _refuse_constant(name: str) -> Any:
    raise BadJson(f"{name} is not allowed in JSON")


def loads_object(body: bytes) -> dict[str, Any]:
    """Parse a request body into a dict, numbers with a fraction as Decimal, keys camelCased."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_float=Decimal, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadJson("the body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise BadJson("the body must be a JSON object")
    normalized = camel_keys(value)
    assert isinstance(normalized, dict)
    return normalized


def camel_keys(value: Any) -> Any:
    """Lower the first letter of every key (ReferenceId -> referenceId), metadata excepted."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = key[:1].lower() + key[1:] if isinstance(key, str) else key
            out[name] = item if name in _OPAQUE_KEYS else camel_keys(item)
        return out
    if isinstance(value, list):
        return [camel_keys(item) for item in value]
    return value


def dumps(value: Any) -> str:
    """Serialize to JSON, writing a Decimal as a JSON number with its exact digits ("590.00")."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("cannot write a non-finite Decimal as JSON")
        return str(value)
    if isinstance(value, int | str):
        return json.dumps(value)
    if isinstance(value, float):  # never money: durations and probabilities only
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    if isinstance(value, datetime):
        return json.dumps(iso(value))
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with a Z, millisecond precision (the shape Plexo's bodies use)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
