"""The controller (the nemesis's hands): AWS IoT control-plane calls through boto3 only.

The same code drives the emulator (``endpoint_url``) and real AWS IoT (region and real
credentials). Every call is recorded as ``invoke`` then ``ok`` / ``fail`` (Jepsen style),
with the request and the response or the AWS error code.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import boto3
import botocore.config
from botocore.exceptions import ClientError

from devicesim.wire.history import Op, OpType

log = logging.getLogger(__name__)

PROCESS = "controller"


def iot_client(endpoint_url: str | None, region: str | None = "us-east-1", *,
               verify: str | None = None, service_name: str = "iot") -> Any:
    """A boto3 ``iot`` client (or ``service_name``'s, e.g. ``iot-jobs-data``); dummy
    credentials when none are configured (the emulator accepts any, real AWS needs real
    ones). ``verify``: the CA of an ``https://`` endpoint (None: botocore's default trust,
    which honours ``AWS_CA_BUNDLE``)."""
    session = boto3.session.Session(region_name=region)
    creds: dict[str, str] = {}
    if session.get_credentials() is None:
        creds = {"aws_access_key_id": "devicesim", "aws_secret_access_key": "devicesim"}
    config = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"},
                                    max_pool_connections=32)
    return session.client(service_name, endpoint_url=endpoint_url, config=config,
                          verify=verify, **creds)


class ControllerError(Exception):
    """An AWS error the controller could not work around (after retries)."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"{operation}: {code}: {message}")
        self.operation, self.code = operation, code


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return value


class Controller:
    def __init__(self, client: Any, record: Callable[[Op], None], *,
                 now: Callable[[], float] = time.time, region: str = "us-east-1",
                 account_id: str = "123456789012") -> None:
        self._client, self._record, self._now = client, record, now
        self._arn_prefix = f"arn:aws:iot:{region}:{account_id}:thing/"

    async def call(self, operation: str, **request: Any) -> dict[str, Any]:
        """Call one API (``"DeleteJob"``, ...) in a thread; record invoke and ok / fail."""
        method = getattr(self._client, _snake(operation))
        self._op(OpType.INVOKE, operation, {"request": _jsonable(request)})
        try:
            response: dict[str, Any] = await asyncio.to_thread(method, **request)
        except ClientError as e:
            err = e.response.get("Error", {})
            error = {"code": err.get("Code", "Unknown"), "message": err.get("Message", ""),
                     "httpStatus": e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")}
            self._op(OpType.FAIL, operation, {"request": _jsonable(request), "error": error})
            raise ControllerError(operation, error["code"], error["message"]) from e
        self._op(OpType.OK, operation, {"request": _jsonable(request),
                                        "response": _jsonable(response)})
        return response

    def _op(self, type_: OpType, f: str, value: dict[str, Any]) -> None:
        self._record(Op(time=self._now(), process=PROCESS, type=type_, f=f, value=value))

    # -- the operations drills use -------------------------------------------------------

    async def create_job(self, job_id: str, things: list[str], document: dict[str, Any],
                         *, groups: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
        """CreateJob on ``things`` and the thing ``groups``."""
        group_prefix = self._arn_prefix.replace(":thing/", ":thinggroup/")
        return await self.call("CreateJob", jobId=job_id,
                               targets=[group_prefix + g for g in groups]
                               + [self._arn_prefix + t for t in things],
                               document=json.dumps(document), **extra)

    async def group_members(self, group: str, things: list[str], *, add: bool = True,
                            parent: str | None = None, create: bool = False,
                            concurrency: int = 16) -> None:
        """Register ``things`` and add them to ``group`` (``create``: make the group first,
        below ``parent``), or (``add=False``) take them out of it; every call recorded."""
        if create:
            await self.call("CreateThingGroup", thingGroupName=group,
                            **({"parentGroupName": parent} if parent else {}))
        gate = asyncio.Semaphore(concurrency)

        async def one(thing: str) -> None:
            async with gate:
                if add:
                    await self.call("CreateThing", thingName=thing)
                    await self.call("AddThingToThingGroup", thingGroupName=group,
                                    thingName=thing)
                else:
                    await self.call("RemoveThingFromThingGroup", thingGroupName=group,
                                    thingName=thing)

        await asyncio.gather(*(one(t) for t in things))

    async def delete_job(self, job_id: str, *, force: bool = True, attempts: int = 50,
                         backoff: float = 0.05) -> None:
        """DeleteJob; LimitExceededException (10 deletions at once) backs off and retries,
        each refusal recorded."""
        for attempt in range(attempts):
            try:
                await self.call("DeleteJob", jobId=job_id, force=force)
                return
            except ControllerError as e:
                if e.code != "LimitExceededException" or attempt == attempts - 1:
                    raise
                await asyncio.sleep(min(backoff * 2 ** attempt, 1.0))

    async def cancel_job(self, job_id: str, *, force: bool = True,
                         reason_code: str | None = None) -> None:
        extra = {} if reason_code is None else {"reasonCode": reason_code}
        await self.call("CancelJob", jobId=job_id, force=force, **extra)

    async def cancel_job_execution(self, job_id: str, thing: str, *, force: bool = True
                                   ) -> None:
        await self.call("CancelJobExecution", jobId=job_id, thingName=thing, force=force)

    async def delete_job_execution(self, job_id: str, thing: str, execution_number: int, *,
                                   force: bool = True) -> None:
        await self.call("DeleteJobExecution", jobId=job_id, thingName=thing,
                        executionNumber=execution_number, force=force)

    async def job_status(self, job_id: str) -> str | None:
        """The job's status, or None once it no longer exists (not recorded: a probe)."""
        try:
            response = await asyncio.to_thread(self._client.describe_job, jobId=job_id)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None
            raise
        return str(response["job"]["status"])

    async def executions(self, job_id: str) -> list[dict[str, Any]]:
        """The job's executions as the service holds them (not recorded: a probe), in the
        ``final-state`` marker's shape; none once the job is gone."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        try:
            while True:
                page = await asyncio.to_thread(
                    self._client.list_job_executions_for_job, jobId=job_id,
                    **({"nextToken": token} if token else {}))
                for summary in page.get("executionSummaries", []):
                    thing = str(summary["thingArn"]).rsplit("/", 1)[-1]
                    described = await asyncio.to_thread(
                        self._client.describe_job_execution, jobId=job_id, thingName=thing)
                    e = described["execution"]
                    out.append({"thingName": thing, "jobId": job_id,
                                "executionNumber": e.get("executionNumber"),
                                "status": e["status"], "versionNumber": e.get("versionNumber")})
                token = page.get("nextToken")
                if not token:
                    return out
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return out
            raise

    async def wait_deleted(self, job_id: str, interval: float = 0.05) -> None:
        """Until DescribeJob says ResourceNotFound. The control plane has no push to wait
        on (jobs events may be off), so this polls the API; callers bound it in time."""
        while await self.job_status(job_id) is not None:  # noqa: ASYNC110 - remote API
            await asyncio.sleep(interval)


def _snake(operation: str) -> str:
    out = [operation[0].lower()]
    for ch in operation[1:]:
        out.append("_" + ch.lower() if ch.isupper() else ch)
    return "".join(out)
