#!/usr/bin/env bash
# Root integration tests for the control socket, run in a private sandbox: who may connect
# (--socket-group), what non-root callers may do (read their own sessions' status, nothing
# else), and protocol abuse over a raw AF_UNIX socket (garbage, unknown ops, a 100 MB line,
# 1000 idle and 1000 concurrent connections, half a request) -- after which the same daemon
# process still serves and starts sessions.
# Usage: tests/shell/socket.sh
# shellcheck source=lib.sh disable=SC2317  # SC2317: functions run through `check`
source "$(dirname "$0")/lib.sh"
enter_sandbox "$@"   # (refuses to go on outside scripts/sandbox)

STATE=/var/lib/sessiond
POOL="$SBX_POOL_FIRST-$SBX_POOL_LAST/${SBX_SUBNET#*/}"
GROUP=sdusers

# "${ALICE[@]}" CMD...: runs CMD with alice's uids, gids and supplementary groups (env kept).
# Arrays, not functions, so that `timeout` can run them. Set once the users exist.
ALICE=(false) BOB=(false) CAROL=(false)   # until then, never run as root by mistake
as_user() { echo setpriv --reuid="$(id -u "$1")" --regid="$(id -g "$1")" --init-groups --; }

# The raw-socket client, tests/shell/faults/sock_abuse.py (modes line, huge, idle, concurrent,
# half: see its docstring). It needs >1000 fds; the daemon keeps the limit it inherited.
raw() { (ulimit -n 4096 2>/dev/null; exec timeout --kill-after=2 40 python3 "$REPO/tests/shell/faults/sock_abuse.py" "$@"); }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$DAEMON_PID/status"; }

# ------------------------------------------------------------ users and permissions

users_exist() {
    groupadd "$GROUP" && useradd -M -G "$GROUP" alice && useradd -M -G "$GROUP" bob && useradd -M carol || return 1
    read -ra ALICE <<<"$(as_user alice)"; read -ra BOB <<<"$(as_user bob)"; read -ra CAROL <<<"$(as_user carol)"
    "${ALICE[@]}" id && "${CAROL[@]}" id || return 1
    "${ALICE[@]}" id -Gn | grep -qw "$GROUP" && "${BOB[@]}" id -Gn | grep -qw "$GROUP" && ! "${CAROL[@]}" id -Gn | grep -qw "$GROUP" &&
    [[ $("${ALICE[@]}" id -u) == "$(id -u alice)" && $("${ALICE[@]}" id -u) != 0 ]]
}

daemon_with_group() {
    rm -rf "$STATE"
    start_daemon --uplink "$SBX_UPLINK" --addressing static --pool "$POOL" --gateway "$SBX_GATEWAY" \
        --state-dir "$STATE" --socket-group "$GROUP" || return 1
    FIRST_PID=$DAEMON_PID
    local mode; mode=$(stat -c '%a %U %G' "$SESSIOND_SOCKET"); echo "socket: $mode"
    [[ "$mode" == "660 root $GROUP" ]]
}

owned_sessions() {
    local s1 s2
    s1=$("$SESSIOND" start --session 1 --owner alice --json) || return 1
    s2=$("$SESSIOND" start --session 2 --owner bob --json) || return 1
    [[ $(json .owner_uid <<<"$s1") == "$(id -u alice)" && $(json .owner_uid <<<"$s2") == "$(id -u bob)" ]]
}

# Everything root sees, to show a denied request changed nothing.
ROOT_VIEW='map({session, owner_uid, address})'
root_view() { "$SESSIOND" status --json | jq -c "$ROOT_VIEW"; }

alice_sees_only_hers() {
    local out; out=$("${ALICE[@]}" "$SESSIOND" status --json) || return 1
    echo "$out"
    [[ $(jq -c 'map(.session)' <<<"$out") == "[1]" ]] &&
    [[ $("${BOB[@]}" "$SESSIOND" status --json | jq -c 'map(.session)') == "[2]" ]] &&
    [[ $("${ALICE[@]}" "$SESSIOND" status --session 1 --json | json .session) == 1 ]]
}

alice_not_bobs() {
    expect_exit 1 "permission denied" "${ALICE[@]}" "$SESSIOND" status --session 2 &&
    # a session that does not exist looks the same as someone else's
    expect_exit 1 "permission denied" "${ALICE[@]}" "$SESSIOND" status --session 77
}

alice_cannot_act() {
    local before; before=$(root_view)
    expect_exit 1 "permission denied" "${ALICE[@]}" "$SESSIOND" start || return 1
    expect_exit 1 "permission denied" "${ALICE[@]}" "$SESSIOND" start --session 5 --owner alice || return 1
    expect_exit 1 "permission denied" "${ALICE[@]}" "$SESSIOND" stop --session 1 || return 1
    expect_exit 1 "permission denied" "${ALICE[@]}" "$SESSIOND" stop --session 2 || return 1
    expect_exit 1 "permission denied" "${ALICE[@]}" "$SESSIOND" stop --all || return 1
    local after; after=$(root_view)
    echo "before $before"; echo "after  $after"
    [[ "$before" == "$after" ]] && ! ip netns list | grep -qE '^sessiond-5( |$)' &&
    ip netns list | grep -qE '^sessiond-1( |$)' && ip netns list | grep -qE '^sessiond-2( |$)'
}

alice_cannot_exec() {
    expect_exit 1 "needs root" "${ALICE[@]}" "$SESSIOND" exec --session 1 -- true &&
    expect_exit 1 "permission denied" "${ALICE[@]}" "$SESSIOND" exec --session 2 -- true
}

