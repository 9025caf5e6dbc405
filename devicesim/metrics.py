"""Live metrics in Prometheus' text format (prometheus_client), for ``--metrics-port`` of
``fleet drill``, ``fleet up`` and ``devicesim run``.

One mapping from history ops to metrics (:meth:`LiveMetrics.observe`), whoever records them:
the devices (their requests, the replies and pushes they receive, their events), the jobs
service (the replies and pushes it publishes), the controller and the drill (its markers).
What is a *state* rather than an event -- executions by status in the service's store,
devices by state in a fleet -- is set by its owner (:meth:`LiveMetrics.set_executions`,
:meth:`LiveMetrics.set_device_states`) from its own event loop; the HTTP server only reads.

=====================================  =======  ============================================
metric                                 type     labels
=====================================  =======  ============================================
devicesim_requests_total               counter  api
devicesim_replies_total                counter  api, code (``accepted`` or the rejection)
devicesim_round_trip_seconds           hist.    api (request -> its reply, same clientToken)
devicesim_pushes_total                 counter  kind (``notify``, ``notify-next``)
devicesim_terminal_updates_total       counter  status (accepted SUCCEEDED/FAILED/REJECTED)
devicesim_lost_access_total            counter  reason (how the device noticed)
devicesim_device_events_total          counter  kind
devicesim_devices_connected            gauge
devicesim_devices                      gauge    state (a fleet's devices by state)
devicesim_executions                   gauge    status (the service's executions)
devicesim_controller_calls_total       counter  api, outcome (``ok`` / ``fail``)
devicesim_faults_total                 counter  kind (force deletes/cancels, power cuts,
                                                broker outages)
=====================================  =======  ============================================
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from devicesim.wire.enums import JobExecutionStatus
from devicesim.wire.history import Op, OpType, fault

#: not devices: who else records ops
_NOT_DEVICES = ("controller", "drill", "service")
#: requests awaiting their reply, at most (the oldest are forgotten first)
_MAX_PENDING = 200_000
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0)


def _terminal(status: object) -> bool:
    try:
        return JobExecutionStatus(str(status)).is_terminal
    except ValueError:
        return False


class LiveMetrics:
    """Metrics of one process, in their own registry (several may live in one process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("devicesim_requests", "Jobs requests devices sent", ["api"],
                                registry=r)
        self.replies = Counter("devicesim_replies", "Jobs replies, by code", ["api", "code"],
                               registry=r)
        self.round_trip = Histogram("devicesim_round_trip_seconds",
                                    "Device request to its reply", ["api"], buckets=_BUCKETS,
                                    registry=r)
        self.pushes = Counter("devicesim_pushes", "notify / notify-next pushes", ["kind"],
                              registry=r)
        self.terminal = Counter("devicesim_terminal_updates",
                                "Accepted terminal updates (executions finished by devices)",
                                ["status"], registry=r)
        self.lost_access = Counter("devicesim_lost_access",
                                   "Devices that noticed they lost an execution", ["reason"],
                                   registry=r)
        self.events = Counter("devicesim_device_events", "Device events", ["kind"],
                              registry=r)
        self.connected = Gauge("devicesim_devices_connected", "Devices connected now",
                               registry=r)
        self.devices = Gauge("devicesim_devices", "A fleet's devices by state", ["state"],
                             registry=r)
        self.executions = Gauge("devicesim_executions", "The service's executions by status",
                                ["status"], registry=r)
        self.calls = Counter("devicesim_controller_calls", "Control-plane calls of the drill",
                             ["api", "outcome"], registry=r)
        self.faults = Counter("devicesim_faults", "Faults the drill injected", ["kind"],
                              registry=r)
        self._pending: OrderedDict[tuple[str, str, str], tuple[float, object]] = OrderedDict()
        self._online: set[str] = set()
        self._lock = threading.Lock()
        self._server: Any = None

    # -- what happened ---------------------------------------------------------------------

    def observe(self, op: Op) -> None:
        """Count one op (any recorder's: see the module docstring)."""
        process, f = op.process, op.f
        kind = fault(op)
        if kind is not None:
            self.faults.labels(kind=kind).inc()
        if process == "drill" or f.startswith("dropped:"):
            return
        if process.startswith("controller"):
            if op.type in (OpType.OK, OpType.FAIL):
                self.calls.labels(api=f, outcome=op.type.value).inc()
            return
        if f.startswith("device:"):
            self._device_event(op, f[len("device:"):])
        elif f.startswith("presence:"):
            self._online_change(process, f == "presence:connected")
        elif f in ("notify", "notify-next"):
            self.pushes.labels(kind=f).inc()
        elif process not in _NOT_DEVICES and op.type is OpType.INVOKE:
            self._request(op)
        elif op.type in (OpType.OK, OpType.FAIL) and process not in _NOT_DEVICES:
            self._reply(op)

    def _device_event(self, op: Op, kind: str) -> None:
        self.events.labels(kind=kind).inc()
        if kind == "lost_access":
            self.lost_access.labels(reason=str(op.value.get("reason") or "unknown")).inc()
        elif kind == "connected":
            self._online_change(op.process, True)
        elif kind in ("disconnected", "rebooted"):
            self._online_change(op.process, False)

    def _online_change(self, thing: str, online: bool) -> None:
        with self._lock:
            (self._online.add if online else self._online.discard)(thing)
            self.connected.set(len(self._online))

    def _request(self, op: Op) -> None:
        self.requests.labels(api=op.f).inc()
        token = op.value.get("clientToken")
        if isinstance(token, str):
            payload = op.value.get("payload")
            status = payload.get("status") if isinstance(payload, dict) else None
            self._pending[(op.process, op.f, token)] = (op.time, status)
            if len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)

    def _reply(self, op: Op) -> None:
        code = "accepted" if op.type is OpType.OK else str(op.value.get("code") or "unknown")
        self.replies.labels(api=op.f, code=code).inc()
        token = op.value.get("clientToken")
        asked = self._pending.pop((op.process, op.f, token), None) \
            if isinstance(token, str) else None
        if asked is None:
            return
        sent, status = asked
        self.round_trip.labels(api=op.f).observe(max(0.0, op.time - sent))
        if op.type is OpType.OK and _terminal(status):
            self.terminal.labels(status=str(status)).inc()

    # -- what is -----------------------------------------------------------------------------

    def set_executions(self, by_status: Mapping[str, int]) -> None:
        """The service's executions by status (every status, zeros included)."""
        for status in JobExecutionStatus:
            self.executions.labels(status=status.value).set(by_status.get(status.value, 0))

    def set_device_states(self, by_state: Mapping[str, int]) -> None:
        for state, count in by_state.items():
            self.devices.labels(state=state).set(count)

    # -- serving ---------------------------------------------------------------------------

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) from a thread; the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
