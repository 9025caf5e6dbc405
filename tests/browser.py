"""A real headless Chromium, driven over the Chrome DevTools Protocol (aiohttp's websocket
client), for the report page's test: open a file, collect console messages, exceptions and
every network request, evaluate an expression, take a screenshot."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def chromium() -> str | None:
    """The Chromium binary (Debian's ``chromium``, installed by make setup), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageVisit:
    console: list[str] = field(default_factory=list)  # level: text
    errors: list[str] = field(default_factory=list)  # uncaught exceptions, log errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    value: Any = None  # what the expression evaluated to


@contextlib.asynccontextmanager
async def browser(binary: str) -> AsyncIterator[str]:
    """Start Chromium headless on a free DevTools port; yields its browser websocket URL."""
    profile = tempfile.mkdtemp(prefix="devicesim-chromium-")
    proc = await asyncio.create_subprocess_exec(
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", "about:blank",
        stdout=subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("chromium exited before it listened")
                found = LISTENING.search(line)
                if found:
                    break
        drain = asyncio.create_task(proc.stderr.read())  # keep its pipe from filling up
        try:
            yield found.group(1)
        finally:
            drain.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def visit(ws_url: str, page: str, expression: str, screenshot: Path,
                width: int = 1200, height: int = 2400) -> PageVisit:
    """Open ``page`` (a file:// URL) in a new tab, wait for its load event, evaluate
    ``expression`` (JSON result), save a full-page screenshot; everything the page logged or
    requested."""
    out = PageVisit()
    ids = itertools.count(1)
    url = page
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    png = b""
    async with aiohttp.ClientSession() as session, session.ws_connect(
            ws_url, max_msg_size=0) as ws:
        pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        loaded = asyncio.Event()
        target_session: str | None = None

        async def reader() -> None:
            async for msg in ws:
                data = json.loads(msg.data)
                if "id" in data and data["id"] in pending:
                    pending.pop(data["id"]).set_result(data)
                    continue
                method, params = data.get("method"), data.get("params", {})
                if method == "Runtime.consoleAPICalled":
                    text = " ".join(str(a.get("value", a.get("description", "")))
                                    for a in params.get("args", []))
                    out.console.append(f"{params.get('type')}: {text}")
                    if params.get("type") in ("error", "assert"):
                        out.errors.append(text)
                elif method == "Runtime.exceptionThrown":
                    out.errors.append(str(params.get("exceptionDetails", {}).get("text")))
                elif method == "Log.entryAdded":
                    entry = params.get("entry", {})
                    out.console.append(f"{entry.get('level')}: {entry.get('text')}")
                    if entry.get("level") == "error":
                        out.errors.append(str(entry.get("text")))
                elif method == "Network.requestWillBeSent":
                    out.requests.append(str(params.get("request", {}).get("url")))
                elif method == "Page.loadEventFired":
                    loaded.set()

        async def call(method: str, **params: Any) -> dict[str, Any]:
            i = next(ids)
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            pending[i] = future
            message: dict[str, Any] = {"id": i, "method": method, "params": params}
            if target_session is not None and not method.startswith("Target."):
                message["sessionId"] = target_session
            await ws.send_str(json.dumps(message))
            answer = await future
            if "error" in answer:
                raise RuntimeError(f"{method}: {answer['error']}")
            return dict(answer.get("result", {}))

        task = asyncio.create_task(reader())
        try:
            async with asyncio.timeout(60):
                target = await call("Target.createTarget", url="about:blank")
                attached = await call("Target.attachToTarget", targetId=target["targetId"],
                                      flatten=True)
                target_session = attached["sessionId"]
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await call(f"{domain}.enable")
                await call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                           deviceScaleFactor=1, mobile=False)
                await call("Page.navigate", url=url)
                await loaded.wait()
                result = await call("Runtime.evaluate", expression=expression,
                                    returnByValue=True)
                out.value = result.get("result", {}).get("value")
                shot = await call("Page.captureScreenshot", format="png",
                                  captureBeyondViewport=True)
                png = base64.b64decode(shot["data"])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await asyncio.to_thread(screenshot.write_bytes, png)
    return out
