"""The broker provider against a real Mosquitto: readiness, faults, persistence, errors."""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet.broker import BrokerAddress, BrokerError, EmbeddedBroker, container_broker, probe

TIMEOUT_S = 10.0


class PahoClient:
    """One paho connection whose callbacks set events, so tests wait on events, not sleeps."""

    def __init__(self, address: BrokerAddress, client_id: str, *, clean_session: bool,
                 privileged: bool = False) -> None:
        self.address = address
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
        )
        if privileged and address.username is not None:  # may touch every thing's topics
            self.client.username_pw_set(address.username, address.password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        assert not reason.is_failure, reason
        self.session_present = flags.session_present
        self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self.disconnected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, _codes: Any, _p: Any) -> None:
        self.subscribed.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def connect(self) -> None:
        self.client.connect(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT_S), "no CONNACK"

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(TIMEOUT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), "no PUBACK"

    def receive(self) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"no message within {TIMEOUT_S}s")

    def close(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()
            assert self.disconnected.wait(TIMEOUT_S), "no disconnect"
        self.client.loop_stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.mark.broker
def test_session_broker_is_private_and_round_trips_qos1(broker: EmbeddedBroker) -> None:
    assert broker.running
    assert broker.address.host == "127.0.0.1"
    assert broker.address.port != 1883
    assert probe(broker.address) == 0

    client_id = unique("rt")
    topic = f"devicesim/{client_id}/test"  # a device's own topic: allowed with the plugin
    client = PahoClient(broker.address, client_id, clean_session=True)
    client.connect()
    try:
        client.subscribe(topic)
        client.publish(topic, b"hello")
        message = client.receive()
        assert (message.topic, message.payload, message.qos) == (topic, b"hello", 1)
    finally:
        client.close()


@pytest.mark.broker
def test_sigkill_and_restart_keep_a_persistent_session_and_its_queued_message() -> None:
    device_id = unique("thing")
    topic = f"$aws/things/{device_id}/jobs/notify-next"
    with EmbeddedBroker() as broker:
        address, first_pid = broker.address, broker.pid

        device = PahoClient(address, device_id, clean_session=False)
        device.connect()
        assert device.session_present is False
        device.subscribe(topic)
        device.close()

        publisher = PahoClient(address, unique("publisher"), clean_session=True,
                               privileged=True)
        publisher.connect()
        publisher.publish(topic, b"queued while offline")
        publisher.close()

        # after SIGKILL only the last autosave survives; wait for two save lines, as drills
        # do: under load the first may be the late log line of a save begun before PUBACK
        for _ in range(2):
            broker.wait_for_autosave()
        broker.kill()
        assert not broker.running
        assert broker.pid is None

        assert broker.restart() == address
        assert broker.pid not in (None, first_pid)

        # Same client id, clean_session=False, no new SUBSCRIBE. A fresh paho client: paho
        # leaks its wake-up socketpair when one client runs loop_start() twice.
        device = PahoClient(address, device_id, clean_session=False)
        device.connect()
        try:
            assert device.session_present is True
            message = device.receive()
            assert (message.topic, message.payload) == (topic, b"queued while offline")
        finally:
            device.close()


@pytest.mark.broker
def test_stop_leaves_no_process(tmp_path: Path) -> None:
    broker = EmbeddedBroker(work_dir=tmp_path)
    address = broker.start()
    pid = broker.pid
    assert pid is not None
    assert (tmp_path / "mosquitto.conf").is_file()

    broker.stop()

    assert not broker.running
    assert broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(BrokerError, match="cannot reach broker"):
        probe(address, timeout=1.0)
    broker.stop()  # idempotent
    assert "terminating" in (tmp_path / "mosquitto.log").read_text()


@pytest.mark.broker
def test_early_exit_reports_the_log_tail() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = EmbeddedBroker(port=taken.getsockname()[1])
        try:
            with pytest.raises(BrokerError, match="exited with code") as info:
                broker.start()
        finally:
            broker.close()
    assert "Address already in use" in str(info.value)
    assert not broker.running


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", BrokerAddress("127.0.0.1", 1883)),
        ("mqtt://broker.example:18830/", BrokerAddress("broker.example", 18830)),
        ("mqtt://[::1]:1883", BrokerAddress("::1", 1883)),
        ("mqtts://127.0.0.1:8883", BrokerAddress("127.0.0.1", 8883, tls=True)),
    ],
)
def test_parse_accepts_mqtt_urls(url: str, expected: BrokerAddress) -> None:
    address = BrokerAddress.parse(url)
    assert address == expected
    assert BrokerAddress.parse(address.url) == address


@pytest.mark.parametrize(
    "url",
    [
        "",
        "127.0.0.1:1883",
        "tcp://127.0.0.1:1883",
        "mqtt://127.0.0.1",
        "mqtt://:1883",
        "mqtt://127.0.0.1:0",
        "mqtt://127.0.0.1:99999",
        "mqtt://127.0.0.1:port",
        "mqtt://user:pw@127.0.0.1:1883",
        "mqtt://127.0.0.1:1883/topic",
    ],
)
def test_parse_rejects_bad_urls_in_one_line(url: str) -> None:
    with pytest.raises(BrokerError) as info:
        BrokerAddress.parse(url)
    message = str(info.value)
    assert "\n" not in message
    assert repr(url) in message
    assert "mqtt://HOST:PORT" in message


def test_broker_error_is_a_value_error() -> None:
    assert issubclass(BrokerError, ValueError)


@pytest.mark.parametrize(
    ("binary", "expected"),
    [
        ("mosquitto-not-installed", "mosquitto-not-installed not found on PATH: "),
        ("/nonexistent/sbin/mosquitto", "mosquitto not found at /nonexistent/sbin/mosquitto: "),
    ],
)
def test_missing_mosquitto_is_a_one_line_error(binary: str, expected: str) -> None:
    broker = EmbeddedBroker(binary=binary)
    with pytest.raises(BrokerError) as info:
        broker.start()
    message = str(info.value)
    assert message == (
        expected + "install it (apt-get install mosquitto) or pass --broker mqtt://HOST:PORT"
    )
    assert not broker.running


def test_container_broker_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "testcontainers.core.container", None)
    with pytest.raises(BrokerError, match="testcontainers is not installed"), container_broker():
        pass


def test_a_broker_whose_port_another_took_does_not_pass_for_ready(tmp_path: Path) -> None:
    """Two brokers starting at once can pick the same free port: the one that loses the
    bind must fail (and, with a port of its own choosing, retry), not take the other's
    CONNACK for its own readiness (its clients then got 'Not authorized' from a broker
    with another secret)."""
    with EmbeddedBroker(work_dir=tmp_path / "a") as first:
        second = EmbeddedBroker(work_dir=tmp_path / "b", port=first.address.port)
        with pytest.raises(BrokerError, match="Address already in use"):
            second.start()
        assert first.running
