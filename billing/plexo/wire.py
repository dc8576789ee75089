"""JSON on the wire: Decimal amounts as JSON numbers out, Decimal in; tolerant shape helpers.

Plexo wants `"total": 590.00` (a number with the currency's decimals). The stdlib encoder can
only write a Decimal as a string or through float, so the body is written by `encode_json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

# Keys under which a paginated list may be wrapped ({"items": [...], "page": 1, ...}).
LIST_KEYS = ("items", "data", "results", "content")


def encode_json(value: object) -> bytes:
    """Serialise a JSON body; a Decimal becomes a bare number with its exact digits.

    Refuses floats (no float on the money path), non-finite Decimals and non-string keys.
    Separators match `json.dumps` defaults (`", "` and `": "`).
    """

    def encode(item: object) -> str:
        if item is None or isinstance(item, bool | str):
            return json.dumps(item)
        if isinstance(item, int):
            return str(item)
        if isinstance(item, Decimal):
            if not item.is_finite():
                raise ValueError(f"cannot send non-finite amount {item}")
            return format(item, "f")
        if isinstance(item, float):
            raise TypeError("float in a Plexo body: use Decimal (money never goes through float)")
        if isinstance(item, Mapping):
            parts = []
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise TypeError(f"JSON object keys must be str, got {type(key).__name__}")
                parts.append(f"{json.dumps(key)}: {encode(inner)}")
            return "{" + ", ".join(parts) + "}"
        if isinstance(item, list | tuple):
            return "[" + ", ".join(encode(inner) for inner in item) + "]"
        raise TypeError(f"cannot encode {type(item).__name__} as JSON")

    return encode(value).encode("utf-8")


def decode_json(content: bytes) -> Any:
    """Parse a response body; numbers with a fraction become Decimal, never float."""
    return json.loads(content, parse_float=Decimal)


def camel_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level keys in camelCase (`ReferenceId` -> `referenceId`); camelCase wins on a clash."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            continue
        camel = key[0].lower() + key[1:]
        if camel not in out or key == camel:
            out[camel] = value
    return out


def field(data: Mapping[str, Any], name: str) -> Any:
    """A camelCase field read from a mapping that may use PascalCase; None when absent."""
    if name in data:
        return data[name]
    return data.get(name[0].upper() + name[1:])


def unwrap_list(body: Any) -> list[Any]:
    """A list response as a list: a bare array, or wrapped under items/data/results/content.

    Raises ValueError when the body is neither, so that a changed response shape is noticed
    instead of being read as "empty".
    """
    if isinstance(body, list):
        return body
    if isinstance(body, Mapping):
        for key in LIST_KEYS:
            inner = field(body, key)
            if isinstance(inner, list):
                return inner
    raise ValueError("response is not a list (nor a list under items/data/results)")
