# esp32emu -- every target works from a fresh clone (Debian/Ubuntu: see README).
#   make run    set up, then run an emulated fleet against a private Mosquitto
#   make test   the test suite (what CI runs)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
NPM    ?= npm
AMQTT_VENV    := .venv-amqtt
AMQTT_VERSION := 0.12.1

DEVICES  ?= 20
DURATION ?= 30
RUN_DURATION ?= 600
FLEET_ARGS ?=
DASHBOARD_PORT ?= 8080

NODE_INPUTS := $(wildcard package.json package-lock.json)

.PHONY: setup test run fleet lint bench bench-dashboard clean help flash

help:
	@echo "make setup   create $(VENV) (pip install -e '.[test]'), node_modules (npm ci) and $(AMQTT_VENV) (amqtt, a broker the conformance tests check)"
	@echo "make test    run the tests: $(PY) -m pytest -q"
	@echo "make run     setup, then: esp32emu fleet --devices $(DEVICES) --duration $(RUN_DURATION) --dashboard $(DASHBOARD_PORT) (prints the page's URL; Ctrl-C ends it)"
	@echo "make fleet   the same fleet without the setup step (DEVICES=, DURATION=, FLEET_ARGS=)"
	@echo "make flash   PORT=/dev/ttyUSB0 ID=dev-00001 [BROKER=mqtt://host:port] [FLASH_ARGS=--mpy]: deploy to a real board"
	@echo "make bench   fleet scale benchmark vs paho thread-per-client (BENCH_ARGS=--quick)"
	@echo "make bench-dashboard  boards -> backend -> Chromium: latency, bytes per event, CPU, fps (BENCH_ARGS=--quick)"
	@echo "make lint    MicroPython gates on firmware/: mpy-cross, mypy vs ESP32 stubs, static checks"
	@echo "make clean   remove the venv, node_modules and build leftovers"

setup: $(VENV)/.setup-done node_modules/.setup-done $(AMQTT_VENV)/.setup-done

# amqtt (a second broker for `esp32emu conformance`'s pinned tables, tests/other_brokers.py)
# in a venv of its own: its pins (websockets 15) clash with the dashboard's.
$(AMQTT_VENV)/.setup-done:
	test -x $(AMQTT_VENV)/bin/python || $(PYTHON) -m venv $(AMQTT_VENV)
	$(AMQTT_VENV)/bin/python -m pip install --quiet amqtt==$(AMQTT_VERSION)
	touch $@

$(VENV)/.setup-done: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

node_modules/.setup-done: $(NODE_INPUTS)
	@if [ -f package-lock.json ]; then \
		echo "$(NPM) ci"; $(NPM) ci --no-audit --no-fund; \
	elif [ -f package.json ]; then \
		echo "$(NPM) install (no package-lock.json)"; $(NPM) install --no-audit --no-fund; \
	else \
		echo "no package.json: skipping npm (MicroPython VM tests will not run)"; \
	fi
	mkdir -p node_modules && touch $@

# pytest exits 5 when it collected no tests: that is a failure, say so.
test: setup
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

# The fleet with the dashboard beside it: its URL (with the token) is printed next to the live view.
run: setup
	$(VENV)/bin/esp32emu fleet --devices $(DEVICES) --duration $(RUN_DURATION) --dashboard $(DASHBOARD_PORT) $(FLEET_ARGS)

fleet:
	$(VENV)/bin/esp32emu fleet --devices $(DEVICES) --duration $(DURATION) $(FLEET_ARGS)

# WiFi comes from ESP32EMU_WIFI_SSID / ESP32EMU_WIFI_PASSWORD (or the board's config.json).
flash: setup
	@test -n "$(PORT)" -a -n "$(ID)" || { echo "usage: make flash PORT=/dev/ttyUSB0 ID=dev-00001 [BROKER=mqtt://host:port]" >&2; exit 2; }
	$(VENV)/bin/esp32emu flash --port $(PORT) --id $(ID) $(if $(BROKER),--broker $(BROKER)) $(FLASH_ARGS)

lint: setup
	$(PY) tools/check_firmware.py firmware

# Fleet scale vs a paho thread-per-client simulator; prints a table (~15 min; BENCH_ARGS=--quick ~6 min).
bench: setup
	$(PY) bench/fleet_bench.py $(BENCH_ARGS)

# N boards -> Mosquitto -> dashboard backend -> headless Chromium; prints a table (BENCH_ARGS=--quick: small fleet).
bench-dashboard: setup
	$(PY) bench/dashboard_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(AMQTT_VENV) node_modules build dist *.egg-info .pytest_cache .hypothesis .mypy_cache .esp32emu
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.mpy' -delete
