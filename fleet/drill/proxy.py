"""A TCP proxy in front of the broker that injects network faults, per MQTT client.

The devices of a drill with network faults connect through it; the drill's own clients
(jobs service, recorder, the link to device workers) connect to the broker directly. The
proxy learns each connection's MQTT client id from its first packet (CONNECT, MQTT 3.1.1
or 5 -- which is why it serves the plain listener only: TLS hides the packet), and applies
the fault its client id has, to its open connections and to new ones:

=============  =============================================================================
``cut``        open connections are reset; a new one is closed once its CONNECT arrived
               (the device's reconnects fail until the heal)
``blackhole``  the connection stays open and nothing moves, either way; a new one hangs
               after its CONNECT. On the heal what was held flows, in order (TCP would have
               retransmitted it), unless an end gave up on the connection meanwhile
``delay``      every chunk arrives ``seconds`` later, in order, both ways
``throttle``   at most ``rate`` bytes per second, each way
=============  =============================================================================

A heal ends the faults of the clients it names (or of all). Nothing is dropped inside a
connection: a fault either resets it or holds its bytes.

It runs as its own process -- ``python -m fleet.drill.proxy --upstream HOST:PORT`` -- as
two sockets per device would cost the drill's process its open-file budget at fleet size
(:func:`capacity`). It prints ``{"listening": PORT}`` once it listens, then takes one JSON
command per line on stdin and answers each with one line on stdout:

- ``{"id": 1, "fault": "cut", "things": [...], "seconds": 0, "rate": 0}`` ->
  ``{"id": 1, "ok": true, "connections": N}`` (the open connections it hit now);
- ``{"id": 2, "heal": [...]}`` (``null``: every client) -> ``{"id": 2, "ok": true,
  "released": BYTES, "connections": N}``;
- ``{"id": 3, "stats": true}`` -> the counters (connections, refused, bytes each way).

A command it cannot take is answered ``{"id": N, "ok": false, "error": "..."}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("cut", "blackhole", "delay", "throttle")
#: bytes of a CONNECT the proxy waits for before it gives up on a connection
CONNECT_LIMIT = 65_536
#: the file descriptors the proxy keeps for itself (listener, pipes, the interpreter)
RESERVED_FDS = 64


class ProxyError(Exception):
    """The proxy process failed, or refused a command."""


def capacity() -> int:
    """How many device connections one proxy process can carry: two descriptors each, within
    the hard open-files limit (the proxy raises its soft limit to it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 1_000_000
    return max(0, (hard - RESERVED_FDS) // 2)


def connect_client_id(data: bytes) -> str | None:
    """The client id of the MQTT CONNECT packet ``data`` starts with; None while ``data``
    does not hold all of it yet. ValueError if it is not a CONNECT packet."""
    if not data:
        return None
    if data[0] != 0x10:
        raise ValueError(f"first packet is not CONNECT (type byte 0x{data[0]:02x})")
    length, used = _varint(data, 1)
    if length is None:
        return None
    start = 1 + used
    if len(data) < start + length:
        return None
    packet = data[start:start + length]
    try:
        pos = 2 + int.from_bytes(packet[0:2], "big")  # protocol name
        level = packet[pos]
        pos += 4  # level, flags, keep alive
        if level == 5:
            props, used = _varint(packet, pos)
            if props is None:
                raise ValueError("truncated properties")
            pos += used + props
        size = int.from_bytes(packet[pos:pos + 2], "big")
        if len(packet) < pos + 2 + size:
            raise ValueError("truncated client id")
        return packet[pos + 2:pos + 2 + size].decode()
    except (IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed CONNECT: {e}") from None


def _varint(data: bytes, at: int) -> tuple[int | None, int]:
    """An MQTT variable byte integer at ``at``: (value or None if incomplete, bytes used)."""
    value, shift = 0, 0
    for used in range(1, 5):
        if at + used - 1 >= len(data):
            return None, used
        byte = data[at + used - 1]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, used
        shift += 7
    raise ValueError("malformed variable byte integer")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    seconds: float = 0.0
    rate: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r} (one of {', '.join(KINDS)})")
        if self.kind == "delay" and not self.seconds > 0:
            raise ValueError("delay: expected seconds > 0")
        if self.kind == "throttle" and not self.rate > 0:
            raise ValueError("throttle: expected rate > 0 (bytes per second)")


class _Pipe:
    """One direction of a link: bytes to ``dest``, in order, as the link's fault allows."""

    def __init__(self, link: _Link, name: str) -> None:
        self.link, self.name = link, name
        self.dest: asyncio.Transport | None = None
        self.queue: deque[tuple[float, bytes]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.done = False

    def feed(self, data: bytes) -> None:
        fault = self.link.fault()
        self.link.proxy.stats[f"bytes {self.name}"] += len(data)
        if fault is None and not self.queue and self.task is None and self.dest is not None:
            self.dest.write(data)
            return
        delay = fault.seconds if fault is not None and fault.kind == "delay" else 0.0
        self.queue.append((time.monotonic() + delay, data))
        self.kick()

    def kick(self) -> None:
        if self.task is None and self.dest is not None and \
                (self.queue or (self.closing and not self.done)):
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self.queue:
                fault = self.link.fault()
                if fault is not None and fault.kind == "blackhole":
                    await self.link.changed()
                    continue
                due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                assert self.dest is not None
                if fault is not None and fault.kind == "throttle":
                    # in pieces of a twentieth of a second each, a pause after each
                    piece = max(1, int(fault.rate / 20))
                    if len(data) > piece:
                        self.queue[0] = (due, data[piece:])
                        data = data[:piece]
                    else:
                        self.queue.popleft()
                    self.dest.write(data)
                    await asyncio.sleep(len(data) / fault.rate)
                    continue
                self.queue.popleft()
                self.dest.write(data)
            if self.closing and self.dest is not None:
                self.done = True
                self.dest.close()
        finally:
            self.task = None
        self.kick()  # fed while the last write was under way

    def held(self) -> int:
        return sum(len(d) for _, d in self.queue)

    def finish(self) -> None:
        """The source closed: deliver what is queued, then close the destination."""
        self.closing = True
        if self.dest is not None and not self.queue and self.task is None:
            self.done = True
            self.dest.close()
        else:
            self.kick()


class _Side(asyncio.Protocol):
    def __init__(self, pipe: _Pipe, on_lost: Any) -> None:
        self.pipe, self.on_lost = pipe, on_lost

    def data_received(self, data: bytes) -> None:
        self.pipe.feed(data)

    def eof_received(self) -> bool:
        self.pipe.finish()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.finish()
        self.on_lost()


class _Link(asyncio.Protocol):
    """One device connection: the client side is this protocol until its CONNECT arrives."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.client_id: str | None = None
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.up = _Pipe(self, "up")  # client -> broker
        self.down = _Pipe(self, "down")  # broker -> client
        self.buffer = b""
        self._changed = asyncio.Event()
        self.closed = False

    # the client side, until the link is established
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.client = transport
        self.down.dest = transport
        self.proxy.stats["connections"] += 1

    def data_received(self, data: bytes) -> None:
        if self.client_id is not None:
            self.up.feed(data)
            return
        self.buffer += data
        try:
            client_id = connect_client_id(self.buffer)
        except ValueError:
            client_id = None
        else:
            if client_id is None and len(self.buffer) <= CONNECT_LIMIT:
                return  # more of the CONNECT to come
        if client_id is None:
            self.proxy.stats["not mqtt"] += 1
            self.abort()
            return
        self.client_id = client_id
        fault = self.fault()
        if fault is not None and fault.kind == "cut":
            self.proxy.stats["refused"] += 1
            self.abort()
            return
        self.proxy.links.setdefault(client_id, set()).add(self)
        pending, self.buffer = self.buffer, b""
        self.up.feed(pending)
        asyncio.get_running_loop().create_task(self._open_upstream())

    def eof_received(self) -> bool:
        self.up.finish()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.up.finish()
        self._lost()

    async def _open_upstream(self) -> None:
        host, port = self.proxy.upstream
        try:
            transport, _ = await asyncio.get_running_loop().create_connection(
                lambda: _Side(self.down, self._lost), host, port)
        except OSError:
            self.proxy.stats["upstream refused"] += 1
            self.abort()
            return
        if self.closed:
            transport.abort()
            return
        self.upstream = transport
        self.up.dest = self.upstream
        self.up.kick()

    def fault(self) -> Fault | None:
        return None if self.client_id is None else self.proxy.faults.get(self.client_id)

    async def changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def notify(self) -> None:
        self._changed.set()
        self.up.kick()
        self.down.kick()

    def held(self) -> int:
        return self.up.held() + self.down.held()

    def abort(self) -> None:
        for transport in (self.client, self.upstream):
            if transport is not None:
                transport.abort()
        self._lost()

    def _lost(self) -> None:
        if self.closed:
            return
        if self.client is not None and self.client.is_closing() and \
                (self.upstream is None or self.upstream.is_closing()):
            self.closed = True
            if self.client_id is not None:
                links = self.proxy.links.get(self.client_id)
                if links is not None:
                    links.discard(self)
                    if not links:
                        del self.proxy.links[self.client_id]
            for pipe in (self.up, self.down):
                if pipe.task is not None:
                    pipe.task.cancel()
            self._changed.set()


class Proxy:
    """The proxy's state and server (one event loop)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.faults: dict[str, Fault] = {}
        self.links: dict[str, set[_Link]] = {}
        self.stats: Counter[str] = Counter()
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Link(self), host, port, backlog=4096)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for links in list(self.links.values()):
            for link in list(links):
                link.abort()

    def apply(self, fault: Fault, things: Iterable[str]) -> int:
        """Give ``things`` the fault; the number of their open connections it hit now."""
        hit = 0
        for thing in things:
            self.faults[thing] = fault
            for link in list(self.links.get(thing, ())):
                hit += 1
                if fault.kind == "cut":
                    link.abort()
                else:
                    link.notify()
        self.stats[f"fault {fault.kind}"] += 1
        return hit

    def heal(self, things: Iterable[str] | None) -> tuple[int, int]:
        """End the faults of ``things`` (None: all): (bytes held that now flow, their open
        connections)."""
        names = list(self.faults) if things is None else [t for t in things if t in self.faults]
        released = connections = 0
        for thing in names:
            del self.faults[thing]
            for link in list(self.links.get(thing, ())):
                connections += 1
                released += link.held()
                link.notify()
        return released, connections

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """One control command (see the module's docstring) -> its answer."""
        answer: dict[str, Any] = {"id": cmd.get("id")}
        try:
            if "fault" in cmd:
                fault = Fault(str(cmd["fault"]), float(cmd.get("seconds") or 0),
                              float(cmd.get("rate") or 0))
                answer["connections"] = self.apply(fault, _names(cmd.get("things")))
            elif "heal" in cmd:
                things = None if cmd["heal"] is None else _names(cmd["heal"])
                answer["released"], answer["connections"] = self.heal(things)
            elif "stats" in cmd:
                answer["stats"] = dict(self.stats)
            else:
                raise ValueError("expected fault, heal or stats")
        except (ValueError, TypeError) as e:
            return {**answer, "ok": False, "error": str(e)}
        return {**answer, "ok": True}


def _names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError("things: expected a list of client ids")
    return value


class ProxyProcess:
    """The drill's handle on a proxy process in front of ``upstream``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._next = 0
        self._watch: asyncio.Task[None] | None = None

    async def start(self, seconds: float = 30.0,
                    on_exit: Callable[[int], None] | None = None) -> int:
        """Start the process; its port once it listens. ``on_exit``: called with its exit
        status if it exits before :meth:`close`."""
        host, port = self.upstream
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet.drill.proxy", "--upstream", f"{host}:{port}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": _import_path()})
        first = await self._line(seconds)
        self.port = int(first["listening"])
        if on_exit is not None:
            proc = self._proc

            async def watch() -> None:
                on_exit(await proc.wait())

            self._watch = asyncio.get_running_loop().create_task(watch())
        return self.port

    async def _line(self, seconds: float) -> dict[str, Any]:
        assert self._proc is not None
        assert self._proc.stdout is not None
        try:
            async with asyncio.timeout(seconds):
                line = await self._proc.stdout.readline()
        except TimeoutError:
            raise ProxyError(f"the network proxy did not answer within {seconds:g} s") from None
        if not line:
            raise ProxyError(f"the network proxy exited (status {await self._proc.wait()})")
        value = json.loads(line)
        assert isinstance(value, dict)
        return value

    @property
    def pid(self) -> int | None:
        return None if self._proc is None or self._proc.returncode is not None \
            else self._proc.pid

    async def command(self, **cmd: Any) -> dict[str, Any]:
        """Send one command; its answer (a ProxyError if it was refused)."""
        assert self._proc is not None
        assert self._proc.stdin is not None
        async with self._lock:
            self._next += 1
            self._proc.stdin.write(json.dumps({"id": self._next, **cmd}).encode() + b"\n")
            await self._proc.stdin.drain()
            answer = await self._line(10.0)
        if not answer.get("ok"):
            raise ProxyError(f"the network proxy refused {cmd}: {answer.get('error')}")
        return answer

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _import_path() -> str:
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)


async def _serve(upstream: tuple[str, int]) -> None:
    proxy = Proxy(upstream)
    port = await proxy.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sys.stdout.write(json.dumps({"listening": port}) + "\n")
    sys.stdout.flush()
    while line := await reader.readline():
        try:
            cmd = json.loads(line)
            answer = proxy.command(cmd) if isinstance(cmd, dict) else \
                {"id": None, "ok": False, "error": "expected a JSON object"}
        except json.JSONDecodeError as e:
            answer = {"id": None, "ok": False, "error": f"not JSON: {e}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    await proxy.close()  # stdin closed: the drill is gone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet.drill.proxy",
                                     description="TCP proxy with network faults per MQTT "
                                                 "client (the drills' network faults)")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the broker")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve((host, int(port))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
