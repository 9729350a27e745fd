"""Small type checks the protocol adapters share: each failure is a 400 naming the field.

Both adapters check every field the router reads, translates or forwards to a local backend, so a
wrong type is the client's 400 with the field's path, never a 500 from deep inside a translator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

from ..errors import InvalidRequestError

# Model names are short (``claude-sonnet-4-5-20250929``); a longer one is not a model name.
MAX_MODEL_CHARS = 256
# Free-form JSON the router translates (tool inputs, tool schemas) nests a handful of levels;
# Python's JSON encoder and decoder stop near 1,000, so a limit well below keeps them working.
MAX_JSON_DEPTH = 64

_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
          float: "a number", type(None): "null"}


def kind(value: Any) -> str:
    """A JSON name for a value's type, for error messages."""
    return _KINDS.get(type(value), type(value).__name__)


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fail(field: str, expected: str, value: Any) -> InvalidRequestError:
    return InvalidRequestError(f"{field}: expected {expected}, found {kind(value)}")


def model_name(value: Any, field: str = "model") -> str:
    if not isinstance(value, str) or not value:
        raise fail(field, "a non-empty string", value)
    if len(value) > MAX_MODEL_CHARS:
        raise InvalidRequestError(f"{field}: longer than {MAX_MODEL_CHARS} characters; not a model name")
    return value


def string(obj: dict[str, Any], key: str, field: str, *, required: bool = False, non_empty: bool = False) -> None:
    """``obj[key]`` is a string (and present, and not empty, when asked)."""
    if key not in obj:
        if required:
            raise InvalidRequestError(f"{field}.{key}: Field required")
        return
    value = obj[key]
    if not isinstance(value, str) or (non_empty and not value):
        raise fail(f"{field}.{key}", "a non-empty string" if non_empty else "a string", value)


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def is_object(value: Any) -> bool:
    return isinstance(value, dict)


def is_string(value: Any) -> bool:
    return isinstance(value, str)


def optional(obj: dict[str, Any], key: str, field: str, check: Callable[[Any], bool], expected: str) -> None:
    """``obj[key]``, when present and not null, passes *check*; *field* is obj's own path ("" at the top)."""
    value = obj.get(key)
    if value is not None and not check(value):
        raise fail(f"{field}.{key}" if field else key, expected, value)


def shallow_json(value: Any, field: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse free-form JSON nested deeper than *limit* levels."""
    if not _within(value, limit):
        raise InvalidRequestError(f"{field}: nested deeper than {limit} levels")


def _within(node: Any, levels: int) -> bool:
    # Recursion is bounded by *levels*; scalars, the bulk of any tool input, cost one type check.
    if levels == 0:
        return False
    kind_ = type(node)
    values = node.values() if kind_ is dict else node if kind_ is list else ()
    for v in values:
        t = type(v)
        if (t is dict or t is list) and not _within(v, levels - 1):
            return False
    return True
