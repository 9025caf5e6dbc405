"""``fleet certs`` and ``fleet provision``: certificates and things for the secure profile.

``fleet certs --dir DIR`` makes the local CA and the broker's certificate
(:mod:`fleet.certs`). ``fleet provision --prefix dev- --count N --cert-dir DIR`` provisions
things as one does on AWS IoT Core, through boto3 -- so the same command provisions the
emulator (the running ``fleet up``, or ``--endpoint-url``) or AWS IoT Core (``--aws``: the
default endpoint, credential chain and region): a policy (created once), then per thing
CreateThing, CreateKeysAndCertificate (active), AttachPolicy, AttachThingPrincipal; each
thing's ``<thing>.crt`` / ``<thing>.key`` (mode 0600) go to DIR, and ``provisioned.json``
lists what was made (certificate ids and ARNs) for clean-up. A thing whose certificate is in
DIR already is left alone, so provisioning again adds only what is missing.

``fleet provision --delete --cert-dir DIR`` undoes it for every thing ``provisioned.json``
lists: DetachThingPrincipal, DetachPolicy, UpdateCertificate (INACTIVE), DeleteCertificate,
DeleteThing per thing, then DeletePolicy once no certificate holds it; the files go too.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fleet import certs
from fleet.drill.controller import iot_client
from fleet.service.up import default_ca, default_endpoint

DEFAULT_POLICY = "devicesim-thing"
DEFAULT_CERT_DIR = Path(".state/certs")
MANIFEST = "provisioned.json"
_THING = "${iot:Connection.Thing.ThingName}"

#: AWS IoT's usual device policy: connect as your thing, touch only your thing's topics
#: (what the devicesim_aws broker plugin enforces)
POLICY_DOCUMENT = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": f"arn:aws:iot:*:*:client/{_THING}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
     "Resource": [f"arn:aws:iot:*:*:topic/$aws/things/{_THING}/*",
                  f"arn:aws:iot:*:*:topic/devicesim/{_THING}/*"]},
    {"Effect": "Allow", "Action": "iot:Subscribe",
     "Resource": [f"arn:aws:iot:*:*:topicfilter/$aws/things/{_THING}/*",
                  f"arn:aws:iot:*:*:topicfilter/devicesim/{_THING}/*"]}]})


def register(sub: Any) -> None:
    c = sub.add_parser("certs", help="make a local CA and the broker's certificate")
    c.add_argument("--dir", type=Path, default=DEFAULT_CERT_DIR,
                   help=f"where (default {DEFAULT_CERT_DIR}); kept if already there")
    c.add_argument("--host", action="append", default=[],
                   help="another name or address the broker's certificate is for "
                        "(besides localhost and 127.0.0.1; repeatable)")
    c.set_defaults(run=run_certs)

    p = sub.add_parser("provision", help="create things, certificates and a policy (boto3)")
    p.add_argument("--prefix", default="dev-", help="thing names PREFIX0000... (default dev-)")
    p.add_argument("--count", type=int, help="how many things (required but with --delete)")
    p.add_argument("--start", type=int, default=0, help="index of the first thing")
    p.add_argument("--width", type=int, default=4, help="digits of the index (default 4)")
    p.add_argument("--cert-dir", type=Path, default=DEFAULT_CERT_DIR,
                   help=f"where each thing's certificate and key go (default "
                        f"{DEFAULT_CERT_DIR})")
    p.add_argument("--policy-name", default=DEFAULT_POLICY,
                   help=f"the policy attached to each certificate (default {DEFAULT_POLICY};"
                        " created if missing)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--endpoint-url", help="control plane (default: the running fleet up)")
    target.add_argument("--aws", action="store_true",
                        help="AWS IoT Core: the default endpoint, credentials and region")
    p.add_argument("--region", help="AWS region (default: the configured one; us-east-1 for "
                                    "the emulator)")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight (default 8)")
    p.add_argument("--delete", action="store_true",
                   help="undo: delete every thing, certificate and attachment "
                        f"{MANIFEST} in --cert-dir lists, then the policy")
    p.set_defaults(run=run_provision)


def run_certs(args: argparse.Namespace) -> int:
    d = certs.ensure(args.dir, hosts=(*certs.DEFAULT_HOSTS, *args.host))
    print(f"fleet certs: CA {d.ca}, broker certificate {d.server} (keys next to them)")
    return 0


def run_provision(args: argparse.Namespace) -> int:
    if (not args.delete and (args.count is None or args.count < 1)) or args.start < 0 \
            or args.concurrency < 1:
        raise ValueError("--count and --concurrency must be >= 1, --start >= 0")
    endpoint = None if args.aws else (args.endpoint_url or default_endpoint())
    client = iot_client(endpoint, region=args.region or ("us-east-1" if endpoint else None),
                        verify=None if endpoint is None else default_ca(endpoint))
    if args.delete:
        deleted = unprovision(client, args.cert_dir, args.policy_name,
                              concurrency=args.concurrency)
        print(f"fleet provision --delete: {deleted} things deleted with their certificates; "
              f"policy {args.policy_name} deleted if nothing else holds it")
        return 0
    things = [f"{args.prefix}{i:0{args.width}d}"
              for i in range(args.start, args.start + args.count)]
    made, kept = provision(client, things, args.cert_dir, args.policy_name,
                           concurrency=args.concurrency)
    print(f"fleet provision: {made} things provisioned, {kept} already were; certificates in "
          f"{args.cert_dir}; policy {args.policy_name}")
    return 0


def provision(client: Any, things: list[str], cert_dir: Path, policy: str = DEFAULT_POLICY,
              *, concurrency: int = 8) -> tuple[int, int]:
    """Provision ``things`` through ``client`` (a boto3 ``iot`` client); (made, kept)."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    try:
        client.create_policy(policyName=policy, policyDocument=POLICY_DOCUMENT)
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceAlreadyExistsException":
            raise ValueError(f"CreatePolicy {policy}: {_error(e)}") from None
    todo = [t for t in things if not (cert_dir / f"{t}.crt").exists()]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        made = list(pool.map(lambda thing: _provision_one(client, thing, cert_dir, policy),
                             todo))
    manifest = cert_dir / MANIFEST
    known: dict[str, Any] = json.loads(manifest.read_text()) if manifest.exists() else {}
    known.update(dict(made))
    certs.write_file(manifest, json.dumps(known, indent=1, sort_keys=True).encode())
    return len(made), len(things) - len(todo)


