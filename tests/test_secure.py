"""The secure profile: a TLS listener requiring client certificates, devices admitted by the
certificates the registry lists as ACTIVE and attached to their thing, anonymous clients
refused; provisioning through boto3 and ``fleet provision``; a drill over mutual TLS.

Clients we did not write: aiomqtt (paho) over TLS, boto3, the AWS IoT Device SDK (the
``sdk`` behaviour in the drill).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from devicesim.wire import topics
from fleet import certs
from fleet.broker import EmbeddedBroker
from fleet.checker import Status
from fleet.drill import spec
from fleet.drill.controller import iot_client
from fleet.drill.runner import RunOptions, run
from fleet.provision import provision
from fleet.service.shell import JobsService, ServiceConfig

pytestmark = pytest.mark.broker

WITHIN = 10.0


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedBroker,
                                                                     certs.CertDir]]:
    ca = certs.ensure(tmp_path_factory.mktemp("certs"))
    with EmbeddedBroker(secure=ca) as broker:
        print(f"secure broker {broker.tls_address} log={broker.log_path}")
        yield broker, ca


@pytest.fixture
async def service(secure: tuple[EmbeddedBroker, certs.CertDir], tmp_path: Path
                  ) -> AsyncIterator[JobsService]:
    broker, ca = secure
    service = JobsService(ServiceConfig(broker=broker.address, state=tmp_path / "jobs.db",
                                        authority=certs.Authority.load(ca),
                                        principals=broker.principals_path))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def thing_name(tag: str) -> str:
    return f"tls-{tag}-{uuid.uuid4().hex[:6]}"


def files(d: Path, thing: str, cert_pem: bytes | str, key_pem: bytes | str) -> tuple[Path,
                                                                                   Path]:
    cert, key = d / f"{thing}.crt", d / f"{thing}.key"
    cert.write_bytes(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
    key.write_bytes(key_pem.encode() if isinstance(key_pem, str) else key_pem)
    return cert, key


async def connect(broker: EmbeddedBroker, ca: Path, client_id: str,
                  cert: Path | None, key: Path | None) -> aiomqtt.Client:
    tls = broker.tls_address
    assert tls is not None
    client = aiomqtt.Client(tls.host, tls.port, identifier=client_id,
                            tls_params=aiomqtt.TLSParameters(
                                ca_certs=str(ca), certfile=None if cert is None else str(cert),
                                keyfile=None if key is None else str(key)))
    async with asyncio.timeout(WITHIN):
        await client.__aenter__()
    return client


async def test_a_provisioned_device_connects_over_mutual_tls_and_is_answered(
        secure: tuple[EmbeddedBroker, certs.CertDir], service: JobsService,
        tmp_path: Path) -> None:
    broker, ca = secure
    thing = thing_name("ok")
    assert service.endpoint is not None
    await asyncio.to_thread(provision, iot_client(service.endpoint), [thing], tmp_path)
    client = await connect(broker, ca.ca, thing, tmp_path / f"{thing}.crt",
                           tmp_path / f"{thing}.key")
    try:
        await client.publish(topics.get_pending(thing), json.dumps({"clientToken": "t1"}),
                             qos=1)
        async with asyncio.timeout(WITHIN):  # no subscription: the reply comes unasked
            message = await anext(aiter(client.messages))
        assert str(message.topic) == f"{topics.jobs_prefix(thing)}/get/accepted"
        assert json.loads(message.payload)["clientToken"] == "t1"  # type: ignore[arg-type]
    finally:
        await client.__aexit__(None, None, None)


#: a minimal MQTT 3.1.1 CONNECT (client id "probe-1", clean session, keepalive 10)
_CONNECT = bytes([0x10, 19]) + b"\x00\x04MQTT\x04\x02\x00\x0a\x00\x07probe-1"


def tls_refusal(broker: EmbeddedBroker, ca: Path, cert: Path | None, key: Path | None) -> str:
    """Open TLS to the secure listener; the TLS alert that ends it (a TLS 1.3 server refuses
    a client certificate after the client's side of the handshake completed: the alert comes
    with the first read). An AssertionError if no alert comes and a CONNECT is answered."""
    tls = broker.tls_address
    assert tls is not None
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    try:
        with socket.create_connection((tls.host, tls.port), timeout=WITHIN) as raw, \
                context.wrap_socket(raw, server_hostname=tls.host) as sock:
            sock.settimeout(2.0)
            try:
                answer = sock.recv(4)  # nothing is due before our CONNECT, but an alert
            except TimeoutError:
                sock.settimeout(WITHIN)
                sock.sendall(_CONNECT)
                answer = sock.recv(4)
    except (ssl.SSLError, ConnectionError) as e:
        return str(e)
    assert answer == b"", f"the broker answered {answer!r}"
    return "closed"


def register(service: JobsService, thing: str, pem: bytes, *, status: str = "ACTIVE",
             attach: bool = True) -> None:
    reg = service.registry
    reg.create_thing(thing)
    cert = reg.register_certificate(pem.decode(), status=status)
    if attach:
        reg.attach_thing_principal(thing, reg.arn("cert", cert.id))


@pytest.mark.parametrize("case", ["no certificate", "another CA", "expired", "inactive",
                                  "revoked", "not attached", "another thing's client id"])
async def test_the_secure_listener_refuses(secure: tuple[EmbeddedBroker, certs.CertDir],
                                           service: JobsService, tmp_path: Path,
                                           case: str) -> None:
    broker, ca = secure
    thing = thing_name("refused")
    authority = certs.Authority.load(ca)
    cert_pem, key_pem = authority.issue()
    client_id = thing
    if case == "another CA":
        other = certs.Authority.load(certs.ensure(tmp_path / "other"))
        cert_pem, key_pem = other.issue()
    elif case == "expired":
        cert_pem, key_pem = authority.issue(
            days=1, not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3))
    if case != "no certificate":
        register(service, thing, cert_pem,
                 status={"inactive": "INACTIVE", "revoked": "REVOKED"}.get(case, "ACTIVE"),
                 attach=case != "not attached")
    if case == "another thing's client id":
        client_id = thing_name("other")
        service.registry.create_thing(client_id)
    cert, key = files(tmp_path, thing, cert_pem, key_pem)
    alerts = {"no certificate": "CERTIFICATE_REQUIRED", "another CA": "ALERT_DECRYPT_ERROR",
              "expired": "CERTIFICATE_EXPIRED"}
    if case in alerts:  # refused by the TLS handshake itself
        error = await asyncio.to_thread(tls_refusal, broker, ca.ca,
                                        None if case == "no certificate" else cert,
                                        None if case == "no certificate" else key)
        assert alerts[case] in error, error
        return
    log_offset = broker.log_path.stat().st_size
    with pytest.raises(aiomqtt.MqttError, match="(?i)not authori[sz]ed"):
        await connect(broker, ca.ca, client_id, cert, key)
    # the TLS handshake passed; the plugin refused the CONNECT, and says why
    with broker.log_path.open() as log:
        log.seek(log_offset)
        said = log.read()
    why = {"inactive": "certificate not ACTIVE", "revoked": "certificate not ACTIVE",
           "not attached": "not attached", "another thing's client id": "not attached"}
    assert f"refused {client_id}: " in said, said
    assert why[case] in said, said


async def test_anonymous_clients_are_refused_on_the_plain_listener_too(
        secure: tuple[EmbeddedBroker, certs.CertDir]) -> None:
    broker, _ = secure
    with pytest.raises(aiomqtt.MqttError, match="(?i)not authori[sz]ed"):
        async with aiomqtt.Client(broker.address.host, broker.address.port,
                                  identifier=thing_name("anonymous")):
            pass


async def test_an_inactivated_certificate_is_refused_from_then_on(
        secure: tuple[EmbeddedBroker, certs.CertDir], service: JobsService,
        tmp_path: Path) -> None:
    broker, ca = secure
    thing = thing_name("later")
    assert service.endpoint is not None
    client = iot_client(service.endpoint)
    await asyncio.to_thread(provision, client, [thing], tmp_path)
    first = await connect(broker, ca.ca, thing, tmp_path / f"{thing}.crt",
                          tmp_path / f"{thing}.key")
    await first.__aexit__(None, None, None)
    cert_id = certs.certificate_id((tmp_path / f"{thing}.crt").read_bytes())
    await asyncio.to_thread(client.update_certificate, certificateId=cert_id,
                            newStatus="INACTIVE")
    with pytest.raises(aiomqtt.MqttError):
        await connect(broker, ca.ca, thing, tmp_path / f"{thing}.crt",
                      tmp_path / f"{thing}.key")


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_fleet_up_secure_and_fleet_provision_as_a_user_runs_them(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {**os.environ, "DEVICESIM_READY_FILE": str(ready)}
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.cli", "up", "--secure", "--state",
        str(tmp_path / "state" / "jobs.db"), "--ready-file", str(ready),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        assert up.stdout is not None
        async with asyncio.timeout(30):
            line = (await up.stdout.readline()).decode()
        assert "devices mqtts://127.0.0.1:" in line, line
        info: dict[str, Any] = json.loads(ready.read_text())
        assert info["http"]["endpoint"].startswith("https://")  # the control plane too
        provisioned = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet.cli", "provision", "--prefix", "up-", "--count", "2",
            "--cert-dir", str(tmp_path / "devices"), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env)
        async with asyncio.timeout(60):
            out, _ = await provisioned.communicate()
        assert provisioned.returncode == 0, out
        assert out.decode().startswith("fleet provision: 2 things provisioned, 0 already")
        manifest = json.loads((tmp_path / "devices" / "provisioned.json").read_text())
        assert sorted(manifest) == ["up-0000", "up-0001"]
        assert (tmp_path / "devices" / "up-0000.key").stat().st_mode & 0o777 == 0o600
        tls = info["mqtts"]
        async with aiomqtt.Client(tls["host"], tls["port"], identifier="up-0001",
                                  tls_params=aiomqtt.TLSParameters(
                                      ca_certs=info["certs"]["ca"],
                                      certfile=str(tmp_path / "devices" / "up-0001.crt"),
                                      keyfile=str(tmp_path / "devices" / "up-0001.key"))
                                  ) as device:
            await device.publish(topics.get_pending("up-0001"), b"{}", qos=1)
            async with asyncio.timeout(WITHIN):
                message = await anext(aiter(device.messages))
            assert str(message.topic).endswith("/get/accepted")
    finally:
        up.terminate()
        async with asyncio.timeout(20):
            await up.wait()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_secure_drill_with_reference_and_sdk_devices_passes(tmp_path: Path) -> None:
    drill = spec.load("force-delete")
    import dataclasses

    drill = dataclasses.replace(drill, devices=60, mix={"reference": 0.5, "sdk": 0.5})
    print(f"drill {drill.name} seed={drill.seed} devices=60 secure")
    result = await run(drill, RunOptions(report_dir=tmp_path, secure=True))
    verdict = result.verdict
    assert verdict.status is Status.PASS, [(r.name, r.status, r.violations[:2])
                                           for r in verdict.results if not r.passed]
    notice = verdict.result("notice")
    assert set(notice.cases_by_behaviour) == {"reference", "sdk"}
    start = next(op for op in result.ops if op.f == "start")
    assert start.value["secure"] is True
    assert verdict.metrics.secure
    assert verdict.metrics.missing_semantics == ()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_fleet_up_serves_through_a_tls_broker_it_did_not_start(
        secure: tuple[EmbeddedBroker, certs.CertDir], tmp_path: Path) -> None:
    from fleet.service.registry import Registry

    broker, ca = secure
    tls = broker.tls_address
    assert tls is not None
    thing = thing_name("external")
    # the broker's principals file admits the device (as the registry of whoever runs it)
    registry = Registry(tmp_path / "registry.db", region="us-east-1",
                        account_id="123456789012", authority=certs.Authority.load(ca),
                        principals=broker.principals_path)
    registry.create_thing(thing)
    cert, key_pem = registry.create_keys_and_certificate(active=True)
    registry.attach_thing_principal(thing, registry.arn("cert", cert.id))
    registry.close()
    cert_file, key_file = files(tmp_path, thing, cert.pem, key_pem)
    ready = tmp_path / "ready.json"
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.cli", "up", "--broker", tls.url, "--broker-ca", tls.ca,
        "--broker-cert", tls.cert, "--broker-key", tls.key, "--state",
        str(tmp_path / "jobs.db"), "--ready-file", str(ready),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "DEVICESIM_BROKER_SECRET": tls.secret or ""})
    try:
        assert up.stdout is not None
        async with asyncio.timeout(30):
            line = (await up.stdout.readline()).decode()
        assert line.startswith(f"fleet up: broker {tls.url}"), \
            line + (await up.stderr.read()).decode()  # type: ignore[union-attr]
        device = await connect(broker, ca.ca, thing, cert_file, key_file)
        try:
            await device.publish(topics.get_pending(thing), b'{"clientToken": "x"}', qos=1)
            async with asyncio.timeout(WITHIN):  # answered by the service over TLS
                message = await anext(aiter(device.messages))
            assert str(message.topic).endswith("/get/accepted")
        finally:
            await device.__aexit__(None, None, None)
    finally:
        up.terminate()
        async with asyncio.timeout(20):
            await up.wait()
