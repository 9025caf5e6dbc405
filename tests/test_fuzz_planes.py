"""Fuzzed planes: random topics, bytes, JSON and oversized payloads at the MQTT data plane,
random methods, paths, query strings, headers and bodies at the HTTP control plane. Every
answer is an AWS error (never an internal one: that would be a bug), the service keeps
answering, and a rejected request changes no state (the store's rows, dumped before and
after). Bounded in CI (``DEVICESIM_FUZZ_EXAMPLES`` raises the count of examples)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import sqlite3
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicesim.wire.enums import JobExecutionStatus, RejectedErrorCode
from fleet.service.controlplane.server import ControlPlane
from fleet.service.dataplane import DataPlane
from fleet.service.store import JobsStore

EXAMPLES = int(os.environ.get("DEVICESIM_FUZZ_EXAMPLES", "200"))
THINGS = ("dev-1", "dev-2")
DOC = json.dumps({"operation": "sleep", "seconds": 1})
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


def arn(thing: str) -> str:
    return f"arn:aws:iot:us-east-1:123456789012:thing/{thing}"


def dump(path: Path) -> list[str]:
    """Every committed row of the store, as SQL."""
    with sqlite3.connect(path) as db:
        return list(db.iterdump())


def seeded_store(path: Path) -> tuple[JobsStore, DataPlane]:
    """A store with a job on two things, one of them started (QUEUED and IN_PROGRESS)."""
    store = JobsStore(path, now=lambda: 1_764_000_000.0)
    store.create_job("j1", targets=[arn(t) for t in THINGS], document=DOC)
    plane = DataPlane(store, store.now)
    plane.handle("$aws/things/dev-1/jobs/start-next", b'{"clientToken":"seed"}')
    store.drain()
    return store, plane


# --- the data plane ------------------------------------------------------------------------

levels = st.one_of(
    st.sampled_from(["get", "start-next", "notify", "notify-next", "update", "accepted",
                     "rejected", "$next", "j1", "j2", "jobs", "", "+", "#"]),
    st.text(max_size=12))
topic_names = st.one_of(
    st.builds(lambda thing, rest: f"$aws/things/{thing}/jobs/" + "/".join(rest),
              st.one_of(st.sampled_from(THINGS), st.text(max_size=20)),
              st.lists(levels, min_size=0, max_size=4)),
    st.builds(lambda rest: "$aws/things/" + "/".join(rest), st.lists(levels, max_size=5)))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=10)
statuses = st.one_of(st.sampled_from([s.value for s in JobExecutionStatus]), json_values)
requests = st.fixed_dictionaries({}, optional={
    "clientToken": st.one_of(st.text(max_size=70), json_values),
    "status": statuses,
    "statusDetails": st.one_of(st.dictionaries(st.text(max_size=10), st.text(max_size=10),
                                               max_size=3), json_values),
    "expectedVersion": st.one_of(st.integers(-2, 5), json_values),
    "executionNumber": st.one_of(st.integers(-2, 3), json_values),
    "includeJobExecutionState": json_values,
    "includeJobDocument": json_values,
    "stepTimeoutInMinutes": st.one_of(st.integers(-5, 20000), json_values),
})
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    requests.map(lambda v: json.dumps(v).encode()),
    st.just(json.dumps({"clientToken": "x" * (129 * 1024)}).encode()),
    st.just(b""))


@FUZZ
@given(topic=topic_names, payload=payloads)
def test_the_data_plane_answers_anything_with_an_aws_error(topic: str, payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.db"
        store, plane = seeded_store(path)
        try:
            before = dump(path)
            effects = plane.handle(topic, payload)  # must not raise
            accepted = False
            for effect in effects:
                body = json.loads(effect.payload)
                if effect.topic.endswith("/rejected"):
                    code = RejectedErrorCode(body["code"])  # an AWS code...
                    assert code is not RejectedErrorCode.INTERNAL_ERROR, body  # ...not a bug
                elif effect.topic.endswith("/accepted"):
                    accepted = True
            if not accepted:
                assert dump(path) == before, (topic, payload[:200])
        finally:
            store.close()


# --- the control plane ---------------------------------------------------------------------


class Served:
    """The control plane over a seeded store, served from its own event loop thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store, _ = seeded_store(path)
        self.loop = asyncio.new_event_loop()
        self.plane = ControlPlane(self.store, lambda: None)
        ready = threading.Event()
        self.url = ""

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.url = self.loop.run_until_complete(self.plane.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(10)
        self.port = urllib.parse.urlsplit(self.url).port

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, \
                response.read()
        finally:
            conn.close()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.plane.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.store.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("fuzz") / "jobs.db")
    yield s
    s.close()


