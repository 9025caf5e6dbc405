"""The network proxy (fleet/drill/proxy.py): client ids from real CONNECT packets, and each
fault as real MQTT clients (aiomqtt) see it through a real Mosquitto."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.broker import EmbeddedBroker
from fleet.drill.proxy import Fault, Proxy, ProxyError, ProxyProcess, connect_client_id

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def connect_packet(client_id: str, *, level: int = 4, props: bytes = b"") -> bytes:
    body = b"\x00\x04MQTT" + bytes([level, 0x02, 0x00, 0x3C])
    if level == 5:
        body += bytes([len(props)]) + props
    raw = client_id.encode()
    body += len(raw).to_bytes(2, "big") + raw
    length, encoded = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return b"\x10" + encoded + body


@pytest.mark.parametrize("level", [4, 5])
def test_client_id_of_a_connect_packet_whole_or_in_pieces(level: int) -> None:
    packet = connect_packet("dev-0042", level=level,
                            props=b"\x11\x00\x00\x0e\x10" if level == 5 else b"")
    assert connect_client_id(packet) == "dev-0042"
    assert connect_client_id(packet + b"\x30\x00") == "dev-0042"  # the next packet behind
    for cut in range(len(packet)):
        assert connect_client_id(packet[:cut]) is None  # not all of it yet


def test_a_long_client_id_needs_a_multibyte_length() -> None:
    name = "x" * 200
    assert connect_client_id(connect_packet(name)) == name


@pytest.mark.parametrize("data", [b"\x30\x02\x00\x00", b"\x82\x05", b"GET / HTTP/1.1\r\n"])
def test_a_first_packet_that_is_not_connect_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not CONNECT"):
        connect_client_id(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_give_a_client_id_none_or_value_error(data: bytes) -> None:
    try:
        result = connect_client_id(b"\x10" + data)
    except ValueError:
        return
    assert result is None or isinstance(result, str)


def test_a_fault_needs_its_parameter() -> None:
    with pytest.raises(ValueError, match="delay: expected seconds"):
        Fault("delay")
    with pytest.raises(ValueError, match="throttle: expected rate"):
        Fault("throttle", rate=0)
    with pytest.raises(ValueError, match="unknown fault 'flood'"):
        Fault("flood")


# -- through a running proxy ----------------------------------------------------------------


@pytest.fixture
async def proxy(broker: EmbeddedBroker) -> AsyncIterator[tuple[Proxy, int]]:
    p = Proxy((broker.address.host, broker.address.port))
    port = await p.start()
    yield p, port
    await p.close()


def via(port: int, name: str,
        protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=name, protocol=protocol, timeout=2)


def privileged(broker: EmbeddedBroker) -> aiomqtt.Client:
    """A client of ours straight to the broker (it may publish to any device's topics)."""
    a = broker.address
    return aiomqtt.Client(a.host, a.port, username=a.username, password=a.password, timeout=2)


async def next_message(client: aiomqtt.Client, seconds: float) -> aiomqtt.Message:
    async with asyncio.timeout(seconds):
        async for message in client.messages:
            return message
    raise AssertionError("unreachable")


@pytest.mark.parametrize("protocol", [aiomqtt.ProtocolVersion.V311, aiomqtt.ProtocolVersion.V5])
async def test_messages_flow_through_and_the_proxy_knows_the_client(
        proxy: tuple[Proxy, int], broker: EmbeddedBroker,
        protocol: aiomqtt.ProtocolVersion) -> None:
    p, port = proxy
    name = f"through-{protocol}"
    async with via(port, name, protocol) as device:
        assert name in p.links
        await device.subscribe(f"devicesim/{name}/flow")
        async with privileged(broker) as direct:
            await direct.publish(f"devicesim/{name}/flow", b"hello", qos=1)
        assert (await next_message(device, 5)).payload == b"hello"


async def test_cut_resets_the_connection_and_refuses_reconnects_until_healed(
        proxy: tuple[Proxy, int]) -> None:
    p, port = proxy
    async with via(port, "cut-me") as device:
        await device.subscribe("devicesim/cut-me/x")
        assert p.apply(Fault("cut"), ["cut-me", "someone-else"]) == 1
        assert "cut-me" not in p.links  # reset: the link is gone at once
        with pytest.raises(aiomqtt.MqttError):
            await next_message(device, 5)
    with pytest.raises(aiomqtt.MqttError):
        async with via(port, "cut-me"):
            pass
    assert p.stats["refused"] >= 1
    async with via(port, "not-cut"):  # others are not affected
        pass
    assert p.heal(["cut-me"]) == (0, 0)
    async with via(port, "cut-me"):
        pass


async def test_blackhole_holds_everything_until_the_heal(proxy: tuple[Proxy, int],
                                                         broker: EmbeddedBroker) -> None:
    p, port = proxy
    async with via(port, "hole") as device, \
            privileged(broker) as direct:
        await device.subscribe("devicesim/hole/x")
        assert p.apply(Fault("blackhole"), ["hole"]) == 1
        await direct.publish("devicesim/hole/x", b"held", qos=1)
        with pytest.raises(TimeoutError):  # nothing moves while it lasts
            await next_message(device, 0.5)
        released, connections = p.heal(None)
        assert connections == 1
        assert released > len(b"held")
        assert (await next_message(device, 5)).payload == b"held"


async def test_delay_holds_each_message_back(proxy: tuple[Proxy, int]) -> None:
    p, port = proxy
    async with via(port, "slow") as device:
        await device.subscribe("devicesim/slow/x")
        p.apply(Fault("delay", seconds=0.3), ["slow"])
        began = time.monotonic()
        await device.publish("devicesim/slow/x", b"echo", qos=0)  # out through the proxy and back
        assert (await next_message(device, 5)).payload == b"echo"
        assert time.monotonic() - began >= 0.6  # 0.3 s each way


async def test_throttle_limits_the_rate(proxy: tuple[Proxy, int],
                                        broker: EmbeddedBroker) -> None:
    p, port = proxy
    async with via(port, "thin") as device, \
            privileged(broker) as direct:
        await device.subscribe("devicesim/thin/x")
        p.apply(Fault("throttle", rate=8_000), ["thin"])
        began = time.monotonic()
        for _ in range(4):
            await direct.publish("devicesim/thin/x", b"x" * 2_000, qos=0)
        for _ in range(4):
            await next_message(device, 10)
        assert time.monotonic() - began >= 0.75  # 8 KB at 8 KB/s (the first chunk is free)


# -- the proxy as the drill runs it ----------------------------------------------------------


async def test_the_proxy_process_answers_commands_and_refuses_bad_ones(
        broker: EmbeddedBroker) -> None:
    process = ProxyProcess((broker.address.host, broker.address.port))
    exits: list[int] = []
    port = await process.start(on_exit=exits.append)
    try:
        async with via(port, "proc-device"):
            answer = await process.command(fault="cut", things=["proc-device"])
            assert answer["connections"] == 1
        with pytest.raises(ProxyError, match="delay: expected seconds"):
            await process.command(fault="delay", things=["x"])
        with pytest.raises(ProxyError, match="expected a list"):
            await process.command(fault="cut", things="proc-device")
        healed = await process.command(heal=None)
        assert healed["connections"] == 0
        stats = (await process.command(stats=True))["stats"]
        assert stats["fault cut"] == 1
        assert stats["connections"] >= 1
    finally:
        await process.close()
    assert exits == []  # closed, not crashed


async def test_a_proxy_process_that_dies_is_reported(broker: EmbeddedBroker) -> None:
    process = ProxyProcess((broker.address.host, broker.address.port))
    died = asyncio.get_running_loop().create_future()
    await process.start(on_exit=died.set_result)
    assert process._proc is not None
    os.kill(process._proc.pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        assert await died == -signal.SIGKILL
    await process.close()
