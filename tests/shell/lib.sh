# shellcheck shell=bash
# A tiny bats-style harness for the root suites: `check NAME CMD...` records PASS/FAIL,
# `finish` prints the tally and sets the exit status. Sourced by tests/shell/*.sh.
set -uo pipefail

REPO=${SBX_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
SESSIOND=${SESSIOND_BIN:-$REPO/target/debug/sessiond}
PASSES=0
FAILS=0
FAILED_NAMES=()

# Re-runs the calling suite inside a fresh sandbox (or skips loudly without root).
enter_sandbox() {
    if [[ $(id -u) != 0 ]]; then
        echo "SKIP: $(basename "$0") needs root (network namespaces, macvlan, mounts); CI runs it as root"
        exit 0
    fi
    if [[ "${SBX:-}" != 1 ]]; then
        exec "$REPO/scripts/sandbox" "$(readlink -f "$0")" "$@"
    fi
}

check() {
    local name=$1; shift
    # Runs in this shell (not a subshell) so checks can set variables for later ones.
    local out=/run/check.out
    if "$@" >"$out" 2>&1; then
        PASSES=$((PASSES + 1)); echo "PASS: $name"
    else
        FAILS=$((FAILS + 1)); FAILED_NAMES+=("$name"); echo "FAIL: $name"; sed 's/^/    /' "$out" | tail -30
    fi
}

finish() {
    echo "== $(basename "$0"): $PASSES passed, $FAILS failed"
    if ((FAILS)); then printf '   failed: %s\n' "${FAILED_NAMES[@]}"; exit 1; fi
    exit 0
}

now_ms() { date +%s%3N; }

# wait_until_ms DEADLINE_MS CMD...: polls CMD every 50 ms until it succeeds or the
# wall clock passes DEADLINE_MS (also bounded to 2400 polls).
wait_until_ms() {
    local deadline=$1 n=2400; shift
    while ((n-- > 0)); do
        "$@" >/dev/null 2>&1 && return 0
        (($(now_ms) > deadline)) && return 1
        sleep 0.05
    done
    return 1
}

# wait_for SECONDS CMD...: polls CMD every 50 ms for at most SECONDS.
wait_for() {
    local secs=$1; shift
    wait_until_ms $(($(now_ms) + secs * 1000)) "$@"
}

# Daemon control: one daemon per suite, by PID.
export SESSIOND_SOCKET=/run/sessiond-test.sock
DAEMON_PID=
DAEMON_LOG=/run/sessiond-test.log
start_daemon() {
    "$SESSIOND" daemon --socket "$SESSIOND_SOCKET" "$@" >>"$DAEMON_LOG" 2>&1 &
    DAEMON_PID=$!
    wait_for 10 test -S "$SESSIOND_SOCKET" || { echo "daemon did not come up"; cat "$DAEMON_LOG"; return 1; }
    # the socket file appears at bind; ready once it answers
    wait_for 10 "$SESSIOND" status || { echo "daemon does not answer"; cat "$DAEMON_LOG"; return 1; }
}
kill_daemon() { # $1: signal (default TERM)
    [[ -n "$DAEMON_PID" ]] || return 0
    kill "-${1:-TERM}" "$DAEMON_PID" 2>/dev/null
    wait "$DAEMON_PID" 2>/dev/null
    DAEMON_PID=
    if [[ "${1:-TERM}" == 9 || "${1:-TERM}" == KILL ]]; then :; fi
    return 0
}

# json FIELD: reads one JSON object on stdin and prints FIELD (jq path).
json() { jq -r "$1"; }
