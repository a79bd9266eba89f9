# shellcheck shell=bash
# The one harness of the root suites, sourced by tests/shell/*.sh: `check NAME CMD...` records
# PASS/FAIL, `finish` prints the tally and sets the exit status. faults.sh groups its checks
# into the rows of the reliability table on top of this (row_begin / expect / row_end there).
set -uo pipefail

REPO=${SBX_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
SESSIOND=${SESSIOND_BIN:-$REPO/target/debug/sessiond}
# What a suite produces besides its output (faults.sh: the reliability table) goes here, under
# the git-ignored target/, never into a tracked file: a test run leaves the tree clean.
# `scripts/test --record` copies what belongs in docs/ from here.
# shellcheck disable=SC2034  # used by the suites that source this (faults.sh)
RESULTS=${TEST_RESULTS:-$REPO/target/test-results}
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
    # The suites add users, groups, links and files under /etc: only ever inside the sandbox
    # (SBX=1 alone could be inherited by accident; the marker lives on the sandbox's /run).
    [[ -n "${SBX_MARKER:-}" && -e "$SBX_MARKER" ]] || { echo "refusing: not inside scripts/sandbox"; exit 1; }
}

# tally_pass NAME / tally_fail NAME: one PASS/FAIL line, counted in the tally `finish` prints.
tally_pass() { PASSES=$((PASSES + 1)); echo "PASS: $1"; }
tally_fail() { FAILS=$((FAILS + 1)); FAILED_NAMES+=("$1"); echo "FAIL: $1"; }

# check NAME CMD...: PASS if CMD succeeds; else FAIL, with the tail of CMD's output. Returns
# CMD's success or failure (0 or 1).
check() {
    local name=$1; shift
    # Runs in this shell (not a subshell) so checks can set variables for later ones.
    local out=/run/check.out
    if "$@" >"$out" 2>&1; then
        tally_pass "$name"
    else
        tally_fail "$name"; sed 's/^/    /' "$out" | tail -30
        return 1
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

# sleep_until_ms T: sleeps until wall-clock T (ms), at most 120 s.
sleep_until_ms() {
    local d=$(($1 - $(now_ms)))
    ((d > 120000)) && d=120000
    ((d > 0)) && sleep "$(printf '%d.%03d' $((d / 1000)) $((d % 1000)))"
    return 0
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

# log_mark: the daemon log's current length; log_since MARK: what it logged after that mark.
log_mark() { wc -l <"$DAEMON_LOG"; }
log_since() { tail -n "+$(($1 + 1))" "$DAEMON_LOG"; }

# json FIELD: reads one JSON object on stdin and prints FIELD (jq path).
json() { jq -r "$1"; }

# expect_exit RC WORD CMD...: CMD (bounded to 15 s) exits with RC and its output mentions WORD.
# The output is kept in $OUT for further checks.
OUT=
expect_exit() {
    local want=$1 word=$2; shift 2
    local rc
    OUT=$(timeout --kill-after=2 15 "$@" 2>&1); rc=$?
    echo "\$ $* -> exit $rc"; echo "$OUT"
    [[ $rc == "$want" ]] || { echo "expected exit $want, got $rc"; return 1; }
    grep -qiF -- "$word" <<<"$OUT" || { echo "the message does not mention '$word'"; return 1; }
}

# ----------------------------------------------------------- log-in suites (pam.sh, xrdp.sh)

# sandbox_user NAME HOME: a user that exists only in the sandbox's /etc overlay, with its home
# on the sandbox's /run tmpfs (/home is shared with the host). Refuses a name that exists.
sandbox_user() {
    local u=$1 home=$2
    getent passwd "$u" >/dev/null && { echo "user $u already exists in the sandbox overlay"; return 1; }
    useradd -M -d "$home" -s /bin/bash "$u" || return 1
    mkdir -p "$home" && chown "$u:$u" "$home" && chmod 700 "$home"
}

# wait_pid SECONDS PID...: bounded wait for background jobs of this shell (TERM after SECONDS).
wait_pid() {
    local secs=$1 p; shift
    for p in "$@"; do
        wait_for "$secs" bash -c "! kill -0 $p" || kill "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    return 0
}

# What the daemon holds, one line of JSON: [{session, owner_uid, address, loopback}].
sessions() { "$SESSIOND" status --json | jq -c 'map({session, owner_uid, address: (.address // "" | sub("/.*"; "")), loopback})'; }

# no_sessions_left: the daemon has no session, no sessiond-* netns is left, and the PAM module's
# holder counts (in $REFDIR, default /run/sessiond/pam) are gone.
no_sessions_left() {
    local refdir=${REFDIR:-/run/sessiond/pam}
    [[ $("$SESSIOND" status --json | jq length) == 0 ]] || { echo "still running: $(sessions)"; return 1; }
    ! ip netns list | grep -q sessiond- || { echo "netns left: $(ip netns list)"; return 1; }
    [[ -z "$(ls -A "$refdir" 2>/dev/null)" ]] || { echo "holder counts left: $(ls "$refdir")"; return 1; }
}

# dnsmasq_leases_all_released: the sandbox's dnsmasq lists no active lease in its own database.
dnsmasq_leases_all_released() { [[ -z "$("$REPO/scripts/dhcp-server" dnsmasq leases)" ]]; }

# ----------------------------------------------------------- metrics (metrics.sh, faults.sh)

# scrape ADDR:PORT [PATH]: GET http://ADDR:PORT/metrics (or PATH); prints the body, or
# "HTTP <code>" for an error status.
scrape() {
    python3 - "http://$1${2:-/metrics}" <<'EOF'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end="")
except urllib.error.HTTPError as e:
    print(f"HTTP {e.code}")
EOF
}
# metric SERIES TEXT: the value of one series (written exactly as the text format writes it).
metric() { awk -v s="$1" '$1 == s { print $2; found = 1 } END { exit !found }' <<<"$2"; }
