"""The wire contract: message round trips, AWS field names, input validation, topics.

Pure and fast. Message strategies are derived from the dataclass fields, so a new message or
field is covered without touching the strategies; the expected AWS wire names per message
are written out by hand from spec §5.1-5.3 (the point is to catch a camelCase slip).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from typing import Any, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devicesim.wire import codec, events, messages, topics
from devicesim.wire.codec import WireError, loads_object
from devicesim.wire.enums import JobExecutionStatus, RejectedErrorCode
from devicesim.wire.messages import (
    DescribeJobExecutionRequest,
    GetPendingJobExecutionsRequest,
    GetPendingJobExecutionsResponse,
    JobExecutionData,
    JobExecutionsChangedEvent,
    JobExecutionState,
    JobExecutionSummary,
    Message,
    NextJobExecutionChangedEvent,
    RejectedError,
    StartNextPendingJobExecutionRequest,
    UpdateJobExecutionRequest,
)
from devicesim.wire.topics import JobsTopic, Kind, Operation, parse_jobs_topic

INVALID_JSON = RejectedErrorCode.INVALID_JSON
#: Enough examples to cover every field of every message, few enough to keep this file fast.
FAST = settings(max_examples=40, deadline=None)
INVALID_REQUEST = RejectedErrorCode.INVALID_REQUEST

# -- the message classes under test --------------------------------------------------------


def _message_classes(*modules: types.ModuleType) -> list[type[Message]]:
    found = {obj for module in modules for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message
             and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__}
    return sorted(found, key=lambda cls: cls.__name__)


#: The AWS IoT Jobs MQTT messages (spec §5), and with them this project's device events.
MESSAGE_CLASSES = _message_classes(messages)
ALL_CLASSES = _message_classes(messages, events)

#: Every key each message may carry on the wire, spelled as AWS spells it (spec §5.1-5.3).
WIRE_NAMES: dict[type[Message], set[str]] = {
    GetPendingJobExecutionsRequest: {"clientToken"},
    StartNextPendingJobExecutionRequest: {"statusDetails", "stepTimeoutInMinutes", "clientToken"},
    DescribeJobExecutionRequest: {"executionNumber", "includeJobDocument", "clientToken"},
    UpdateJobExecutionRequest: {
        "status", "statusDetails", "expectedVersion", "executionNumber",
        "includeJobExecutionState", "includeJobDocument", "stepTimeoutInMinutes",
        "clientToken"},
    GetPendingJobExecutionsResponse: {"inProgressJobs", "queuedJobs", "timestamp",
                                      "clientToken"},
    messages.StartNextJobExecutionResponse: {"execution", "timestamp", "clientToken"},
    messages.DescribeJobExecutionResponse: {"execution", "timestamp", "clientToken"},
    messages.UpdateJobExecutionResponse: {"executionState", "jobDocument", "timestamp",
                                          "clientToken"},
    RejectedError: {"code", "message", "clientToken", "timestamp", "executionState"},
    JobExecutionsChangedEvent: {"jobs", "timestamp"},
    NextJobExecutionChangedEvent: {"execution", "timestamp"},
    JobExecutionData: {
        "jobId", "thingName", "jobDocument", "status", "statusDetails", "queuedAt",
        "startedAt", "lastUpdatedAt", "versionNumber", "executionNumber",
        "approximateSecondsBeforeTimedOut"},
    JobExecutionState: {"status", "statusDetails", "versionNumber"},
    JobExecutionSummary: {"jobId", "queuedAt", "startedAt", "lastUpdatedAt", "versionNumber",
                          "executionNumber"},
}

# -- strategies ----------------------------------------------------------------------------

#: statusDetails the model's patterns allow: key [a-zA-Z0-9:_-]{1,128}, value [^\p{C}]{1,1024}.
details_keys = st.from_regex(r"[a-zA-Z0-9:_-]{1,24}", fullmatch=True)
details_values = st.text(st.characters(exclude_categories=["C"]), min_size=1, max_size=40)
status_details = st.dictionaries(details_keys, details_values, max_size=4)
step_timeouts = st.just(-1) | st.integers(1, messages.MAX_STEP_TIMEOUT_MINUTES)
longs = st.integers(-(2**63), 2**63 - 1)

#: JSON values without null: a job document may hold anything JSON can, and nothing the
#: codec writes is ever null, so the no-null check below can look at the whole payload.
json_values = st.recursive(
    st.booleans() | longs | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=12)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


def _optional_inner(hint: Any) -> Any | None:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def _for_type(hint: Any, name: str, full: bool) -> st.SearchStrategy[Any]:
    if name == "status_details":
        return status_details
    if name == "step_timeout_in_minutes":
        return step_timeouts
    if name == "job_document":
        return json_objects
    if name == "jobs":  # notify: {status: [summary...]}
        return st.dictionaries(st.sampled_from([s.value for s in JobExecutionStatus]),
                               st.lists(messages_of(JobExecutionSummary, full=full),
                                        max_size=2), max_size=2)
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return messages_of(hint, full=full)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(list(hint))
    if hint is bool:
        return st.booleans()
    if hint is int:
        return longs
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if hint is str:
        return st.text(max_size=40)
    if origin is list:
        (item,) = typing.get_args(hint)
        return st.lists(_for_type(item, name, full), max_size=2)
    raise AssertionError(f"no strategy for {hint!r} ({name}); extend the test")


@functools.cache
def messages_of(cls: Any, *, full: bool = False) -> st.SearchStrategy[Any]:
    """Any valid instance of ``cls``; with ``full`` every optional field is present."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = _optional_inner(hint)
        if inner is None:
            kwargs[f.name] = _for_type(hint, f.name, full)
        elif full:
            kwargs[f.name] = _for_type(inner, f.name, full)
        else:
            kwargs[f.name] = st.none() | _for_type(inner, f.name, full)
    return st.builds(cls, **kwargs)


