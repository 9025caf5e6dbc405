"""The ``http`` transport's translation between the agent's MQTT requests and replies and
the jobs data plane's HTTP ones (pure); its use in a drill is in tests/test_drills.py."""

from __future__ import annotations

from devicesim.http import http_request, mqtt_reply
from devicesim.wire import topics


def test_each_request_becomes_the_models_http_call() -> None:
    op = topics.Operation
    assert http_request(op.GET_PENDING, "dev:1", None, {"clientToken": "t"}) == (
        "GET", "/things/dev%3A1/jobs", None)
    assert http_request(op.START_NEXT, "d", None, {"clientToken": "t",
                                                   "stepTimeoutInMinutes": 5}) == (
        "PUT", "/things/d/jobs/$next", {"stepTimeoutInMinutes": 5})
    assert http_request(op.DESCRIBE, "d", "$next", {"includeJobDocument": False,
                                                     "executionNumber": 2}) == (
        "GET", "/things/d/jobs/%24next?includeJobDocument=false&executionNumber=2", None)
    assert http_request(op.UPDATE, "d", "ota", {"status": "SUCCEEDED", "clientToken": "t",
                                                "expectedVersion": 3}) == (
        "POST", "/things/d/jobs/ota", {"status": "SUCCEEDED", "expectedVersion": 3})


def test_answers_become_the_replies_the_agent_expects() -> None:
    accepted, reply = mqtt_reply(200, {"execution": {"jobId": "ota",
                                                     "jobDocument": '{"operation": "x"}'}},
                                 None, "tok", 1700000000.7)
    assert accepted
    assert reply == {"execution": {"jobId": "ota", "jobDocument": {"operation": "x"}},
                     "timestamp": 1700000000, "clientToken": "tok"}
    for error_type, code in (("VersionConflictException", "VersionMismatch"),
                             ("TerminalStateException:http://x", "TerminalStateReached"),
                             ("ThrottlingException", "RequestThrottled"),
                             ("ResourceNotFoundException", "ResourceNotFound"),
                             (None, "InternalError")):
        accepted, reply = mqtt_reply(409, {"message": "no"}, error_type, None, 5.0)
        assert not accepted
        assert reply == {"code": code, "message": "no", "timestamp": 5}
