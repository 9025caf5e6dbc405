"""A JSON-lines control channel between the bench and its child processes.

The parent writes ``{"id": n, "op": NAME, "args": {...}}`` to a child's stdin; the child
answers ``{"id": n, "ok": true, "result": {...}}`` (or ``"ok": false, "error": "..."``) on
its stdout, one command at a time, and may send ``{"event": NAME, ...}`` lines at any
moment (the parent hands them to ``on_event``). ``quit`` (or EOF) ends the child. A child's
stderr goes to a log file whose tail is quoted when the child fails.

Errors::

    Exception
     └── BenchError        a phase cannot go on
          └── ChildError   a child process failed, died or timed out
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from devicesim.mqtt import SECRET_ENV

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
_LIMIT = 1 << 24
_TAIL = 2000

Handler = Callable[..., Awaitable[dict[str, Any]]]
OnEvent = Callable[[str, dict[str, Any]], None]


class BenchError(Exception):
    """A bench phase cannot go on."""


class ChildError(BenchError):
    """A child process failed a command, died or did not answer in time."""


# -- child side ---------------------------------------------------------------------------


def _write(obj: dict[str, Any], out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    stream.write(json.dumps(obj, separators=(",", ":")) + "\n")
    stream.flush()


def emit(event: str, **data: Any) -> None:
    """Send an unsolicited event line to the parent."""
    _write({"event": event, **data})


async def serve(handlers: Mapping[str, Handler]) -> None:
    """Answer commands read from stdin until ``quit`` or EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        msg = json.loads(line)
        ident, op = msg.get("id"), msg.get("op")
        if op == "quit":
            _write({"id": ident, "ok": True, "result": {}})
            return
        handler = handlers.get(op)
        if handler is None:
            _write({"id": ident, "ok": False, "error": f"unknown op {op!r}"})
            continue
        try:
            result = await handler(**msg.get("args", {}))
        except Exception as e:  # reported to the parent, which fails the phase
            log.exception("command failed op=%s", op)
            _write({"id": ident, "ok": False, "error": f"{type(e).__name__}: {e}"})
        else:
            _write({"id": ident, "ok": True, "result": result})


def child_logging() -> None:
    """Warnings and errors of a child go to its stderr (the parent's log file)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


# -- parent side --------------------------------------------------------------------------


class Child:
    """A ``python -m MODULE`` child process driven over its stdin/stdout."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path,
                 on_event: OnEvent | None) -> None:
        self.name = name
        self._proc = proc
        self._log_path = log_path
        self._on_event = on_event
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read(),
                                                              name=f"child-{name}")

    @classmethod
    async def spawn(cls, name: str, module: str, args: list[str], *, log_dir: Path,
                    on_event: OnEvent | None = None, secret: str | None = None) -> Child:
        """``secret``: the broker's privileged identity (a jobs service needs it)."""
        log_path = log_dir / f"{name}.log"
        env = dict(os.environ)
        if secret is not None:
            env[SECRET_ENV] = secret
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH"))
                                            if p)
        with log_path.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *args, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT, env=env, limit=_LIMIT)
        log.info("child started name=%s pid=%d module=%s", name, proc.pid, module)
        return cls(name, proc, log_path, on_event)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def call(self, op: str, *, limit: float = 60.0, **args: Any) -> dict[str, Any]:
        """Run one command in the child and return its result (within ``limit`` seconds)."""
        if self._reader.done():
            raise ChildError(f"{self.name}: the child has exited\n{self.log_tail()}")
        self._next_id += 1
        ident = self._next_id
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = waiter
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"id": ident, "op": op, "args": args}).encode()
                               + b"\n")
        await self._proc.stdin.drain()
        try:
            async with asyncio.timeout(limit):
                return await waiter
        except TimeoutError:
            raise ChildError(f"{self.name}: {op} did not answer within {limit:.0f} s\n"
                             f"{self.log_tail()}") from None
        finally:
            self._waiting.pop(ident, None)

    async def wait(self, op: str, *, within: float, **args: Any) -> dict[str, Any]:
        """A command that waits in the child for at most ``within`` seconds."""
        return await self.call(op, limit=within + 15.0, within=within, **args)

    async def close(self, grace: float = 15.0) -> None:
        """Ask the child to quit; terminate, then kill it if it does not."""
        if self._proc.returncode is None and not self._reader.done():
            with contextlib.suppress(ChildError, ConnectionError):
                await self.call("quit", limit=grace)
        for stop in (self._proc.terminate, self._proc.kill):
            if self._proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                stop()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace / 2):
                    await self._proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    def log_tail(self) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return f"--- {self._log_path} (tail) ---\n{text[-_TAIL:]}" if text else ""

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                msg = json.loads(line)
                if "event" in msg:
                    if self._on_event is not None:
                        self._on_event(msg.pop("event"), msg)
                    continue
                waiter = self._waiting.get(msg.get("id"))
                if waiter is None or waiter.done():
                    continue
                if msg.get("ok"):
                    waiter.set_result(msg.get("result", {}))
                else:
                    waiter.set_exception(ChildError(f"{self.name}: {msg.get('error')}"))
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ChildError(
                        f"{self.name}: the child exited\n{self.log_tail()}"))
