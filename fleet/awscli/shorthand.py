"""The AWS CLI's shorthand syntax: ``--timeout-config inProgressTimeoutInMinutes=30``,
``--tags Key=a,Value=b Key=c,Value=d``, ``--abort-config 'criteriaList=[{action=CANCEL}]'``.

The grammar and the token classes are those of the AWS CLI v1 (``awscli/shorthand.py``,
Apache-2.0), so a value means the same thing to ``fleet`` as to ``aws``::

    parameter     = keyval *("," keyval)
    keyval        = key ["@"] "=" [values]          ; "@=": value may be file:// / fileb://
    values        = csv-list / explicit-list / hash-literal
    csv-list      = first-value *("," second-value) ; backtracks at "a=b,c=d"
    explicit-list = "[" [values *("," values)] "]"
    hash-literal  = "{" [keyval *("," keyval)] "}"

Parsing is syntactic; :func:`coerce` then applies the model the way the AWS CLI's
``BackCompatVisitor`` does (``"30"`` -> ``30`` for integers, ``x`` -> ``[x]`` for lists,
``true``/``false`` for booleans).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any


class ShorthandError(ValueError):
    """A shorthand value that does not parse; the message points at the offending char."""

    def __init__(self, message: str, value: str, index: int, hint: str = "") -> None:
        super().__init__(f"{message} for input:\n{_locate(value, index)}{hint}")


def _locate(value: str, index: int) -> str:
    """``value`` with a caret under ``index`` (on the line holding it)."""
    line_start = value.rfind("\n", 0, index) + 1
    line_end = value.find("\n", index)
    consumed, remaining = (value, "") if line_end < 0 else (value[:line_end], value[line_end:])
    return f"{consumed}\n{' ' * (index - line_start)}^{remaining}"


_KEY_CHARS = frozenset(string.ascii_letters + string.digits + "-_.#/:")
_START_WORD = r"\!\#-&\(-\+\--\<\>-Z\\\\-z\u007c-\uffff"
_FIRST_FOLLOW = r"\s\!\#-&\(-\+\--\\\\\^-\|~-\uffff"
_SECOND_FOLLOW = r"\s\!\#-&\(-\+\--\<\>-\uffff"
_ESCAPED_COMMA = r"(\\,)"
_FIRST_VALUE = re.compile(
    f"({_ESCAPED_COMMA}|[{_START_WORD}])({_ESCAPED_COMMA}|[{_FIRST_FOLLOW}])*")
_SECOND_VALUE = re.compile(
    f"({_ESCAPED_COMMA}|[{_START_WORD}])({_ESCAPED_COMMA}|[{_SECOND_FOLLOW}])*")
_SINGLE_QUOTED = re.compile(r"'(?:\\'|[^'])*'")
_DOUBLE_QUOTED = re.compile(r'"(?:\\"|[^"])*"')

#: Reads ``file://`` / ``fileb://`` values of ``key@=value`` pairs; None when not a file.
FileLoader = Callable[[str], "str | bytes | None"]


class _Parser:
    def __init__(self, value: str, load_file: FileLoader | None) -> None:
        self.value = value
        self.i = 0
        self._load_file = load_file
        self._from_file = False

    # -- scanning ------------------------------------------------------------------------

    def at_eof(self) -> bool:
        return self.i >= len(self.value)

    def current(self) -> str | None:
        return None if self.at_eof() else self.value[self.i]

    def skip_space(self) -> None:
        while not self.at_eof() and self.value[self.i] in string.whitespace:
            self.i += 1

    def expect(self, char: str, *, space: bool = False) -> None:
        if space:
            self.skip_space()
        actual = "EOF" if self.at_eof() else self.value[self.i]
        if actual != char:
            raise ShorthandError(f"Expected: '{char}', received: '{actual}'", self.value, self.i)
        self.i += 1
        if space:
            self.skip_space()

    def match(self, regex: re.Pattern[str], name: str) -> str:
        found = regex.match(self.value, self.i)
        if found is None:
            raise ShorthandError(f"Expected: '<{name}>', received: '<none>'", self.value, self.i)
        self.i = found.end()
        return found.group()

    # -- grammar -------------------------------------------------------------------------

    def parameter(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        key, value = self.keyval()
        params[key] = value
        last = self.i
        while not self.at_eof():
            self.expect(",", space=True)
            key, value = self.keyval()
            if key in params:
                raise ShorthandError(
                    f'Second instance of key "{key}" encountered', self.value, last + 1,
                    '\nThis is often because there is a preceding "," instead of a space.')
            params[key] = value
            last = self.i
        return params

    def key_marker(self) -> str:
        start = self.i
        while not self.at_eof() and self.value[self.i] in _KEY_CHARS:
            self.i += 1
        key = self.value[start:self.i]
        self.skip_space()
        self._from_file = self.current() == "@"
        if self._from_file:
            self.i += 1
        self.expect("=", space=True)
        return key

    def keyval(self) -> tuple[str, Any]:
        key = self.key_marker()
        if self.at_eof():
            return key, ""
        if self.current() == "[":
            return key, self.explicit_list()
        if self.current() == "{":
            return key, self.hash_literal()
        return key, self.csv_value()

    def csv_value(self) -> Any:
        first = self.first_value()
        self.skip_space()
        if self.at_eof() or self.value[self.i] != ",":
            return first
        self.expect(",", space=True)
        values = [first]
        while True:
            try:
                current = self.second_value()
                self.skip_space()
                if self.at_eof():
                    values.append(current)
                    break
                self.expect(",", space=True)
                values.append(current)
            except ShorthandError:
                if self.at_eof():
                    raise
                while self.i >= 0 and self.value[self.i] != ",":  # back to the last comma
                    self.i -= 1
                break
        return first if len(values) == 1 else values

    def explicit_list(self) -> list[Any]:
        self.expect("[", space=True)
        values: list[Any] = []
        while self.current() != "]":
            values.append(self.explicit_value())
            self.skip_space()
            if self.current() != "]":
                self.expect(",")
                self.skip_space()
        self.expect("]")
        return values

    def explicit_value(self) -> Any:
        if self.current() == "[":
            return self.explicit_list()
        if self.current() == "{":
            return self.hash_literal()
        return self.first_value()

    def hash_literal(self) -> dict[str, Any]:
        self.expect("{", space=True)
        pairs: dict[str, Any] = {}
        while self.current() != "}":
            key = self.key_marker()
            value = self.explicit_value()
            self.skip_space()
            if self.current() != "}":
                self.expect(",")
                self.skip_space()
            pairs[key] = value
        self.expect("}")
        return pairs

    def first_value(self) -> Any:
        if self.current() in ("'", '"'):
            return self.quoted()
        found = _FIRST_VALUE.match(self.value, self.i)
        if found is None:
            return ""
        self.i = found.end()
        return self.resolved(found.group().replace("\\,", ",").rstrip())

    def second_value(self) -> Any:
        if self.current() in ("'", '"'):
            return self.quoted()
        return self.resolved(self.match(_SECOND_VALUE, "second").replace("\\,", ",").rstrip())

    def quoted(self) -> Any:
        quote = self.current()
        regex, name = ((_SINGLE_QUOTED, "singled quoted") if quote == "'"
                       else (_DOUBLE_QUOTED, "double quoted"))
        inner = self.match(regex, name)[1:-1]
        return self.resolved(inner.replace("\\" + str(quote), str(quote)).replace("\\\\", "\\"))

    def resolved(self, value: str) -> Any:
        if self._from_file and self._load_file is not None:
            loaded = self._load_file(value)
            if loaded is not None:
                return loaded
        return value


def parse(value: str, load_file: FileLoader | None = None) -> dict[str, Any]:
    """``"a=b,c=[1,2],d={e=f}"`` -> ``{"a": "b", "c": ["1", "2"], "d": {"e": "f"}}``."""
    return _Parser(value, load_file).parameter()


def coerce(value: Any, shape: Any) -> Any:
    """Apply the model to a parsed shorthand value, as the AWS CLI's BackCompatVisitor."""
    type_name = shape.type_name
    if value is None:
        return None
    if type_name == "structure":
        if isinstance(value, dict):
            for name, member in shape.members.items():
                if name in value:
                    value[name] = coerce(value[name], member)
        return value
    if type_name == "list":
        if not isinstance(value, list):
            return [value]
        return [coerce(v, shape.member) for v in value]
    if type_name == "map":
        if isinstance(value, dict):
            return {k: coerce(v, shape.value) for k, v in value.items()}
        return value
    if not isinstance(value, str):
        return value
    if type_name in ("integer", "long"):
        return int(value)
    if type_name in ("float", "double"):
        return float(value)
    if type_name == "boolean":
        return {"true": True, "false": False}.get(value.lower(), value)
    return value
