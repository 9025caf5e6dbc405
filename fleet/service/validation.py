"""Input rules of the jobs API (patterns and limits of the botocore model, spec §1, §9) and
list pagination: pure functions raising :class:`InvalidRequestException` naming the field."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from devicesim.wire import topics
from devicesim.wire.messages import (
    has_other_characters,
    validate_status_details,
    validate_step_timeout,
)
from fleet.service.errors import InvalidRequestException, VersionConflictException

MAX_DOCUMENT_CHARS = 32768
MAX_DESCRIPTION_CHARS = 2028
MAX_TIMEOUT_MINUTES = 10080
REASON_CODE = re.compile(r"[A-Z0-9_]{1,128}")


def check_job_id(job_id: str) -> None:
    if not topics.JOB_ID_RE.fullmatch(job_id):
        raise InvalidRequestException("jobId: must be 1-64 characters of [a-zA-Z0-9_-]")
    if job_id in topics.RESERVED_JOB_IDS:
        raise InvalidRequestException(
            f"jobId: {job_id!r} collides with a reserved MQTT topic level of the Jobs API")


def check_device_request(status_details: dict[str, str] | None,
                          step_timeout: int | None) -> None:
    try:
        validate_status_details(status_details)
        validate_step_timeout(step_timeout)
    except ValueError as err:
        raise InvalidRequestException(str(err)) from None


def check_text(name: str, value: str | None) -> None:
    """description / comment: 1-2028 characters, no control characters (model pattern)."""
    if value is not None and (not value or len(value) > MAX_DESCRIPTION_CHARS
                              or has_other_characters(value)):
        raise InvalidRequestException(
            f"{name}: must be 1-2028 characters without control characters")


def check_timeout(minutes: int | None) -> None:
    """``timeoutConfig.inProgressTimeoutInMinutes``."""
    if minutes is not None and not 1 <= minutes <= MAX_TIMEOUT_MINUTES:
        raise InvalidRequestException(
            "timeoutConfig.inProgressTimeoutInMinutes: must be between 1 and 10080")


def check_document(document: str) -> None:
    if len(document) > MAX_DOCUMENT_CHARS:
        raise InvalidRequestException("document: at most 32768 characters")
    try:
        parsed = json.loads(document)
    except ValueError as e:
        raise InvalidRequestException(f"document: not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise InvalidRequestException("document: must be a JSON object")


_ARN = re.compile(r"arn:aws[a-z-]*:iot:[a-z0-9-]*:\d*:([a-z]+)/(.+)")


def name_in_arn(arn: str, kind: str) -> str | None:
    """The name in an IoT ARN of that resource ``kind`` (``thinggroup``, ``job``, ...)."""
    m = _ARN.fullmatch(arn)
    return m.group(2) if m is not None and m.group(1) == kind else None


def check_version(expected: int | None, actual: int) -> None:
    """An ``expectedVersion`` that is not the resource's version: VersionConflict."""
    if expected is not None and expected != actual:
        raise VersionConflictException(f"expectedVersion {expected} does not match {actual}")


def parse_enum(kind: Any, value: str, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise InvalidRequestException(
            f"{name}: {value!r} is not one of {', '.join(m.value for m in kind)}") from None


def page(max_results: int | None, next_token: str | None) -> tuple[int, int]:
    limit = 250 if max_results is None else max_results
    if not 1 <= limit <= 250:
        raise InvalidRequestException("maxResults: must be between 1 and 250")
    if next_token is None:
        return 0, limit
    try:
        return int(base64.urlsafe_b64decode(next_token.encode()).decode()), limit
    except ValueError:
        raise InvalidRequestException("nextToken: not a token this service issued") from None


def next_token_for(offset: int, limit: int, fetched: int) -> str | None:
    if fetched <= limit:
        return None
    return base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
