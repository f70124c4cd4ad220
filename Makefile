# Portcullis: the two commands a new machine needs are `make run` and `make test`.
# Both install what is missing first (apt packages, and MCP test peers into .peers/).

SHELL := /bin/bash
CARGO ?= cargo
POLICY ?= policy/default.toml
PEERS := $(CURDIR)/.peers
export PATH := $(PEERS)/venv/bin:$(HOME)/.cargo/bin:$(PATH)

.PHONY: run test deps peers build lint fmt conformance python-tests rust-tests docker-images images dockerd-stop clean soak fuzz fuzz-ci bench

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
# RUST_BACKTRACE=0: a failure ends with its own message (what failed, the gateway's last log
# lines), not with the test runtime's frames; CI shows the tail of the output.
rust-tests:
	RUST_BACKTRACE=0 $(CARGO) test --all-targets -- --test-threads=2

# Soak and fault test at full length (make test runs the same test for 30 s): 10 minutes of
# mixed load with server kills and a policy reload every minute; prints start/end RSS and fds.
SOAK_SECONDS ?= 600
soak: deps build
	SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test --test soak -- --nocapture

## make docker-images: build the test images offline (fixture, and mcp-server-time when peers exist).
docker-images:
	bash tests/setup/dockerd.sh start
	bash tests/docker/build-images.sh

## make images: the images compose.yaml runs, built offline from this checkout: the gateway
## (portcullis/gateway:local, FROM scratch + the host's release build) and the example server
## (portcullis/mcp-time:local), and the fetch server (portcullis/mcp-fetch:local) that
## policy/compose.toml holds to one site. With a registry, `docker-compose build` uses
## ./Dockerfile instead.
images: deps
	bash tests/setup/dockerd.sh start
	bash tests/docker/build-gateway-image.sh portcullis/gateway:local
	bash tests/docker/time-image.sh $(PEERS)/venv portcullis/mcp-time:local
	bash tests/docker/fetch-image.sh portcullis/mcp-time:local portcullis/mcp-fetch:local

## make dockerd-stop: stop a dockerd that the test harness started (never one it did not start).
dockerd-stop:
	bash tests/setup/dockerd.sh stop

python-tests:
	$(PEERS)/venv/bin/python -m pytest -q tests/python

conformance:
	bash tests/conformance/gateway.sh

## make fuzz: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 300) each, on the stable
## toolchain; fails if one crashed (README, "Fuzzing"). FUZZ_JOBS targets run at once (default 1).
fuzz:
	@bash tests/setup/install-deps.sh fuzz
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),300) FUZZ_JOBS=$(or $(FUZZ_JOBS),1) bash fuzz/run.sh

## make fuzz-ci: the short run of CI: 60 s per target (or FUZZ_SECONDS), two targets at a time.
fuzz-ci:
	@bash tests/setup/install-deps.sh fuzz
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) FUZZ_JOBS=$(or $(FUZZ_JOBS),2) bash fuzz/run.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