def _walk(value: Any) -> typing.Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


ids = [cls.__name__ for cls in MESSAGE_CLASSES]
all_ids = [cls.__name__ for cls in ALL_CLASSES]

# -- round trips and the shape of to_json ---------------------------------------------------


def test_every_message_class_has_its_wire_names_listed() -> None:
    assert set(MESSAGE_CLASSES) == set(WIRE_NAMES)
    assert len(MESSAGE_CLASSES) >= 14
    assert {"DeviceEvent", "NvmSummary"} <= {cls.__name__ for cls in ALL_CLASSES}


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=all_ids)
@FAST
@given(data=st.data())
def test_round_trip(cls: Any, data: st.DataObject) -> None:
    message = data.draw(messages_of(cls))
    payload = message.to_json()
    assert isinstance(payload, bytes)
    assert cls.from_json(payload) == message
    assert cls.from_dict(message.to_dict()) == message
    assert cls.from_json(payload.decode()) == message


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=all_ids)
@FAST
@given(data=st.data())
def test_to_json_never_emits_null_and_omits_absent_fields(cls: Any,
                                                          data: st.DataObject) -> None:
    message = data.draw(messages_of(cls))
    obj = json.loads(message.to_json())
    assert all(v is not None for v in _walk(obj))
    for f in dataclasses.fields(cls):
        wire = codec.camel(f.name)
        assert (wire in obj) == (getattr(message, f.name) is not None), wire


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=ids)
@FAST
@given(data=st.data())
def test_field_names_on_the_wire_are_the_aws_names(cls: Any,
                                                   data: st.DataObject) -> None:
    message = data.draw(messages_of(cls, full=True))
    obj = json.loads(message.to_json())
    assert set(obj) == WIRE_NAMES[cls]
    nested = {"execution": JobExecutionData, "executionState": JobExecutionState}
    for key, shape in nested.items():  # nested shapes carry their own AWS names too
        if key in obj:
            assert set(obj[key]) == WIRE_NAMES[shape]
    for key in ("inProgressJobs", "queuedJobs"):
        for summary in obj.get(key, []):
            assert set(summary) == WIRE_NAMES[JobExecutionSummary]
    for summaries in obj.get("jobs", {}).values():
        for summary in summaries:
            assert set(summary) == WIRE_NAMES[JobExecutionSummary]


@FAST
@given(message=messages_of(UpdateJobExecutionRequest, full=True))
def test_update_request_spelling_matches_spec_example(message: UpdateJobExecutionRequest
                                                      ) -> None:
    obj = json.loads(message.to_json())
    assert obj["expectedVersion"] == message.expected_version
    assert obj["includeJobExecutionState"] is message.include_job_execution_state
    assert obj["stepTimeoutInMinutes"] == message.step_timeout_in_minutes
    assert obj["clientToken"] == message.client_token
    assert obj["statusDetails"] == message.status_details  # keys are not camelCased


