"""Joining a drill over the broker: the messages between a drill and its device workers.

A drill that runs its devices in worker processes -- on this machine or on other hosts --
shares nothing with them but the broker. Every message lives under
``devicesim/drills/{session}/``:

==================  ========================  ===============================================
topic               sent by                   what
==================  ========================  ===============================================
``invitation``      the drill (retained)      the fleet: run id, prefix, total, mix, seed,
                                              number of shards (cleared when the drill ends)
``joined/{i}``      worker of shard ``i``     it took the invitation: host, pid, its things
``progress/{i}``    worker, every 0.1 s       a compact progress batch
                                              (:class:`devicesim.recording.ProgressFeed`)
``power``           the drill                 cut or restore the power of these things
                                              (``id``, ``action`` off/on, ``things``,
                                              ``cleanSession``): a worker acts on its own
``powered/{i}``     worker of shard ``i``     done with power command ``id``
``stop``            the drill                 stop the devices and send your part
``part/{i}``        worker                    its history part in zlib-compressed chunks,
                                              then its summary (:func:`part_messages`)
``received/{i}``    the drill                 part ``i`` arrived whole: the worker may exit
==================  ========================  ===============================================

Every message carries the drill's run id; one of another run is ignored, so a worker left
over from an earlier drill on the same broker and session does not mix in. Shard ``i`` of
``n`` runs the things :func:`shard_range` gives, the same split as ``devicesim run
--shard i/n``. All messages are QoS 1 on persistent sessions, so a broker restart loses none.

Pure: building and parsing only; :mod:`devicesim.joining` (the worker) and
:mod:`fleet.drill.shards` (the drill) are the shells.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

SESSION_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: compressed bytes per part message (well under any broker's packet limit)
CHUNK_BYTES = 256 * 1024


class JoinError(ValueError):
    """A message that is not what the joining protocol says, or a bad session or shard."""


def check_session(session: str) -> str:
    if not SESSION_RE.fullmatch(session):
        raise JoinError(f"session {session!r}: expected 1-64 of A-Z a-z 0-9 _ . -")
    return session


def topic(session: str, kind: str, shard: int | str | None = None) -> str:
    """A topic of the session (``shard``: a number, or ``+`` in a filter)."""
    base = f"devicesim/drills/{session}/{kind}"
    return base if shard is None else f"{base}/{shard}"


def parse_topic(session: str, name: str) -> tuple[str, int | None]:
    """``devicesim/drills/{session}/{kind}[/{i}]`` -> (kind, i)."""
    prefix = f"devicesim/drills/{session}/"
    if not name.startswith(prefix):
        raise JoinError(f"topic {name!r} is not under {prefix}")
    kind, _, shard = name[len(prefix):].partition("/")
    if not shard:
        return kind, None
    try:
        return kind, int(shard)
    except ValueError:
        raise JoinError(f"topic {name!r}: shard {shard!r} is not a number") from None


def shard_range(index: int, shards: int, total: int) -> tuple[int, int]:
    """(start, count) of shard ``index`` of ``shards`` equal ranges of ``total`` things
    (the last ones may be shorter, or empty when there are more shards than things)."""
    if shards < 1 or not 0 <= index < shards:
        raise JoinError(f"shard {index}/{shards}: expected 0 <= i < n")
    per = -(-total // shards)
    start = min(index * per, total)  # an empty last shard starts at the end, not past it
    return start, max(0, min(per, total - start))


def _object(payload: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise JoinError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise JoinError("not a JSON object")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Invitation:
    """What a worker needs to run its shard of a drill's fleet."""

    run: str
    drill: str
    prefix: str
    total: int
    mix: dict[str, float]
    seed: int
    shards: int
    publish_events: bool = False
    #: False on a broker with AWS semantics: replies reach their requester unasked
    subscribe_replies: bool = True
    #: the secure profile (workers on the drill's host): where devices connect with mutual
    #: TLS and the files they need, ``{"url": "mqtts://...", "tls_ca": PATH, "cert_dir": DIR}``
    tls: dict[str, str] | None = None
    #: where the devices connect when not to the broker the worker joined through (a
    #: drill's network proxy: ``mqtt://127.0.0.1:PORT``)
    devices: str | None = None
    #: the drill's jobs data plane over HTTPS, for ``http`` devices
    jobs_data: str | None = None

    def to_payload(self) -> bytes:
        return orjson.dumps({"run": self.run, "drill": self.drill, "prefix": self.prefix,
                             "total": self.total, "mix": self.mix, "seed": self.seed,
                             "shards": self.shards, "publishEvents": self.publish_events,
                             "subscribeReplies": self.subscribe_replies, "tls": self.tls,
                             "devices": self.devices, "jobsData": self.jobs_data})

    @classmethod
    def from_payload(cls, payload: bytes) -> Invitation:
        data = _object(payload)
        try:
            invitation = cls(run=str(data["run"]), drill=str(data["drill"]),
                             prefix=str(data["prefix"]), total=int(data["total"]),
                             mix={str(k): float(v) for k, v in dict(data["mix"]).items()},
                             seed=int(data["seed"]), shards=int(data["shards"]),
                             publish_events=bool(data.get("publishEvents", False)),
                             subscribe_replies=bool(data.get("subscribeReplies", True)),
                             tls=None if data.get("tls") is None else
                             {str(k): str(v) for k, v in dict(data["tls"]).items()},
                             devices=None if data.get("devices") is None else
                             str(data["devices"]),
                             jobs_data=None if data.get("jobsData") is None else
                             str(data["jobsData"]))
        except (KeyError, TypeError, ValueError) as e:
            raise JoinError(f"not an invitation: {type(e).__name__}: {e}") from None
        if invitation.total < 1 or invitation.shards < 1:
            raise JoinError("not an invitation: total and shards must be >= 1")
        return invitation


