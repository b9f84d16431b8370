#!/usr/bin/env bash
# The test command: installs what the tests need, starts the local S3 server, and runs every
# check carta-dr has (format, lints, unit + integration tests against real PostgreSQL 15 and
# moto_server, doc tests, examples). Works on a fresh Debian 12 machine as root, without a
# terminal (CI=true); fast when everything is already installed.
#
#   scripts/test.sh            # everything
#   CARTA_DR_SKIP_INSTALL=1    # do not touch apt/pip (use what is installed)
#   CARTA_DR_TEST_RUNNER=cargo # use `cargo test` even when cargo-nextest is installed
#
# Fails on the first failing step and prints a timing summary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MOTO_VERSION="5.2.5"
S3_BUCKET="carta-dr-test"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
VENV="$TARGET_DIR/moto-venv"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export DEBIAN_FRONTEND=noninteractive

START_ALL=$(date +%s)
TIMINGS=()

log() { printf '\n==> %s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# step NAME CMD...: runs CMD, records its duration, stops the script when it fails.
step() {
    local name="$1"; shift
    log "$name"
    local t0; t0=$(date +%s)
    if ! "$@"; then
        TIMINGS+=("$(printf '%5ss  FAILED  %s' "$(( $(date +%s) - t0 ))" "$name")")
        print_timings
        die "step failed: $name"
    fi
    TIMINGS+=("$(printf '%5ss  ok      %s' "$(( $(date +%s) - t0 ))" "$name")")
}

print_timings() {
    printf '\n==> timings\n'
    printf '%s\n' "${TIMINGS[@]}"
    printf '%5ss  total\n' "$(( $(date +%s) - START_ALL ))"
}

# ---------------------------------------------------------------------------------------------
# 1. System packages (apt), only when something is missing.
# ---------------------------------------------------------------------------------------------
PG_BIN=/usr/lib/postgresql/15/bin
APT_PACKAGES=(postgresql-15 pgbackrest prometheus prometheus-alertmanager pgbouncer python3-venv curl procps)

pkg_missing() {
    local p="$1"
    if [ "$p" = postgresql-15 ] && [ -x "$PG_BIN/initdb" ]; then return 1; fi
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]
}

install_packages() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        if pkg_missing "$p"; then missing+=("$p"); fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "all present: ${APT_PACKAGES[*]}"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}"
    echo "installing: ${missing[*]}"
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

# ---------------------------------------------------------------------------------------------
# 2. Rust toolchain (pinned by rust-toolchain.toml; rustup fetches it on first use).
# ---------------------------------------------------------------------------------------------
check_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs)"
    cargo --version
}

# ---------------------------------------------------------------------------------------------
# 3. moto_server (the S3-compatible server) in a venv under target/.
# ---------------------------------------------------------------------------------------------
install_moto() {
    if [ -x "$VENV/bin/moto_server" ] &&
        [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null)" = "$MOTO_VERSION" ]; then
        echo "moto $MOTO_VERSION already in $VENV"
        return 0
    fi
    local py=/usr/bin/python3
    [ -x "$py" ] || py="$(command -v python3)" || die "python3 not found: apt-get install -y python3 python3-venv"
    rm -rf "$VENV"
    "$py" -m venv "$VENV" || die "cannot create a venv: apt-get install -y python3-venv"
    "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION" </dev/null
    "$VENV/bin/python" -c 'import importlib.metadata as m; print("moto", m.version("moto"))'
}

MOTO_PID=""
stop_moto() {
    if [ -n "$MOTO_PID" ] && kill -0 "$MOTO_PID" 2>/dev/null; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    MOTO_PID=""
}
trap stop_moto EXIT
trap 'stop_moto; exit 130' INT
trap 'stop_moto; exit 143' TERM

free_port() {
    "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_moto() {
    local log="$TARGET_DIR/moto.log" port attempt i
    for attempt in 1 2 3; do
        port="$(free_port)"
        "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 </dev/null &
        MOTO_PID=$!
        # Poll until it answers (at most ~30 s), or until it dies (port taken meanwhile).
        for i in $(seq 1 150); do
            if curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
                curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$port/$S3_BUCKET" ||
                    die "moto_server answers but bucket creation failed (log: $log)"
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
        tail -n 20 "$log" || true
        stop_moto
    done
    die "moto_server failed to start (log: $log)"
}

# ---------------------------------------------------------------------------------------------
# 4. The checks.
# ---------------------------------------------------------------------------------------------
run_tests() {
    local threads=$(( $(nproc) * 2 ))
    if [ "${CARTA_DR_TEST_RUNNER:-}" != cargo ] && cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --all-features --no-fail-fast \
            --test-threads "$threads" --failure-output final --status-level fail \
            --final-status-level slow
    else
        cargo test --workspace --all-features --no-fail-fast -- --test-threads "$threads"
    fi
}

run_examples() {
    local ex name found=0
    for ex in carta-dr-examples/examples/*.rs; do
        [ -e "$ex" ] || continue
        found=1
        name="$(basename "$ex" .rs)"
        log "example: $name"
        cargo run -q -p carta-dr-examples --example "$name" </dev/null || return 1
    done
    [ "$found" = 1 ] || echo "(no examples)"
}

if [ "${CARTA_DR_SKIP_INSTALL:-}" = 1 ]; then
    log "skipping installs (CARTA_DR_SKIP_INSTALL=1)"
else
    step "system packages" install_packages
    step "moto $MOTO_VERSION" install_moto
fi
step "rust toolchain" check_rust
[ -x "$PG_BIN/initdb" ] || [ -n "${CARTA_DR_PG_BIN:-}" ] ||
    die "PostgreSQL 15 server binaries missing: apt-get install -y postgresql-15"
mkdir -p "$TARGET_DIR"
step "start moto_server" start_moto

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --all-features -- -D warnings
step "tests (unit + integration)" run_tests
step "doc tests" cargo test --workspace --all-features --doc
step "examples" run_examples

# ---------------------------------------------------------------------------------------------
# PLUG-IN POINT: alerting rules. Run `promtool check rules` and `promtool test rules` over the
# shipped Prometheus rule files and their unit tests here, as one `step`.
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# PLUG-IN POINT: the restore drill. Run `carta-dr drill restore` end to end against a throwaway
# cluster and the local S3 server here, as one `step`.
# ---------------------------------------------------------------------------------------------

# Optional: build the fuzz targets when cargo-fuzz and a nightly toolchain are installed (the
# fuzz corpus itself is replayed by stable tests above).
if cargo fuzz --version >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    step "fuzz targets build" bash -c 'cd fuzz && cargo +nightly fuzz build'
fi

print_timings
log "all checks passed"
