"""The invariants of DESIGN.md, one function each: ``(Timeline, Budgets) -> InvariantResult``,
grouped by family: ``complete`` (the history itself), ``recovery`` (notice, recover,
no-zombie), ``state`` (valid-end, consistent, progress), ``reuse``, ``service``,
``answered`` and ``steady`` (a soak's processes).

Each docstring states the rule exactly as checked. Shared vocabulary:

- *removal*: the service deleted, force-canceled or removed an execution (a
  :class:`~fleet.checker.timeline.Removal`, timed when the recorder saw the event).
- *held*: a device held an execution at its removal when it recorded ``job_started`` for it
  no later than ``reply_timeout`` after the removal and no ``job_finished`` before it.
- *valid state* (NVM): ``activeComplete`` and ``activeVerified`` are true and the journal does
  not name the lost execution.
- *reachable* (:meth:`~fleet.checker.timeline.Timeline.reachable_from`): not inside a broker
  or service outage, a spell the device began with ``disconnected``/``rebooted`` and ended with
  ``connected``, a power cut (from the drill's ``power-off`` marker naming the device to
  the next ``power-on`` naming it, or to the end of the history), or a network fault that
  cut or black-holed it (``network-fault`` to the next ``network-heal``). Clocks start when
  the device is reachable, and a power cut before the budget is spent restarts them at the power-on
  (:func:`fleet.checker.cases.clock_start`): a device without power has lost its RAM and
  cannot act, so the time it was off never counts against it.

The checker is sound rather than paranoid: where the history cannot show a rule was broken
(a deadline beyond the end of the history, a fact the recorder did not see) it passes the
case and says so in ``notes``.
"""

from __future__ import annotations

from fleet.checker.invariants._common import Invariant
from fleet.checker.invariants.answered import answered
from fleet.checker.invariants.complete import complete
from fleet.checker.invariants.recovery import no_zombie, notice, recover
from fleet.checker.invariants.reuse import reuse
from fleet.checker.invariants.service import service
from fleet.checker.invariants.state import consistent, progress, valid_end
from fleet.checker.invariants.steady import steady

__all__ = ["ALL", "Invariant", "answered", "complete", "consistent", "no_zombie", "notice",
           "progress", "recover", "reuse", "service", "steady", "valid_end"]

#: Every invariant, in report order.
ALL: tuple[tuple[str, Invariant], ...] = (
    ("complete", complete), ("notice", notice), ("recover", recover),
    ("no-zombie", no_zombie), ("valid-end", valid_end), ("consistent", consistent),
    ("progress", progress), ("reuse", reuse), ("service", service), ("answered", answered),
    ("steady", steady),
)