outsider_cannot_connect() {
    expect_exit 1 "cannot reach" "${CAROL[@]}" "$SESSIOND" status &&
    grep -qi "permission denied" <<<"$OUT"
}

# ------------------------------------------------------------ protocol abuse (as root)

malformed_json() {
    local r; r=$(raw line '{nope') || return 1; echo "$r"
    [[ $(json .result <<<"$r") == error && $(json .kind <<<"$r") == bad_request ]] && grep -q malformed <<<"$r"
}

unknown_op() {
    local r; r=$(raw line '{"op":"explode","session":1}') || return 1; echo "$r"
    [[ $(json .result <<<"$r") == error ]] && grep -q explode <<<"$r"
}

bad_sid_on_the_wire() {
    local r
    r=$(raw line '{"op":"start","session":0}') || return 1; echo "$r"
    [[ $(json .result <<<"$r") == error ]] && grep -q "session id 0" <<<"$r" || return 1
    r=$(raw line '{"op":"stop","session":16777215}') || return 1; echo "$r"
    [[ $(json .result <<<"$r") == error ]] && grep -q "out of range" <<<"$r" || return 1
    ! ip netns list | grep -qE '^sessiond-(0|16777215)( |$)'
}

hundred_mb_line() {
    local before after r
    before=$(rss_kb)
    r=$(raw huge $((100 << 20))) || return 1
    after=$(rss_kb)
    echo "$r"; echo "VmRSS before ${before} kB, after ${after} kB"
    [[ $(jq -r .reply <<<"$r" | json .kind) == bad_request ]] || { echo "no bad_request reply"; return 1; }
    jq -r .reply <<<"$r" | grep -q "longer than" || { echo "reply does not say the line is too long"; return 1; }
    [[ $(jq -r .end <<<"$r") != null ]] || { echo "daemon did not close the connection"; return 1; }
    ((after - before < 20 * 1024)) || { echo "RSS grew by $((after - before)) kB"; return 1; }
}

idle_connections_do_not_block() {
    local out=/run/idle.out pid rc=0 t0 t1
    raw idle 1000 30 >"$out" 2>&1 & pid=$!
    wait_for 15 jq -e '.held == 1000' "$out" || { cat "$out"; kill "$pid"; wait "$pid"; return 1; }
    echo "daemon fds: $(find "/proc/$DAEMON_PID/fd" -mindepth 1 | wc -l)"
    t0=$(date +%s%N)
    timeout 5 "$SESSIOND" status || rc=1
    t1=$(date +%s%N)
    echo "status answered in $(((t1 - t0) / 1000000)) ms with 1000 idle connections open"
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    return "$rc"
}

thousand_concurrent() {
    local r; r=$(raw concurrent 1000 20) || return 1; echo "$r"
    [[ $(json .ok <<<"$r") == 1000 && $(json .errors <<<"$r") == 0 ]]
}

half_request() {
    raw half && sleep 0.2 && timeout 5 "$SESSIOND" status >/dev/null
}

still_the_same_daemon() {
    if ! [[ "$DAEMON_PID" == "$FIRST_PID" ]] || ! kill -0 "$DAEMON_PID" || ! grep -q sessiond "/proc/$DAEMON_PID/cmdline"; then
        echo "daemon $FIRST_PID is gone"; tail -20 "$DAEMON_LOG"; return 1
    fi
    local s3; s3=$("$SESSIOND" start --session 3 --json) || return 1
    echo "$s3"
    [[ $(json .state <<<"$s3") == up ]] && ip netns list | grep -qE '^sessiond-3( |$)' &&
    [[ $(root_view | jq -c 'map(.session)') == "[1,2,3]" ]] &&
    # and the permissions still hold
    [[ $("${ALICE[@]}" "$SESSIOND" status --json | jq -c 'map(.session)') == "[1]" ]]
}

cleanup() {
    "$SESSIOND" stop --all >/dev/null &&
    ! ip netns list | grep -q '^sessiond-' && [[ -z "$(ls -A "$STATE/sessions")" ]]
}

check "users alice, bob (in $GROUP) and carol (not)" users_exist
check "daemon starts; socket is 0660 root:$GROUP" daemon_with_group
check "root starts session 1 for alice, 2 for bob" owned_sessions
check "alice: status lists only session 1 (bob: only 2)" alice_sees_only_hers
check "alice: status --session 2 (and 77): exit 1, permission denied" alice_not_bobs
check "alice: start, stop --session, stop --all denied; nothing changed" alice_cannot_act
check "alice: exec --session 1 needs root; --session 2 denied" alice_cannot_exec
check "carol (not in $GROUP) cannot connect: exit 1" outsider_cannot_connect
check "raw: malformed JSON gets a 'malformed' error" malformed_json
check "raw: unknown op gets an error naming it" unknown_op
check "raw: out-of-range session ids are refused" bad_sid_on_the_wire
check "raw: 100 MB line: 'too long' error, closed, RSS +<20 MB" hundred_mb_line
check "raw: 1000 idle connections; status still answers within 5 s" idle_connections_do_not_block
check "raw: 1000 concurrent status requests all answered" thousand_concurrent
check "raw: half a request then disconnect" half_request
check "same daemon PID still serves; start --session 3 works" still_the_same_daemon
check "stop --all leaves nothing" cleanup
kill_daemon TERM
finish
