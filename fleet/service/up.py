"""``fleet up``: a broker (embedded or external) and the jobs service, in the foreground.

Writes a ready file (JSON) once MQTT and HTTP accept connections (``jobs_data``: the HTTPS
data plane)::

    {"mqtt": {"host": "127.0.0.1", "port": 41234, "url": "mqtt://127.0.0.1:41234"},
     "http": {"endpoint": "http://127.0.0.1:41235"},
     "jobs_data": {"endpoint": "http://127.0.0.1:41236"},
     "state": ".state/jobs.db", "pid": 123}

Restarted on the same ``--state`` it continues where it stopped. A failure some component
survived (a raising handler, a failed timer iteration, ...) is logged at ERROR and counted
(:class:`FailureLog`); the service keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from devicesim.loop import run_main
from devicesim.metrics import LiveMetrics
from fleet.broker import BrokerAddress
from fleet.certs import CertDir, write_file
from fleet.service.controlplane.sigv4 import load_credentials
from fleet.service.local import serving
from fleet.service.settings import ServiceSettings
from fleet.service.shell import JobsService

log = logging.getLogger(__name__)

DEFAULT_STATE = Path(".state/jobs.db")
DEFAULT_READY_FILE = Path(".state/ready.json")
ENDPOINT_ENV = "DEVICESIM_ENDPOINT"
READY_FILE_ENV = "DEVICESIM_READY_FILE"


@dataclass(slots=True)
class FailureLog:
    """The standalone service's supervisor: each reported failure is an ERROR line, counted."""

    failures: int = 0

    def __call__(self, where: str, error: BaseException) -> None:
        self.failures += 1
        log.error("component failed where=%r error=%r failures=%d", where, error,
                  self.failures)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per service setting (spec §13), e.g. ``--terminal-update-code``."""
    group = parser.add_argument_group("jobs service settings (spec §13 defaults)")
    defaults = ServiceSettings()
    for f in fields(ServiceSettings):
        default = getattr(defaults, f.name)
        group.add_argument("--" + f.name.replace("_", "-"), dest=f"setting_{f.name}",
                           default=None, metavar="VALUE",
                           help=f"default: {getattr(default, 'value', default)}")


def settings_from(args: argparse.Namespace) -> ServiceSettings:
    values = {name[len("setting_"):]: value for name, value in vars(args).items()
              if name.startswith("setting_") and value is not None}
    return ServiceSettings.from_mapping(values)


def add_broker_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """How a privileged client of ours reaches an ``mqtts://`` ``--broker``."""
    for name, what in (("ca", "the CA of the broker's certificate"),
                       ("cert", "our privileged client's certificate"),
                       ("key", "its private key")):
        parser.add_argument(f"--broker-{name}", type=Path, metavar="FILE",
                            help=f"with --broker mqtts://: {what}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", metavar="URL",
                        help="use this broker (mqtt://HOST:PORT, or mqtts:// with --broker-ca, "
                             "--broker-cert, --broker-key) instead of the embedded one")
    add_broker_tls_arguments(parser)
    parser.add_argument("--mqtt-port", type=int, default=0,
                        help="port of the embedded broker (default: a free port)")
    parser.add_argument("--http-port", type=int, default=0,
                        help="port of the control plane on 127.0.0.1 (default: a free port)")
    parser.add_argument("--jobs-data-port", type=int, default=0,
                        help="port of the HTTPS data plane (iot-jobs-data) on 127.0.0.1 "
                             "(default: a free port)")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE,
                        help=f"SQLite file of the jobs service (default: {DEFAULT_STATE})")
    parser.add_argument("--ready-file", type=Path, default=DEFAULT_READY_FILE,
                        help=f"JSON written once ready (default: {DEFAULT_READY_FILE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the service's randomness")
    parser.add_argument("--secure", action="store_true",
                        help="the secure profile: devices connect with mutual TLS on the "
                             "embedded broker's TLS listener, admitted by certificate (see "
                             "fleet provision); anonymous clients are refused")
    parser.add_argument("--cert-dir", type=Path, metavar="DIR",
                        help="the local CA and the broker's certificate (fleet certs; made "
                             "here if missing); CreateKeysAndCertificate signs with this CA "
                             "(default with --secure: <state dir>/certs)")
    parser.add_argument("--sigv4-credentials", type=Path, metavar="FILE",
                        help="require SigV4-signed control-plane requests, signed with a key "
                             "of this AWS-style credentials file (every profile's "
                             "aws_access_key_id / aws_secret_access_key); others get 403")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: a free "
                             "port, printed): replies by API and code, the service's "
                             "executions by status, devices connected (docs/metrics.md)")
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    credentials = None if args.sigv4_credentials is None else \
        load_credentials(args.sigv4_credentials)
    return run_main(_serve(args, settings, credentials))


