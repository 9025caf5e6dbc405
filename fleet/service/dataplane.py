"""The MQTT data plane of the emulated jobs service, as a pure function.

:meth:`DataPlane.handle` takes one message received under ``$aws/things/+/jobs/#`` and
returns what to publish: the reply on ``/accepted`` or ``/rejected`` first, then the
notifications and events the request caused (spec §5). The service's own replies and pushes
come back through the wildcard subscription and are ignored here, never parsed as requests.
Every failure becomes a ``/rejected`` reply with its AWS code; nothing raises out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from devicesim.wire import topics
from devicesim.wire.codec import WireError, dumps, loads_object
from devicesim.wire.enums import RejectedErrorCode
from devicesim.wire.messages import (
    MAX_PAYLOAD_BYTES,
    DescribeJobExecutionRequest,
    DescribeJobExecutionResponse,
    GetPendingJobExecutionsRequest,
    GetPendingJobExecutionsResponse,
    RejectedError,
    StartNextJobExecutionResponse,
    StartNextPendingJobExecutionRequest,
    UpdateJobExecutionRequest,
    UpdateJobExecutionResponse,
)
from fleet.service.errors import JobsError
from fleet.service.settings import EmptyPayload
from fleet.service.store import JobsStore, Publish

log = logging.getLogger(__name__)
_IGNORED = (topics.Kind.ACCEPTED, topics.Kind.REJECTED, topics.Kind.NOTIFY,
            topics.Kind.NOTIFY_NEXT)


class DataPlane:
    def __init__(self, store: JobsStore, now: Callable[[], float]) -> None:
        self._store = store
        self._now = now
        self.rejected = 0
        self.handled = 0

    def handle(self, topic: str, payload: bytes) -> list[Publish]:
        parsed = topics.parse_jobs_topic(topic)
        if parsed is None or parsed.kind in _IGNORED:
            return []
        self.handled += 1
        token: str | None = None
        try:
            if parsed.kind is topics.Kind.INVALID or parsed.operation is None:
                raise WireError(RejectedErrorCode.INVALID_TOPIC,
                                f"topic {topic} does not name a Jobs API")
            if not topics.THING_NAME_RE.fullmatch(parsed.thing_name):
                raise WireError(RejectedErrorCode.INVALID_TOPIC,
                                f"thing name {parsed.thing_name!r:.140} is not valid")
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise WireError(RejectedErrorCode.INVALID_REQUEST,
                                f"payload of {len(payload)} bytes exceeds 128 KB")
            empty_ok = self._store.settings.empty_payload is EmptyPayload.AS_EMPTY_OBJECT
            obj = loads_object(payload, empty_is_object=empty_ok)
            raw_token = obj.get("clientToken")
            token = raw_token if isinstance(raw_token, str) else None
            assert parsed.operation is not None
            reply = self.answer(parsed.operation, parsed.thing_name, parsed.job_id, obj, token)
            out = [Publish(topics.accepted(topic), dumps(reply))]
        except WireError as e:
            out = [self._rejected(topic, e.code, e.message, token)]
        except JobsError as e:
            state = e.execution_state if e.mqtt_code.carries_execution_state else None
            out = [self._rejected(topic, e.mqtt_code, e.message, token, state)]
        except Exception as e:  # a bug must cost one InternalError reply, never the service
            log.exception("data plane failed topic=%s", topic)
            out = [self._rejected(topic, RejectedErrorCode.INTERNAL_ERROR, str(e), token)]
        return out + self._store.drain()

    def rejection(self, topic: str, error: JobsError | WireError, token: str | None
                  ) -> Publish:
        """The ``/rejected`` reply to the request on ``topic`` that ``error`` refused."""
        if isinstance(error, WireError):
            return self._rejected(topic, error.code, error.message, token)
        state = error.execution_state if error.mqtt_code.carries_execution_state else None
        return self._rejected(topic, error.mqtt_code, error.message, token, state)

    def _rejected(self, topic: str, code: RejectedErrorCode, message: str, token: str | None,
                  state: Any = None) -> Publish:
        self.rejected += 1
        log.debug("rejected topic=%s code=%s message=%s", topic, code, message)
        return Publish(topics.rejected(topic), dumps(RejectedError(
            code=code, message=message, client_token=token, timestamp=int(self._now()),
            execution_state=state)))

    def answer(self, operation: topics.Operation, thing: str, job_id: str | None,
               obj: dict[str, Any], token: str | None) -> Any:
        """The accepted reply to a request (its MQTT shape), or the JobsError / WireError
        it is rejected with: the one place a device's request is answered, whether it came
        over MQTT or over HTTPS (:mod:`fleet.service.controlplane.jobsdata`)."""
        store, now = self._store, self._now()
        if operation is topics.Operation.GET_PENDING:
            GetPendingJobExecutionsRequest.from_dict(obj)
            in_progress, queued = store.get_pending(thing)
            return GetPendingJobExecutionsResponse(
                in_progress_jobs=[e.summary() for e in in_progress],
                queued_jobs=[e.summary() for e in queued], timestamp=int(now),
                client_token=token)
        if operation is topics.Operation.START_NEXT:
            start = StartNextPendingJobExecutionRequest.from_dict(obj)
            execution = store.start_next(thing, status_details=start.status_details,
                                         step_timeout=start.step_timeout_in_minutes)
            return StartNextJobExecutionResponse(
                execution=None if execution is None else execution.data(
                    now, store.document(execution.job_id)),
                timestamp=int(now), client_token=token)
        assert job_id is not None
        if operation is topics.Operation.DESCRIBE:
            describe = DescribeJobExecutionRequest.from_dict(obj)
            execution = store.describe(thing, job_id, describe.execution_number)
            include = describe.include_job_document is not False
            return DescribeJobExecutionResponse(
                execution=None if execution is None else execution.data(
                    now, store.document(execution.job_id) if include else None),
                timestamp=int(now), client_token=token)
        update = UpdateJobExecutionRequest.from_dict(obj)
        execution = store.update(
            thing, job_id, status=update.status, status_details=update.status_details,
            expected_version=update.expected_version,
            execution_number=update.execution_number,
            step_timeout=update.step_timeout_in_minutes)
        return UpdateJobExecutionResponse(
            execution_state=execution.state() if update.include_job_execution_state else None,
            job_document=store.document(execution.job_id) if update.include_job_document
            else None,
            timestamp=int(now), client_token=token)
