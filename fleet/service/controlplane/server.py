"""The control plane's HTTP shell: aiohttp app, dispatch, and the one error-to-wire seam.

::

    request ──► routes.match ──► Input (labels, query, JSON body) ──► handlers.HANDLERS[op]
                    │                                                    │
                    └───────────── JobsError ──► error_response ◄────────┘
                                   other     ──► InternalFailureException (500, logged)

After every successful mutating operation the server awaits ``on_change()``, so the service
can publish what the store queued (``store.drain()``: notifications, jobs events) over MQTT.
A failing ``on_change`` is logged and does not turn the (already committed) call into an
error. Credentials are accepted as they come unless a :class:`~.sigv4.Verifier` is given:
then every request's SigV4 signature is checked before routing, and one that fails gets
AWS's 403 and changes nothing.
"""

from __future__ import annotations

import inspect
import json
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web

from fleet.service.controlplane import jobsdata, routes
from fleet.service.controlplane.handlers import HANDLERS, Context, Handler
from fleet.service.controlplane.inputs import Input, parse_body
from fleet.service.controlplane.jobsdata import JOBS_DATA_HANDLERS
from fleet.service.controlplane.shapes import Json
from fleet.service.controlplane.sigv4 import Verifier
from fleet.service.dataplane import DataPlane
from fleet.service.errors import (
    ConflictException,
    InternalFailureException,
    InvalidRequestException,
    JobsError,
    ResourceAlreadyExistsException,
)
from fleet.service.registry import Registry
from fleet.service.store import JobsStore, Publish

log = logging.getLogger(__name__)

OnChange = Callable[[], Awaitable[None]] | Callable[[], None]
JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Api:
    """One REST API this shell serves: its routes, handlers, and the HTTP statuses where its
    model differs from the errors' own."""

    name: str
    router: routes.Router
    handlers: Mapping[str, Handler]
    http_status: Mapping[str, int] = field(default_factory=dict)


#: the ``iot`` control plane
IOT = Api("iot", routes.IOT, HANDLERS)
#: the ``iot-jobs-data`` data plane over HTTPS
JOBS_DATA = Api("iot-jobs-data", routes.JOBS_DATA, JOBS_DATA_HANDLERS, jobsdata.HTTP_STATUS)


def error_response(err: JobsError, *, request_id: str, labels: dict[str, str],
                   store: JobsStore, http_status: Mapping[str, int] | None = None
                   ) -> web.Response:
    """The one translation of an AWS error into its rest-json wire form (spec §4)."""
    body: Json = {"message": err.message}
    if isinstance(err, ResourceAlreadyExistsException) and "jobId" in labels:
        body["resourceId"] = labels["jobId"]
        body["resourceArn"] = store.job_arn(labels["jobId"])
    if isinstance(err, ConflictException):
        body["resourceId"] = err.resource_id
    return web.Response(
        status=(http_status or {}).get(err.code, err.http_status), body=json.dumps(body).encode(),
        content_type=JSON_CONTENT_TYPE,
        headers={"x-amzn-ErrorType": err.code, "x-amzn-RequestId": request_id})


def success_response(result: Json | None, *, request_id: str) -> web.Response:
    headers = {"x-amzn-RequestId": request_id}
    if result is None:
        return web.Response(status=200, headers=headers)
    return web.Response(status=200, body=json.dumps(result).encode(),
                        content_type=JSON_CONTENT_TYPE, headers=headers)


