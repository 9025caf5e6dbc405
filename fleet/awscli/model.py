"""The command line of each mirrored operation, derived from the botocore ``iot`` model.

An :class:`Option` is one input member as the AWS CLI v1 exposes it (``awscli/clidriver.py``
``ServiceOperation._create_argument_table``): the member name in kebab case
(``jobId`` -> ``--job-id``), required when the model says so, booleans as a
``--flag`` / ``--no-flag`` pair, lists as space-separated values. Paginated operations
(``awscli/customizations/paginate.py``) keep their ``--next-token`` / ``--max-results``
(undocumented; using one turns automatic pagination off) and gain ``--starting-token``,
``--page-size`` and ``--max-items``.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass
from typing import Any

from botocore import xform_name

SERVICE = "iot"

#: The ``aws iot`` operations ``fleet`` mirrors, in the order they are listed in the help.
OPERATIONS: tuple[str, ...] = (
    "CreateJob", "DescribeJob", "ListJobs", "GetJobDocument", "CancelJob", "DeleteJob",
    "DescribeJobExecution", "ListJobExecutionsForJob", "ListJobExecutionsForThing",
    "CancelJobExecution", "DeleteJobExecution", "AssociateTargetsWithJob", "UpdateJob",
    "CreateJobTemplate", "DescribeJobTemplate", "ListJobTemplates", "DeleteJobTemplate",
    "CreateThing", "DescribeThing", "UpdateThing", "ListThings", "DeleteThing",
    "CreateThingGroup", "DescribeThingGroup", "UpdateThingGroup", "DeleteThingGroup",
    "ListThingGroups", "AddThingToThingGroup", "RemoveThingFromThingGroup",
    "UpdateThingGroupsForThing", "ListThingsInThingGroup", "ListThingGroupsForThing",
)

#: Scalar types as botocore names them (``awscli.SCALAR_TYPES``).
SCALAR_TYPES = frozenset({"string", "float", "integer", "long", "boolean", "double",
                          "blob", "timestamp"})


@dataclass(frozen=True)
class Option:
    """One input member of an operation as a command-line option."""

    member: str  #: the model's member name, e.g. ``jobId``
    shape: Any  #: its ``botocore.model.Shape``
    required: bool
    #: Undocumented in the AWS CLI (pagination tokens of paginated operations).
    hidden: bool = False

    @property
    def name(self) -> str:
        """``job-id``: what follows ``--``."""
        return str(xform_name(self.member, "-"))

    @property
    def cli_name(self) -> str:
        return "--" + self.name

    @property
    def dest(self) -> str:
        """The argparse destination; prefixed so it never collides with fleet's own."""
        return "awscli_member_" + self.member

    @property
    def type_name(self) -> str:
        return str(self.shape.type_name)


@functools.cache
def session() -> Any:
    """The botocore session the model comes from (its loader caches what it loaded)."""
    import botocore.session

    return botocore.session.get_session()


@functools.cache
def service_model() -> Any:
    """The ``botocore.model.ServiceModel`` of ``iot`` (the one boto3 uses)."""
    return session().get_service_model(SERVICE)


def operation_model(operation: str) -> Any:
    return service_model().operation_model(operation)


@functools.cache
def paginator_config(operation: str) -> dict[str, Any] | None:
    """The paginator of ``operation`` (``input_token``, ``limit_key``, ...), or None."""
    try:
        config: dict[str, Any] = session().get_paginator_model(SERVICE).get_paginator(
            operation)
    except ValueError:
        return None
    return config


def command_name(operation: str) -> str:
    """``DeleteJob`` -> ``delete-job``."""
    return str(xform_name(operation, "-"))


def paging_members(operation: str) -> tuple[str, ...]:
    """The members whose use on the command line turns automatic pagination off."""
    config = paginator_config(operation)
    if config is None:
        return ()
    tokens = config["input_token"]
    members = list(tokens) if isinstance(tokens, list) else [tokens]
    if "limit_key" in config:
        members.append(config["limit_key"])
    return tuple(members)


def options(operation: str) -> tuple[Option, ...]:
    """The operation's options, in the model's member order."""
    shape = operation_model(operation).input_shape
    if shape is None:
        return ()
    hidden = set(paging_members(operation))
    required = set(shape.required_members)
    return tuple(
        Option(member, member_shape,
               required=member in required
               and not member_shape.metadata.get("idempotencyToken", False),
               hidden=member in hidden)
        for member, member_shape in shape.members.items())


def limit_type(operation: str) -> str:
    """The type of ``--page-size`` / ``--max-items``: the limit key's, else integer."""
    config = paginator_config(operation) or {}
    if "limit_key" not in config:
        return "integer"
    return str(operation_model(operation).input_shape.members[config["limit_key"]].type_name)


_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def summary(documentation: str | None) -> str:
    """The first sentence of a model documentation string, without its HTML."""
    text = _SPACE.sub(" ", html.unescape(_TAG.sub(" ", documentation or ""))).strip()
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]
