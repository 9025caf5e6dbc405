"""The thing registry and its principals through boto3 (a client we did not write): things,
certificates signed by the emulator's CA, policies, attachments, the broker's principals
file, and AWS's errors where AWS gives them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fleet import certs
from fleet.broker import BrokerAddress
from fleet.drill.controller import iot_client
from fleet.service.shell import JobsService, ServiceConfig

pytestmark = pytest.mark.broker

POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]})


@pytest.fixture
async def iot(broker_address: BrokerAddress, tmp_path: Path
              ) -> AsyncIterator[tuple[Any, JobsService, certs.CertDir]]:
    ca = certs.ensure(tmp_path / "certs")
    service = JobsService(ServiceConfig(
        broker=broker_address, state=tmp_path / "jobs.db",
        authority=certs.Authority.load(ca), principals=tmp_path / "principals.txt"))
    await service.start()
    try:
        yield iot_client(service.endpoint), service, ca
    finally:
        await service.stop()


async def call(client: Any, operation: str, **kwargs: Any) -> Any:
    return await asyncio.to_thread(getattr(client, operation), **kwargs)


async def code_of(client: Any, operation: str, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        await call(client, operation, **kwargs)
    return str(caught.value.response["Error"]["Code"])


async def test_provisioning_a_thing_as_on_aws(iot: tuple[Any, JobsService, certs.CertDir],
                                              tmp_path: Path) -> None:
    client, service, ca = iot
    policy = await call(client, "create_policy", policyName="devicesim-thing",
                        policyDocument=POLICY)
    assert policy["policyArn"] == "arn:aws:iot:us-east-1:123456789012:policy/devicesim-thing"
    thing = await call(client, "create_thing", thingName="prov-1")
    assert thing["thingArn"] == "arn:aws:iot:us-east-1:123456789012:thing/prov-1"
    again = await call(client, "create_thing", thingName="prov-1")  # idempotent, as on AWS
    assert again["thingId"] == thing["thingId"]
    made = await call(client, "create_keys_and_certificate", setAsActive=True)
    cert_id, arn = made["certificateId"], made["certificateArn"]
    assert cert_id == certs.certificate_id(made["certificatePem"])
    assert certs.Authority.load(ca).issued(made["certificatePem"])
    assert "PRIVATE KEY" in made["keyPair"]["PrivateKey"]
    await call(client, "attach_policy", policyName="devicesim-thing", target=arn)
    await call(client, "attach_thing_principal", thingName="prov-1", principal=arn)
    listed = await call(client, "list_thing_principals", thingName="prov-1")
    assert listed["principals"] == [arn]
    described = (await call(client, "describe_certificate", certificateId=cert_id))[
        "certificateDescription"]
    assert (described["status"], described["certificatePem"]) == ("ACTIVE",
                                                                  made["certificatePem"])
    principals = tmp_path / "principals.txt"
    assert principals.read_text() == f"{cert_id} ACTIVE prov-1\n"
    await call(client, "update_certificate", certificateId=cert_id, newStatus="INACTIVE")
    assert principals.read_text() == f"{cert_id} INACTIVE prov-1\n"
    endpoint = await call(client, "describe_endpoint", endpointType="iot:Data-ATS")
    assert endpoint["endpointAddress"] == service.config.broker.host


async def test_registering_a_certificate_made_elsewhere(
        iot: tuple[Any, JobsService, certs.CertDir], tmp_path: Path) -> None:
    client, _, _ = iot
    other = certs.Authority.load(certs.ensure(tmp_path / "other-ca"))
    pem, _ = other.issue("my-device")
    registered = await call(client, "register_certificate", certificatePem=pem.decode(),
                            caCertificatePem=other.pem, status="ACTIVE")
    assert registered["certificateId"] == certs.certificate_id(pem)
    assert await code_of(client, "register_certificate_without_ca",
                         certificatePem=pem.decode()) == "ResourceAlreadyExistsException"


async def test_aws_errors_where_aws_gives_them(iot: tuple[Any, JobsService, certs.CertDir]
                                              ) -> None:
    client, _, _ = iot
    assert await code_of(client, "describe_thing", thingName="nobody") == \
        "ResourceNotFoundException"
    await call(client, "create_policy", policyName="p", policyDocument=POLICY)
    assert await code_of(client, "create_policy", policyName="p", policyDocument=POLICY) == \
        "ResourceAlreadyExistsException"
    unknown = "arn:aws:iot:us-east-1:123456789012:cert/" + "0" * 64
    await call(client, "create_thing", thingName="t")
    assert await code_of(client, "attach_thing_principal", thingName="t",
                         principal=unknown) == "ResourceNotFoundException"
    assert await code_of(client, "describe_certificate", certificateId="0" * 64) == \
        "ResourceNotFoundException"
    assert await code_of(client, "register_certificate_without_ca",
                         certificatePem="not a certificate") == "InvalidRequestException"
    made = await call(client, "create_keys_and_certificate", setAsActive=True)
    await call(client, "update_certificate", certificateId=made["certificateId"],
               newStatus="REVOKED")
    assert await code_of(client, "update_certificate", certificateId=made["certificateId"],
                         newStatus="ACTIVE") == "InvalidRequestException"


async def test_without_a_ca_certificates_cannot_be_made(broker_address: BrokerAddress,
                                                       tmp_path: Path) -> None:
    service = JobsService(ServiceConfig(broker=broker_address, state=tmp_path / "jobs.db"))
    await service.start()
    try:
        client = iot_client(service.endpoint)
        assert await code_of(client, "create_keys_and_certificate", setAsActive=True) == \
            "InvalidRequestException"
        await call(client, "create_thing", thingName="no-ca")  # the rest works
    finally:
        await service.stop()


async def test_provision_then_delete_leaves_nothing_behind(
        iot: tuple[Any, JobsService, certs.CertDir], tmp_path: Path) -> None:
    from fleet.provision import DEFAULT_POLICY, provision, unprovision

    client, service, _ = iot
    things = ["gone-0", "gone-1", "gone-2"]
    devices = tmp_path / "devices"
    assert await asyncio.to_thread(provision, client, things, devices) == (3, 0)
    assert await asyncio.to_thread(provision, client, things, devices) == (0, 3)  # kept
    made = json.loads((devices / "provisioned.json").read_text())
    active = made["gone-0"]["certificateId"]
    # AWS's order matters: an ACTIVE or attached certificate cannot be deleted
    assert await code_of(client, "delete_certificate", certificateId=active) == \
        "CertificateStateException"
    await call(client, "update_certificate", certificateId=active, newStatus="INACTIVE")
    assert await code_of(client, "delete_certificate", certificateId=active) == \
        "DeleteConflictException"
    assert await asyncio.to_thread(unprovision, client, devices) == 3
    for thing in things:
        assert await code_of(client, "describe_thing", thingName=thing) == \
            "ResourceNotFoundException"
        assert not (devices / f"{thing}.key").exists()
    assert await code_of(client, "describe_certificate", certificateId=active) == \
        "ResourceNotFoundException"
    assert not (devices / "provisioned.json").exists()
    assert (tmp_path / "principals.txt").read_text() == ""
    assert await code_of(client, "delete_policy", policyName=DEFAULT_POLICY) == \
        "ResourceNotFoundException"