def _provision_one(client: Any, thing: str, cert_dir: Path, policy: str
                   ) -> tuple[str, dict[str, str]]:
    try:
        client.create_thing(thingName=thing)
        made = client.create_keys_and_certificate(setAsActive=True)
        arn = made["certificateArn"]
        client.attach_policy(policyName=policy, target=arn)
        client.attach_thing_principal(thingName=thing, principal=arn)
    except (ClientError, BotoCoreError) as e:
        raise ValueError(f"provisioning {thing}: {_error(e)}") from None
    certs.write_file(cert_dir / f"{thing}.key", made["keyPair"]["PrivateKey"].encode(), secret=True)
    certs.write_file(cert_dir / f"{thing}.crt", made["certificatePem"].encode())
    return thing, {"certificateId": made["certificateId"], "certificateArn": arn}


def unprovision(client: Any, cert_dir: Path, policy: str = DEFAULT_POLICY, *,
                concurrency: int = 8) -> int:
    """Delete what ``provisioned.json`` in ``cert_dir`` lists (see the module docstring);
    how many things were deleted."""
    manifest = cert_dir / MANIFEST
    try:
        known: dict[str, dict[str, str]] = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{manifest}: nothing to delete ({e})") from None

    def one(item: tuple[str, dict[str, str]]) -> str:
        thing, made = item
        arn, cert_id = made["certificateArn"], made["certificateId"]
        steps = (("detach_thing_principal", {"thingName": thing, "principal": arn}),
                 ("detach_policy", {"policyName": policy, "target": arn}),
                 ("update_certificate", {"certificateId": cert_id, "newStatus": "INACTIVE"}),
                 ("delete_certificate", {"certificateId": cert_id}),
                 ("delete_thing", {"thingName": thing}))
        for call, request in steps:
            try:
                getattr(client, call)(**request)
            except ClientError as e:
                if e.response["Error"]["Code"] != "ResourceNotFoundException":
                    raise ValueError(f"deleting {thing}: {call}: {_error(e)}") from None
        for suffix in (".crt", ".key"):
            (cert_dir / f"{thing}{suffix}").unlink(missing_ok=True)
        return thing

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        deleted = list(pool.map(one, sorted(known.items())))
    manifest.unlink()
    try:
        client.delete_policy(policyName=policy)
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("DeleteConflictException",
                                               "ResourceNotFoundException"):
            raise ValueError(f"DeletePolicy {policy}: {_error(e)}") from None
    return len(deleted)


def _error(e: Exception) -> str:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code')}: {err.get('Message')}"
    return str(e)
