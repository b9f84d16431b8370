#!/usr/bin/env bash
# The local S3-compatible server the tests use: moto_server, installed into target/moto-venv.
#
#   scripts/s3-server.sh CMD [ARGS...]
#       installs moto if needed, starts moto_server on a free loopback port, creates the bucket,
#       runs CMD with CARTA_DR_TEST_S3_ENDPOINT, CARTA_DR_TEST_S3_BUCKET and AWS_* exported,
#       stops the server and exits with CMD's status. Example:
#       scripts/s3-server.sh cargo test -p carta-dr-backends --all-features
#
# scripts/test.sh sources this file for install_moto / start_moto / stop_moto.

MOTO_VERSION="5.2.5"
S3_BUCKET="carta-dr-test"
: "${ROOT:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${TARGET_DIR:=${CARGO_TARGET_DIR:-$ROOT/target}}"
VENV="$TARGET_DIR/moto-venv"
MOTO_LOG="$TARGET_DIR/moto-$$.log"
MOTO_PID=""

if ! declare -F die >/dev/null; then
    die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }
fi

# Creates the venv and installs moto[server]==$MOTO_VERSION, unless that version is there.
install_moto() {
    if [ -x "$VENV/bin/moto_server" ] &&
        [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null)" = "$MOTO_VERSION" ]; then
        echo "moto $MOTO_VERSION already in $VENV"
        return 0
    fi
    local py=/usr/bin/python3
    [ -x "$py" ] || py="$(command -v python3)" || die "python3 not found: apt-get install -y python3 python3-venv"
    mkdir -p "$TARGET_DIR"
    rm -rf "$VENV"
    "$py" -m venv "$VENV" || die "cannot create a venv: apt-get install -y python3-venv"
    "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION" </dev/null ||
        die "pip install 'moto[server]==$MOTO_VERSION' failed"
    "$VENV/bin/python" -c 'import importlib.metadata as m; print("moto", m.version("moto"))'
}

stop_moto() {
    if [ -n "$MOTO_PID" ] && kill -0 "$MOTO_PID" 2>/dev/null; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
        rm -f "$MOTO_LOG"
    fi
    MOTO_PID=""
}

moto_free_port() {
    "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts moto_server, waits until it answers, creates the bucket, exports the variables.
start_moto() {
    local port attempt i
    mkdir -p "$TARGET_DIR"
    for attempt in 1 2 3; do
        port="$(moto_free_port)"
        "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$MOTO_LOG" 2>&1 </dev/null &
        MOTO_PID=$!
        # Poll until it answers (at most ~30 s), or until it dies (port taken meanwhile).
        for i in $(seq 1 150); do
            if curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
                curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$port/$S3_BUCKET" ||
                    die "moto_server answers but bucket creation failed (log: $MOTO_LOG)"
                export CARTA_DR_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
                export CARTA_DR_TEST_S3_BUCKET="$S3_BUCKET"
                export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
                export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ALLOW_HTTP=true
                echo "moto_server $MOTO_VERSION on $CARTA_DR_TEST_S3_ENDPOINT (pid $MOTO_PID), bucket $S3_BUCKET"
                return 0
            fi
            kill -0 "$MOTO_PID" 2>/dev/null || break
            sleep 0.2
        done
        echo "moto_server did not come up on port $port (attempt $attempt); log:"
        tail -n 20 "$MOTO_LOG" || true
        stop_moto
    done
    die "moto_server failed to start (log: $MOTO_LOG)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    [ $# -gt 0 ] || die "usage: scripts/s3-server.sh CMD [ARGS...]"
    trap stop_moto EXIT
    trap 'stop_moto; exit 130' INT
    trap 'stop_moto; exit 143' TERM
    install_moto
    start_moto
    status=0
    "$@" || status=$?
    exit "$status"
fi
