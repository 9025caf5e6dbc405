"""One request's input as the botocore model places it: URI labels, query string, JSON body.

Every reader validates the type the model gives the member and raises
:class:`InvalidRequestException` naming it. Members the model has but this emulator does
not implement are refused with "<member> is not supported by this emulator" (never silently
ignored); members the model does not have at all are refused too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from devicesim.wire import topics
from fleet.service.errors import InvalidRequestException

_INTEGER = re.compile(r"-?[0-9]{1,19}")
_NAMESPACE_ID = re.compile(r"[a-zA-Z0-9_-]+")
_BOOLEANS = {"true": True, "false": False}

#: Members of the model's inputs (across the routed operations) that this emulator does not
#: implement. Which of them an operation has is declared by its handler.
UNSUPPORTED = frozenset({
    "documentSource", "presignedUrlConfig", "jobExecutionsRolloutConfig", "abortConfig",
    "tags", "jobTemplateArn", "jobExecutionsRetryConfig", "documentParameters",
    "schedulingConfig", "destinationPackageVersions", "thingGroupName", "thingGroupId",
})


def unsupported(member: str) -> InvalidRequestException:
    return InvalidRequestException(f"{member} is not supported by this emulator")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body; an empty body is ``{}``."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise InvalidRequestException(f"request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise InvalidRequestException("request body must be a JSON object")
    return body


@dataclass(frozen=True, slots=True)
class Input:
    operation: str
    labels: Mapping[str, str]
    query: Mapping[str, list[str]]
    body: Mapping[str, Any]
    #: request headers, lower-cased names (the model places a few members there)
    headers: Mapping[str, str] = field(default_factory=dict)

    def allow(self, *, query: Collection[str] = (), body: Collection[str] = (),
              unsupported_query: Collection[str] = (),
              unsupported_body: Collection[str] = ()) -> None:
        """Refuse every query/body member the handler does not read."""
        for where, given, known, refused in (("query", self.query, query, unsupported_query),
                                             ("body", self.body, body, unsupported_body)):
            for member in given:
                if member in refused:
                    raise unsupported(member)
                if member not in known:
                    raise InvalidRequestException(
                        f"{member!r:.100} is not a {where} parameter of {self.operation}")

    # -- URI labels ----------------------------------------------------------------------

    def job_id(self) -> str:
        return check_job_id(self.labels["jobId"])

    def thing_name(self) -> str:
        thing_name = self.labels["thingName"]
        if not topics.THING_NAME_RE.fullmatch(thing_name):
            raise InvalidRequestException(
                "thingName: must be 1-128 characters of [a-zA-Z0-9:_-]")
        return thing_name

    def label_integer(self, name: str) -> int:
        return _integer(name, self.labels[name])

    # -- query string --------------------------------------------------------------------

    def query_string(self, name: str) -> str | None:
        values = self.query.get(name)
        if values is None:
            return None
        if len(values) != 1:
            raise InvalidRequestException(f"{name}: given {len(values)} times")
        return values[0]

    def query_boolean(self, name: str) -> bool | None:
        value = self.query_string(name)
        if value is None:
            return None
        try:
            return _BOOLEANS[value.lower()]
        except KeyError:
            raise InvalidRequestException(
                f"{name}: {value!r:.50} is not a boolean (true or false)") from None

    def query_integer(self, name: str, low: int | None = None, high: int | None = None
                      ) -> int | None:
        value = self.query_string(name)
        return None if value is None else _bounded(name, _integer(name, value), low, high)

    def query_enum(self, name: str, allowed: Collection[str]) -> str | None:
        value = self.query_string(name)
        if value is not None and value not in allowed:
            raise InvalidRequestException(
                f"{name}: {value!r:.50} is not one of {', '.join(sorted(allowed))}")
        return value

    def query_job_id(self) -> str | None:
        value = self.query_string("jobId")
        return None if value is None else check_job_id(value)

    def query_namespace_id(self) -> str | None:
        return _namespace_id(self.query_string("namespaceId"))

    # -- JSON body -----------------------------------------------------------------------

    def body_string(self, name: str) -> str | None:
        value = self.body.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequestException(f"{name}: must be a string")
        return value

    def body_integer(self, name: str) -> int | None:
        value = self.body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRequestException(f"{name}: must be an integer")
        return value

    def body_object(self, name: str) -> dict[str, Any] | None:
        value = self.body.get(name)
        if value is not None and not isinstance(value, dict):
            raise InvalidRequestException(f"{name}: must be a JSON object")
        return value

    def body_string_list(self, name: str) -> list[str] | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequestException(f"{name}: must be a list of strings")
        return value

    def body_string_map(self, name: str) -> dict[str, str] | None:
        value = self.body_object(name)
        if value is not None and not all(isinstance(v, str) for v in value.values()):
            raise InvalidRequestException(f"{name}: values must be strings")
        return value

    def body_namespace_id(self) -> str | None:
        return _namespace_id(self.body_string("namespaceId"))


def check_job_id(job_id: str) -> str:
    if not topics.JOB_ID_RE.fullmatch(job_id):
        raise InvalidRequestException("jobId: must be 1-64 characters of [a-zA-Z0-9_-]")
    return job_id


def _integer(name: str, text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise InvalidRequestException(f"{name}: {text!r:.50} is not an integer")
    return int(text)


def _bounded(name: str, value: int, low: int | None, high: int | None) -> int:
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidRequestException(f"{name}: must be between {low} and {high}")
    return value


def _namespace_id(value: str | None) -> str | None:
    if value is not None and not _NAMESPACE_ID.fullmatch(value):
        raise InvalidRequestException("namespaceId: must match [a-zA-Z0-9_-]+")
    return value
