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
from collections.abc import Callable, Hashable
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin

import orjson

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


Converter = Callable[[Any, str], Any]


def _fields(cls: Any) -> tuple[tuple[str, str, Converter], ...]:
    return _fields_of(cls)


@cache
def _fields_of(cls: Hashable) -> tuple[tuple[str, str, Converter], ...]:
    """(python name, wire name, converter) per field, built once per class."""
    assert isinstance(cls, type)
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    return tuple((f.name, camel(f.name), _converter(hints[f.name]))
                 for f in dataclasses.fields(cls))


_SCALARS = (str, int, float, bool)


def encode(value: Any) -> Any:
    """Python value -> JSON-ready value (dataclasses to camelCase dicts, None omitted)."""
    if isinstance(value, _SCALARS) and not isinstance(value, enum.Enum):
        return value
    if hasattr(type(value), "__dataclass_fields__"):
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
    """Compact UTF-8 JSON (orjson: the wire's hot path on both sides)."""
    return orjson.dumps(encode(message))


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
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson is stricter than the JSON grammar in places (escaped lone surrogates, integers
        # past 64 bits): the standard parser has the last word, as before the fast path
        obj = _loads_leniently(text)
    if not isinstance(obj, dict):
        raise WireError(RejectedErrorCode.INVALID_JSON, "payload is not a JSON object")
    return obj


def _loads_leniently(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise WireError(RejectedErrorCode.INVALID_JSON, f"payload is not valid JSON: {e}") from None
    except RecursionError:
        raise WireError(RejectedErrorCode.INVALID_JSON, "payload is nested too deeply") from None


def decode(cls: type[T], obj: Any, *, path: str = "") -> T:
    """JSON object -> dataclass ``cls``; unknown keys are ignored, wrong types are not."""
    if not isinstance(obj, dict):
        raise _bad(path or cls.__name__, "an object", obj)
    kwargs = {}
    for name, wire, convert in _fields(cls):
        value = obj.get(wire)
        if value is not None:
            kwargs[name] = convert(value, f"{path}{wire}")
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


@cache
def _converter(hint: Any) -> Converter:
    """A function checking and converting one JSON value to ``hint`` (built once per type)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(hint) if a is not type(None)]
        return _converter(inner)
    if hint is Any:
        return lambda value, path: value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return lambda value, path: decode(hint, value, path=f"{path}.")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        names = "|".join(m.value for m in hint)

        def to_enum(value: Any, path: str) -> Any:
            try:
                return hint(value)
            except ValueError:
                raise _bad(path, names, value) from None
        return to_enum
    if hint is bool:
        return _checked(lambda v: isinstance(v, bool), "a boolean")
    if hint is int:
        return _to_int
    if hint is float:
        return _checked(lambda v: isinstance(v, int | float) and not isinstance(v, bool),
                        "a number")
    if hint is str:
        return _checked(lambda v: isinstance(v, str), "a string")
    if origin is list:
        (item_hint,) = get_args(hint)
        item = _converter(item_hint)

        def to_list(value: Any, path: str) -> Any:
            if not isinstance(value, list):
                raise _bad(path, "a list", value)
            return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return to_list
    if origin is dict:
        _, value_hint = get_args(hint)
        each = _converter(value_hint)

        def to_dict(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise _bad(path, "an object", value)
            return {k: each(v, f"{path}.{k}") for k, v in value.items()}
        return to_dict
    raise TypeError(f"unsupported wire type {hint!r}")  # a bug in the contract


def _checked(test: Callable[[Any], bool], expected: str) -> Converter:
    def check(value: Any, path: str) -> Any:
        if test(value):
            return value
        raise _bad(path, expected, value)
    return check


def _to_int(value: Any, path: str) -> int:
    # AWS accepts numbers as JSON strings too (the embedded-C Jobs library sends
    # "expectedVersion":"3"), so do we.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_STRING.fullmatch(value):
        return int(value)
    raise _bad(path, "an integer", value)
