# devicesim entry points. On a fresh machine: `make drill` (the main job) and `make test`.
# Both set up first: venv + package with test extras + Mosquitto (apt-get, only if missing).
# CI runs .ci/run, which is `make test`.

VENV   ?= .venv
PYTHON ?= python3
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP  := $(VENV)/.installed

.PHONY: setup test drill bench mosquitto

setup: $(STAMP) mosquitto

$(STAMP): pyproject.toml
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $(STAMP)

# Mosquitto is the embedded broker (and its C clients the benchmark's reference); install
# them only when missing.
mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ] \
	    || ! command -v mosquitto_pub >/dev/null 2>&1; then \
		echo "installing mosquitto"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto mosquitto-clients; \
	fi

test: setup
	$(VENV)/bin/pytest -q

# Extra arguments: make drill ARGS="--devices 1000 --seed 7"
drill: setup
	$(VENV)/bin/fleet drill $(ARGS)

bench: setup
	$(VENV)/bin/python -m bench $(ARGS)
