"""The control plane's routing table: HTTP method + path -> AWS operation name.

The paths are the ``requestUri`` templates of the botocore ``iot`` model (2015-05-28), so
boto3 and the AWS CLI reach the operation they meant. This is the only place that knows
them. Path labels are matched on the *raw* (percent-encoded) path, one segment each, and
decoded afterwards, as botocore encodes every label (a thing name's ``:`` arrives as
``%3A``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from fleet.service.errors import JobsError

_LABEL = re.compile(r"\{([A-Za-z]+)\}")


class UnknownOperationException(JobsError):
    """No operation of this emulator is routed at that method and path."""

    http_status = 404


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    operation: str
    #: A successful call changes state, so the service has effects to publish afterwards.
    mutating: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.template))


def _compile(template: str) -> re.Pattern[str]:
    """``/jobs/{jobId}`` -> ``/jobs/(?P<jobId>[^/]+)``; one label matches one segment."""
    parts: list[str] = []
    pos = 0
    for m in _LABEL.finditer(template):
        parts += [re.escape(template[pos:m.start()]), f"(?P<{m.group(1)}>[^/]+)"]
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


ROUTES: tuple[Route, ...] = (
    Route("PUT", "/jobs/{jobId}", "CreateJob", mutating=True),
    Route("GET", "/jobs/{jobId}", "DescribeJob"),
    Route("GET", "/jobs", "ListJobs"),
    Route("GET", "/jobs/{jobId}/job-document", "GetJobDocument"),
    Route("PUT", "/jobs/{jobId}/cancel", "CancelJob", mutating=True),
    Route("DELETE", "/jobs/{jobId}", "DeleteJob", mutating=True),
    Route("GET", "/things/{thingName}/jobs/{jobId}", "DescribeJobExecution"),
    Route("GET", "/jobs/{jobId}/things", "ListJobExecutionsForJob"),
    Route("GET", "/things/{thingName}/jobs", "ListJobExecutionsForThing"),
    Route("PUT", "/things/{thingName}/jobs/{jobId}/cancel", "CancelJobExecution",
          mutating=True),
    Route("DELETE", "/things/{thingName}/jobs/{jobId}/executionNumber/{executionNumber}",
          "DeleteJobExecution", mutating=True),
    Route("PATCH", "/event-configurations", "UpdateEventConfigurations", mutating=True),
    Route("GET", "/event-configurations", "DescribeEventConfigurations"),
    # the thing registry and its principals (fleet provision)
    Route("POST", "/things/{thingName}", "CreateThing"),
    Route("GET", "/things/{thingName}", "DescribeThing"),
    Route("POST", "/keys-and-certificate", "CreateKeysAndCertificate"),
    Route("POST", "/certificate/register", "RegisterCertificate"),
    Route("POST", "/certificate/register-no-ca", "RegisterCertificateWithoutCA"),
    Route("PUT", "/certificates/{certificateId}", "UpdateCertificate"),
    Route("GET", "/certificates/{certificateId}", "DescribeCertificate"),
    Route("POST", "/policies/{policyName}", "CreatePolicy"),
    Route("PUT", "/target-policies/{policyName}", "AttachPolicy"),
    Route("PUT", "/things/{thingName}/principals", "AttachThingPrincipal"),
    Route("GET", "/things/{thingName}/principals", "ListThingPrincipals"),
    Route("GET", "/endpoint", "DescribeEndpoint"),
    Route("POST", "/target-policies/{policyName}", "DetachPolicy"),
    Route("DELETE", "/policies/{policyName}", "DeletePolicy"),
    Route("DELETE", "/things/{thingName}/principals", "DetachThingPrincipal"),
    Route("DELETE", "/things/{thingName}", "DeleteThing", mutating=True),
    Route("PATCH", "/things/{thingName}", "UpdateThing"),
    Route("GET", "/things", "ListThings"),
    # static thing groups (a membership change may queue or remove executions)
    Route("PUT", "/thing-groups/addThingToThingGroup", "AddThingToThingGroup",
          mutating=True),
    Route("PUT", "/thing-groups/removeThingFromThingGroup", "RemoveThingFromThingGroup",
          mutating=True),
    Route("PUT", "/thing-groups/updateThingGroupsForThing", "UpdateThingGroupsForThing",
          mutating=True),
    Route("POST", "/thing-groups/{thingGroupName}", "CreateThingGroup"),
    Route("GET", "/thing-groups/{thingGroupName}", "DescribeThingGroup"),
    Route("PATCH", "/thing-groups/{thingGroupName}", "UpdateThingGroup"),
    Route("DELETE", "/thing-groups/{thingGroupName}", "DeleteThingGroup", mutating=True),
    Route("GET", "/thing-groups", "ListThingGroups"),
    Route("GET", "/thing-groups/{thingGroupName}/things", "ListThingsInThingGroup"),
    Route("GET", "/things/{thingName}/thing-groups", "ListThingGroupsForThing"),
    Route("POST", "/dynamic-thing-groups/{thingGroupName}", "CreateDynamicThingGroup"),
    Route("POST", "/jobs/{jobId}/targets", "AssociateTargetsWithJob", mutating=True),
    Route("PATCH", "/jobs/{jobId}", "UpdateJob", mutating=True),
    Route("PUT", "/job-templates/{jobTemplateId}", "CreateJobTemplate"),
    Route("GET", "/job-templates/{jobTemplateId}", "DescribeJobTemplate"),
    Route("GET", "/job-templates", "ListJobTemplates"),
    Route("DELETE", "/job-templates/{jobTemplateId}", "DeleteJobTemplate"),
    # AWS-managed job templates: refused by name
    Route("GET", "/managed-job-templates/{templateName}", "DescribeManagedJobTemplate"),
    Route("GET", "/managed-job-templates", "ListManagedJobTemplates"),
    Route("DELETE", "/certificates/{certificateId}", "DeleteCertificate"),
)

class Router:
    """A routing table: method + raw path -> (route, decoded labels)."""

    def __init__(self, table: tuple[Route, ...]) -> None:
        self.routes = table
        self.by_operation: dict[str, Route] = {route.operation: route for route in table}

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` and the raw path, with its decoded labels.

        Raises :class:`UnknownOperationException` when nothing matches.
        """
        path = raw_path.rstrip("/") or "/"
        for route in self.routes:
            if route.method != method.upper():
                continue
            m = route.pattern.fullmatch(path)
            if m is not None:
                return route, {name: unquote(value) for name, value in m.groupdict().items()}
        raise UnknownOperationException(
            f"no operation of this emulator is routed at {method.upper()} {raw_path:.200}")


#: the ``iot`` control plane's
IOT = Router(ROUTES)
BY_OPERATION = IOT.by_operation
match = IOT.match

#: the ``iot-jobs-data`` HTTPS data plane's (its own port: its paths collide with ``iot``'s)
JOBS_DATA = Router((
    Route("GET", "/things/{thingName}/jobs", "GetPendingJobExecutions"),
    Route("PUT", "/things/{thingName}/jobs/$next", "StartNextPendingJobExecution",
          mutating=True),
    Route("GET", "/things/{thingName}/jobs/{jobId}", "DescribeJobExecution"),
    Route("POST", "/things/{thingName}/jobs/{jobId}", "UpdateJobExecution", mutating=True),
    Route("POST", "/command-executions", "StartCommandExecution"),
))
