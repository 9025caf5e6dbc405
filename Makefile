# devicesim developer entry points. CI runs .ci/run, which is `make setup test`.

VENV   ?= .venv
PYTHON ?= python3
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup test drill

# Create the venv if missing, install the project with its test extras, and install
# Mosquitto (the embedded broker) only when neither PATH nor /usr/sbin has it.
setup:
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test]'
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto; \
	fi

test:
	$(VENV)/bin/pytest -q

# Extra arguments: make drill ARGS="--devices 100"
drill:
	$(VENV)/bin/fleet drill $(ARGS)
