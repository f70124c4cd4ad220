#!/usr/bin/env bash
# Makes what compose.fleet.yaml needs and must not be in git, in deploy/fleet/generated/
# (git-ignored): a CA and one server certificate for the replicas (names gw1, gw2, gw3), the
# replicas' policy with the client token hashes, HAProxy's config, and .env with the fleet key,
# the Redis password and the tokens (HAProxy's health-check token and a developer token).
# Re-running keeps what exists.
set -euo pipefail
cd "$(dirname "$0")"
out=generated
mkdir -p "$out"
umask 077
rand() { openssl rand -hex 32; }
if [ ! -f "$out/.env" ]; then
  {
    echo "PORTCULLIS_FLEET_KEY=$(rand)"
    echo "REDIS_PASSWORD=$(rand)"
    echo "PORTCULLIS_LB_TOKEN=pc-lb-$(rand)"
    echo "PORTCULLIS_DEV_TOKEN=pc-dev-$(rand)"
  } > "$out/.env"
fi
# shellcheck disable=SC1091
. "$out/.env"
if [ ! -f "$out/ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=portcullis fleet CA" -keyout "$out/ca.key" -out "$out/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=portcullis replica" -keyout "$out/replica.key" -out "$out/replica.csr" 2>/dev/null
  printf 'subjectAltName=DNS:gw1,DNS:gw2,DNS:gw3,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$out/ext.cnf"
  openssl x509 -req -in "$out/replica.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial \
    -days 825 -extfile "$out/ext.cnf" -out "$out/replica.pem" 2>/dev/null
  rm -f "$out/replica.csr" "$out/ext.cnf"
fi
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
sed -e "s/@LB_SHA@/$(sha "$PORTCULLIS_LB_TOKEN")/" -e "s/@DEV_SHA@/$(sha "$PORTCULLIS_DEV_TOKEN")/" \
  policy.toml.in > "$out/policy.toml"
cp haproxy.cfg "$out/haproxy.cfg"
# The containers run as uid 65532, which owns none of these: they must be world-readable files.
# The directory stays 0700, so on the host only its owner reaches them (a bind mount of a file
# does not pass through the directory's permissions inside the container).
chmod 0700 "$out"
chmod 0644 "$out/ca.pem" "$out/replica.pem" "$out/replica.key" "$out/policy.toml" "$out/haproxy.cfg"
echo "generated in deploy/fleet/$out; developer token: see PORTCULLIS_DEV_TOKEN in $out/.env"