def test_user_maps_keep_their_keys() -> None:
    data = JobExecutionData(job_id="j", status=JobExecutionStatus.QUEUED, version_number=1,
                            execution_number=1, job_document={"snake_case": {"inner_key": 1}},
                            status_details={"my_key": "v", "a:b-c": "w"})
    obj = json.loads(data.to_json())
    assert obj["jobDocument"] == {"snake_case": {"inner_key": 1}}
    assert obj["statusDetails"] == {"my_key": "v", "a:b-c": "w"}


def test_empty_shapes_as_aws_sends_them() -> None:
    # notify with nothing pending is {"jobs":{}} and notify-next leaves execution out
    assert json.loads(JobExecutionsChangedEvent(timestamp=5).to_json()) == {
        "jobs": {}, "timestamp": 5}
    assert json.loads(NextJobExecutionChangedEvent(timestamp=5).to_json()) == {"timestamp": 5}
    # empty pending lists are sent as []
    assert json.loads(GetPendingJobExecutionsResponse(timestamp=5).to_json()) == {
        "inProgressJobs": [], "queuedJobs": [], "timestamp": 5}
    assert json.loads(messages.UpdateJobExecutionResponse(timestamp=5, client_token="t")
                      .to_json()) == {"timestamp": 5, "clientToken": "t"}


def test_decodes_the_spec_samples() -> None:
    notify = JobExecutionsChangedEvent.from_json(json.dumps({
        "timestamp": 1517016948,
        "jobs": {"IN_PROGRESS": [{"jobId": "job1", "queuedAt": 1517016947,
                                  "startedAt": 1517016948, "lastUpdatedAt": 1517016948,
                                  "executionNumber": 1, "versionNumber": 2}],
                 "QUEUED": [{"jobId": "job2", "queuedAt": 1517016947,
                             "lastUpdatedAt": 1517016947, "executionNumber": 1,
                             "versionNumber": 1}]}}))
    assert [s.job_id for s in notify.jobs["IN_PROGRESS"]] == ["job1"]
    assert notify.jobs["QUEUED"][0].started_at is None

    nxt = NextJobExecutionChangedEvent.from_json(json.dumps({
        "timestamp": 1517186269,
        "execution": {"jobId": "job2", "status": "QUEUED", "queuedAt": 1517186268,
                      "lastUpdatedAt": 1517186268, "versionNumber": 1, "executionNumber": 1,
                      "jobDocument": {"operation": "test"}}}))
    assert nxt.execution is not None
    assert nxt.execution.job_document == {"operation": "test"}
    assert nxt.execution.status is JobExecutionStatus.QUEUED
    assert NextJobExecutionChangedEvent.from_json(b'{"timestamp":1654366233}').execution is None

    rejected = RejectedError.from_json(json.dumps({
        "code": "InvalidStateTransition", "message": "m", "clientToken": "c",
        "timestamp": 1489096425,
        "executionState": {"status": "CANCELED", "statusDetails": {}, "versionNumber": 3}}))
    assert rejected.code is RejectedErrorCode.INVALID_STATE_TRANSITION
    assert rejected.execution_state == JobExecutionState(
        status=JobExecutionStatus.CANCELED, status_details={}, version_number=3)
    # a describe of $next with nothing pending: token and timestamp only
    reply = messages.DescribeJobExecutionResponse.from_json(
        b'{"clientToken":":thingname","timestamp":1629735402}')
    assert reply.execution is None
    assert reply.client_token == ":thingname"


def test_unknown_keys_are_ignored_and_null_means_absent() -> None:
    request = UpdateJobExecutionRequest.from_json(
        b'{"status":"SUCCEEDED","somethingNew":1,"clientToken":null}')
    assert request == UpdateJobExecutionRequest(status=JobExecutionStatus.SUCCEEDED)


# -- numbers as strings ----------------------------------------------------------------------


@FAST
@given(n=st.integers(0, 2**63 - 1))
def test_expected_version_as_number_or_numeric_string(n: int) -> None:
    as_number = UpdateJobExecutionRequest.from_json(
        json.dumps({"status": "IN_PROGRESS", "expectedVersion": n}))
    as_string = UpdateJobExecutionRequest.from_json(
        json.dumps({"status": "IN_PROGRESS", "expectedVersion": str(n)}))
    assert as_number.expected_version == as_string.expected_version == n


