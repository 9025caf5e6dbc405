"""fleet, the cloud side of devicesim: everything that is not a device.

- ``service``: the emulated AWS IoT Jobs service (store, MQTT data plane, HTTP control
  plane, ``fleet up``);
- ``drill``: runs a drill (spec, runner, controller, recorder, ``fleet drill``);
- ``checker``: judges a recorded history, a pure function of it;
- ``history``: the history format, the contract between whoever records and the checker;
- ``broker``: the Mosquitto provider (embedded broker from the packaged ``mosquitto.conf``);
- ``awscli``: ``fleet <aws iot job command>`` against the control plane;
- ``cli``: the ``fleet`` command.
"""
