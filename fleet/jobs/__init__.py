"""The emulated AWS IoT Jobs service: errors, settings, lifecycle tables and the store.

Everything in this package is synchronous and free of network I/O (the store uses SQLite);
the MQTT data plane and the HTTP control plane are thin shells around it.
"""
