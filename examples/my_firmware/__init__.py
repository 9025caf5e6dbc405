"""An example firmware team's device logic, plugged into devicesim as a behaviour.

Use it as ``my_firmware.behaviour:CautiousDevice`` with this ``examples`` folder on the
Python path (see ``examples/README.md``).
"""
