"""Control-plane handlers of the thing registry and its principals (things, certificates,
policies): what ``fleet provision`` needs, shaped as the botocore ``iot`` model says.

Same contract as :mod:`fleet.service.controlplane.handlers`: take a context and an input,
return the response members, raise :class:`~fleet.service.errors.JobsError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization

from fleet.certs import load_certificate
from fleet.service.controlplane.inputs import Input
from fleet.service.controlplane.shapes import Json
from fleet.service.errors import InvalidRequestException
from fleet.service.groups import check_attribute_payload
from fleet.service.registry import STATUSES, Certificate, Registry

if TYPE_CHECKING:
    from fleet.service.controlplane.handlers import Context

_CERTIFICATE_ID = re.compile(r"[0-9a-fA-F]{64}")
_POLICY_NAME = re.compile(r"[\w+=,.@-]{1,128}")
#: endpoint types DescribeEndpoint answers (all with the broker's address)
ENDPOINT_TYPES = ("iot:Data", "iot:Data-ATS", "iot:CredentialProvider", "iot:Jobs")


def _registry(ctx: Context) -> Registry:
    if ctx.registry is None:
        raise InvalidRequestException("this emulator runs without a thing registry")
    return ctx.registry


def _certificate_id(inp: Input) -> str:
    cert_id = inp.labels["certificateId"]
    if not _CERTIFICATE_ID.fullmatch(cert_id):
        raise InvalidRequestException("certificateId: must be 64 hexadecimal characters")
    return cert_id.lower()


def _policy_name(inp: Input) -> str:
    name = inp.labels["policyName"]
    if not _POLICY_NAME.fullmatch(name):
        raise InvalidRequestException("policyName: must be 1-128 characters of "
                                      "[a-zA-Z0-9+=,.@_-]")
    return name


def _target(inp: Input) -> str:
    inp.allow(body=("target",))
    target = inp.body_string("target")
    if target is None:
        raise InvalidRequestException("target: required")
    return target


def _principal(inp: Input) -> str:
    principal = inp.headers.get("x-amzn-principal")
    if not principal:
        raise InvalidRequestException("principal: required (header x-amzn-principal)")
    return principal


def create_thing(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("attributePayload",),
              unsupported_body=("thingTypeName", "billingGroupName"))
    reg = _registry(ctx)
    payload = inp.body_object("attributePayload")
    attributes = None if payload is None else check_attribute_payload(payload)[0]
    thing = reg.create_thing(inp.thing_name(), attributes)
    return {"thingName": thing.name, "thingArn": reg.arn("thing", thing.name),
            "thingId": thing.id}


def describe_thing(ctx: Context, inp: Input) -> Json:
    inp.allow()
    reg = _registry(ctx)
    thing = reg.describe_thing(inp.thing_name())
    return {"defaultClientId": thing.name, "thingName": thing.name, "thingId": thing.id,
            "thingArn": reg.arn("thing", thing.name), "attributes": thing.attributes,
            "version": thing.version}


def update_thing(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("attributePayload", "expectedVersion"),
              unsupported_body=("thingTypeName", "removeThingType"))
    payload = inp.body_object("attributePayload")
    attributes, merge = check_attribute_payload(payload or {})
    _registry(ctx).update_thing(inp.thing_name(), attributes, merge=merge,
                                expected_version=inp.body_integer("expectedVersion"))
    return {}


def list_things(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("attributeName", "attributeValue", "usePrefixAttributeValue",
                     "maxResults", "nextToken"), unsupported_query=("thingTypeName",))
    reg = _registry(ctx)
    name, value = inp.query_string("attributeName"), inp.query_string("attributeValue")
    if value is not None and name is None:
        raise InvalidRequestException("attributeValue: needs attributeName")
    things, token = reg.list_things(
        attribute=None if name is None else (name, value),
        prefix=bool(inp.query_boolean("usePrefixAttributeValue")),
        max_results=inp.query_integer("maxResults", 1, 250),
        next_token=inp.query_string("nextToken"))
    out: Json = {"things": [{"thingName": t.name, "thingArn": reg.arn("thing", t.name),
                             "attributes": t.attributes, "version": t.version}
                            for t in things]}
    if token is not None:
        out["nextToken"] = token
    return out


def create_keys_and_certificate(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("setAsActive",))
    reg = _registry(ctx)
    cert, key_pem = reg.create_keys_and_certificate(
        active=bool(inp.query_boolean("setAsActive")))
    public = load_certificate(cert.pem).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return {"certificateArn": reg.arn("cert", cert.id), "certificateId": cert.id,
            "certificatePem": cert.pem, "keyPair": {"PublicKey": public, "PrivateKey": key_pem}}


def register_certificate(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("setAsActive",), body=("certificatePem", "caCertificatePem", "status"))
    return _register(ctx, inp, inp.body_string("caCertificatePem"))


def register_certificate_without_ca(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("certificatePem", "status"))
    return _register(ctx, inp, None)


def _register(ctx: Context, inp: Input, ca_pem: str | None) -> Json:
    reg = _registry(ctx)
    pem = inp.body_string("certificatePem")
    if pem is None:
        raise InvalidRequestException("certificatePem: required")
    status = inp.body_string("status")
    if status is None:
        status = "ACTIVE" if inp.query_boolean("setAsActive") else "INACTIVE"
    if status not in STATUSES:
        raise InvalidRequestException(f"status: expected one of {', '.join(STATUSES)}")
    cert = reg.register_certificate(pem, status=status, ca_pem=ca_pem)
    return {"certificateArn": reg.arn("cert", cert.id), "certificateId": cert.id}


def update_certificate(ctx: Context, inp: Input) -> None:
    inp.allow(query=("newStatus",))
    status = inp.query_string("newStatus")
    if status is None:
        raise InvalidRequestException("newStatus: required")
    _registry(ctx).update_certificate(_certificate_id(inp), status)


def describe_certificate(ctx: Context, inp: Input) -> Json:
    inp.allow()
    reg = _registry(ctx)
    cert = reg.describe_certificate(_certificate_id(inp))
    return {"certificateDescription": _description(reg, cert)}


def _description(reg: Registry, cert: Certificate) -> Json:
    x509 = load_certificate(cert.pem)
    return {"certificateArn": reg.arn("cert", cert.id), "certificateId": cert.id,
            "status": cert.status, "certificatePem": cert.pem,
            "ownedBy": reg.account_id, "creationDate": int(cert.created),
            "lastModifiedDate": int(cert.modified), "customerVersion": 1,
            "generationId": cert.id[:32], "certificateMode": "DEFAULT",
            "validity": {"notBefore": int(x509.not_valid_before_utc.timestamp()),
                         "notAfter": int(x509.not_valid_after_utc.timestamp())}}


def create_policy(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("policyDocument",), unsupported_body=("tags",))
    reg = _registry(ctx)
    name, document = _policy_name(inp), inp.body_string("policyDocument")
    if document is None:
        raise InvalidRequestException("policyDocument: required")
    reg.create_policy(name, document)
    return {"policyName": name, "policyArn": reg.arn("policy", name),
            "policyDocument": document, "policyVersionId": "1"}


def attach_policy(ctx: Context, inp: Input) -> None:
    _registry(ctx).attach_policy(_policy_name(inp), _target(inp))


def attach_thing_principal(ctx: Context, inp: Input) -> Json:
    inp.allow(unsupported_query=("thingPrincipalType",))
    _registry(ctx).attach_thing_principal(inp.thing_name(), _principal(inp))
    return {}


def list_thing_principals(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("maxResults", "nextToken"))
    inp.query_integer("maxResults", 1, 250)
    return {"principals": _registry(ctx).list_thing_principals(inp.thing_name())}


def detach_policy(ctx: Context, inp: Input) -> None:
    _registry(ctx).detach_policy(_policy_name(inp), _target(inp))


def delete_policy(ctx: Context, inp: Input) -> None:
    inp.allow()
    _registry(ctx).delete_policy(_policy_name(inp))


def detach_thing_principal(ctx: Context, inp: Input) -> Json:
    inp.allow()
    _registry(ctx).detach_thing_principal(inp.thing_name(), _principal(inp))
    return {}


def delete_thing(ctx: Context, inp: Input) -> Json:
    """Delete it; it leaves its thing groups (its job executions stay, as on AWS)."""
    inp.allow(query=("expectedVersion",))
    thing = inp.thing_name()
    _registry(ctx).delete_thing(thing, inp.query_integer("expectedVersion"))
    ctx.store.thing_deleted(thing)
    return {}


def delete_certificate(ctx: Context, inp: Input) -> None:
    inp.allow(unsupported_query=("forceDelete",))
    _registry(ctx).delete_certificate(_certificate_id(inp))


def describe_endpoint(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("endpointType",))
    if inp.query_enum("endpointType", ENDPOINT_TYPES) == "iot:Jobs" and \
            ctx.jobs_endpoint is not None:
        return {"endpointAddress": ctx.jobs_endpoint}
    if ctx.endpoint_address is None:
        raise InvalidRequestException("this emulator does not know its broker's address")
    return {"endpointAddress": ctx.endpoint_address}


IDENTITY_HANDLERS: dict[str, Callable[[Context, Input], Json | None]] = {
    "CreateThing": create_thing,
    "DescribeThing": describe_thing,
    "UpdateThing": update_thing,
    "ListThings": list_things,
    "CreateKeysAndCertificate": create_keys_and_certificate,
    "RegisterCertificate": register_certificate,
    "RegisterCertificateWithoutCA": register_certificate_without_ca,
    "UpdateCertificate": update_certificate,
    "DescribeCertificate": describe_certificate,
    "CreatePolicy": create_policy,
    "AttachPolicy": attach_policy,
    "AttachThingPrincipal": attach_thing_principal,
    "ListThingPrincipals": list_thing_principals,
    "DescribeEndpoint": describe_endpoint,
    "DetachPolicy": detach_policy,
    "DeletePolicy": delete_policy,
    "DetachThingPrincipal": detach_thing_principal,
    "DeleteThing": delete_thing,
    "DeleteCertificate": delete_certificate,
}
