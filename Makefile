# Entry points behind README.md's two commands: `make demo` and `make test`.
# Everything a target needs is installed by the target itself (Debian, run as root or with sudo).
SHELL := /bin/bash
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test lint test-python test-molecule test-demo bench bench-xdp bpf clean

demo: ## provision a local systemd container with site.yml and show it serving time
	bash scripts/demo

test: lint test-python test-molecule test-demo ## every test: lint, unit + integration, molecule, the demo

lint:
	bash scripts/setup-venv test,lint,ansible
	ruff check .
	mypy
	ansible-lint --offline --profile production site.yml playbooks roles molecule

test-python:
	bash scripts/install-chrony
	bash scripts/install-prometheus
	bash scripts/install-bpf-toolchain
	bash scripts/build-bpf
	bash scripts/setup-venv test,lint,ansible
	pytest -q -ra tests

test-molecule:
	bash scripts/molecule-test

test-demo: ## `make demo` as a newcomer runs it, in a container of its own, removed afterwards
	DEMO_CONTAINER=pyresponder-demo-test bash scripts/demo; rc=$$?; \
	    docker rm -f pyresponder-demo-test >/dev/null 2>&1; exit $$rc

bench: ## pyresponder vs chronyd, side by side; prints the ratios
	bash scripts/install-chrony
	bash scripts/setup-venv test,bench
	python bench/run.py

bpf: ## compile the XDP program (needs clang: scripts/install-bpf-toolchain)
	bash scripts/build-bpf

bench-xdp: ## the same plus the XDP fast path, all on a veth pair in namespaces (root)
	bash scripts/install-chrony
	bash scripts/install-bpf-toolchain
	bash scripts/build-bpf
	bash scripts/setup-venv test,bench
	python bench/run.py --xdp

clean:
	rm -f src/pyresponder/bpf/*.o
	rm -rf $(VENV) build dist src/*.egg-info bench/out