def test_embedded_c_style_update_request() -> None:
    # what the embedded-C Jobs library builds
    request = UpdateJobExecutionRequest.from_json(
        b'{"status":"SUCCEEDED","expectedVersion":"1","executionNumber":"2",'
        b'"stepTimeoutInMinutes":"5","clientToken":"3:thing-1"}')
    assert (request.expected_version, request.execution_number,
            request.step_timeout_in_minutes) == (1, 2, 5)
    assert request.client_token == "3:thing-1"


@pytest.mark.parametrize("bad", ["--1", "\u00b2", "\u0661", "1" * 5000, "9" * 20, "0x10",
                                 "1e3", "1.0", "+5", "", "-", "one"])
def test_malformed_numeric_string_is_invalid_request(bad: str) -> None:
    # never a bare ValueError from int(): the data plane would answer a retryable
    # InternalError, and a Device Client retries those forever
    with pytest.raises(WireError) as info:
        UpdateJobExecutionRequest.from_json(
            json.dumps({"status": "IN_PROGRESS", "expectedVersion": bad}))
    assert info.value.code is INVALID_REQUEST
    assert "expectedVersion" in info.value.message


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    b"\xff\xfe\xfd", b'{"clientToken":"\xff"}', b"\xc3\x28", b"{", b"not json",
    b'{"a":1} trailing', b"[]", b"null", b"42", b'"a string"', b"true", b"[{}]",
])
def test_invalid_json(payload: bytes) -> None:
    with pytest.raises(WireError) as info:
        loads_object(payload)
    assert info.value.code is INVALID_JSON
    with pytest.raises(WireError) as info:
        GetPendingJobExecutionsRequest.from_json(payload)
    assert info.value.code is INVALID_JSON


@pytest.mark.parametrize("payload", [
    '{"clientToken":"a"}'.encode("utf-16"),
    '{"clientToken":"a"}'.encode("utf-32-le"),
    b'{"clientToken":"\xed\xa0\x80"}',  # an encoded lone surrogate (CESU-8), not UTF-8
])
def test_non_utf8_encodings_are_invalid_json(payload: bytes) -> None:
    # json.loads(bytes) alone would guess UTF-16/32 and let encoded surrogates through
    with pytest.raises(WireError) as info:
        loads_object(payload)
    assert info.value.code is INVALID_JSON


def test_deeply_nested_payload_is_a_wire_error() -> None:
    # json.loads raises RecursionError here; it must not escape as a retryable InternalError
    payload = b'{"clientToken":"c","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    assert len(payload) < messages.MAX_PAYLOAD_BYTES
    with pytest.raises(WireError) as info:
        loads_object(payload)
    assert info.value.code is INVALID_JSON


@pytest.mark.parametrize("payload", [b"", b"   ", "", b"\n"])
def test_empty_payload(payload: bytes | str) -> None:
    assert loads_object(payload) == {}
    assert GetPendingJobExecutionsRequest.from_json(payload) == GetPendingJobExecutionsRequest()
    with pytest.raises(WireError) as info:
        loads_object(payload, empty_is_object=False)
    assert info.value.code is INVALID_JSON
    with pytest.raises(WireError) as info:  # an update needs a status
        UpdateJobExecutionRequest.from_json(payload)
    assert info.value.code is INVALID_REQUEST
    assert "status" in info.value.message