segments = st.one_of(st.sampled_from(["jobs", "things", "j1", "j2", "dev-1", "job-templates",
                                      "executions", "cancel", "job-executions", "policies",
                                      "certificates", "endpoint", "%2F", "..", ""]),
                     st.text(max_size=10).map(lambda s: urllib.parse.quote(s, safe="")))
queries = st.dictionaries(st.sampled_from(["force", "maxResults", "nextToken", "status",
                                           "namespaceId", "thingName", "x"]),
                          st.one_of(st.sampled_from(["true", "false", "1", "-1", ""]),
                                    st.text(max_size=8)), max_size=3)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30)
headers = st.dictionaries(st.sampled_from(["Content-Type", "X-Amz-Date", "Authorization",
                                           "X-Amz-Target", "Accept", "X-Custom"]),
                          header_values, max_size=3)
bodies = st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                   st.dictionaries(st.sampled_from(["jobId", "targets", "document", "force",
                                                    "comment", "reasonCode", "x"]),
                                   json_values, max_size=4).map(lambda v: json.dumps(v).encode()))


@FUZZ
@given(method=st.sampled_from(["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS",
                               "TRACE"]),
       path=st.lists(segments, min_size=0, max_size=4), query=queries, header=headers,
       body=bodies)
def test_the_control_plane_answers_anything_with_an_aws_error(
        served: Served, method: str, path: list[str], query: dict[str, str],
        header: dict[str, str], body: bytes) -> None:
    target = "/" + "/".join(path) + ("?" + urllib.parse.urlencode(query) if query else "")
    before = dump(served.path)
    status, got, content = served.request(method, target, header, body)
    assert 200 <= status < 600
    assert status < 500, (method, target, status, content[:300])  # 5xx: a bug of ours
    if status >= 400:
        assert got.get("x-amzn-errortype"), (method, target, status, got)
        if method != "HEAD":
            message: Any = json.loads(content)
            assert "message" in message, content[:300]
        assert dump(served.path) == before, (method, target)
    # and it keeps answering
    status, _, content = served.request("GET", "/jobs", {}, b"")
    assert status == 200, content[:300]


def test_a_path_with_a_newline_reaches_the_api(served: Served) -> None:
    """Found by the fuzzer: a %0A in the path once missed the catch-all route (``.*`` stops
    at a newline) and got aiohttp's own plain 404 instead of an AWS error."""
    status, headers, content = served.request("GET", "/%0A", {}, b"")
    assert status == 404
    assert headers.get("x-amzn-errortype") == "UnknownOperationException", content
    status, headers, _ = served.request("GET", "/jobs/a%0Ab", {}, b"")
    assert headers.get("x-amzn-errortype"), status


def test_a_request_that_is_not_http_is_refused_at_the_http_layer(served: Served) -> None:
    """A method HTTP does not know is refused by the HTTP parser (a plain 400, before any
    API routing, as a front end does), and the service keeps answering."""
    status, _, content = served.request("FOO", "/jobs", {}, b"")
    assert status == 400
    assert b"Invalid method" in content
    assert served.request("GET", "/jobs", {}, b"")[0] == 200

