"""A tiny dataclass <-> JSON codec for the wire messages.

Field names are snake_case in Python and camelCase on the wire (``client_token`` <->
``clientToken``). ``to_json`` omits ``None`` fields (AWS leaves absent fields out, never
null). ``from_json`` validates types and raises :class:`WireError` naming the field, so a
service can answer ``InvalidRequest`` / ``InvalidJson`` with a useful message.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import types
import typing
from collections.abc import Hashable
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin

from devicesim.wire.enums import RejectedErrorCode

T = TypeVar("T")
_INT_STRING = re.compile(r"-?[0-9]{1,19}")
JsonObject = dict[str, Any]


class WireError(Exception):
    """A message that does not fit the contract; ``code`` is the AWS rejection code."""

    def __init__(self, code: RejectedErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def camel(name: str) -> str:
    head, *tail = name.split("_")
    return head + "".join(p.title() for p in tail)


def _fields(cls: Any) -> tuple[tuple[str, str, Any], ...]:
    return _fields_of(cls)


@cache
def _fields_of(cls: Hashable) -> tuple[tuple[str, str, Any], ...]:
    assert isinstance(cls, type)
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    return tuple((f.name, camel(f.name), hints[f.name]) for f in dataclasses.fields(cls))


def encode(value: Any) -> Any:
    """Python value -> JSON-ready value (dataclasses to camelCase dicts, None omitted)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for name, wire, _ in _fields(type(value)):
            v = getattr(value, name)
            if v is not None:
                out[wire] = encode(v)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


def dumps(message: Any) -> bytes:
    return json.dumps(encode(message), separators=(",", ":")).encode()


def loads_object(payload: bytes | str, *, empty_is_object: bool = True) -> JsonObject:
    """Parse a payload that must be a UTF-8 JSON object (InvalidJson otherwise)."""
    if not payload or (isinstance(payload, bytes | str) and not payload.strip()):
        if empty_is_object:
            return {}
        raise WireError(RejectedErrorCode.INVALID_JSON, "payload is empty")
    try:
        # decode first: json.loads(bytes) would guess UTF-16/32 and pass lone surrogates
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    except UnicodeDecodeError:
        raise WireError(RejectedErrorCode.INVALID_JSON, "payload is not valid UTF-8") from None
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise WireError(RejectedErrorCode.INVALID_JSON, f"payload is not valid JSON: {e}") from None
    except RecursionError:
        raise WireError(RejectedErrorCode.INVALID_JSON, "payload is nested too deeply") from None
    if not isinstance(obj, dict):
        raise WireError(RejectedErrorCode.INVALID_JSON, "payload is not a JSON object")
    return obj


def decode(cls: type[T], obj: Any, *, path: str = "") -> T:
    """JSON object -> dataclass ``cls``; unknown keys are ignored, wrong types are not."""
    if not isinstance(obj, dict):
        raise _bad(path or cls.__name__, "an object", obj)
    kwargs = {}
    for name, wire, hint in _fields(cls):
        if wire in obj and obj[wire] is not None:
            kwargs[name] = _convert(hint, obj[wire], f"{path}{wire}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        missing = [w for n, w, _ in _fields(cls) if n in str(e)]
        field = missing[0] if missing else cls.__name__
        raise WireError(RejectedErrorCode.INVALID_REQUEST, f"{path}{field} is required") from None
    except ValueError as e:  # __post_init__ validation
        raise WireError(RejectedErrorCode.INVALID_REQUEST, str(e)) from None


def _bad(path: str, expected: str, got: Any) -> WireError:
    return WireError(RejectedErrorCode.INVALID_REQUEST,
                     f"{path}: expected {expected}, got {type(got).__name__} {got!r:.40}")


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(hint) if a is not type(None)]
        return _convert(inner, value, path)
    if hint is Any:
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return decode(hint, value, path=f"{path}.")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            names = "|".join(m.value for m in hint)
            raise _bad(path, names, value) from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _bad(path, "a boolean", value)
    if hint is int:
        # AWS accepts numbers as JSON strings too (the embedded-C Jobs library sends
        # "expectedVersion":"3"), so do we.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT_STRING.fullmatch(value):
            return int(value)
        raise _bad(path, "an integer", value)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        raise _bad(path, "a number", value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _bad(path, "a string", value)
    if origin is list:
        if not isinstance(value, list):
            raise _bad(path, "a list", value)
        (item,) = get_args(hint)
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(path, "an object", value)
        _, item = get_args(hint)
        return {k: _convert(item, v, f"{path}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported wire type {hint!r} at {path}")  # a bug in the contract