class _Dispatcher:
    def __init__(self, ctx: Context, on_change: OnChange, verifier: Verifier | None,
                 api: Api) -> None:
        self._ctx = ctx
        self._on_change = on_change
        self._verifier = verifier
        self._api = api

    async def handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        labels: dict[str, str] = {}
        operation = "-"
        try:
            if self._verifier is not None:
                self._verifier.verify(request.method,
                                      f"{request.scheme}://{request.host}{request.raw_path}",
                                      request.headers, await request.read())
            route, labels = self._api.router.match(request.method, request.rel_url.raw_path)
            operation = route.operation
            query = request.rel_url.query
            inp = Input(operation, labels, {k: query.getall(k) for k in query},
                        parse_body(await request.read()),
                        {k.lower(): v for k, v in request.headers.items()})
            result = self._api.handlers[operation](self._ctx, inp)
        except web.HTTPException as exc:  # e.g. a body over client_max_size
            return self._error(InvalidRequestException(exc.text or exc.reason), operation,
                               request_id, labels)
        except JobsError as err:
            return self._error(err, operation, request_id, labels)
        except Exception as exc:
            log.exception("request failed operation=%s request_id=%s", operation, request_id)
            return self._error(InternalFailureException(f"{type(exc).__name__}: {exc}"),
                               operation, request_id, labels)
        if route.mutating:
            await self._changed(operation, request_id)
        log.info("request operation=%s status=200 request_id=%s%s", operation, request_id,
                 "".join(f" {_log_name(k)}={v}" for k, v in labels.items()))
        return success_response(result, request_id=request_id)

    def _error(self, err: JobsError, operation: str, request_id: str,
               labels: dict[str, str]) -> web.Response:
        log.info("request operation=%s status=%d error=%s request_id=%s%s message=%r",
                 operation, err.http_status, err.code, request_id,
                 "".join(f" {_log_name(k)}={v}" for k, v in labels.items()), err.message)
        return error_response(err, request_id=request_id, labels=labels, store=self._ctx.store,
                              http_status=self._api.http_status)

    async def _changed(self, operation: str, request_id: str) -> None:
        try:
            result = self._on_change()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_change failed operation=%s request_id=%s", operation, request_id)


def _log_name(label: str) -> str:
    """URI label -> the project's log key (``jobId`` -> ``job_id``)."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in label)


def make_app(store: JobsStore, on_change: OnChange, *,
             now: Callable[[], float] | None = None,
             verifier: Verifier | None = None, registry: Registry | None = None,
             endpoint_address: str | None = None, jobs_endpoint: str | None = None,
             api: Api = IOT, dataplane: DataPlane | None = None,
             record_reply: Callable[[Publish], None] | None = None) -> web.Application:
    """The aiohttp application of ``api`` (default: the control plane) around ``store``.

    ``on_change`` (sync or async) is called after every successful mutating operation.
    ``now`` defaults to the store's clock. ``verifier``: check SigV4 signatures.
    """
    dispatcher = _Dispatcher(Context(store, now or store.now, registry, endpoint_address,
                                     jobs_endpoint, dataplane or DataPlane(store, now or
                                                                           store.now),
                                     record_reply), on_change, verifier, api)
    app = web.Application()
    # every path, newlines included (``.*`` stops at one: %0A in a path got aiohttp's own 404)
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatcher.handle)
    return app


class ControlPlane:
    """The control plane (or, ``api=JOBS_DATA``, the HTTPS data plane) served on a TCP port:
    ``url = await cp.start()``, ``await cp.stop()``."""

    def __init__(self, store: JobsStore, on_change: OnChange, *,
                 now: Callable[[], float] | None = None, shutdown_timeout: float = 5.0,
                 verifier: Verifier | None = None, registry: Registry | None = None,
                 endpoint_address: str | None = None, jobs_endpoint: str | None = None,
                 api: Api = IOT, dataplane: DataPlane | None = None,
                 record_reply: Callable[[Publish], None] | None = None) -> None:
        self._app = make_app(store, on_change, now=now, verifier=verifier, registry=registry,
                             endpoint_address=endpoint_address, jobs_endpoint=jobs_endpoint,
                             api=api, dataplane=dataplane, record_reply=record_reply)
        self.api = api
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("control plane not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    ssl_context: ssl.SSLContext | None = None) -> str:
        """Listen on ``host:port`` (0: a free port); the endpoint URL, ``http://HOST:PORT``
        (``https://`` with an ``ssl_context``)."""
        if self._runner is not None:
            raise RuntimeError("control plane already started")
        runner = web.AppRunner(self._app, access_log=None,
                               shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        self._url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{bound_port}"
        log.info("%s listening url=%s", self.api.name, self._url)
        return self._url

    async def stop(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await runner.cleanup()
        log.info("%s stopped url=%s", self.api.name, self._url)
        self._url = None

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