@pytest.mark.parametrize(("cls", "obj", "field"), [
    (UpdateJobExecutionRequest, {}, "status"),
    (UpdateJobExecutionRequest, {"status": "DONE"}, "status"),
    (UpdateJobExecutionRequest, {"status": 3}, "status"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "expectedVersion": "abc"},
     "expectedVersion"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "expectedVersion": True},
     "expectedVersion"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "expectedVersion": 1.5},
     "expectedVersion"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "expectedVersion": [1]},
     "expectedVersion"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "executionNumber": "one"},
     "executionNumber"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "includeJobExecutionState": "true"},
     "includeJobExecutionState"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "includeJobDocument": 1},
     "includeJobDocument"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "stepTimeoutInMinutes": "soon"},
     "stepTimeoutInMinutes"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "stepTimeoutInMinutes": 0},
     "stepTimeoutInMinutes"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "stepTimeoutInMinutes": -2},
     "stepTimeoutInMinutes"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "stepTimeoutInMinutes": 10081},
     "stepTimeoutInMinutes"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "clientToken": 5}, "clientToken"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "statusDetails": []}, "statusDetails"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "statusDetails": "x"},
     "statusDetails"),
    (UpdateJobExecutionRequest, {"status": "SUCCEEDED", "statusDetails": {"k": 1}},
     "statusDetails.k"),
    (StartNextPendingJobExecutionRequest, {"statusDetails": {"k": None}}, "statusDetails.k"),
    (StartNextPendingJobExecutionRequest, {"stepTimeoutInMinutes": 10081},
     "stepTimeoutInMinutes"),
    (StartNextPendingJobExecutionRequest, {"stepTimeoutInMinutes": False},
     "stepTimeoutInMinutes"),
    (DescribeJobExecutionRequest, {"executionNumber": "first"}, "executionNumber"),
    (DescribeJobExecutionRequest, {"includeJobDocument": "no"}, "includeJobDocument"),
    (GetPendingJobExecutionsRequest, {"clientToken": {}}, "clientToken"),
    (JobExecutionsChangedEvent, {"timestamp": 1, "jobs": []}, "jobs"),
    (JobExecutionsChangedEvent, {"timestamp": 1, "jobs": {"QUEUED": [{"jobId": 7}]}},
     "jobs.QUEUED[0].jobId"),
    (NextJobExecutionChangedEvent, {"timestamp": 1, "execution": "x"}, "execution"),
    (NextJobExecutionChangedEvent,
     {"timestamp": 1, "execution": {"status": "QUEUED", "versionNumber": 1,
                                    "executionNumber": 1}}, "execution.jobId"),
    (NextJobExecutionChangedEvent, {}, "timestamp"),
    (RejectedError, {"code": "Nope", "timestamp": 1}, "code"),
])
def test_wrong_types_are_invalid_request_naming_the_field(cls: type[Message],
                                                          obj: dict[str, Any],
                                                          field: str) -> None:
    with pytest.raises(WireError) as info:
        cls.from_json(json.dumps(obj))
    assert info.value.code is INVALID_REQUEST
    assert field in info.value.message


@pytest.mark.parametrize("value", ["line\nbreak", "tab\there", "nul\x00", "del\x7f",
                                   "nel\x85", "cr\r", "\x1b[31m", ""])
@pytest.mark.parametrize("cls", [UpdateJobExecutionRequest,
                                 StartNextPendingJobExecutionRequest])
def test_status_details_values_with_control_characters(cls: type[Message], value: str) -> None:
    obj: dict[str, Any] = {"statusDetails": {"stdout": value}}
    if cls is UpdateJobExecutionRequest:
        obj["status"] = "IN_PROGRESS"
    with pytest.raises(WireError) as info:
        cls.from_json(json.dumps(obj))
    assert info.value.code is INVALID_REQUEST
    assert "statusDetails.stdout" in info.value.message


@pytest.mark.parametrize("key", ["", "has space", "k" * 129, "caf\u00e9", "a/b", "a.b", "k\n",
                                 "$next"])
def test_status_details_bad_keys(key: str) -> None:
    with pytest.raises(WireError) as info:
        UpdateJobExecutionRequest.from_json(
            json.dumps({"status": "IN_PROGRESS", "statusDetails": {key: "v"}}))
    assert info.value.code is INVALID_REQUEST
    assert "statusDetails" in info.value.message


def test_status_details_limits_and_what_is_allowed() -> None:
    ok = {"k" * 128: "v" * 1024, "a:b_c-D9": "caf\u00e9 \u2713 \u4e2d\u6587"}
    request = UpdateJobExecutionRequest.from_json(
        json.dumps({"status": "IN_PROGRESS", "statusDetails": ok}))
    assert request.status_details == ok
    with pytest.raises(WireError) as info:
        UpdateJobExecutionRequest.from_json(
            json.dumps({"status": "IN_PROGRESS", "statusDetails": {"k": "v" * 1025}}))
    assert info.value.code is INVALID_REQUEST
    with pytest.raises(ValueError, match="at most 10"):
        messages.validate_status_details({f"k{i}": "v" for i in range(11)}, max_pairs=10)
    messages.validate_status_details({f"k{i}": "v" for i in range(10)}, max_pairs=10)