@dataclass(frozen=True, slots=True)
class PowerCommand:
    """Cut (``off``) or restore (``on``) the power of ``things``; ``clean_session``: they
    boot without their MQTT session."""

    id: int
    action: str
    things: list[str]
    clean_session: bool = False


def power_message(run: str, command: PowerCommand) -> bytes:
    return message(run, id=command.id, action=command.action, things=command.things,
                   cleanSession=command.clean_session)


def power_command(payload: bytes) -> PowerCommand:
    data = _object(payload)
    try:
        command = PowerCommand(int(data["id"]), str(data["action"]),
                               [str(t) for t in data["things"]],
                               bool(data.get("cleanSession", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise JoinError(f"not a power command: {type(e).__name__}: {e}") from None
    if command.action not in ("off", "on"):
        raise JoinError(f"not a power command: action {command.action!r}")
    return command


def run_of(payload: bytes) -> str | None:
    """The run id of a JSON message (None if it has none)."""
    head = payload.split(b"\n", 1)[0]
    try:
        run = _object(head).get("run")
    except JoinError:
        return None
    return run if isinstance(run, str) else None


def message(run: str, **fields: Any) -> bytes:
    """A small JSON message of ``run`` (joined, stop, received)."""
    return orjson.dumps({"run": run, **fields})


def part_messages(run: str, shard: int, lines: Iterator[bytes], summary: dict[str, Any],
                  *, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """A worker's history part (its JSON Lines, each ending in ``\\n``) as messages: the
    zlib stream cut into chunks (a JSON header line, then the bytes), then one message with
    the summary, the number of chunks and of ops (lines)."""
    compressor = zlib.compressobj(1)
    pending = bytearray()
    index = ops = 0

    def chunk(data: bytes) -> bytes:
        return orjson.dumps({"run": run, "shard": shard, "chunk": index}) + b"\n" + data

    for line in lines:
        ops += 1
        pending += compressor.compress(line)
        while len(pending) >= chunk_bytes:
            yield chunk(bytes(pending[:chunk_bytes]))
            del pending[:chunk_bytes]
            index += 1
    pending += compressor.flush()
    while pending:
        yield chunk(bytes(pending[:chunk_bytes]))
        del pending[:chunk_bytes]
        index += 1
    yield orjson.dumps({"run": run, "shard": shard, "chunks": index, "ops": ops,
                        "summary": summary}) + b"\n"


@dataclass(slots=True)
class PartAssembler:
    """Collects one shard's part messages (in any order, duplicates ignored)."""

    chunks: dict[int, bytes] = field(default_factory=dict)
    expected: int | None = None
    ops: int = 0
    summary: dict[str, Any] | None = None

    def add(self, payload: bytes) -> None:
        head, sep, body = payload.partition(b"\n")
        data = _object(head)
        if not sep:
            raise JoinError("part message without a header line")
        if "chunk" in data:
            self.chunks[int(data["chunk"])] = body
            return
        try:
            self.expected, self.ops = int(data["chunks"]), int(data["ops"])
            self.summary = dict(data["summary"])
        except (KeyError, TypeError, ValueError) as e:
            raise JoinError(f"not a part summary: {type(e).__name__}: {e}") from None

    @property
    def complete(self) -> bool:
        return self.expected is not None and all(i in self.chunks
                                                 for i in range(self.expected))

    def lines(self) -> list[bytes]:
        """The part's JSON Lines (a JoinError if the stream is incomplete or corrupt)."""
        if not self.complete:
            raise JoinError("part incomplete")
        assert self.expected is not None
        decompressor = zlib.decompressobj()
        try:
            data = b"".join(decompressor.decompress(self.chunks[i])
                            for i in range(self.expected)) + decompressor.flush()
        except zlib.error as e:
            raise JoinError(f"part does not decompress: {e}") from None
        if not decompressor.eof:
            raise JoinError("part's compressed stream is truncated")
        lines = data.splitlines()
        if len(lines) != self.ops:
            raise JoinError(f"part holds {len(lines)} ops; its worker wrote {self.ops}")
        return lines
