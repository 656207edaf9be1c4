#!/bin/sh
# dapsearch container entrypoint (POSIX sh). Also runs outside Docker: tests/docker/test_docker.py.
#
#   (no arguments) or options   ->  dapsearch serve [options], e.g. `--port 9000`
#   any other command           ->  run it with the same environment, e.g. `dapsearch index stats demo`
#
# Defaults (only where unset): DAPSEARCH_HOST=0.0.0.0, DAPSEARCH_HOME=/data,
# DAPSEARCH_MODEL_DIR=/opt/dapsearch/models/multilingual-e5-small-dap (built into the image, so serve
# never builds a model at start). DAPSEARCH_ADMIN_KEYS_FILE names a file (a Docker/compose secret)
# holding the admin keys, one per line or comma-separated; it becomes DAPSEARCH_ADMIN_KEYS.
set -eu

log() {
    printf 'dapsearch-entrypoint: %s\n' "$*" >&2
}

: "${DAPSEARCH_HOST:=0.0.0.0}"
: "${DAPSEARCH_HOME:=/data}"
: "${DAPSEARCH_MODEL_DIR:=/opt/dapsearch/models/multilingual-e5-small-dap}"
export DAPSEARCH_HOST DAPSEARCH_HOME DAPSEARCH_MODEL_DIR

if [ -n "${DAPSEARCH_ADMIN_KEYS_FILE:-}" ]; then
    if [ -n "${DAPSEARCH_ADMIN_KEYS:-}" ]; then
        log "error: both DAPSEARCH_ADMIN_KEYS and DAPSEARCH_ADMIN_KEYS_FILE are set; set only one"
        exit 2
    fi
    if [ ! -f "$DAPSEARCH_ADMIN_KEYS_FILE" ] || [ ! -r "$DAPSEARCH_ADMIN_KEYS_FILE" ]; then
        log "error: DAPSEARCH_ADMIN_KEYS_FILE=$DAPSEARCH_ADMIN_KEYS_FILE is not a file readable by uid $(id -u)"
        exit 2
    fi
    DAPSEARCH_ADMIN_KEYS=$(tr '\r\n' ',,' <"$DAPSEARCH_ADMIN_KEYS_FILE")
    export DAPSEARCH_ADMIN_KEYS
fi

# Options only (or nothing): serve. Anything else is a command to run in this environment.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    case "${DAPSEARCH_ADMIN_KEYS:-}" in
        *[!,[:space:]]*) log "admin API enabled (bearer keys from the environment)" ;;
        *)
            case "$(printf '%s' "${DAPSEARCH_ADMIN_OPEN:-false}" | tr '[:upper:]' '[:lower:]')" in
                1 | t | true | y | yes | on)
                    log "warning: DAPSEARCH_ADMIN_OPEN is on: /admin is served WITHOUT authentication" ;;
                *)
                    log "admin API disabled: no DAPSEARCH_ADMIN_KEYS or DAPSEARCH_ADMIN_KEYS_FILE (/admin answers 503)" ;;
            esac
            ;;
    esac
    log "home $DAPSEARCH_HOME, model $DAPSEARCH_MODEL_DIR"
    set -- dapsearch serve "$@"
fi
exec "$@"