@pytest.mark.parametrize("value", [
    "zero\u200bwidth",  # Cf: format
    "\ufeffbom",  # Cf
    "lone\ud800",  # Cs: surrogate, reachable from JSON "\ud800"
    "private\ue000",  # Co: private use
])
def test_status_details_values_with_other_p_c_characters(value: str) -> None:
    # the model's pattern is [^\p{C}]+: not only control characters (Cc) but also format
    # (Cf), surrogate (Cs) and private-use (Co) characters are refused
    with pytest.raises(WireError) as info:
        UpdateJobExecutionRequest.from_json(
            json.dumps({"status": "IN_PROGRESS", "statusDetails": {"k": value}}))
    assert info.value.code is INVALID_REQUEST
    with pytest.raises(WireError) as info:
        StartNextPendingJobExecutionRequest.from_json(
            json.dumps({"statusDetails": {"k": value}}))
    assert info.value.code is INVALID_REQUEST


@pytest.mark.parametrize("minutes", [-1, 1, 10080])
def test_step_timeout_bounds(minutes: int) -> None:
    request = StartNextPendingJobExecutionRequest.from_json(
        json.dumps({"stepTimeoutInMinutes": minutes}))
    assert request.step_timeout_in_minutes == minutes


def test_from_dict_rejects_non_objects() -> None:
    with pytest.raises(WireError) as info:
        UpdateJobExecutionRequest.from_dict(["status"])
    assert info.value.code is INVALID_REQUEST


# -- topics ----------------------------------------------------------------------------------

thing_names = st.from_regex(topics.THING_NAME_RE, fullmatch=True)
job_ids = st.from_regex(topics.JOB_ID_RE, fullmatch=True) | st.sampled_from(
    ["get", "update", "notify", "notify-next", "start-next", "accepted", "rejected", "jobs",
     "things", "$next"])


def test_topic_builders() -> None:
    assert topics.get_pending("t-1") == "$aws/things/t-1/jobs/get"
    assert topics.start_next("t-1") == "$aws/things/t-1/jobs/start-next"
    assert topics.describe("t-1", "j") == "$aws/things/t-1/jobs/j/get"
    assert topics.describe("t-1", "$next") == "$aws/things/t-1/jobs/$next/get"
    assert topics.update("t-1", "j") == "$aws/things/t-1/jobs/j/update"
    assert topics.notify("t-1") == "$aws/things/t-1/jobs/notify"
    assert topics.notify_next("t-1") == "$aws/things/t-1/jobs/notify-next"
    assert topics.accepted(topics.update("t", "j")) == "$aws/things/t/jobs/j/update/accepted"
    assert topics.rejected(topics.get_pending("t")) == "$aws/things/t/jobs/get/rejected"
    assert topics.job_event("j", "deleted") == "$aws/events/job/j/deleted"
    assert (topics.execution_event("j", "timed_out")
            == "$aws/events/jobExecution/j/timed_out")
    assert topics.request_topic("t", Operation.GET_PENDING) == topics.get_pending("t")
    assert topics.request_topic("t", Operation.START_NEXT) == topics.start_next("t")
    assert topics.request_topic("t", Operation.DESCRIBE, "j") == topics.describe("t", "j")
    assert topics.request_topic("t", Operation.UPDATE, "j") == topics.update("t", "j")


