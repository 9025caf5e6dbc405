"""``python -m bench``: devicesim figures measured side by side with a C reference.

Every figure is measured in the same run as the reference it is compared to (PERF.md: the
machine is shared and noisy, so only ratios measured in one run mean something). Phases,
each on a fresh embedded Mosquitto with the project's ``mosquitto.conf``:

1. ``reference``  C clients: ``mosquitto_pub -l`` -> ``mosquitto_sub`` raw QoS 1 routing,
   and (when gcc and libmosquitto-dev are there) ``bench/rr.c``: QoS 1 request/response
   with D devices + 1 service in one process, plus its connect/memory/idle figures.
2. ``jobs``       the jobs service in one process, a closed-loop load generator of raw
   ``devicesim.mqtt`` clients in another (UpdateJobExecution, DescribeJobExecution).
3. ``fleet``      ``devicesim.engine.Fleet`` with N devices in one process, the service in
   another: connect + subscribe, memory and idle CPU per device, one job to all N.
4. ``latency``    force-delete detection latency at N devices (deletion paced as the
   service's default settings, then all at once).

Modules: :mod:`bench.runner` (the phases), :mod:`bench.reference` (C clients),
:mod:`bench.service`, :mod:`bench.loadgen` and :mod:`bench.fleetproc` (child processes
driven over :mod:`bench.control`), :mod:`bench.recorder`, :mod:`bench.report` (figures,
table, JSON), :mod:`bench.profiling` (py-spy), :mod:`bench.procinfo` (/proc readers).
"""
