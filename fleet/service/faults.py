"""MQTT-level faults a drill injects at the jobs service: what becomes of a message it is
about to publish to a device. Pure; :class:`~fleet.service.shell.JobsService` applies it.

AWS promises neither the delivery nor the order of ``notify`` / ``notify-next``, and MQTT's
QoS 1 delivers at least once: a device must cope with a push that never comes, one that
comes twice, late, or after a newer one. A fault names which messages it hits:

- ``pushes``: ``notify`` and ``notify-next``;
- ``replies``: ``.../accepted`` and ``.../rejected`` (never dropped: a reply lost on the
  wire is the ``answered`` invariant's concern, a device retries it after its timeout);
- ``all``: both.

and what becomes of each: ``drop`` (pushes only), ``duplicate`` (published twice),
``delay`` (published ``seconds`` later) or ``reorder`` (published after a random delay of
up to ``seconds``, so messages close together may overtake each other).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from devicesim.wire.topics import Kind

KINDS = ("drop", "duplicate", "delay", "reorder")
MESSAGES = {"pushes": (Kind.NOTIFY, Kind.NOTIFY_NEXT),
            "replies": (Kind.ACCEPTED, Kind.REJECTED),
            "all": (Kind.NOTIFY, Kind.NOTIFY_NEXT, Kind.ACCEPTED, Kind.REJECTED)}


@dataclass(frozen=True, slots=True)
class MessageFault:
    kind: str
    messages: str = "pushes"
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown message fault {self.kind!r} (one of {', '.join(KINDS)})")
        if self.messages not in MESSAGES:
            raise ValueError(f"messages: expected one of {', '.join(MESSAGES)}, got "
                             f"{self.messages!r}")
        if self.kind == "drop" and self.messages != "pushes":
            raise ValueError("drop: pushes only (a device retries a lost reply after its "
                             "timeout; drop its pushes, or cut its network)")
        if self.kind in ("delay", "reorder") and not self.seconds > 0:
            raise ValueError(f"{self.kind}: expected seconds > 0")

    def hits(self, kind: Kind) -> bool:
        return kind in MESSAGES[self.messages]

    def delays(self, rng: random.Random) -> list[float]:
        """When to publish each copy of a message it hits, in seconds from now (none: the
        message is dropped)."""
        if self.kind == "drop":
            return []
        if self.kind == "duplicate":
            return [0.0, 0.0]
        if self.kind == "delay":
            return [self.seconds]
        return [rng.uniform(0.0, self.seconds)]