@pytest.mark.parametrize(("topic", "expected"), [
    ("$aws/things/t/jobs/get", JobsTopic("t", Kind.REQUEST, Operation.GET_PENDING)),
    ("$aws/things/t/jobs/get/accepted", JobsTopic("t", Kind.ACCEPTED, Operation.GET_PENDING)),
    ("$aws/things/t/jobs/get/rejected", JobsTopic("t", Kind.REJECTED, Operation.GET_PENDING)),
    ("$aws/things/t/jobs/start-next", JobsTopic("t", Kind.REQUEST, Operation.START_NEXT)),
    ("$aws/things/t/jobs/start-next/accepted",
     JobsTopic("t", Kind.ACCEPTED, Operation.START_NEXT)),
    ("$aws/things/t/jobs/j1/get", JobsTopic("t", Kind.REQUEST, Operation.DESCRIBE, "j1")),
    ("$aws/things/t/jobs/$next/get",
     JobsTopic("t", Kind.REQUEST, Operation.DESCRIBE, "$next")),
    ("$aws/things/t/jobs/j1/get/rejected",
     JobsTopic("t", Kind.REJECTED, Operation.DESCRIBE, "j1")),
    ("$aws/things/t/jobs/j1/update", JobsTopic("t", Kind.REQUEST, Operation.UPDATE, "j1")),
    ("$aws/things/t/jobs/j1/update/accepted",
     JobsTopic("t", Kind.ACCEPTED, Operation.UPDATE, "j1")),
    ("$aws/things/t/jobs/notify", JobsTopic("t", Kind.NOTIFY)),
    ("$aws/things/t/jobs/notify-next", JobsTopic("t", Kind.NOTIFY_NEXT)),
    # jobIds that look like reserved levels are still unambiguous by position
    ("$aws/things/t/jobs/get/get", JobsTopic("t", Kind.REQUEST, Operation.DESCRIBE, "get")),
    ("$aws/things/t/jobs/get/update", JobsTopic("t", Kind.REQUEST, Operation.UPDATE, "get")),
    ("$aws/things/t/jobs/notify/get",
     JobsTopic("t", Kind.REQUEST, Operation.DESCRIBE, "notify")),
    ("$aws/things/t/jobs/notify-next/update",
     JobsTopic("t", Kind.REQUEST, Operation.UPDATE, "notify-next")),
    ("$aws/things/t/jobs/start-next/get/accepted",
     JobsTopic("t", Kind.ACCEPTED, Operation.DESCRIBE, "start-next")),
    ("$aws/things/t/jobs/accepted/update",
     JobsTopic("t", Kind.REQUEST, Operation.UPDATE, "accepted")),
    ("$aws/things/t/jobs/rejected/get/rejected",
     JobsTopic("t", Kind.REJECTED, Operation.DESCRIBE, "rejected")),
    # under jobs/ but not an API: answered InvalidTopic
    ("$aws/things/t/jobs", JobsTopic("t", Kind.INVALID)),
    ("$aws/things/t/jobs/", JobsTopic("t", Kind.INVALID)),
    ("$aws/things/t/jobs/j1", JobsTopic("t", Kind.INVALID)),
    ("$aws/things/t/jobs/j1/delete", JobsTopic("t", Kind.INVALID)),
    ("$aws/things/t/jobs//get", JobsTopic("t", Kind.INVALID)),
    ("$aws/things/t/jobs/get/", JobsTopic("t", Kind.INVALID)),
    ("$aws/things/t/jobs/a/b/get", JobsTopic("t", Kind.INVALID)),
    ("$aws/things/t/jobs/accepted", JobsTopic("t", Kind.INVALID)),
    ("$aws/things/t/jobs/notify/extra", JobsTopic("t", Kind.INVALID)),
])
def test_parse_jobs_topic(topic: str, expected: JobsTopic) -> None:
    assert parse_jobs_topic(topic) == expected


@pytest.mark.parametrize("topic", [
    "", "$aws", "$aws/things/t", "$aws/things/t/shadow/update", "$aws/things/t/jobsx/get",
    "$aws/things/t/Jobs/get", "$aws/events/job/j/completed",
    "$aws/events/jobExecution/j/succeeded", "aws/things/t/jobs/get", "things/t/jobs/get",
    "/$aws/things/t/jobs/get", "$AWS/things/t/jobs/get", "devicesim/t/events",
])
def test_topics_outside_the_jobs_namespace_are_none(topic: str) -> None:
    assert parse_jobs_topic(topic) is None


@FAST
@given(thing=thing_names, job_id=job_ids)
def test_parse_inverts_the_builders(thing: str, job_id: str) -> None:
    requests = [
        (topics.get_pending(thing), Operation.GET_PENDING, None),
        (topics.start_next(thing), Operation.START_NEXT, None),
        (topics.describe(thing, job_id), Operation.DESCRIBE, job_id),
        (topics.update(thing, job_id), Operation.UPDATE, job_id),
    ]
    for topic, operation, jid in requests:
        parsed = parse_jobs_topic(topic)
        assert parsed == JobsTopic(thing, Kind.REQUEST, operation, jid)
        assert parsed.request_topic == topic
        assert parse_jobs_topic(topics.accepted(topic)) == JobsTopic(
            thing, Kind.ACCEPTED, operation, jid)
        reply = parse_jobs_topic(topics.rejected(topic))
        assert reply == JobsTopic(thing, Kind.REJECTED, operation, jid)
        assert reply.request_topic == topic
    assert parse_jobs_topic(topics.notify(thing)) == JobsTopic(thing, Kind.NOTIFY)
    assert parse_jobs_topic(topics.notify_next(thing)) == JobsTopic(thing, Kind.NOTIFY_NEXT)


