#!/bin/sh
# A Docker engine and offline base images for `make docker-test`, on a Debian host (as root).
#
#   docker/engine.sh start    print the DOCKER_HOST of an engine that answers: the one already
#                             configured, or one started here (Debian's docker.io, overlay2), after
#                             installing docker.io, docker-compose and debootstrap where missing;
#                             a second line, "started", when it started one
#   docker/engine.sh images   build the Debian base images the offline build uses, where missing
#   docker/engine.sh stop     stop the engine this script started, by its pid (none otherwise)
#   docker/engine.sh mirror   print the Debian mirror the base images come from
#
# The Debian mirror is the host's own: the first Debian archive (not the security archive) its apt
# sources name, so a host behind a company mirror builds through that mirror unchanged. DEBIAN_MIRROR
# overrides it; with neither, deb.debian.org (said on stderr). DAPSEARCH_APT_ETC (default /etc/apt)
# is where the apt sources are read.
#
# When no engine can be started it says so in one line and exits non-zero.
set -eu

ROOT=${DAPSEARCH_DOCKERD_ROOT:-/var/tmp/dapsearch-dockerd}
SOCK="unix://$ROOT/docker.sock"
PIDFILE="$ROOT/docker.pid"
DOCKER=/usr/bin/docker  # Debian's client: another `docker` may come first on PATH
SUITE=bookworm
APT_ETC=${DAPSEARCH_APT_ETC:-/etc/apt}
DEFAULT_MIRROR=http://deb.debian.org/debian
PYTHON_IMAGE=local/python:3.11-bookworm
REDIS_IMAGE=local/redis:bookworm

fail() { echo "docker engine: $*" >&2; exit 1; }

# The first `deb` entry of a Debian suite (a codename or alias, or its -updates/-backports, not
# -security) with main, on a transport debootstrap speaks: from the one-line format
# (`deb [options] URI suite components`) and deb822 (.sources: Types, URIs, Suites, Components).
APT_SOURCES_AWK='
function debian(suite) {
    if (suite ~ /-security$/ || suite ~ /\/updates$/) return 0
    sub(/-(updates|backports|proposed-updates)$/, "", suite)
    return suite ~ /^(buster|bullseye|bookworm|trixie|forky|duke|sid)$/ \
        || suite ~ /^(oldoldstable|oldstable|stable|testing|unstable)$/
}
function has(list, word,   n, i, w) {
    n = split(list, w)
    for (i = 1; i <= n; i++) if (w[i] == word) return 1
    return 0
}
function pick(types, uris, suites, components,   n, m, i, j, s, u) {
    if (!has(types, "deb") || !has(components, "main")) return 0
    n = split(suites, s); m = split(uris, u)
    for (i = 1; i <= n; i++) {
        if (!debian(s[i])) continue
        for (j = 1; j <= m; j++)
            if (u[j] ~ /^(https?|ftp|file):\/\//) { print u[j]; found = 1; return 1 }
    }
    return 0
}
function stanza(   f) {
    if (!found && field["enabled"] !~ /^[ \t]*[Nn][Oo][ \t]*$/)
        pick(field["types"], field["uris"], field["suites"], field["components"])
    for (f in field) delete field[f]
    last = ""
    return found
}
FNR == 1 && stanza() { exit }
FILENAME !~ /\.sources$/ {
    sub(/#.*/, "")
    if ($1 != "deb") next
    i = 2
    if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
    rest = ""
    for (j = i + 2; j <= NF; j++) rest = rest " " $j
    if (pick("deb", $i, $(i + 1), rest)) exit
    next
}
/^#/ { next }
/^[ \t]*$/ { if (stanza()) exit; next }
/^[ \t]/ { if (last != "") field[last] = field[last] " " $0; next }
index($0, ":") {
    last = tolower(substr($0, 1, index($0, ":") - 1))
    field[last] = substr($0, index($0, ":") + 1)
}
END { if (!found) stanza() }
'

debian_mirror() {  # DEBIAN_MIRROR, else the host's apt sources, else deb.debian.org
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return 0; fi
    set --
    for source in "$APT_ETC/sources.list" "$APT_ETC"/sources.list.d/*; do
        case "$source" in
            *.list | *.sources) [ -f "$source" ] && [ -r "$source" ] && set -- "$@" "$source" ;;
        esac
    done
    found=""
    [ "$#" -gt 0 ] && found=$(awk "$APT_SOURCES_AWK" "$@" | head -n 1)
    if [ -n "$found" ]; then echo "${found%/}"; return 0; fi
    echo "docker engine: no Debian archive in $APT_ETC/sources.list or $APT_ETC/sources.list.d;" \
        "using $DEFAULT_MIRROR (set DEBIAN_MIRROR to choose a mirror)" >&2
    echo "$DEFAULT_MIRROR"
}

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
    mirror) debian_mirror ;;
    images)
        MIRROR=$(debian_mirror)
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
    *) echo "usage: $0 start|images|stop|mirror" >&2; exit 2 ;;
esac
