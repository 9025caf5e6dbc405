# devicesim entry points. On a fresh machine: `make drill` (the main job) and `make test`.
# Both set up first: venv + package with test extras + Mosquitto (apt-get, only if missing).
# CI runs .ci/run, which is `make test`.

VENV   ?= .venv
PYTHON ?= python3
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP  := $(VENV)/.installed

.PHONY: setup test drill bench mosquitto plugin agent browser

setup: $(STAMP) mosquitto plugin agent browser

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

# The devicesim_aws broker plugin (AWS IoT Core's broker semantics, see
# fleet/plugin/devicesim_aws.c): built with gcc and Debian's Mosquitto and OpenSSL headers,
# installed with apt-get when missing. Without them the embedded broker runs without it (plain
# Mosquitto semantics; every drill report says which AWS semantics are then missing).
PLUGIN := fleet/plugin/devicesim_aws.so

plugin: $(PLUGIN)

$(PLUGIN): fleet/plugin/devicesim_aws.c
	@if ! command -v gcc >/dev/null 2>&1 || [ ! -f /usr/include/mosquitto_broker.h ] \
	    || [ ! -f /usr/include/mosquitto.h ] || [ ! -f /usr/include/openssl/x509.h ]; then \
		echo "installing gcc and the Mosquitto and OpenSSL headers"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y gcc libc6-dev \
			mosquitto-dev libmosquitto-dev libssl-dev || true; \
	fi
	@if command -v gcc >/dev/null 2>&1 && [ -f /usr/include/mosquitto_broker.h ] \
	    && [ -f /usr/include/openssl/x509.h ]; then \
		gcc -shared -fPIC -O2 -std=gnu11 -Wall -Wextra -Werror -o $@ $< -lcrypto; \
		echo "built $@"; \
	else \
		echo "devicesim_aws plugin NOT built (no gcc or Mosquitto headers): the embedded" \
		     "broker runs with plain Mosquitto semantics"; \
	fi

# The external C device agent (examples/external-device/agent.c: AWS IoT Jobs sample style,
# libmosquitto + cJSON), built with gcc and Debian's libmosquitto and cJSON headers, installed
# with apt-get when missing. Without them setup goes on without it.
AGENT := examples/external-device/agent

agent: $(AGENT)

$(AGENT): examples/external-device/agent.c
	@if ! command -v gcc >/dev/null 2>&1 || [ ! -f /usr/include/mosquitto.h ] \
	    || [ ! -f /usr/include/cjson/cJSON.h ]; then \
		echo "installing gcc and the libmosquitto and cJSON headers"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y gcc libc6-dev \
			libmosquitto-dev libcjson-dev || true; \
	fi
	@if command -v gcc >/dev/null 2>&1 && [ -f /usr/include/mosquitto.h ] \
	    && [ -f /usr/include/cjson/cJSON.h ]; then \
		gcc -O2 -Wall -Wextra -Werror -std=gnu11 -o $@ $< -lmosquitto -lcjson; \
		echo "built $@"; \
	else \
		echo "external device agent NOT built (no gcc or libmosquitto / cJSON headers):" \
		     "examples/external-device cannot be run"; \
	fi

# Headless Chromium (Debian's chromium), for the report page's browser test
# (tests/test_report.py). Without it that test is skipped, saying why.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing chromium (headless, for the report page's test)"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || true; \
	fi

test: setup
	$(VENV)/bin/pytest -q

# Extra arguments: make drill ARGS="--devices 1000 --seed 7"
drill: setup
	$(VENV)/bin/fleet drill $(ARGS)

bench: setup
	$(VENV)/bin/python -m bench $(ARGS)
