"""Broker provider: a real Mosquitto for the jobs service, the recorder and the devices.

Three ways to get a broker, all yielding a `BrokerAddress`:

- `BrokerAddress.parse("mqtt://HOST:PORT")`: a broker the user runs (``--broker``).
- `EmbeddedBroker`: a ``mosquitto`` child process started from the project's
  ``mosquitto.conf`` on a free loopback port, with its own work dir (rendered config,
  persistence state, log). It can be stopped, SIGKILLed and restarted on the same port with
  the same state, which is how drills inject broker faults. Where the project's set-up built
  the ``devicesim_aws`` plugin (``fleet/plugin/``), it is loaded: AWS IoT Core's broker
  semantics (Jobs replies to the requester only, per-thing authorization) and one
  privileged identity (:data:`PRIVILEGED_USER` with a secret made per broker) for the jobs
  service, the recorder and the drill's links; the address it returns carries the secret.
- `container_broker()`: a Mosquitto container, where testcontainers and Docker exist.

Errors::

    ValueError
     └── BrokerError      bad URL, mosquitto missing, broker failed to start or answer

Everything here is synchronous; asyncio callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from devicesim.mqtt import PRIVILEGED_USER, SECRET_ENV, ClientOptions
from fleet.certs import Authority, CertDir, write_file

log = logging.getLogger(__name__)

BROKER_USER = "mosquitto"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 15
_SEARCH_PATH_EXTRA = ("/usr/sbin", "/usr/local/sbin")
_MQTT_CONNACK = 0x20
_SAVE_LINE = b"Saving in-memory database"
PLUGIN_NAME = "devicesim_aws.so"


class BrokerError(ValueError):
    """The broker URL is invalid, or a broker could not be started or reached."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    #: the secret of the privileged identity (:data:`PRIVILEGED_USER`) on a broker running
    #: the devicesim_aws plugin; None on a plain broker (everyone is anonymous)
    secret: str | None = field(default=None, repr=False)
    #: ``mqtts://``: TLS (the secure profile's listener)
    tls: bool = False
    #: with ``tls``: the CA of the broker's certificate, and the privileged client's own
    #: certificate and key (the listener requires one)
    ca: str | None = field(default=None, compare=False)
    cert: str | None = field(default=None, compare=False)
    key: str | None = field(default=None, compare=False)

    @property
    def aws_semantics(self) -> bool:
        """The broker runs the devicesim_aws plugin (as far as this address knows)."""
        return self.secret is not None

    @property
    def username(self) -> str | None:
        """The privileged client's username (None on a plain broker: anonymous)."""
        return None if self.secret is None else PRIVILEGED_USER

    @property
    def password(self) -> str | None:
        return self.secret

    def privileged(self) -> BrokerAddress:
        """This address with the secret from ``$DEVICESIM_BROKER_SECRET`` if it has none
        (a broker given by URL to a process of ours that needs the privileged identity)."""
        secret = self.secret or os.environ.get(SECRET_ENV) or None
        return dataclasses.replace(self, secret=secret)

    def with_tls_files(self, ca: Path | None, cert: Path | None, key: Path | None
                       ) -> BrokerAddress:
        """An ``mqtts://`` address with the CA and this client's certificate and key (a
        BrokerError names what is missing)."""
        if not self.tls:
            if ca or cert or key:
                raise BrokerError(f"--broker-ca/--broker-cert/--broker-key: only with an "
                                  f"mqtts:// broker, not {self.url}")
            return self
        for option, path in (("--broker-ca", ca), ("--broker-cert", cert),
                             ("--broker-key", key)):
            if path is None or not path.is_file():
                raise BrokerError(f"{self.url}: {option} FILE is needed (a TLS listener that "
                                  "requires client certificates)")
        return dataclasses.replace(self, ca=str(ca), cert=str(cert), key=str(key))

    def client_options(self, client_id: str, **options: Any) -> ClientOptions:
        """How a client of ours with the privileged identity connects here: the address,
        the identity (on a broker running the plugin), TLS files (on its TLS listener)."""
        return ClientOptions(client_id=client_id, host=self.host, port=self.port,
                             username=self.username, password=self.password,
                             tls_ca=self.ca, tls_cert=self.cert, tls_key=self.key, **options)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt://HOST:PORT`` (or ``mqtts://``); anything else raises
        `BrokerError`."""
        bad = BrokerError(f"bad broker URL {url!r}: expected mqtt://HOST:PORT")
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise bad from None
        extras = (parts.username, parts.password, parts.query, parts.fragment)
        if (
            parts.scheme not in ("mqtt", "mqtts")
            or not parts.hostname
            or port is None
            or port == 0
            or parts.path not in ("", "/")
            or any(extras)
        ):
            raise bad
        return cls(parts.hostname, port, tls=parts.scheme == "mqtts")


def plugin_path() -> Path | None:
    """The devicesim_aws plugin as built by the project's set-up (``make plugin``), or
    None when it was not built (no compiler or Mosquitto headers)."""
    path = Path(__file__).resolve().parent / "plugin" / PLUGIN_NAME
    return path if path.is_file() else None


def default_config_path() -> Path:
    """The project's ``mosquitto.conf``, shipped inside the package (in a checkout,
    ``fleet/mosquitto.conf`` is a symlink to the top-level file, the one source of truth)."""
    path = Path(__file__).resolve().parent / "mosquitto.conf"
    if not path.is_file():
        raise BrokerError(f"mosquitto.conf not found in the package ({path.parent}): "
                          "reinstall devicesim")
    return path


def probe(address: BrokerAddress, timeout: float = 2.0) -> int:
    """Send a minimal MQTT 3.1.1 CONNECT and return the CONNACK return code (0 = accepted).

    Raises `BrokerError` when the broker cannot be reached or does not answer with a CONNACK.
    """
    client_id = f"devicesim-probe-{os.getpid()}-{secrets.token_hex(4)}".encode()

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(2, "big") + data

    # Variable header: protocol name "MQTT", level 4 (3.1.1), flags clean session (and the
    # privileged identity's username and password, if the address has them), keepalive 10.
    flags, payload = 0x02, field(client_id)
    if address.username is not None and address.password is not None:
        flags |= 0xC0
        payload += field(address.username.encode()) + field(address.password.encode())
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x0a" + payload
    length, n = b"", len(body)
    while True:  # MQTT's variable-length "remaining length"
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            break
    connect = b"\x10" + length + body
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(
                socket.create_connection((address.host, address.port), timeout=timeout))
            if address.tls:
                context = ssl.create_default_context(cafile=address.ca)
                if address.cert is not None:
                    context.load_cert_chain(address.cert, address.key)
                sock = stack.enter_context(
                    context.wrap_socket(sock, server_hostname=address.host))
            sock.sendall(connect)
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    break
                connack += chunk
            if len(connack) < 4 or connack[0] != _MQTT_CONNACK or connack[1] != 2:
                raise BrokerError(f"no CONNACK from {address.url}: got {connack!r}")
            sock.sendall(b"\xe0\x00")  # DISCONNECT
            return connack[3]
    except OSError as exc:
        raise BrokerError(f"cannot reach broker at {address.url}: {exc}") from exc


def find_mosquitto(binary: str | os.PathLike[str] = "mosquitto") -> str:
    """Resolve the mosquitto executable: an explicit path, or a name on PATH or /usr/sbin."""
    name = os.fspath(binary)
    hint = "install it (apt-get install mosquitto) or pass --broker mqtt://HOST:PORT"
    if os.sep in name:
        if os.access(name, os.X_OK) and Path(name).is_file():
            return name
        raise BrokerError(f"mosquitto not found at {name}: {hint}")
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SEARCH_PATH_EXTRA])
    found = shutil.which(name, path=search)
    if found is None:
        raise BrokerError(f"{name} not found on PATH: {hint}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether a user can traverse every directory from / down to ``path``."""
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class EmbeddedBroker:
    """A ``mosquitto`` child process on a loopback port, with its own work dir.

    Layout of the work dir: ``mosquitto.conf`` (rendered), ``state/`` (persistence),
    ``mosquitto.log`` (broker log plus its stdout/stderr). The port is chosen on the first
    `start()` and kept, so `restart()` serves the same address and the same sessions.
    """

    def __init__(
        self,
        *,
        work_dir: str | os.PathLike[str] | None = None,
        config: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] = "mosquitto",
        port: int | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
        plugin: bool | None = None,
        secure: CertDir | None = None,
        presence: bool = False,
    ) -> None:
        """``plugin``: load the devicesim_aws plugin (True: required, a BrokerError if it
        was not built; None: if it was built; False: never). ``secure``: the secure profile,
        with this certificate directory (``fleet certs``): a TLS listener requiring client
        certificates, anonymous clients refused, devices admitted by the plugin from the
        principals file (it needs the plugin). ``presence``: the plugin publishes AWS IoT's
        lifecycle events (``$aws/events/presence/connected|disconnected/<client id>``) for
        every device that connects or goes (it needs the plugin)."""
        self._work_dir_arg = Path(work_dir) if work_dir is not None else None
        self._config = Path(config) if config is not None else None
        self._binary = binary
        self._fixed_port = port is not None
        self._port = port
        self._ready_timeout = ready_timeout
        self._work_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._plugin = plugin_path() if plugin is not False else None
        if plugin and self._plugin is None:
            raise BrokerError("the devicesim_aws plugin is not built: run make setup (it "
                              "needs gcc and Debian's mosquitto-dev and libmosquitto-dev)")
        if secure is not None and self._plugin is None:
            raise BrokerError("the secure profile needs the devicesim_aws plugin: run make "
                              "setup (it needs gcc and Debian's mosquitto-dev, "
                              "libmosquitto-dev and libssl-dev)")
        if presence and self._plugin is None:
            raise BrokerError("lifecycle events need the devicesim_aws plugin: run make setup "
                              "(it needs gcc and Debian's mosquitto-dev and libmosquitto-dev)")
        self._secret = secrets.token_urlsafe(18) if self._plugin is not None else None
        self._secure = secure
        self._presence = presence
        self._tls_port: int | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def address(self) -> BrokerAddress:
        if self._port is None:
            raise BrokerError("embedded broker has not been started")
        return BrokerAddress("127.0.0.1", self._port, self._secret)

    @property
    def aws_semantics(self) -> bool:
        """The broker runs the devicesim_aws plugin."""
        return self._secret is not None

    @property
    def tls_address(self) -> BrokerAddress | None:
        """The secure profile's TLS listener (``mqtts://``), or None without it; with the
        CA, and the certificate the broker made for our privileged clients (the jobs
        service, the recorder: every client of the secure profile speaks TLS)."""
        if self._tls_port is None:
            return None
        d = self.work_dir
        return BrokerAddress("127.0.0.1", self._tls_port, self._secret, tls=True,
                             ca=str(d / "ca.crt"), cert=str(d / "privileged.crt"),
                             key=str(d / "privileged.key"))

    @property
    def principals_path(self) -> Path:
        """The file the registry keeps and the plugin reads (secure profile)."""
        return self.work_dir / "principals.txt"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            raise BrokerError("embedded broker has not been started")
        return self._work_dir

    @property
    def log_path(self) -> Path:
        return self.work_dir / "mosquitto.log"

    @property
    def state_dir(self) -> Path:
        return self.work_dir / "state"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> BrokerAddress:
        """Start mosquitto; return once it answers an MQTT CONNECT with a CONNACK."""
        if self.running:
            raise BrokerError(f"embedded broker already running pid={self.pid}")
        binary = find_mosquitto(self._binary)
        template = (self._config or default_config_path()).read_text()
        self._prepare_work_dir()
        if self._secure is not None and self._tls_port is None:
            self._tls_port = free_port()
        # A port picked by us can be taken by someone else before mosquitto binds it: pick
        # another. A port given by the caller, or kept for restart(), is never changed.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            if self._port is None:
                self._port = free_port()
            try:
                self._launch(binary, template)
            except BrokerError as exc:
                if attempt < attempts and "Address already in use" in str(exc):
                    log.warning("broker port taken, retrying port=%d", self._port)
                    self._port = None
                    continue
                raise
            break
        self._fixed_port = True
        return self.address

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (mosquitto saves its state) and wait; SIGKILL if it does not exit."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL and wait: only the last autosave survives."""
        self._signal(signal.SIGKILL, STOP_TIMEOUT_S)

    def restart(self) -> BrokerAddress:
        """Stop if running, then start again on the same port with the same state."""
        if self.running:
            self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the work dir if this broker created it."""
        self.stop()
        if self._work_dir is not None and self._work_dir_arg is None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_for_autosave(self, timeout: float = 10.0) -> None:
        """Wait until mosquitto begins a save of its database after this call.

        Everything the broker acknowledged before the call is then on disk and survives
        `kill()`. The broker logs a line at the start of each save; we wait for a new one.
        """
        log_path = self.log_path
        offset = log_path.stat().st_size
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise BrokerError("embedded broker is not running: no autosave will come")
            with log_path.open("rb") as f:
                f.seek(offset)
                if _SAVE_LINE in f.read():
                    return
            time.sleep(0.05)
        raise BrokerError(f"no autosave within {timeout}s (log {log_path})")

    # -- internals ---------------------------------------------------------------------------

    def _prepare_work_dir(self) -> None:
        if self._work_dir is None:
            if self._work_dir_arg is not None:
                self._work_dir_arg.mkdir(parents=True, exist_ok=True)
                self._work_dir = self._work_dir_arg.resolve()
            else:
                self._work_dir = Path(tempfile.mkdtemp(prefix="devicesim-broker-"))
                self._work_dir.chmod(0o755)  # let the unprivileged broker user traverse it
        self.state_dir.mkdir(exist_ok=True)
        self.log_path.touch()

    def _broker_user(self) -> str:
        """The user mosquitto runs as when started as root; chown its files to it."""
        if os.geteuid() != 0:
            return BROKER_USER  # ignored by mosquitto when not root
        try:
            entry = pwd.getpwnam(BROKER_USER)
        except KeyError:
            log.info("no user %s: broker runs as root", BROKER_USER)
            return "root"
        if not _reachable_by(self.work_dir, entry.pw_uid, entry.pw_gid):
            log.info(
                "work dir unreachable by %s, broker runs as root work_dir=%s",
                BROKER_USER,
                self.work_dir,
            )
            return "root"
        for path in (self.state_dir, *self.state_dir.iterdir(), self.log_path):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return BROKER_USER

    def _launch(self, binary: str, template: str) -> None:
        assert self._port is not None
        conf_path = self.work_dir / "mosquitto.conf"
        conf_path.touch(mode=0o600)  # it holds the privileged identity's secret
        user = self._broker_user()  # (chowns the broker's files to it)
        conf_path.write_text(
            template.format(
                port=self._port,
                state_dir=self.state_dir,
                log_path=self.log_path,
                user=user,
                plugin=self._plugin_lines(),
                allow_anonymous="false" if self._secure is not None else "true",
                tls_listener=self._tls_lines(user),
            )
        )
        offset = self.log_path.stat().st_size
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [binary, "-c", str(conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        log.info(
            "broker starting pid=%d port=%d work_dir=%s", self._proc.pid, self._port, self.work_dir
        )
        self._wait_ready(self._proc, offset)
        log.info("broker ready pid=%d url=%s", self._proc.pid, self.address.url)

    def _plugin_lines(self) -> str:
        """The config lines that load the plugin (a copy in the work dir, which the broker's
        user can reach), or none."""
        if self._plugin is None:
            return "# devicesim_aws plugin not built: plain Mosquitto semantics"
        copy = self.work_dir / PLUGIN_NAME
        shutil.copyfile(self._plugin, copy)
        copy.chmod(0o644)
        lines = f"plugin {copy}\nplugin_opt_username {PRIVILEGED_USER}\n" \
            f"plugin_opt_secret {self._secret}"
        if self._presence:
            lines += "\nplugin_opt_presence true"
        if self._secure is not None:
            if not self.principals_path.exists():
                self.principals_path.write_text("")
                self.principals_path.chmod(0o644)
            lines += f"\nplugin_opt_principals {self.principals_path}"
        return lines

    def _tls_lines(self, user: str) -> str:
        """The secure profile's TLS listener, with copies of the CA and the broker's
        certificate and key in the work dir (where the broker's user can read them)."""
        if self._secure is None:
            return "# no secure profile: no TLS listener"
        d = self._secure
        if not (self.work_dir / "privileged.crt").exists():  # our own clients' certificate
            cert_pem, key_pem = Authority.load(d).issue("devicesim privileged client")
            write_file(self.work_dir / "privileged.key", key_pem, secret=True)
            write_file(self.work_dir / "privileged.crt", cert_pem)
        copies = {}
        for name, source in (("ca.crt", d.ca), ("server.crt", d.server),
                             ("server.key", d.server_key)):
            copy = self.work_dir / name
            shutil.copyfile(source, copy)
            copy.chmod(0o644 if name.endswith(".crt") else 0o600)
            copies[name] = copy
        if os.geteuid() == 0 and user != "root":
            entry = pwd.getpwnam(user)
            os.chown(copies["server.key"], entry.pw_uid, entry.pw_gid)
        return (f"listener {self._tls_port} 127.0.0.1\ncafile {copies['ca.crt']}\n"
                f"certfile {copies['server.crt']}\nkeyfile {copies['server.key']}\n"
                "require_certificate true")

    def _wait_ready(self, proc: subprocess.Popen[bytes], log_offset: int) -> None:
        deadline = time.monotonic() + self._ready_timeout
        last_error: BrokerError | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                raise BrokerError(
                    f"mosquitto exited with code {proc.returncode} during startup "
                    f"(port {self._port}, log {self.log_path}):\n{self._log_tail(log_offset)}"
                )
            # Our own mosquitto must say it is running (every listener bound): a CONNACK alone
            # may come from another broker that took the port we picked (two brokers
            # starting at once), ours then failing with "Address already in use".
            if not self._says_running(log_offset):
                last_error = BrokerError("not running yet")
            else:
                try:
                    probe(self.address, timeout=1.0)
                    return
                except BrokerError as exc:
                    last_error = exc
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)  # a short pause that also notices an early exit
        proc.kill()
        proc.wait()
        self._proc = None
        raise BrokerError(
            f"mosquitto did not answer CONNECT within {self._ready_timeout}s ({last_error}); "
            f"log {self.log_path}:\n{self._log_tail(log_offset)}"
        )

    def _signal(self, signum: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signum)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("broker ignored %s, killing pid=%d", signum.name, proc.pid)
                proc.kill()
                proc.wait()
        log.info(
            "broker stopped pid=%d signal=%s returncode=%s", proc.pid, signum.name, proc.returncode
        )

    def _says_running(self, offset: int) -> bool:
        """Has this broker's log, since ``offset``, the line mosquitto writes once every
        listener is bound?"""
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return re.search(rb"mosquitto version \S+ running", f.read()) is not None
        except OSError:
            return False

    def _log_tail(self, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(log is empty)"


@contextlib.contextmanager
def container_broker(image: str = "eclipse-mosquitto:2.0.11") -> Iterator[BrokerAddress]:
    """A Mosquitto container (anonymous, port 1883 mapped), where testcontainers and a
    Docker engine exist; otherwise `BrokerError` says which is missing."""
    try:
        import docker
        from testcontainers.core.container import DockerContainer
    except ImportError:
        raise BrokerError(
            "testcontainers is not installed: pip install 'devicesim[docker]'"
        ) from None
    try:
        docker.from_env().ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise BrokerError(f"no Docker engine reachable: {exc}") from None
    container = DockerContainer(image).with_command("mosquitto -c /mosquitto-no-auth.conf")
    with container.with_exposed_ports(1883) as running:
        address = BrokerAddress(
            running.get_container_host_ip(), int(running.get_exposed_port(1883))
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                probe(address)
                break
            except BrokerError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield address
