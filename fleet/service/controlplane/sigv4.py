"""Optional SigV4 verification of control-plane requests, as AWS does.

With credentials configured (``fleet up --sigv4-credentials FILE``), every request must carry
an ``Authorization: AWS4-HMAC-SHA256 ...`` header signed with one of them; the signature is
recomputed with botocore's own signer (the code that signed it on the client's side, fed the
request as it arrived: method, raw path and query, the signed headers, the body, the
client's timestamp) and compared in constant time. What fails gets AWS's 403 and changes
nothing:

======================================  ===============================================
``MissingAuthenticationTokenException``  no ``Authorization`` header (an unsigned request)
``IncompleteSignatureException``         not a SigV4 header, or no ``X-Amz-Date``
``UnrecognizedClientException``          an access key that is not configured
``InvalidSignatureException``            the signature does not match, or the request is
                                         more than 5 minutes from the service's clock
======================================  ===============================================

Pure: :meth:`Verifier.verify` takes the request's parts and raises; the server calls it
before routing.
"""

from __future__ import annotations

import configparser
import datetime
import hmac
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from fleet.service.errors import JobsError

#: how far a request's X-Amz-Date may be from the service's clock (AWS: 5 minutes)
MAX_SKEW_SECONDS = 300.0

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<headers>[a-z0-9;_.-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})\s*")


class SignatureError(JobsError):
    http_status = 403


class MissingAuthenticationTokenException(SignatureError):
    pass


class IncompleteSignatureException(SignatureError):
    pass


class UnrecognizedClientException(SignatureError):
    pass


class InvalidSignatureException(SignatureError):
    pass


def load_credentials(path: Path) -> dict[str, str]:
    """Access key id -> secret access key, from an AWS-style credentials file (every
    profile's ``aws_access_key_id`` / ``aws_secret_access_key``). A ValueError names what is
    wrong."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a credentials file: {e}") from None
    keys: dict[str, str] = {}
    for name in parser.sections():
        section = parser[name]
        key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
        if key is None or secret is None:
            raise ValueError(f"{path}: profile [{name}] needs aws_access_key_id and "
                             "aws_secret_access_key")
        keys[key.strip()] = secret.strip()
    if not keys:
        raise ValueError(f"{path}: no profile with credentials")
    return keys


class Verifier:
    def __init__(self, keys: Mapping[str, str], *,
                 now: Callable[[], float] = time.time) -> None:
        self._keys = dict(keys)
        self._now = now

    def verify(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> None:
        """Raise a :class:`SignatureError` unless the request is signed with a configured
        key. ``url``: scheme, the Host header and the raw path with its query, as sent."""
        lower = {k.lower(): v for k, v in headers.items()}
        authorization = lower.get("authorization")
        if not authorization:
            raise MissingAuthenticationTokenException("Missing Authentication Token")
        m = _AUTHORIZATION.fullmatch(authorization.strip())
        if m is None:
            raise IncompleteSignatureException(
                "Authorization header requires 'Credential', 'SignedHeaders' and "
                "'Signature' parameters of AWS4-HMAC-SHA256")
        secret = self._keys.get(m["key"])
        if secret is None:
            raise UnrecognizedClientException(
                "The security token included in the request is invalid.")
        stamp = lower.get("x-amz-date")
        if stamp is None:
            raise IncompleteSignatureException("Authorization header requires the X-Amz-Date "
                                               "header")
        try:
            signed_at = datetime.datetime.strptime(stamp, SIGV4_TIMESTAMP).replace(
                tzinfo=datetime.UTC).timestamp()
        except ValueError:
            raise IncompleteSignatureException(f"X-Amz-Date {stamp!r} is not "
                                               "YYYYMMDDTHHMMSSZ") from None
        if abs(self._now() - signed_at) > MAX_SKEW_SECONDS:
            raise InvalidSignatureException(f"Signature expired: {stamp} is now earlier or "
                                            "later than 5 minutes from the service's clock")
        signed = m["headers"].split(";")
        missing = [h for h in signed if h not in lower]
        if missing or "host" not in signed:
            raise IncompleteSignatureException(
                f"signed headers missing from the request: {', '.join(missing or ['host'])}")
        request = AWSRequest(method=method, url=url, data=body,
                             headers={h: lower[h] for h in signed})
        request.context["timestamp"] = stamp
        token = lower.get("x-amz-security-token") if "x-amz-security-token" in signed else None
        signer = SigV4Auth(Credentials(m["key"], secret, token), m["service"], m["region"])
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, m["signature"]):
            raise InvalidSignatureException(
                "The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method.")
