"""The routing table against the botocore ``iot`` model, and path matching (pure, no I/O)."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.utils import percent_encode
from hypothesis import given
from hypothesis import strategies as st

from fleet.service.controlplane import routes
from fleet.service.controlplane.handlers import HANDLERS

JOB_IDS = st.text(st.sampled_from("abcXYZ019_-"), min_size=1, max_size=64)
THING_NAMES = st.text(st.sampled_from("abcXYZ019_-:"), min_size=1, max_size=128)


@pytest.fixture(scope="module")
def model() -> botocore.model.ServiceModel:
    return botocore.session.get_session().get_service_model("iot")


@pytest.mark.parametrize("route", routes.ROUTES, ids=lambda r: r.operation)
def test_route_is_the_models(route: routes.Route, model: botocore.model.ServiceModel) -> None:
    http = model.operation_model(route.operation).http
    assert (route.method, route.template) == (http["method"], http["requestUri"])


def test_every_route_has_a_handler_and_mutations_are_marked() -> None:
    assert set(HANDLERS) == set(routes.BY_OPERATION)
    assert len(routes.BY_OPERATION) == len(routes.ROUTES)
    mutating = {r.operation for r in routes.ROUTES if r.mutating}
    assert mutating == {"CreateJob", "CancelJob", "DeleteJob", "CancelJobExecution",
                        "DeleteJobExecution", "UpdateEventConfigurations",
                        # membership changes queue or remove continuous jobs' executions
                        "AddThingToThingGroup", "RemoveThingFromThingGroup",
                        "UpdateThingGroupsForThing", "DeleteThingGroup", "DeleteThing",
                        "AssociateTargetsWithJob",
                        # a new abort configuration is checked at once
                        "UpdateJob"}


@given(job_id=JOB_IDS, thing_name=THING_NAMES, execution_number=st.integers(0, 2**63 - 1))
def test_labels_round_trip_botocore_encoding(job_id: str, thing_name: str,
                                             execution_number: int) -> None:
    raw = (f"/things/{percent_encode(thing_name)}/jobs/{percent_encode(job_id)}"
           f"/executionNumber/{execution_number}")
    route, labels = routes.match("DELETE", raw)
    assert route.operation == "DeleteJobExecution"
    assert labels == {"thingName": thing_name, "jobId": job_id,
                      "executionNumber": str(execution_number)}


@pytest.mark.parametrize(("method", "path", "operation"), [
    ("GET", "/jobs", "ListJobs"),
    ("GET", "/jobs/", "ListJobs"),
    ("GET", "/jobs/job-document", "DescribeJob"),  # a job may be called that
    ("GET", "/jobs/j/job-document", "GetJobDocument"),
    ("GET", "/jobs/j/things", "ListJobExecutionsForJob"),
    ("GET", "/things/t/jobs", "ListJobExecutionsForThing"),
    ("PUT", "/things/t/jobs/j/cancel", "CancelJobExecution"),
    ("put", "/jobs/j/cancel", "CancelJob"),
    ("GET", "/things", "ListThings"),
    ("PUT", "/thing-groups/addThingToThingGroup", "AddThingToThingGroup"),
    ("GET", "/thing-groups/addThingToThingGroup", "DescribeThingGroup"),  # a group's name
    ("GET", "/thing-groups/g/things", "ListThingsInThingGroup"),
    ("GET", "/things/t/thing-groups", "ListThingGroupsForThing"),
    ("POST", "/jobs/j/targets", "AssociateTargetsWithJob"),
])
def test_match(method: str, path: str, operation: str) -> None:
    assert routes.match(method, path)[0].operation == operation


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/thing-groups/g/things/t"), ("POST", "/jobs/j"), ("GET", "/jobs/j/k/l"),
    ("PATCH", "/jobs/j/cancel"),
    ("DELETE", "/things/t/jobs/j"), ("GET", "/"), ("GET", "/jobs//things"),
])
def test_unknown_route(method: str, path: str) -> None:
    with pytest.raises(routes.UnknownOperationException) as info:
        routes.match(method, path)
    assert info.value.http_status == 404
    assert info.value.code == "UnknownOperationException"
