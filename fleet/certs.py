"""A local certificate authority for the secure profile (``fleet certs``), with the
``cryptography`` library.

``fleet certs --dir DIR`` makes, once (kept if present):

- ``ca.crt`` / ``ca.key``: the CA that signs the broker's certificate and every device
  certificate the emulator issues (CreateKeysAndCertificate);
- ``server.crt`` / ``server.key``: the broker's TLS certificate, for ``localhost`` and
  ``127.0.0.1`` (and any ``--host``).

Keys are EC P-256 (what AWS IoT Core and every TLS stack of ours accept), private keys are
written with mode 0600. A device certificate's subject CN is unique per certificate (AWS's
say "AWS IoT Certificate"; ours name it for the broker's logs); a certificate is known by its
**certificate id**, as on AWS: the SHA-256 of its DER encoding, in hex.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 825
DEVICE_DAYS = 3650
#: hosts the broker's certificate is for, unless told more
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


class CertError(ValueError):
    """A certificate directory is unusable, or a PEM is not a certificate."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_file(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Replace ``path`` atomically; mode 0600 for a ``secret`` (a private key), else 0644."""
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def certificate_id(pem: str | bytes) -> str:
    """AWS's certificateId: the SHA-256 of the certificate's DER encoding, in hex."""
    cert = load_certificate(pem)
    return cert.fingerprint(hashes.SHA256()).hex()


def load_certificate(pem: str | bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as e:
        raise CertError(f"not a PEM certificate: {e}") from None


@dataclass(frozen=True, slots=True)
class CertDir:
    """The files of a certificate directory made by :func:`ensure`."""

    path: Path

    @property
    def ca(self) -> Path:
        return self.path / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca.key"

    @property
    def server(self) -> Path:
        return self.path / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.path / "server.key"


def ensure(path: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS) -> CertDir:
    """Make the CA and the broker's certificate in ``path`` unless they are there."""
    d = CertDir(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (d.ca.exists() and d.ca_key.exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "devicesim"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "devicesim local CA")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        write_file(d.ca_key, _key_pem(key), secret=True)
        write_file(d.ca, cert.public_bytes(serialization.Encoding.PEM))
        d.server.unlink(missing_ok=True)  # signed by an old CA: make it again
    if not (d.server.exists() and d.server_key.exists()):
        authority = Authority.load(d)
        cert_pem, key_pem = authority.issue("devicesim broker", hosts=hosts,
                                            days=SERVER_DAYS)
        write_file(d.server_key, key_pem, secret=True)
        write_file(d.server, cert_pem)
    return d


class Authority:
    """Signs certificates with a CA's key."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert, self._key = cert, key

    @classmethod
    def load(cls, d: CertDir) -> Authority:
        try:
            cert = load_certificate(d.ca.read_bytes())
            key = serialization.load_pem_private_key(d.ca_key.read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise CertError(f"{d.path}: no usable CA (fleet certs --dir {d.path}): {e}") \
                from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError(f"{d.ca_key}: not an EC private key")
        return cls(cert, key)

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, common_name: str | None = None, *, hosts: tuple[str, ...] = (),
              days: float = DEVICE_DAYS, not_before: datetime.datetime | None = None
              ) -> tuple[bytes, bytes]:
        """A new key and a certificate for it signed by this CA: (cert PEM, key PEM).
        ``hosts``: a server certificate for them (else a client certificate)."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or _now() - datetime.timedelta(minutes=5)
        name = x509.Name([x509.NameAttribute(
            NameOID.COMMON_NAME, common_name or f"devicesim device {uuid.uuid4()}")])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if hosts else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(name)
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start)
                   .not_valid_after(start + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issued(self, pem: str | bytes) -> bool:
        """Whether this CA signed the certificate."""
        cert = load_certificate(pem)
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True