async def _serve(args: argparse.Namespace, settings: ServiceSettings,
                 credentials: dict[str, str] | None = None) -> int:
    broker = None
    if args.broker:
        broker = BrokerAddress.parse(args.broker).privileged().with_tls_files(
            args.broker_ca, args.broker_cert, args.broker_key)
    failures = FailureLog()
    metrics = LiveMetrics() if args.metrics_port is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with serving(state=args.state, broker=broker, settings=settings, seed=args.seed,
                           mqtt_port=args.mqtt_port, http_port=args.http_port,
                           jobs_data_port=args.jobs_data_port, secure=args.secure,
                           cert_dir=args.cert_dir, credentials=credentials,
                           on_failure=failures,
                           record=metrics.observe if metrics is not None else None,
                           record_all_requests=metrics is not None) as up:
            service, ca = up.service, up.certs
            tls = up.devices if up.devices.tls else None
            write_ready_file(args.ready_file, up.broker, service.endpoint, args.state,
                             tls=tls, certs=ca, jobs_data=service.jobs_data_endpoint)
            devices = f"  devices {tls.url} (mutual TLS, CA {ca.ca})" if tls and ca else ""
            print(f"fleet up: broker {up.broker.url}{devices}  control plane "
                  f"{service.endpoint}  jobs data {service.jobs_data_endpoint}  state "
                  f"{args.state}  (Ctrl-C to stop)", flush=True)
            try:
                if metrics is not None:
                    port = metrics.serve(args.metrics_port)
                    print(f"fleet up: metrics http://127.0.0.1:{port}/metrics", flush=True)
                    await sample_executions(metrics, service, stop)  # until stopped
                await stop.wait()
            finally:
                if metrics is not None:
                    metrics.close()
    finally:
        if failures.failures:
            log.error("fleet up stopped failures=%d", failures.failures)
        with contextlib.suppress(FileNotFoundError):
            args.ready_file.unlink()
    return 0


def ready_info(address: BrokerAddress, endpoint: str | None, state: Path, *,
               tls: BrokerAddress | None = None, certs: CertDir | None = None,
               jobs_data: str | None = None) -> dict[str, Any]:
    """What a ready file says: where MQTT (and, in the secure profile, MQTTS with its CA)
    and the control plane are, the state, this process; the privileged identity's secret
    (so the file is written 0600)."""
    info: dict[str, Any] = {
        "mqtt": {"host": address.host, "port": address.port, "url": address.url,
                 "awsSemantics": address.aws_semantics},
        "state": str(state), "pid": os.getpid()}
    if address.secret is not None:  # for tools that watch every thing (file mode 0600)
        info["mqtt"]["privileged"] = {"username": address.username,
                                      "password": address.secret}
    if endpoint is not None:
        info["http"] = {"endpoint": endpoint}
    if jobs_data is not None:  # the HTTPS data plane (boto3's iot-jobs-data client)
        info["jobs_data"] = {"endpoint": jobs_data}
    if tls is not None:  # the secure profile: where devices connect, with what
        info["mqtts"] = {"host": tls.host, "port": tls.port, "url": tls.url}
    if certs is not None:
        info["certs"] = {"dir": str(certs.path), "ca": str(certs.ca)}
    return info


def write_ready_file(path: Path, address: BrokerAddress, endpoint: str | None,
                     state: Path, *, tls: BrokerAddress | None = None,
                     certs: CertDir | None = None, jobs_data: str | None = None) -> None:
    info = ready_info(address, endpoint, state, tls=tls, certs=certs, jobs_data=jobs_data)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, json.dumps(info, indent=2).encode(), secret=True)  # it holds the secret


def read_ready_file(path: Path | None = None) -> dict[str, Any]:
    path = path or Path(os.environ.get(READY_FILE_ENV, DEFAULT_READY_FILE))
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no running `fleet up` found ({path} does not exist); start "
                                f"one or pass --endpoint-url") from None
    return info


def default_ca(endpoint: str) -> str | None:
    """The CA to verify the running ``fleet up --secure``'s ``https://`` endpoint by (its
    ready file's ``certs.ca``) when ``endpoint`` is that one; else None (botocore's default
    trust, ``AWS_CA_BUNDLE``)."""
    if not endpoint.startswith("https://"):
        return None
    with contextlib.suppress(FileNotFoundError, ValueError):
        info = read_ready_file()
        if info.get("http", {}).get("endpoint") == endpoint:
            ca = info.get("certs", {}).get("ca")
            return str(ca) if ca else None
    return None


def default_endpoint() -> str:
    """``$DEVICESIM_ENDPOINT``, else the endpoint in the ready file of a running ``fleet up``."""
    env = os.environ.get(ENDPOINT_ENV)
    if env:
        return env
    info = read_ready_file()
    endpoint = info.get("http", {}).get("endpoint")
    if not endpoint:
        raise FileNotFoundError("the running `fleet up` has no control plane endpoint")
    return str(endpoint)


async def sample_executions(metrics: LiveMetrics, service: JobsService, stop: asyncio.Event,
                            every: float = 1.0) -> None:
    """Set the executions-by-status gauge from the store every ``every`` seconds (from this
    event loop: the store is not the metrics thread's to read) until ``stop``."""
    while not stop.is_set():
        metrics.set_executions(service.store.status_counts())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()

