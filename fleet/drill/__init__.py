"""Drills: a schedule of rollouts and faults over a fleet, recorded, checked, reported.

- ``spec``: drill files (TOML) and the built-in drills in ``builtin/``, validated with
  one-line errors;
- ``runner``: wires broker, jobs service, recorder, fleet and controller for one run;
- ``controller``: the nemesis, calling the control plane through boto3 only (the same code
  drives real AWS IoT), every call recorded as invoke / ok / fail;
- ``recorder``: turns what it hears on the broker into history operations;
- ``progress``: the live view the schedule's ``when`` conditions wait on;
- ``cli``: ``fleet drill`` and ``fleet check``.

May import everything: the drill is where the parts meet. The checker (``fleet.checker``)
sits beside it and reads only the history (``devicesim.wire.history``) and the wire contract.
"""
