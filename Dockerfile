# The Portcullis gateway image: a release build in a Rust stage, then a slim Debian runtime with
# only the gateway, the nftables netlink libraries and the CA bundle.
#   docker build -t portcullis/gateway:local .        (needs a registry for the two base images)
# Offline (no registry), `make images` builds the same image FROM scratch out of the host's
# build: tests/docker/build-gateway-image.sh. Keep the final stage's settings in step with
# tests/docker/gateway.Dockerfile. How to run it: compose.yaml and README "Run it with compose".
ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libnftnl-dev libmnl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The manifest names these targets, so they must exist for cargo to read it; the binary embeds
# policy/default.toml.
COPY Cargo.toml Cargo.lock ./
COPY bench/ bench/
COPY tests/fixture_server/ tests/fixture_server/
COPY policy/default.toml policy/default.toml
# `portcullis init devcontainer` embeds the kit's files.
COPY deploy/devcontainer/ deploy/devcontainer/
COPY src/ src/
RUN cargo build --release --locked --bin portcullis \
 && strip target/release/portcullis

FROM ${RUNTIME_IMAGE}
# libnftnl/libmnl: the egress table is programmed over netlink in process (no nft binary needed).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnftnl11 libmnl0 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot \
 && install -d -o 65532 -g 0 -m 0770 /var/lib/portcullis/audit /var/lib/portcullis/state
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
COPY policy/compose.toml /etc/portcullis/policy.toml
# The audit log and the OAuth token caches go to volumes (compose.yaml mounts named ones here);
# `serve` and `doctor` read this policy when given no --policy.
ENV PORTCULLIS_AUDIT_DIR=/var/lib/portcullis/audit \
    PORTCULLIS_STATE_DIR=/var/lib/portcullis/state \
    PORTCULLIS_POLICY=/etc/portcullis/policy.toml
# Non-root by default: enough for process and remote servers, and for docker servers when the
# socket's group is added (--group-add). Programming nftables needs CAP_NET_ADMIN, which Docker
# gives only to uid 0: compose.yaml runs it as "0:0" with every other capability dropped.
USER 65532:65532
WORKDIR /var/lib/portcullis
EXPOSE 8811
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/portcullis", "health"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--policy", "/etc/portcullis/policy.toml"]
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="A security-hardened MCP gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
