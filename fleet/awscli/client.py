"""The boto3 ``iot`` client behind the commands, and the AWS CLI's JSON output.

* Endpoint: ``--endpoint-url``, else the running ``fleet up`` (``$DEVICESIM_ENDPOINT``, else
  the ready file, ``$DEVICESIM_READY_FILE`` or ``.state/ready.json``).
* Credentials: the usual boto3 chain (``--profile``, environment, shared files, ...); when it
  finds none, dummy ones (the emulator accepts any). For a loopback endpoint the chain skips
  the EC2/ECS metadata services, which would only add timeouts.
* Region: ``--region``, else the configured one, else ``us-east-1``.
* Retries: botocore's ``legacy`` mode unless ``AWS_RETRY_MODE`` / ``retry_mode`` says
  otherwise, as the AWS CLI v1 (``AWS_MAX_ATTEMPTS`` / ``max_attempts`` are honoured).
* Timestamps print as they came over the wire, as the AWS CLI v1 does by default (its
  ``cli_timestamp_format = wire``); ``cli_timestamp_format = iso8601`` in the AWS config
  profile prints ISO 8601 instead, as in the AWS CLI.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
from typing import IO, Any
from urllib.parse import urlsplit

from fleet.awscli.model import SERVICE
from fleet.awscli.model import session as model_session

DUMMY_CREDENTIALS = {"aws_access_key_id": "devicesim", "aws_secret_access_key": "devicesim"}
DEFAULT_REGION = "us-east-1"


def default_endpoint() -> str:
    """The running ``fleet up``'s control plane; FileNotFoundError when there is none."""
    from fleet.service import up

    return up.default_endpoint()


def default_ca(endpoint: str) -> str | None:
    """The CA to verify the running ``fleet up --secure``'s ``https://`` endpoint by."""
    from fleet.service import up

    return up.default_ca(endpoint)


def is_loopback(endpoint_url: str | None) -> bool:
    host = urlsplit(endpoint_url).hostname if endpoint_url else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _identity(value: Any) -> Any:
    return value


def _iso8601(value: Any) -> str:
    from botocore.utils import parse_timestamp

    return str(parse_timestamp(value).isoformat())


def make_client(*, endpoint_url: str | None, region: str | None,
                profile: str | None, verify: str | None = None) -> Any:
    """A boto3 ``iot`` client configured as the AWS CLI v1 would configure its own
    (``verify``: the CA of an ``https://`` endpoint, as the AWS CLI's ``--ca-bundle``)."""
    import boto3
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session(profile=profile)
    # The model the options came from, already loaded: not parsed twice per command.
    session.register_component("data_loader", model_session().get_component("data_loader"))
    timestamp_format = session.get_scoped_config().get("cli_timestamp_format", "wire")
    if timestamp_format not in ("wire", "none", "iso8601"):
        raise ValueError(f"Unknown cli_timestamp_format value: {timestamp_format}, valid "
                         'values are "none", "wire" or "iso8601"')
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=_iso8601 if timestamp_format == "iso8601" else _identity,
        blob_parser=_identity)
    if is_loopback(endpoint_url):
        resolver = session.get_component("credential_provider")
        for provider in ("container-role", "iam-role"):
            resolver.remove(provider)
    credentials: dict[str, str] = {}
    if session.get_credentials() is None:
        credentials = DUMMY_CREDENTIALS
    region = region or session.get_config_variable("region") or DEFAULT_REGION
    config = None
    if not (os.environ.get("AWS_RETRY_MODE") or session.get_scoped_config().get("retry_mode")):
        # The AWS CLI v1 retries in botocore's "legacy" mode unless told otherwise; boto3
        # now defaults to "standard" (other attempts, other error messages).
        config = Config(retries={"mode": "legacy"})
    return boto3.session.Session(botocore_session=session).client(
        SERVICE, region_name=region, endpoint_url=endpoint_url, config=config, verify=verify,
        **credentials)


def json_encoder(obj: Any) -> Any:
    """The AWS CLI's ``awscli.utils.json_encoder``: datetimes ISO 8601, bytes base64."""
    if isinstance(obj, datetime.datetime):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("utf-8")
    raise TypeError("Encountered unrecognized type in JSON encoder.")


def print_response(response: Any, stream: IO[str], query: Any = None) -> None:
    """The AWS CLI's JSON formatter: no ResponseMetadata, nothing for an empty response.

    ``query`` is a compiled JMESPath expression (``--query``) or None.
    """
    if isinstance(response, dict):
        response.pop("ResponseMetadata", None)
    if query is not None:
        response = query.search(response)
    try:
        if response != {}:
            json.dump(response, stream, indent=4, default=json_encoder, ensure_ascii=False)
            stream.write("\n")
        stream.flush()
    except BrokenPipeError:  # `fleet list-jobs | head`: the reader is gone, as in the CLI
        pass
