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
# Fails on the first failing step and prints a timing summary. To run one crate's tests with the
# S3 server up: scripts/s3-server.sh cargo test -p CRATE --all-features
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
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
    apt-get update -q </dev/null || return 1
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null || return 1
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
# 3. moto_server (the S3-compatible server): install_moto, start_moto, stop_moto.
# ---------------------------------------------------------------------------------------------
# shellcheck source=scripts/s3-server.sh
. "$ROOT/scripts/s3-server.sh"
trap stop_moto EXIT
trap 'stop_moto; exit 130' INT
trap 'stop_moto; exit 143' TERM

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
# BEGIN alerting rules (monitor). `carta-dr rules` output checked by promtool, end to end through
# the CLI. The promtool unit tests of rules-tests/ (`promtool test rules`), `amtool check-config`
# and the Alertmanager inhibition test run in carta-dr-postgres/tests/monitor_rules.rs above.
check_generated_rules() {
    local out; out="$(mktemp -d)"
    cargo run -q -p carta-dr-cli -- rules --out "$out" >/dev/null &&
        promtool check rules "$out/replication.yml" "$out/slo.yml" | tee "$out/check.log" &&
        ! grep -q -e FAILED -e lint "$out/check.log"
    local rc=$?
    rm -rf "$out"
    return $rc
}
step "alerting rules (promtool check rules on carta-dr rules output)" check_generated_rules
# END alerting rules (monitor).
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# BEGIN restore drill: `carta-dr drill restore` end to end on its embedded throwaway cluster
# (PostgreSQL 15, WAL archived by carta-dr, our own base backup, kill -9, restore, verify).
# The drill log and the Markdown report go to a temporary state directory.
run_restore_drill() {
    local state; state="$(mktemp -d)"
    chmod 755 "$state"
    cargo build -q -p carta-dr-cli &&
        CARTA_DR_STATE_DIR="$state" "$TARGET_DIR/debug/carta-dr" drill restore --rto 2m --rpo 30s &&
        CARTA_DR_STATE_DIR="$state" "$TARGET_DIR/debug/carta-dr" drill history
    local rc=$?
    rm -rf "$state"
    return $rc
}
step "restore drill (carta-dr drill restore, embedded cluster)" run_restore_drill
# END restore drill.
# ---------------------------------------------------------------------------------------------

# Optional: build the fuzz targets on the pinned stable toolchain (`-s none`: no sanitizer) when
# cargo-fuzz is installed (`cargo install cargo-fuzz`). The fuzz corpus itself is replayed by
# stable tests above (carta-dr-core/tests/fuzz_corpus_replay.rs), so CI needs no cargo-fuzz.
if cargo fuzz --version >/dev/null 2>&1; then
    step "fuzz targets build (stable, -s none)" bash -c 'cd fuzz && cargo fuzz build -s none'
fi

print_timings
log "all checks passed"
