"""The thing registry and its security principals: things, X.509 certificates, policies.

What ``fleet provision`` (boto3) needs to provision devices against the emulator as against
AWS IoT Core: CreateThing, CreateKeysAndCertificate (signed by the emulator's CA),
RegisterCertificate, UpdateCertificate, DescribeCertificate, CreatePolicy, AttachPolicy,
AttachThingPrincipal, ListThingPrincipals. Kept in the service's SQLite file, next to the
jobs (own tables, own connection: WAL lets both write).

The broker learns who may connect from the **principals file** this registry rewrites
(atomically) after every change, one line per certificate::

    <certificateId> <status> <thing>[,<thing>...]

The devicesim_aws plugin reads it (again when it changed) and accepts a TLS client only if
its certificate's id is there, ACTIVE, and attached to the thing named by its client id.
Policies are stored and attached as given; what the broker enforces is the one policy AWS
users give devices most: a device may touch only its own thing's topics.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from fleet.certs import Authority, CertError, certificate_id, load_certificate, write_file
from fleet.service import validation
from fleet.service.errors import (
    CertificateStateException,
    DeleteConflictException,
    InvalidRequestException,
    ResourceAlreadyExistsException,
    ResourceNotFoundException,
)

STATUSES = ("ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", "REGISTER_INACTIVE",
            "PENDING_ACTIVATION")
#: statuses UpdateCertificate may set (AWS: not PENDING_* or REGISTER_* from here)
SETTABLE = ("ACTIVE", "INACTIVE", "REVOKED")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS things (
    name TEXT PRIMARY KEY, id TEXT NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS certificates (
    id TEXT PRIMARY KEY, pem TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL,
    modified REAL NOT NULL, ca_pem TEXT);
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY, document TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS policy_targets (
    policy TEXT NOT NULL, target TEXT NOT NULL, PRIMARY KEY (policy, target));
CREATE TABLE IF NOT EXISTS thing_principals (
    thing TEXT NOT NULL, principal TEXT NOT NULL, PRIMARY KEY (thing, principal));
"""


@dataclass(frozen=True, slots=True)
class Thing:
    name: str
    id: str
    version: int
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Certificate:
    id: str
    pem: str
    status: str
    created: float
    modified: float
    ca_pem: str | None


