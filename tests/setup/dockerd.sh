#!/usr/bin/env bash
# Starts a Docker engine for the tests when none is running, and stops only what it started.
#   start [LOCKFILE]  start dockerd if /var/run/docker.sock is missing; wait until it answers.
#                     With LOCKFILE: the caller holds a shared flock on it for as long as it
#                     needs the engine; a detached reaper stops dockerd once the last holder
#                     is gone (the kernel drops a flock when its process exits, even on a crash).
#   stop              stop a dockerd this script started (no-op otherwise).
#   status            print whether the engine answers.
set -euo pipefail
SOCK=${DOCKER_SOCK:-/var/run/docker.sock}
STATE=${PORTCULLIS_DOCKERD_STATE:-/tmp/portcullis-dockerd}
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log

log() { printf '[dockerd] %s\n' "$*" >&2; }

answers() { [ -S "$SOCK" ] && docker -H "unix://$SOCK" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
  local lock=${1:-}
  mkdir -p "$STATE"
  if answers; then return 0; fi
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    log "dockerd (pid $(cat "$PIDFILE")) is starting; waiting"
  else
    command -v dockerd >/dev/null || { log "dockerd is not installed: run 'bash tests/setup/install-deps.sh system'"; exit 1; }
    log "starting dockerd (log: $LOG)"
    # setsid: the engine must outlive the shell (and test process) that started it.
    setsid dockerd --host "unix://$SOCK" >"$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    if [ -n "$lock" ]; then
      # Blocks until every holder of the shared lock has exited, then stops the engine.
      setsid bash -c 'sleep 1; flock -x "$1" "$2" stop' _ "$lock" "$0" >>"$LOG" 2>&1 < /dev/null &
    fi
  fi
  for _ in $(seq 1 300); do
    if answers; then log "dockerd ready"; return 0; fi
    sleep 0.1
  done
  log "dockerd did not answer within 30s; last log lines:"; tail -n 20 "$LOG" >&2 || true
  exit 1
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  local pid; pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping dockerd (pid $pid) started by the test harness"
    kill -TERM "$pid"
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop ;;
  status) if answers; then echo running; else echo stopped; exit 1; fi ;;
  *) echo "usage: $0 start [LOCKFILE] | stop | status" >&2; exit 2 ;;
esac
