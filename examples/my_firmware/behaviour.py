"""``CautiousDevice``: a user behaviour written against the documented plugin interface
(the docstring of :mod:`devicesim.behaviours`), and nothing else.

What it changes compared with the reference device:

* ``poll_interval = 0.5``: besides acting on ``notify-next`` (inherited), it describes its
  running execution every 0.5 s, so it notices a deleted or canceled execution even if a
  ``notify-next`` was lost. (While idle, the same timer sends a ``start-next``.)
* ``tune``: a shorter reply timeout and fewer attempts, so an unanswered request about its
  execution turns into a recovery sooner.
* ``on_lost_access``: recovers like the reference device (``Reaction.RECOVER``: roll back an
  uncommitted image, clear the journal, ask for the next job) and reports that recovery its own
  way: one ``key=value`` log line on the ``my_firmware.behaviour`` logger saying how it noticed
  and what it will do with the image.

A behaviour is a stateless policy object: one instance serves every device that uses it, so
it keeps nothing per device; everything it needs arrives in the :class:`LostAccessNotice`.
"""

from __future__ import annotations

import dataclasses
import logging

from devicesim.agent import AgentConfig
from devicesim.behaviours import Behaviour, LostAccessNotice, Reaction

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class CautiousDevice(Behaviour):
    """Notify-next plus a describe every 0.5 s; recovers and logs how it noticed."""

    name = "cautious"
    poll_interval = POLL_SECONDS

    def on_lost_access(self, notice: LostAccessNotice) -> Reaction:
        image = "keep-committed" if notice.committed else "roll-back"
        log.warning("cautious-device recovering job_id=%s execution_number=%d via=%s "
                    "reason=%s step=%s image=%s", notice.job_id, notice.execution_number,
                    notice.via.value, notice.reason, notice.step, image)
        return Reaction.RECOVER

    def tune(self, config: AgentConfig) -> AgentConfig:
        return dataclasses.replace(config, reply_timeout=5.0, max_attempts=3)
