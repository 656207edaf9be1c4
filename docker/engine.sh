#!/bin/sh
# A Docker engine and offline base images for `make docker-test`, on a Debian host (as root).
#
#   docker/engine.sh start    print the DOCKER_HOST of an engine that answers: the one already
#                             configured, or one started here (Debian's docker.io, overlay2), after
#                             installing docker.io, docker-compose and debootstrap where missing;
#                             a second line, "started", when it started one
#   docker/engine.sh images   build the Debian base images the offline build uses, where missing
#   docker/engine.sh stop     stop the engine this script started, by its pid (none otherwise)
#
# When no engine can be started it says so in one line and exits non-zero.
set -eu

ROOT=${DAPSEARCH_DOCKERD_ROOT:-/var/tmp/dapsearch-dockerd}
SOCK="unix://$ROOT/docker.sock"
PIDFILE="$ROOT/docker.pid"
DOCKER=/usr/bin/docker  # Debian's client: another `docker` may come first on PATH
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON_IMAGE=local/python:3.11-bookworm
REDIS_IMAGE=local/redis:bookworm

fail() { echo "docker engine: $*" >&2; exit 1; }

answers() { [ -x "$DOCKER" ] && DOCKER_HOST="$1" "$DOCKER" info >/dev/null 2>&1; }

install_packages() {
    missing=""
    [ -x "$DOCKER" ] && command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
    command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
    command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
    [ -z "$missing" ] && return 0
    [ "$(id -u)" = 0 ] || fail "needs root to install$missing"
    apt-get update -qq >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null 2>&1 \
        || fail "could not install$missing with apt-get"
}

start() {
    if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then echo "$DOCKER_HOST"; return 0; fi
    if answers "$SOCK"; then echo "$SOCK"; return 0; fi
    install_packages
    mkdir -p "$ROOT"
    dockerd --data-root "$ROOT/root" --exec-root "$ROOT/exec" --pidfile "$PIDFILE" -H "$SOCK" \
        --storage-driver overlay2 --iptables=false --ip6tables=false --bridge=none \
        >"$ROOT/dockerd.log" 2>&1 &
    tries=0
    until answers "$SOCK"; do
        tries=$((tries + 1))
        [ "$tries" -le 60 ] || fail "dockerd did not answer within 60 s: $(tail -n 1 "$ROOT/dockerd.log")"
        sleep 1
    done
    echo "$SOCK"
    echo started
}

image() {  # name, debootstrap --include list
    DOCKER_HOST=$(start | head -n 1)
    export DOCKER_HOST
    "$DOCKER" image inspect "$1" >/dev/null 2>&1 && return 0
    rootfs="$ROOT/rootfs-$(echo "$1" | tr '/:' '--')"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include="$2" "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
        || fail "debootstrap of $1 failed: $(tail -n 1 "$rootfs.log")"
    tar -C "$rootfs" -c . | "$DOCKER" import -c 'ENV LANG=C.UTF-8' - "$1" >/dev/null
    rm -rf "$rootfs"
}

case "${1:-}" in
    start) start ;;
    images)
        install_packages
        image "$PYTHON_IMAGE" python3,python3-venv,python-is-python3,ca-certificates
        image "$REDIS_IMAGE" redis-server
        ;;
    stop)
        if [ -f "$PIDFILE" ]; then
            pid=$(cat "$PIDFILE")
            kill "$pid" 2>/dev/null || true
            tries=0
            while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 30 ]; do tries=$((tries + 1)); sleep 1; done
        fi
        ;;
    *) echo "usage: $0 start|images|stop" >&2; exit 2 ;;
esac