@pytest.mark.parametrize("topic", [
    "$aws/things/t/jobs/foo", "$aws/things/t/jobs/j1/delete", "$aws/things/t/jobs/notify",
    "$aws/things/t/jobs/notify-next", "$aws/things/t/jobs/get/accepted",
    "$aws/things/t/jobs/get/rejected/rejected", "$aws/things/t/jobs/",
])
def test_replies_to_any_jobs_topic_are_never_answered(topic: str) -> None:
    # The data plane answers an INVALID topic on '<topic>/rejected' and hears that reply
    # through $aws/things/+/jobs/#: were the reply INVALID too, one bad publish would loop
    # forever (spec §11: ignore /accepted and /rejected when parsing).
    for reply in (topics.rejected(topic), topics.accepted(topic)):
        parsed = parse_jobs_topic(reply)
        assert parsed is not None
        assert parsed.kind in (Kind.ACCEPTED, Kind.REJECTED), reply


def _mqtt_match(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching, including: wildcards at the first level skip `$` topics."""
    levels, parts = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            return not (i == 0 and topic.startswith("$"))
        if i >= len(parts):
            return False
        if level == "+":
            if i == 0 and topic.startswith("$"):
                return False
            continue
        if level != parts[i]:
            return False
    return len(levels) == len(parts)


@FAST
@given(thing=thing_names, other=thing_names, job_id=job_ids)
def test_subscriptions_cover_the_topics(thing: str, other: str, job_id: str) -> None:
    requests = [topics.get_pending(thing), topics.start_next(thing),
                topics.describe(thing, job_id), topics.update(thing, job_id)]
    subscriptions = topics.device_subscriptions(thing)
    for request in requests:
        assert _mqtt_match(topics.SERVICE_FILTER, request)
        assert not _mqtt_match("#", request)  # why the service subscribes to $aws/...
        for reply in (topics.accepted(request), topics.rejected(request)):
            assert any(_mqtt_match(s, reply) for s in subscriptions), reply
        if job_id not in topics.RESERVED_JOB_IDS:  # why CreateJob refuses those jobIds
            assert not any(_mqtt_match(s, request) for s in subscriptions), request
    assert any(_mqtt_match(s, topics.notify_next(thing)) for s in subscriptions)
    assert not any(_mqtt_match(s, topics.notify(thing)) for s in subscriptions)  # unused
    if other != thing:
        assert not any(_mqtt_match(s, topics.notify_next(other)) for s in subscriptions)
    assert _mqtt_match(topics.JOB_EVENTS_FILTER, topics.job_event(job_id, "deleted"))
    assert _mqtt_match(topics.DEVICE_EVENTS_FILTER, topics.device_events(thing))


def test_reserved_job_id_would_deliver_a_request_to_the_device() -> None:
    # jobId "get": the describe request $aws/things/t/jobs/get/get matches the device's
    # .../get/+ subscription for GetPending replies
    assert _mqtt_match(f"{topics.jobs_prefix('t')}/get/+", topics.describe("t", "get"))


def test_reserved_job_ids() -> None:
    assert {"get", "start-next", "notify", "notify-next", "update", "$next"} <= (
        topics.RESERVED_JOB_IDS)
    assert topics.JOB_ID_RE.fullmatch("a" * 64)
    assert not topics.JOB_ID_RE.fullmatch("a" * 65)
    assert not topics.JOB_ID_RE.fullmatch("$next")
    assert topics.THING_NAME_RE.fullmatch("thing:with_colons-1")


def test_power_commands_round_trip_and_bad_ones_are_refused() -> None:
    from devicesim.wire.joining import JoinError, PowerCommand, power_command, power_message

    command = PowerCommand(3, "on", ["dev-0001", "dev-0002"], clean_session=True)
    assert power_command(power_message("run-1", command)) == command
    for bad in (b'{"run": "r", "id": 1, "action": "reboot", "things": []}',
                b'{"run": "r", "action": "off", "things": []}', b"[]", b"not json"):
        with pytest.raises(JoinError):
            power_command(bad)
