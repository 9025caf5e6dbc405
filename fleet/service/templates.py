"""Job templates: a stored document and job configurations that CreateJob starts from.

Kept on the jobs store's SQLite connection (own table). A template is made from a document
or from an existing job (``jobArn``: its document and configurations are copied). CreateJob
with ``jobTemplateArn`` takes the template's document, description and configurations;
what the request gives itself wins. The document may hold placeholders
``${aws:iot:parameter:NAME}`` that CreateJob's ``documentParameters`` fill (every
placeholder needs a value, every value a placeholder). AWS-managed templates are not
emulated (DescribeManagedJobTemplate and ListManagedJobTemplates are not routed).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from fleet.service import validation
from fleet.service.errors import (
    ConflictException,
    InvalidRequestException,
    ResourceNotFoundException,
)

TEMPLATE_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
PLACEHOLDER = re.compile(r"\$\{aws:iot:parameter:([a-zA-Z0-9_-]{1,128})\}")
PARAMETER_KEY = re.compile(r"[a-zA-Z0-9_-]{1,128}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_templates (
    id TEXT PRIMARY KEY, document TEXT NOT NULL, description TEXT, configs TEXT NOT NULL,
    timeout_minutes INTEGER, created REAL NOT NULL, seq INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class JobTemplate:
    id: str
    document: str
    description: str | None
    #: jobExecutionsRolloutConfig / abortConfig / jobExecutionsRetryConfig, as given
    configs: dict[str, Any] = field(default_factory=dict)
    timeout_minutes: int | None = None
    created: float = 0.0


def check_template_id(template_id: str, member: str = "jobTemplateId") -> str:
    if not TEMPLATE_ID.fullmatch(template_id):
        raise InvalidRequestException(f"{member}: must be 1-64 characters of [a-zA-Z0-9_-]")
    return template_id


def fill(document: str, parameters: dict[str, str] | None) -> str:
    """The document with its placeholders replaced by ``parameters``."""
    parameters = parameters or {}
    for key, value in parameters.items():
        if not PARAMETER_KEY.fullmatch(key):
            raise InvalidRequestException(f"documentParameters: key {key!r:.140} must be "
                                          "1-128 characters of [a-zA-Z0-9_-]")
        if not isinstance(value, str) or not value or len(value) > 30720:
            raise InvalidRequestException(f"documentParameters.{key}: a string of 1-30720 "
                                          "characters")
    wanted = set(PLACEHOLDER.findall(document))
    missing, unknown = sorted(wanted - set(parameters)), sorted(set(parameters) - wanted)
    if missing:
        raise InvalidRequestException(f"documentParameters: no value for the template's "
                                      f"placeholder(s) {', '.join(missing)}")
    if unknown:
        raise InvalidRequestException(f"documentParameters: the template has no placeholder "
                                      f"{', '.join(unknown)}")
    # a value goes in as JSON string content (quotes and backslashes escaped)
    return PLACEHOLDER.sub(lambda m: orjson.dumps(parameters[m.group(1)]).decode()[1:-1],
                           document)


class JobTemplates:
    def __init__(self, db: sqlite3.Connection, *, now: Callable[[], float]) -> None:
        self._db = db
        self._now = now
        db.executescript(_SCHEMA)

    def create(self, template: JobTemplate) -> JobTemplate:
        check_template_id(template.id)
        validation.check_document(template.document)
        validation.check_text("description", template.description)
        validation.check_timeout(template.timeout_minutes)
        if self._db.execute("SELECT 1 FROM job_templates WHERE id = ?",
                            (template.id,)).fetchone():
            raise ConflictException(f"Job template {template.id} already exists",
                                    resource_id=template.id)
        seq = self._db.execute("SELECT coalesce(max(seq), 0) + 1 FROM job_templates"
                               ).fetchone()[0]
        made = JobTemplate(template.id, template.document, template.description,
                           dict(template.configs), template.timeout_minutes, self._now())
        self._db.execute("INSERT INTO job_templates VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (made.id, made.document, made.description,
                          orjson.dumps(made.configs).decode(), made.timeout_minutes,
                          made.created, seq))
        return made

    def describe(self, template_id: str) -> JobTemplate:
        row = self._db.execute("SELECT id, document, description, configs, timeout_minutes,"
                               " created FROM job_templates WHERE id = ?",
                               (template_id,)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Job template {template_id} not found")
        return JobTemplate(row[0], row[1], row[2], orjson.loads(row[3]), row[4], row[5])

    def delete(self, template_id: str) -> None:
        if self._db.execute("DELETE FROM job_templates WHERE id = ?",
                            (template_id,)).rowcount == 0:
            raise ResourceNotFoundException(f"Job template {template_id} not found")

    def page(self, *, max_results: int | None = None, next_token: str | None = None
             ) -> tuple[list[JobTemplate], str | None]:
        offset, limit = validation.page(max_results, next_token)
        ids = [r[0] for r in self._db.execute(
            "SELECT id FROM job_templates ORDER BY seq LIMIT ? OFFSET ?",
            (limit + 1, offset))]
        return ([self.describe(i) for i in ids[:limit]],
                validation.next_token_for(offset, limit, len(ids)))
