"""Command-line values -> operation parameters, with the AWS CLI v1's rules.

* ``file://PATH`` reads the value from a text file, ``fileb://PATH`` from a binary one
  (``awscli/paramfile.py``; ``--document-source`` is exempt, as in the AWS CLI). The AWS
  CLI v1 also fetches ``http(s)://`` values; ``fleet`` does not (neither does CLI v2).
* Lists of scalars are space-separated values (``--targets arn1 arn2``), or one JSON list.
* Structures, maps and lists of structures take JSON (``{...}`` / ``[...]``) or the
  shorthand syntax (:mod:`fleet.awscli.shorthand`).
* Numbers are converted by argparse; booleans are ``--flag`` / ``--no-flag``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fleet.awscli import shorthand
from fleet.awscli.model import SCALAR_TYPES, Option

#: ``(operation, member)`` whose values are never read from files (``PARAMFILE_DISABLED``).
PARAMFILE_DISABLED = frozenset({("CreateJob", "documentSource")})


class ParamError(ValueError):
    """A value the option cannot take; the message names the option."""

    def __init__(self, cli_name: str, message: str) -> None:
        super().__init__(f"argument {cli_name}: {message}")
        self.cli_name = cli_name
        self.message = message


def load_paramfile(value: str) -> str | bytes | None:
    """The content ``file://...`` / ``fileb://...`` points at; None for other values.

    Raises OSError (or UnicodeDecodeError) when the file cannot be read.
    """
    for prefix, mode in (("file://", "r"), ("fileb://", "rb")):
        if value.startswith(prefix):
            path = os.path.expandvars(os.path.expanduser(value[len(prefix):]))
            with open(path, mode) as f:  # noqa: SIM115 - mode decides str or bytes
                content: str | bytes = f.read()
            return content
    return None


def _paramfile(value: str, cli_name: str) -> str | bytes | None:
    try:
        return load_paramfile(value)
    except UnicodeDecodeError:
        raise ParamError(cli_name, f"Unable to load paramfile ({value}), text contents could "
                         "not be decoded. If this is a binary file, please use the fileb:// "
                         "prefix instead of the file:// prefix.") from None
    except OSError as e:
        raise ParamError(cli_name, f"Unable to load paramfile {value}: {e}") from None


def unpack(operation: str, option: Option, value: Any) -> Any:
    """The parameter value of ``option`` given ``value`` as argparse parsed it."""
    if option.type_name in ("boolean", "integer", "long", "float", "double"):
        return value  # argparse already converted it
    if (operation, option.member) not in PARAMFILE_DISABLED:
        single = value[0] if isinstance(value, list) and len(value) == 1 else value
        if isinstance(single, str):
            loaded = _paramfile(single, option.cli_name)
            if loaded is not None:
                value = loaded
    try:
        if _is_shorthand(option.shape, value):
            return _shorthand(option.shape, value)
        return _unpack(option.shape, value, option.cli_name)
    except shorthand.ShorthandError as e:
        raise ParamError(option.cli_name, str(e)) from None
    except (ValueError, TypeError) as e:
        if isinstance(e, ParamError):
            raise
        raise ParamError(option.cli_name, str(e)) from None


def _json(value: str | bytes, cli_name: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as e:
        shown = value.decode(errors="replace") if isinstance(value, bytes) else value
        raise ParamError(cli_name, f"Invalid JSON: {e}\nJSON received: {shown}") from None


def _looks_like_json(value: Any) -> bool:
    first = value[0] if isinstance(value, list) and value else value
    return isinstance(first, str) and first.strip().startswith(("[", "{"))


def _is_shorthand(shape: Any, value: Any) -> bool:
    """The AWS CLI's ``_should_parse_as_shorthand``: a complex shape, not JSON-looking."""
    if _looks_like_json(value):
        return False
    if shape.type_name == "list":
        return bool(shape.member.type_name in ("structure", "list", "map"))
    return bool(shape.type_name in ("structure", "map"))


def _shorthand(shape: Any, value: Any) -> Any:
    if isinstance(value, list):
        parsed: Any = [shorthand.parse(v, _paramfile_in_shorthand) for v in value]
    else:
        parsed = shorthand.parse(str(value), _paramfile_in_shorthand)
    return shorthand.coerce(parsed, shape)


def _paramfile_in_shorthand(value: str) -> str | bytes | None:
    return _paramfile(value, "shorthand")


def _unpack(shape: Any, value: Any, cli_name: str) -> Any:
    """The AWS CLI's ``_unpack_cli_arg`` for values that are not shorthand."""
    type_name = shape.type_name
    if type_name in SCALAR_TYPES:
        return _scalar(shape, value)
    if type_name in ("structure", "map"):
        if isinstance(value, (str, bytes)) and value.lstrip()[:1] in ("{", b"{"):
            return _json(value, cli_name)
        raise ParamError(cli_name, f"Invalid JSON:\n{value!s}")
    if type_name == "list":
        if isinstance(value, (str, bytes)):
            if value.lstrip()[:1] in ("[", b"["):
                return _json(value, cli_name)
            value = [value]
        elif len(value) == 1 and value[0].strip().startswith("["):
            return _json(value[0], cli_name)
        return [_unpack(shape.member, v, cli_name) for v in value]
    return str(value)


def _scalar(shape: Any, value: Any) -> Any:
    type_name = shape.type_name
    if type_name in ("integer", "long"):
        return int(value)
    if type_name in ("float", "double"):
        return float(value)
    if type_name == "boolean":
        return not (isinstance(value, str) and value.lower() == "false") and bool(value)
    if isinstance(value, bytes) and type_name != "blob":
        return value.decode()
    return value
