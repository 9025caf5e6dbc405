"""The emulated AWS IoT Jobs service: everything ``fleet up`` runs besides the broker.

Pure core (synchronous, no network I/O; the store uses SQLite):

- ``errors`` (one class per AWS error code), ``settings`` (the spec's undocumented corners
  as configuration), ``lifecycle`` (transition tables), ``records``, ``validation`` and
  ``store`` (the jobs state and its rules);
- ``dataplane``: the MQTT data plane as one pure ``handle(topic, payload) -> publishes``.

Shells around it: ``controlplane`` (the AWS IoT REST API over aiohttp), ``shell`` (one
asyncio task owning the store, the MQTT client, timers) and ``up`` (``fleet up``).

May import: the wire contract (``devicesim.wire``), the MQTT shell (``devicesim.mqtt``) and
the broker provider (``fleet.broker``). Never the drill, nor the checker: the service must
not know how it is being judged.
"""