class Registry:
    def __init__(self, path: Path | str, *, region: str, account_id: str,
                 authority: Authority | None = None, principals: Path | None = None,
                 now: Callable[[], float] = time.time) -> None:
        """``authority``: the CA CreateKeysAndCertificate signs with (None: that call is
        refused); ``principals``: the file to keep for the broker."""
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(things)")}
        if "attributes" not in columns:  # a state directory from before thing attributes
            self._db.execute("ALTER TABLE things ADD COLUMN attributes TEXT NOT NULL "
                             "DEFAULT '{}'")
        self._region, self._account = region, account_id
        self.authority, self.principals_path, self._now = authority, principals, now
        self.write_principals()

    def close(self) -> None:
        self._db.close()

    # -- ARNs ------------------------------------------------------------------------------

    @property
    def account_id(self) -> str:
        return self._account

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:iot:{self._region}:{self._account}:{kind}/{name}"

    def certificate_of(self, principal: str) -> str | None:
        """The certificate id of a certificate ARN of this account and region, else None."""
        prefix = self.arn("cert", "")
        return principal[len(prefix):] if principal.startswith(prefix) else None

    # -- things ----------------------------------------------------------------------------

    def create_thing(self, name: str, attributes: dict[str, str] | None = None) -> Thing:
        """Create it; the same thing again is returned unchanged (as on AWS), the name with
        other attributes is a ResourceAlreadyExists."""
        attributes = {k: v for k, v in (attributes or {}).items() if v}
        existing = self._thing(name)
        if existing is not None:
            if existing.attributes != attributes:
                raise ResourceAlreadyExistsException(
                    f"Thing {name} already exists with different attributes")
            return existing
        thing = Thing(name, str(uuid.uuid4()), 1, attributes)
        self._db.execute("INSERT INTO things VALUES (?, ?, ?, ?, ?)",
                         (name, thing.id, thing.version, self._now(), _json(attributes)))
        return thing

    def describe_thing(self, name: str) -> Thing:
        thing = self._thing(name)
        if thing is None:
            raise ResourceNotFoundException(f"Thing {name} cannot be found.")
        return thing

    def update_thing(self, name: str, attributes: dict[str, str], *, merge: bool,
                     expected_version: int | None = None) -> Thing:
        """New attributes (``merge``: over the old ones; an empty value removes one)."""
        thing = self.describe_thing(name)
        validation.check_version(expected_version, thing.version)
        merged = {**thing.attributes, **attributes} if merge else attributes
        new = Thing(name, thing.id, thing.version + 1, {k: v for k, v in merged.items() if v})
        self._db.execute("UPDATE things SET version = ?, attributes = ? WHERE name = ?",
                         (new.version, _json(new.attributes), name))
        return new

    def list_things(self, *, attribute: tuple[str, str | None] | None = None,
                    prefix: bool = False, max_results: int | None = None,
                    next_token: str | None = None) -> tuple[list[Thing], str | None]:
        """Things by name; ``attribute`` (name, value or None) keeps those that have it
        (with that value, or ``prefix`` of it)."""
        things = [Thing(r[0], r[1], r[2], orjson.loads(r[3])) for r in self._db.execute(
            "SELECT name, id, version, attributes FROM things ORDER BY name")]
        if attribute is not None:
            key, value = attribute
            things = [t for t in things if key in t.attributes and (
                value is None or (t.attributes[key].startswith(value) if prefix
                                  else t.attributes[key] == value))]
        offset, limit = validation.page(max_results, next_token)
        return (things[offset:offset + limit],
                validation.next_token_for(offset, limit, len(things) - offset))

    def _thing(self, name: str) -> Thing | None:
        row = self._db.execute("SELECT name, id, version, attributes FROM things WHERE "
                               "name = ?", (name,)).fetchone()
        return None if row is None else Thing(row[0], row[1], row[2], orjson.loads(row[3]))

    # -- certificates ----------------------------------------------------------------------

    def create_keys_and_certificate(self, *, active: bool) -> tuple[Certificate, str]:
        """A new key pair and a certificate signed by the emulator's CA: (cert, key PEM)."""
        if self.authority is None:
            raise InvalidRequestException(
                "CreateKeysAndCertificate needs the emulator's certificate authority: run "
                "fleet up --secure (or fleet certs, then fleet up --cert-dir DIR)")
        cert_pem, key_pem = self.authority.issue()
        cert = self._add_certificate(cert_pem.decode(), "ACTIVE" if active else "INACTIVE",
                                     None)
        return cert, key_pem.decode()

    def register_certificate(self, pem: str, *, status: str, ca_pem: str | None = None
                             ) -> Certificate:
        """Register a certificate made elsewhere (signed by ``ca_pem``, or by the emulator's
        CA when it is not given)."""
        if status not in STATUSES:
            raise InvalidRequestException(f"status: expected one of {', '.join(STATUSES)}")
        try:
            load_certificate(pem)
            if ca_pem is not None:
                load_certificate(ca_pem)
        except CertError as e:
            raise InvalidRequestException(f"certificatePem: {e}") from None
        return self._add_certificate(pem, status, ca_pem)

    def _add_certificate(self, pem: str, status: str, ca_pem: str | None) -> Certificate:
        cert_id = certificate_id(pem)
        if self._certificate(cert_id) is not None:
            raise ResourceAlreadyExistsException(
                f"The certificate is already provisioned or registered: {cert_id}")
        now = self._now()
        self._db.execute("INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?)",
                         (cert_id, pem, status, now, now, ca_pem))
        self.write_principals()
        return Certificate(cert_id, pem, status, now, now, ca_pem)

    def update_certificate(self, cert_id: str, status: str) -> None:
        if status not in SETTABLE:
            raise InvalidRequestException(f"newStatus: expected one of {', '.join(SETTABLE)}")
        current = self.describe_certificate(cert_id)
        if current.status == "REVOKED" and status != "REVOKED":
            raise InvalidRequestException(f"Certificate {cert_id} is revoked: its status "
                                          "cannot change")
        self._db.execute("UPDATE certificates SET status = ?, modified = ? WHERE id = ?",
                         (status, self._now(), cert_id))
        self.write_principals()

    def delete_certificate(self, cert_id: str) -> None:
        cert = self.describe_certificate(cert_id)
        if cert.status == "ACTIVE":
            raise CertificateStateException("Certificate must be deactivated (not ACTIVE) "
                                            "before deletion")
        arn = self.arn("cert", cert_id)
        if self._db.execute("SELECT 1 FROM thing_principals WHERE principal = ? UNION "
                            "SELECT 1 FROM policy_targets WHERE target = ?",
                            (arn, arn)).fetchone():
            raise DeleteConflictException(f"Certificate {cert_id} is attached to a thing or "
                                          "a policy")
        self._db.execute("DELETE FROM certificates WHERE id = ?", (cert_id,))
        self.write_principals()

    def describe_certificate(self, cert_id: str) -> Certificate:
        cert = self._certificate(cert_id)
        if cert is None:
            raise ResourceNotFoundException(f"The certificate {cert_id} does not exist")
        return cert

    def _certificate(self, cert_id: str) -> Certificate | None:
        row = self._db.execute("SELECT id, pem, status, created, modified, ca_pem "
                               "FROM certificates WHERE id = ?", (cert_id,)).fetchone()
        return None if row is None else Certificate(*row)

    # -- policies --------------------------------------------------------------------------

    def create_policy(self, name: str, document: str) -> None:
        if self._db.execute("SELECT 1 FROM policies WHERE name = ?", (name,)).fetchone():
            raise ResourceAlreadyExistsException(f"Policy cannot be created - name already "
                                                 f"exists (name={name})")
        self._db.execute("INSERT INTO policies VALUES (?, ?, ?)", (name, document, self._now()))

    def attach_policy(self, name: str, target: str) -> None:
        if not self._db.execute("SELECT 1 FROM policies WHERE name = ?", (name,)).fetchone():
            raise ResourceNotFoundException(f"Policy {name} does not exist")
        self._principal(target)
        self._db.execute("INSERT OR IGNORE INTO policy_targets VALUES (?, ?)", (name, target))

    def detach_policy(self, name: str, target: str) -> None:
        self._db.execute("DELETE FROM policy_targets WHERE policy = ? AND target = ?",
                         (name, target))

    def delete_policy(self, name: str) -> None:
        if not self._db.execute("SELECT 1 FROM policies WHERE name = ?", (name,)).fetchone():
            raise ResourceNotFoundException(f"Policy {name} does not exist")
        if self._db.execute("SELECT 1 FROM policy_targets WHERE policy = ?",
                            (name,)).fetchone():
            raise DeleteConflictException(f"Policy {name} is attached to one or more targets")
        self._db.execute("DELETE FROM policies WHERE name = ?", (name,))

    def policies_of(self, target: str) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT policy FROM policy_targets WHERE target = ? ORDER BY policy", (target,))]

    # -- principals ------------------------------------------------------------------------

    def attach_thing_principal(self, thing: str, principal: str) -> None:
        self.describe_thing(thing)
        self._principal(principal)
        self._db.execute("INSERT OR IGNORE INTO thing_principals VALUES (?, ?)",
                         (thing, principal))
        self.write_principals()

    def detach_thing_principal(self, thing: str, principal: str) -> None:
        self.describe_thing(thing)
        self._db.execute("DELETE FROM thing_principals WHERE thing = ? AND principal = ?",
                         (thing, principal))
        self.write_principals()

    def delete_thing(self, name: str, expected_version: int | None = None) -> None:
        """Delete it (a thing that does not exist: nothing to do, as on AWS)."""
        thing = self._thing(name)
        if thing is None:
            return
        validation.check_version(expected_version, thing.version)
        if self._db.execute("SELECT 1 FROM thing_principals WHERE thing = ?",
                            (name,)).fetchone():
            raise InvalidRequestException(f"Cannot delete thing {name}: it has attached "
                                          "principals (DetachThingPrincipal first)")
        self._db.execute("DELETE FROM things WHERE name = ?", (name,))

    def list_thing_principals(self, thing: str) -> list[str]:
        self.describe_thing(thing)
        return [r[0] for r in self._db.execute(
            "SELECT principal FROM thing_principals WHERE thing = ? ORDER BY principal",
            (thing,))]

    def _principal(self, principal: str) -> str:
        """The certificate id of a principal ARN (a ResourceNotFound if it is not ours)."""
        cert_id = self.certificate_of(principal)
        if cert_id is None or self._certificate(cert_id) is None:
            raise ResourceNotFoundException(f"The principal {principal} does not exist")
        return cert_id

    def principals(self) -> list[tuple[str, str, list[str]]]:
        """(certificate id, status, attached things) of every certificate."""
        attached: dict[str, list[str]] = {}
        for thing, principal in self._db.execute(
                "SELECT thing, principal FROM thing_principals ORDER BY thing"):
            cert_id = self.certificate_of(principal)
            if cert_id is not None:
                attached.setdefault(cert_id, []).append(thing)
        return [(cert_id, status, attached.get(cert_id, []))
                for cert_id, status in self._db.execute(
                    "SELECT id, status FROM certificates ORDER BY id")]

    def write_principals(self) -> None:
        """Rewrite the principals file for the broker (atomically), if there is one."""
        path = self.principals_path
        if path is None:
            return
        lines = [f"{cert_id} {status} {','.join(things) or '-'}\n"
                 for cert_id, status, things in self.principals()]
        write_file(path, "".join(lines).encode("ascii"))  # 0644: the broker's user reads it


def _json(attributes: dict[str, str]) -> str:
    return orjson.dumps(attributes).decode()
