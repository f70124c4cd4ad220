# Portcullis: the two commands a new machine needs are `make run` and `make test`.
# Both install what is missing first (apt packages, and MCP test peers into .peers/).

SHELL := /bin/bash
CARGO ?= cargo
POLICY ?= policy/default.toml
PEERS := $(CURDIR)/.peers
export PATH := $(PEERS)/venv/bin:$(HOME)/.cargo/bin:$(PATH)

.PHONY: run test deps peers build lint fmt conformance python-tests rust-tests docker-images dockerd-stop clean bench

## make run: build and start the gateway on $(POLICY) (default: policy/default.toml).
run: deps
	$(CARGO) build --release --bin portcullis
	./target/release/portcullis serve --policy $(POLICY)

## make test: build and run the whole suite (Rust, Python SDK client, conformance).
test: deps
	$(CARGO) build --bins
	$(MAKE) rust-tests python-tests conformance

deps:
	@bash tests/setup/install-deps.sh all

## make bench: load benchmark in one run (direct baseline, through Portcullis, ContextForge and
## supergateway as peers, RSS at 1,000 sessions); writes bench/results/latest.{json,md}.
## Not part of `make test`: figures need a quiet machine. Peers go into .peers/ (ignored).
## The run itself gets a higher CPU priority (nice -10, when allowed) so that unrelated work on a
## shared machine disturbs it less; every process it measures inherits the same priority.
bench: deps
	@bash bench/setup-peers.sh
	$(CARGO) bench --bench load --no-run
	nice -n -10 $(CARGO) bench --bench load

peers:
	@bash tests/setup/install-deps.sh peers

build:
	$(CARGO) build --bins

# Docker tests start dockerd themselves when /var/run/docker.sock is missing (and stop it after
# the last test process exits) and build their images: see tests/common/docker.rs.
rust-tests:
	$(CARGO) test --all-targets -- --test-threads=2

## make docker-images: build the test images offline (fixture, and mcp-server-time when peers exist).
docker-images:
	bash tests/setup/dockerd.sh start
	bash tests/docker/build-images.sh

## make dockerd-stop: stop a dockerd that the test harness started (never one it did not start).
dockerd-stop:
	bash tests/setup/dockerd.sh stop

python-tests:
	$(PEERS)/venv/bin/python -m pytest -q tests/python

conformance:
	bash tests/conformance/gateway.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
