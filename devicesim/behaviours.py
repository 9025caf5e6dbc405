"""Device behaviours: small policy objects the job agent consults at its decision points.

The agent (:mod:`devicesim.agent`) owns the protocol, the NVM and the timers; a behaviour
only answers questions. Built-in behaviours (:data:`BEHAVIOURS`)::

    reference       notices via notify-next and via rejections, rolls back, asks for more
    sdk             reference, over the AWS IoT Device SDK jobs client (IotJobsClientV2)
    http            reference, asking over HTTPS (the iot-jobs-data API); notify-next and
                    its events still over MQTT
    poll            ignores notify-next; notices via rejections and a periodic describe
    device-client   mirrors the AWS IoT Device Client (spec §7.3): ignores an empty
                    notify-next, runs a job to completion locally, gives up on a
                    non-retryable rejection of its final update, waits for notify-next
    clean-session   reference, but connects with a clean MQTT session every time: what
                    was queued for it while offline is gone (it describes on reconnect)
    stuck           FAULTY: ignores lost access and freezes; never goes idle
    no-rollback     FAULTY: notices, but boots the half-written update slot
    zombie          FAULTY: notices and recovers, but keeps updating the lost execution
    reuse-confused  FAULTY: identifies work by jobId alone, so a reused jobId continues
                    the old document

Plugin interface
----------------
Subclass :class:`Behaviour` (constructible without arguments, and stateless: one instance
may serve many devices), override what differs, and pass ``package.module:Class`` wherever
a behaviour name is accepted (:func:`resolve`). Attributes (class or instance):

* ``subscribes_notify_next`` (True): act on ``notify-next`` at all.
* ``aborts_on_notify_next`` (True): a ``notify-next`` that no longer names the running
  execution means lost access. Such devices also describe their execution after a
  reconnect, because a ``notify-next`` may have been missed while offline.
* ``starts_from_notify_next`` (False): run the execution a ``notify-next`` announces
  directly, instead of asking with ``start-next`` (and remember one seen while busy).
* ``asks_next_when_done`` (True): send ``start-next`` after a job ends or is lost;
  otherwise wait (idle) for a ``notify-next``.
* ``poll_interval`` (None): seconds between polls: a describe of the running execution,
  or a ``start-next`` while idle.
* ``identifies_work_by_job_id_only`` (False): execution numbers and document digests are
  not compared, describes omit ``executionNumber``.
* ``transport`` ("mqtt"): "sdk" runs the device over the AWS IoT Device SDK instead;
  "http" sends its requests to the jobs data plane over HTTPS (:mod:`devicesim.http`).
* ``strict_updates`` (True): updates carry ``expectedVersion``, ``executionNumber`` and
  ``includeJobExecutionState``.
* ``clean_session`` (False): connect (and reconnect) with a clean MQTT session, so the
  broker keeps nothing for the device while it is offline; it subscribes on every connect.

Methods:

* ``on_lost_access(notice) -> Reaction``: what to do once the agent concludes it lost
  access to its execution (:class:`LostAccessNotice` says how it noticed).
* ``tune(config) -> config``: adjust timeouts and retry policy (an ``AgentConfig``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from devicesim.agent import AgentConfig


class Reaction(StrEnum):
    """What a device does once it concludes it lost access to its execution."""

    RECOVER = "recover"  # lost_access; roll back if not committed; clear journal; go on
    IGNORE = "ignore"  # carry on as if the request had been answered normally
    STAY_STUCK = "stay-stuck"  # freeze: no events, no rollback, never idle
    NO_ROLLBACK = "no-rollback"  # lost_access, but boot the update slot as it is
    KEEP_UPDATING = "keep-updating"  # recover, then keep updating the lost execution


class Via(StrEnum):
    """The request (or push) through which the agent noticed."""

    NOTIFY_NEXT = "notify-next"
    PROGRESS_UPDATE = "progress-update"
    FINAL_UPDATE = "final-update"
    RESYNC = "resync"  # the describe after a VersionMismatch
    POLL = "poll"  # a periodic (or post-reconnect) describe
    RESUME = "resume"  # the describe of the journaled execution after a reboot


@dataclass(frozen=True, slots=True, kw_only=True)
class LostAccessNotice:
    job_id: str
    execution_number: int
    reason: str  # notify-next, ResourceNotFound, InvalidStateTransition, describe, timeout...
    via: Via
    step: str | None
    committed: bool  # the new image (if any) is already committed


class Behaviour:
    """The reference behaviour; every other behaviour overrides a few of these."""

    name: ClassVar[str] = "reference"
    subscribes_notify_next: bool = True
    aborts_on_notify_next: bool = True
    starts_from_notify_next: bool = False
    asks_next_when_done: bool = True
    poll_interval: float | None = None
    identifies_work_by_job_id_only: bool = False
    strict_updates: bool = True
    clean_session: bool = False
    #: "mqtt" (paho, the default), "sdk" (the AWS IoT Device SDK: awscrt + IotJobsClientV2)
    #: or "http" (requests over HTTPS to the jobs data plane, the rest over MQTT)
    transport: str = "mqtt"

    def on_lost_access(self, notice: LostAccessNotice) -> Reaction:
        return Reaction.RECOVER

    def tune(self, config: AgentConfig) -> AgentConfig:
        return config


class Reference(Behaviour):
    name = "reference"


class Sdk(Behaviour):
    """The reference decisions over the official AWS IoT Device SDK's jobs client
    (``awsiot.iotjobs.IotJobsClientV2`` on awscrt MQTT 5): see :mod:`devicesim.sdk`."""

    name = "sdk"
    transport = "sdk"


class Http(Behaviour):
    """The reference decisions, its requests sent over HTTPS (:mod:`devicesim.http`)."""

    name = "http"
    transport = "http"


class Poll(Behaviour):
    name = "poll"
    subscribes_notify_next = False
    aborts_on_notify_next = False

    def __init__(self, poll_interval: float = 1.0) -> None:
        self.poll_interval = poll_interval


class DeviceClient(Behaviour):
    """AWS IoT Device Client (``JobsFeature.cpp``, spec §7.3).

    Waits 10 s per reply and retries with backoff from 10 s to 640 s without limit;
    progress-update rejections do not stop the job; a non-retryable rejection of the final
    update makes it give up (recorded as ``lost_access`` with the rejection code).
    """

    name = "device-client"
    aborts_on_notify_next = False
    starts_from_notify_next = True
    asks_next_when_done = False
    strict_updates = False

    def on_lost_access(self, notice: LostAccessNotice) -> Reaction:
        if notice.via in (Via.PROGRESS_UPDATE, Via.POLL):
            return Reaction.IGNORE
        return Reaction.RECOVER

    def tune(self, config: AgentConfig) -> AgentConfig:
        return dataclasses.replace(config, reply_timeout=10.0, retry_base=10.0,
                                   retry_cap=640.0, max_attempts=None)


class CleanSession(Behaviour):
    name = "clean-session"
    clean_session = True


class Stuck(Behaviour):
    name = "stuck"

    def on_lost_access(self, notice: LostAccessNotice) -> Reaction:
        return Reaction.STAY_STUCK


class NoRollback(Behaviour):
    name = "no-rollback"

    def on_lost_access(self, notice: LostAccessNotice) -> Reaction:
        return Reaction.NO_ROLLBACK


class Zombie(Behaviour):
    name = "zombie"

    def on_lost_access(self, notice: LostAccessNotice) -> Reaction:
        return Reaction.KEEP_UPDATING


class ReuseConfused(Behaviour):
    name = "reuse-confused"
    identifies_work_by_job_id_only = True


BEHAVIOURS: dict[str, type[Behaviour]] = {
    cls.name: cls
    for cls in (Reference, Sdk, Http, Poll, DeviceClient, CleanSession, Stuck, NoRollback, Zombie,
                ReuseConfused)
}
FAULTY = frozenset({"stuck", "no-rollback", "zombie", "reuse-confused"})


#: folders (``os.pathsep``-separated) a plugin may also be imported from, after the
#: interpreter's own: a drill hands its device workers the folders on its ``sys.path``
IMPORT_PATH_ENV = "DEVICESIM_IMPORT_PATH"


def load_behaviour(spec: str) -> type[Behaviour]:
    """Import ``package.module:Class`` (also from ``$DEVICESIM_IMPORT_PATH``) and check it
    is a :class:`Behaviour` subclass."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"behaviour {spec!r}: expected 'package.module:Class'")
    sys.path.extend(p for p in dict.fromkeys(os.environ.get(IMPORT_PATH_ENV, "").split(
        os.pathsep)) if p and p not in sys.path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"behaviour {spec!r}: cannot import {module_name!r}: {e}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"behaviour {spec!r}: module {module_name!r} has no {attr!r}")
    if not isinstance(cls, type) or not issubclass(cls, Behaviour):
        raise ValueError(f"behaviour {spec!r}: not a subclass of devicesim.behaviours.Behaviour")
    return cls


def behaviour_name(behaviour: str | type[Behaviour]) -> str:
    """The name a behaviour is known by wherever one is accepted: a name as it is, a built-in
    class by its name, a plugin class as ``package.module:Class`` -- which must import back
    to the same class (a class defined in a function, or in a module that cannot be imported
    by name, cannot run in other processes, nor be named in a history)."""
    if isinstance(behaviour, str):
        return behaviour
    if not isinstance(behaviour, type) or not issubclass(behaviour, Behaviour):
        raise ValueError(f"behaviour {behaviour!r}: not a name or a subclass of "
                         "devicesim.behaviours.Behaviour")
    if BEHAVIOURS.get(behaviour.name) is behaviour:
        return behaviour.name
    spec = f"{behaviour.__module__}:{behaviour.__qualname__}"
    try:
        same = load_behaviour(spec) is behaviour
    except ValueError:
        same = False
    if not same:
        raise ValueError(f"behaviour {spec!r}: define the class at the top level of a module "
                         "that imports by that name")
    return spec


def resolve(name: str) -> Behaviour:
    """A built-in name (see :data:`BEHAVIOURS`) or a plugin ``package.module:Class``."""
    if ":" in name:
        cls = load_behaviour(name)
    else:
        try:
            cls = BEHAVIOURS[name]
        except KeyError:
            known = ", ".join(sorted(BEHAVIOURS))
            raise ValueError(f"behaviour {name!r}: unknown (known: {known}; or a "
                             "plugin as 'package.module:Class')") from None
    try:
        return cls()
    except TypeError as e:
        raise ValueError(f"behaviour {name!r}: cannot be constructed without arguments: {e}"
                         ) from None
