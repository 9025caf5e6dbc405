"""The AWS IoT control plane (service ``iot``, rest-json) over HTTP, around the jobs store.

``routes`` (method + path -> operation, from the botocore model), ``handlers`` (one
function per operation), ``inputs`` / ``shapes`` (the model's input and output shapes) and
``server`` (aiohttp app, error translation, :class:`ControlPlane`).
"""

from fleet.service.controlplane.server import ControlPlane, OnChange, make_app

__all__ = ["ControlPlane", "OnChange", "make_app"]
