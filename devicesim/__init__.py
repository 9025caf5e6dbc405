"""devicesim, the device side: simulated devices that speak the AWS IoT Jobs MQTT protocol.

- ``wire``: the contract shared with the cloud side (topics, messages, statuses, device
  events);
- ``agent`` (a sans-IO state machine), ``nvm``, ``documents``, ``behaviours``: one device,
  pure;
- ``mqtt`` (paho driven from asyncio), ``engine`` (a fleet of devices), ``sdk`` (the same
  agent over the AWS IoT Device SDK), ``cli`` (``devicesim run``): the shells.

Never imports ``fleet`` (the cloud side).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("devicesim")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
