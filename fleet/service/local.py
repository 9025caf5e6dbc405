"""A broker and the jobs service, started and stopped together: what ``fleet up`` serves
and what the Python API's ``jobs_service`` gives a test.

:func:`serving` starts the embedded Mosquitto (or checks a given broker answers), then the
service on it; on the way out it stops the service, then the broker. Whatever fails on the
way in stops what had started.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from devicesim.mqtt import SECRET_ENV, MqttError, OnFailure
from devicesim.wire.history import Op
from fleet import certs
from fleet.broker import BrokerAddress, BrokerError, EmbeddedBroker, probe
from fleet.certs import CertDir
from fleet.service.settings import ServiceSettings
from fleet.service.shell import SERVICE_CLIENT_ID, JobsService, ServiceConfig


@dataclass(frozen=True, slots=True)
class Serving:
    """What :func:`serving` started: ``broker`` is the address of the service's own (and
    every privileged tool's) connection; ``devices`` where devices connect (the secure
    profile: the TLS listener)."""

    broker: BrokerAddress
    devices: BrokerAddress
    service: JobsService
    embedded: EmbeddedBroker | None
    #: the secure profile's CA and certificates
    certs: CertDir | None = None


@contextlib.asynccontextmanager
async def serving(*, state: Path, broker: BrokerAddress | None = None,
                  settings: ServiceSettings | None = None, seed: int = 0,
                  mqtt_port: int = 0, http_port: int = 0, jobs_data_port: int = 0,
                  secure: bool = False, cert_dir: Path | None = None,
                  credentials: Mapping[str, str] | None = None,
                  on_failure: OnFailure | None = None,
                  record: Callable[[Op], None] | None = None,
                  record_all_requests: bool = False,
                  session: str | None = None) -> AsyncIterator[Serving]:
    """Serve the jobs service, its state in ``state`` (an SQLite file; restarted on the same
    file it continues), on ``broker`` or on an embedded Mosquitto whose work dir is beside
    the state. ``secure``: the embedded broker's TLS listener admits devices by certificate
    (``cert_dir``: the local CA, made if missing); ``credentials``: the control plane
    requires SigV4 signatures made with them. ``session``: a name of this service's own
    on the broker, with a clean session (it is not restarted, and leaves nothing behind);
    default: the one name every service shares, with a persistent session (restarted on
    its state, it receives what was sent meanwhile)."""
    if secure and broker is not None:
        raise ValueError("--secure runs its own broker (with a TLS listener): drop --broker")
    state.parent.mkdir(parents=True, exist_ok=True)
    cert_dir = cert_dir or (state.parent / "certs" if secure else None)
    ca = None if cert_dir is None else await asyncio.to_thread(certs.ensure, cert_dir)
    embedded: EmbeddedBroker | None = None
    started: asyncio.Future[BrokerAddress] | None = None
    try:
        if broker is not None:
            if await asyncio.to_thread(probe, broker) != 0:
                raise BrokerError(f"broker {broker.url} refused the connection")
            address = broker
        else:
            embedded = EmbeddedBroker(work_dir=state.parent / "broker",
                                      port=mqtt_port or None, secure=ca if secure else None)
            _RUNNING.add(embedded)
            # shielded: cancelled meanwhile, the broker still starts, and is stopped below
            started = asyncio.ensure_future(asyncio.to_thread(embedded.start))
            address = await asyncio.shield(started)
        tls = None if embedded is None else embedded.tls_address
        own = tls or address  # the secure profile: the service speaks TLS too
        service = JobsService(ServiceConfig(
            broker=own, state=state, settings=settings or ServiceSettings(),
            http_port=http_port, jobs_data_port=jobs_data_port, seed=seed,
            credentials=credentials,
            authority=None if ca is None else certs.Authority.load(ca),
            https=(ca.server, ca.server_key) if ca is not None and secure else None,
            principals=embedded.principals_path if embedded is not None and secure else None,
            record_all_requests=record_all_requests,
            client_id=SERVICE_CLIENT_ID if session is None else f"{SERVICE_CLIENT_ID}-{session}",
            persistent_session=session is None), on_failure=on_failure, record=record)
        try:
            try:
                await service.start()
            except MqttError as e:
                raise BrokerError(
                    f"broker {own.url}: the jobs service cannot serve on it: {e} (a broker "
                    f"running the devicesim_aws plugin admits it with its privileged "
                    f"identity: ${SECRET_ENV}, as fleet up's ready file says)") from None
            yield Serving(broker=address, devices=tls or address, service=service,
                          embedded=embedded, certs=ca)
        finally:
            await service.stop()
    finally:
        if started is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(started)
        if embedded is not None:
            await _stopped(embedded)


#: the embedded brokers started here and not stopped yet: any still running when the
#: interpreter exits (a service left open) is stopped then, so none outlives its process
_RUNNING: set[EmbeddedBroker] = set()


async def _stopped(embedded: EmbeddedBroker) -> None:
    try:
        await asyncio.shield(asyncio.to_thread(embedded.stop))
    finally:
        _RUNNING.discard(embedded)


@atexit.register
def _stop_left() -> None:
    for embedded in list(_RUNNING):
        with contextlib.suppress(Exception):
            embedded.stop()
