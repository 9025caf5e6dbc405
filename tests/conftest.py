"""Shared pytest fixtures. Keep each group under its own heading."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet.broker import BrokerAddress, EmbeddedBroker

#: pytester runs the pytest plugin's own tests (test_pytest_plugin.py)
pytest_plugins = ("pytester",)

# ---------------------------------------------------------------------------------------------
# Broker: one real Mosquitto per test session, on a free loopback port (never the system
# broker on 1883). Tests that use it are marked @pytest.mark.broker. Tests that kill or
# restart a broker start their own EmbeddedBroker instead of disturbing this one.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as embedded:
        print(
            f"embedded mosquitto {embedded.address.url} pid={embedded.pid} log={embedded.log_path}"
        )
        yield embedded


@pytest.fixture(scope="session")
def broker_address(broker: EmbeddedBroker) -> BrokerAddress:
    return broker.address
