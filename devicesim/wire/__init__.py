"""The wire contract shared by devices (``devicesim``) and the cloud side (``fleet``).

Topics, status and error enums, and one frozen dataclass per AWS IoT Jobs MQTT message.
Nothing here does I/O. camelCase exists only inside ``to_json`` / ``from_json``.
"""
