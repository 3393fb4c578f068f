# The README's two commands are `make lab` (added with the lab) and `make test`.
# Both set up everything they need first (scripts/setup.sh is idempotent).
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST := $(PY) -m pytest

.PHONY: setup lab test test-unit test-host test-kernel bench lint

setup:
	bash scripts/setup.sh

# The lab: two gateways with a real ESP tunnel and traffic, then the console on gw-west.
# On a kernel without ESP it runs inside a VM (gateway lab up says so).
lab: setup
	.venv/bin/gateway lab up

# Every layer in one pytest session: one summary; kernel tests run in a VM when the
# host kernel has no ESP (tests/vmplugin.py).
test: setup
	$(PYTEST) tests/unit tests/host tests/kernel

test-unit: setup
	$(PYTEST) tests/unit

test-host: setup
	$(PYTEST) tests/host

test-kernel: setup
	$(PYTEST) tests/kernel

bench: setup
	$(PY) bench/run.py

lint: setup
	.venv/bin/ruff check gateway ike bpf ui tests bench
	.venv/bin/mypy gateway ike bpf ui
