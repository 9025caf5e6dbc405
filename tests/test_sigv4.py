"""SigV4 on the control plane (``fleet up --sigv4-credentials``): boto3 and the AWS CLI with
the configured key work; a wrong secret, an unknown key, an unsigned or stale request get
AWS's 403 and change nothing.

The verifier (pure) is checked against requests signed by botocore itself; the service end
to end with real boto3 clients and the real AWS CLI.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from fleet.broker import BrokerAddress
from fleet.service.controlplane.sigv4 import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
    Verifier,
    load_credentials,
)
from fleet.service.shell import JobsService, ServiceConfig

KEY, SECRET = "AKIDEVICESIMTEST", "s3cr3t/with+chars"
URL = "http://127.0.0.1:8443/jobs/fw-1?targetSelection=SNAPSHOT"
BODY = b'{"targets": ["arn:aws:iot:us-east-1:123456789012:thing/dev-0001"]}'
SIGNED_AT = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=datetime.UTC)


def signed(key: str = KEY, secret: str = SECRET, *, body: bytes = BODY,
           at: datetime.datetime = SIGNED_AT) -> dict[str, str]:
    """Headers of a request signed by botocore at ``at``."""
    request = AWSRequest(method="PUT", url=URL, data=body,
                         headers={"Content-Type": "application/json"})
    signer = SigV4Auth(Credentials(key, secret), "iot", "us-east-1")
    request.context["timestamp"] = at.strftime("%Y%m%dT%H%M%SZ")
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    canonical = signer.canonical_request(request)
    signer._inject_signature_to_request(
        request, signer.signature(signer.string_to_sign(request, canonical), request))
    return {**dict(request.headers.items()), "Host": "127.0.0.1:8443"}


def verifier(offset: float = 0.0) -> Verifier:
    return Verifier({KEY: SECRET, "AKIOTHER": "other"},
                    now=lambda: SIGNED_AT.timestamp() + offset)


def test_a_request_signed_with_a_configured_key_passes() -> None:
    verifier().verify("PUT", URL, signed(), BODY)
    verifier(299).verify("PUT", URL, signed(), BODY)  # within 5 minutes of the clock


@pytest.mark.parametrize(("headers", "body", "offset", "error", "message"), [
    ({}, BODY, 0, MissingAuthenticationTokenException, "Missing Authentication Token"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, BODY, 0, IncompleteSignatureException,
     "requires 'Credential'"),
    ("unknown", BODY, 0, UnrecognizedClientException, "security token"),
    ("wrong-secret", BODY, 0, InvalidSignatureException, "does not match"),
    ("good", BODY + b" ", 0, InvalidSignatureException, "does not match"),
    ("good", BODY, 301, InvalidSignatureException, "Signature expired"),
    ("good", BODY, -301, InvalidSignatureException, "Signature expired"),
])
def test_what_is_not_signed_right_is_refused(headers: Any, body: bytes, offset: float,
                                              error: type[Exception], message: str) -> None:
    if headers == "unknown":
        headers = signed(key="AKIUNKNOWN")
    elif headers == "wrong-secret":
        headers = signed(secret="guess")
    elif headers == "good":
        headers = signed()
    with pytest.raises(error, match=message) as caught:
        verifier(offset).verify("PUT", URL, headers, body)
    assert caught.value.http_status == 403  # type: ignore[attr-defined]


def test_a_tampered_path_or_signed_header_is_refused() -> None:
    headers = signed()
    with pytest.raises(InvalidSignatureException):
        verifier().verify("PUT", URL.replace("fw-1", "fw-2"), headers, BODY)
    with pytest.raises(InvalidSignatureException):
        verifier().verify("PUT", URL, {**headers, "Content-Type": "text/plain"}, BODY)


def test_credentials_file(tmp_path: Path) -> None:
    good = tmp_path / "credentials"
    good.write_text(f"[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n"
                    "[ci]\naws_access_key_id=AKICI\naws_secret_access_key=ci\n")
    assert load_credentials(good) == {KEY: SECRET, "AKICI": "ci"}
    bad = tmp_path / "bad"
    bad.write_text("[default]\naws_access_key_id = x\n")
    with pytest.raises(ValueError, match=r"profile \[default\] needs"):
        load_credentials(bad)
    with pytest.raises(ValueError, match="not a credentials file"):
        load_credentials(tmp_path / "missing")


# --- the service, with real clients ------------------------------------------------------------


@pytest.fixture
async def endpoint(broker_address: BrokerAddress, tmp_path: Path
                   ) -> AsyncIterator[tuple[str, JobsService]]:
    service = JobsService(ServiceConfig(broker=broker_address, state=tmp_path / "jobs.db",
                                        credentials={KEY: SECRET}))
    await service.start()
    try:
        assert service.endpoint is not None
        yield service.endpoint, service
    finally:
        await service.stop()


def client(url: str, key: str = KEY, secret: str = SECRET, *, unsigned: bool = False) -> Any:
    config = botocore.config.Config(retries={"max_attempts": 1},
                                    signature_version=UNSIGNED if unsigned else None)
    return boto3.session.Session(region_name="us-east-1").client(
        "iot", endpoint_url=url, aws_access_key_id=key, aws_secret_access_key=secret,
        config=config)


def create(iot: Any, job_id: str) -> Any:
    return iot.create_job(jobId=job_id, document=json.dumps({"steps": []}),
                          targets=["arn:aws:iot:us-east-1:123456789012:thing/sig-1"])


@pytest.mark.broker
async def test_boto3_with_the_right_key_works_and_others_are_refused(
        endpoint: tuple[str, JobsService]) -> None:
    url, service = endpoint
    right = await asyncio.to_thread(create, client(url), "signed-1")
    assert right["jobId"] == "signed-1"
    refused = {"wrong secret": client(url, secret="guess"), "unknown key": client(url, "AKIX"),
               "unsigned": client(url, unsigned=True)}
    codes = {}
    for name, iot in refused.items():
        with pytest.raises(ClientError) as caught:
            await asyncio.to_thread(create, iot, f"refused-{name.replace(' ', '-')}")
        codes[name] = (caught.value.response["Error"]["Code"],
                       caught.value.response["ResponseMetadata"]["HTTPStatusCode"])
    assert codes == {"wrong secret": ("InvalidSignatureException", 403),
                     "unknown key": ("UnrecognizedClientException", 403),
                     "unsigned": ("MissingAuthenticationTokenException", 403)}
    jobs, _ = service.store.list_jobs()
    assert [j.job_id for j in jobs] == ["signed-1"]  # nothing refused changed anything


@pytest.mark.broker
@pytest.mark.slow
async def test_the_aws_cli_signs_its_way_in(endpoint: tuple[str, JobsService],
                                           tmp_path: Path) -> None:
    url, _ = endpoint
    aws = Path(sys.executable).with_name("aws")

    async def run(secret: str) -> tuple[int, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
               "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": secret,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "c"),
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "k"), "AWS_PAGER": "",
               "AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true"}
        proc = await asyncio.create_subprocess_exec(
            str(aws), "iot", "list-jobs", "--endpoint-url", url, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, (out + err).decode()

    code, text = await run(SECRET)
    assert code == 0, text
    assert json.loads(text) == {"jobs": []}
    code, text = await run("guess")
    assert code != 0
    assert "InvalidSignatureException" in text, text
