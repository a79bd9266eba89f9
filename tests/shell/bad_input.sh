#!/usr/bin/env bash
# Root integration tests for bad input, run in a private sandbox: every refusal gives the
# documented exit status (2 usage, 1 refused/failed), a message naming the problem, and leaves
# nothing half-made (no sessiond-* netns, no sdv* link, no /etc/netns dir, no state file,
# no control socket from a daemon that refused to start).
# Usage: tests/shell/bad_input.sh
# shellcheck source=lib.sh disable=SC2012,SC2317  # SC2317: functions run through `check`
source "$(dirname "$0")/lib.sh"
enter_sandbox "$@"   # (refuses to go on outside scripts/sandbox)

STATE=/var/lib/sessiond
PREFIX=${SBX_SUBNET#*/}
POOL="$SBX_POOL_FIRST-$SBX_POOL_LAST/$PREFIX"
# Two addresses: the first two of the sandbox pool.
POOL2="$SBX_POOL_FIRST-${SBX_POOL_FIRST%.*}.$((${SBX_POOL_FIRST##*.} + 1))/$PREFIX"
NET=${SBX_SUBNET%/*}; NET=${NET%.*}   # e.g. 10.77.0
# A daemon that is expected to refuse gets its own socket and state dir, never the suite's.
BAD_SOCK=/run/sessiond-bad/bad.sock
BAD_STATE=/run/sessiond-bad/state
BAD_CONF=/run/sessiond-bad/conf
VALID=(--uplink "$SBX_UPLINK" --addressing static --pool "$POOL" --gateway "$SBX_GATEWAY")


# nothing_left [SID]: nothing of SID (or of any session, without SID) exists anywhere.
nothing_left() {
    local sid=${1:-} left=""
    if [[ -n "$sid" ]]; then
        ip netns list | grep -qE "^sessiond-$sid( |$)" && left+=" netns:sessiond-$sid"
        ip -o link show | grep -qE "^[0-9]+: sdv${sid}[:@]" && left+=" link:sdv$sid"
        [[ -e /run/netns/sessiond-$sid ]] && left+=" /run/netns/sessiond-$sid"
        [[ -e /etc/netns/sessiond-$sid ]] && left+=" /etc/netns/sessiond-$sid"
        [[ -e $STATE/sessions/$sid.json ]] && left+=" state:$sid.json"
    else
        ip netns list | grep -q '^sessiond-' && left+=" netns:$(ip netns list | grep '^sessiond-' | cut -d' ' -f1 | tr '\n' ' ')"
        ip -o link show | grep -qE '^[0-9]+: sdv' && left+=" links:$(ip -o link show | grep -oE '^[0-9]+: sdv[0-9]+' | tr '\n' ' ')"
        [[ -z "$(ls -A /etc/netns 2>/dev/null)" ]] || left+=" /etc/netns:$(ls /etc/netns | tr '\n' ' ')"
        [[ -z "$(ls -A "$STATE/sessions" 2>/dev/null)" ]] || left+=" state:$(ls "$STATE/sessions" | tr '\n' ' ')"
    fi
    # a refused daemon leaves no socket and no session state of its own
    [[ -e $BAD_SOCK ]] && left+=" socket:$BAD_SOCK"
    [[ -z "$(ls -A "$BAD_STATE/sessions" 2>/dev/null)" ]] || left+=" bad-state:$(ls "$BAD_STATE/sessions" | tr '\n' ' ')"
    [[ -z "$left" ]] || { echo "left behind:$left"; return 1; }
}

# bad_daemon RC WORD ARGS...: `sessiond daemon ARGS` on the scratch socket refuses as said.
bad_daemon() {
    local want=$1 word=$2; shift 2
    rm -rf "$BAD_STATE" "$BAD_SOCK"
    expect_exit "$want" "$word" "$SESSIOND" daemon --socket "$BAD_SOCK" --state-dir "$BAD_STATE" "$@" && nothing_left
}

# ------------------------------------------------------------ session ids (clap, client side)

bad_sid() { # $1 sid, $2 word
    expect_exit 2 "$2" "$SESSIOND" start --session "$1" && nothing_left &&
    [[ $("$SESSIOND" status --json | jq length) == 0 ]]
}
sid_zero() { bad_sid 0 "session id 0"; }
sid_negative() { bad_sid -1 "negative"; }
sid_not_a_number() { bad_sid abc "not a number"; }
sid_just_too_large() { bad_sid 16777215 "out of range"; }
sid_overflows_u64() { bad_sid 99999999999999999999 "out of range"; }
loopback_zero() { expect_exit 2 "session id 0" "$SESSIOND" loopback --session 0; }
loopback_max() {
    local out; out=$("$SESSIOND" loopback --session 16777214) || return 1
    echo "$out"; [[ "$out" == 127.255.255.255 ]]
}

# ------------------------------------------------------------ daemon configuration

uplink_missing() { bad_daemon 1 "does not exist" --uplink no-such-nic --addressing static --pool "$POOL" --gateway "$SBX_GATEWAY"; }
uplink_down() {
    ip link show br-down >/dev/null 2>&1 || ip link add br-down type bridge || return 1
    ip link set br-down down
    bad_daemon 1 "is down" --uplink br-down --addressing static --pool "$POOL" --gateway "$SBX_GATEWAY"
}
veth_without_bridge() { bad_daemon 2 "--bridge" "${VALID[@]}" --link veth; }
veth_bridge_missing() { bad_daemon 1 "bridge no-such-br does not exist" "${VALID[@]}" --link veth --bridge no-such-br; }
pool_no_range() { bad_daemon 2 "malformed" --uplink "$SBX_UPLINK" --addressing static --pool "$NET.5/$PREFIX" --gateway "$SBX_GATEWAY"; }
pool_not_addresses() { bad_daemon 2 "malformed" --uplink "$SBX_UPLINK" --addressing static --pool "a-b/$PREFIX" --gateway "$SBX_GATEWAY"; }
pool_empty() { bad_daemon 2 "empty" --uplink "$SBX_UPLINK" --addressing static --pool "$NET.150-$NET.100/$PREFIX" --gateway "$SBX_GATEWAY"; }
gateway_in_range() { bad_daemon 2 "conflicts with the pool range" --uplink "$SBX_UPLINK" --addressing static --pool "$POOL" --gateway "$NET.150"; }
gateway_outside() { bad_daemon 2 "not inside the pool's network" --uplink "$SBX_UPLINK" --addressing static --pool "$POOL" --gateway 192.0.2.1; }
static_without_pool() { bad_daemon 2 "--pool" --uplink "$SBX_UPLINK" --addressing static --gateway "$SBX_GATEWAY"; }
# addressing none (IPv6-only sessions) with what cannot work there
ipv6_only_refusals() {
    bad_daemon 2 'wait_for = "both" would never be met' --uplink "$SBX_UPLINK" --addressing none --wait-for both &&
        bad_daemon 2 'ipv6 = "off" gives them no IPv6' --uplink "$SBX_UPLINK" --addressing none --ipv6 off &&
        bad_daemon 2 'needs mode = "namespace"' --uplink "$SBX_UPLINK" --addressing none --mode programs
}

config_syntax_error() {
    mkdir -p "$BAD_CONF"
    printf 'uplink = "%s"\naddressing = \n' "$SBX_UPLINK" >"$BAD_CONF/syntax.toml"
    bad_daemon 2 "$BAD_CONF/syntax.toml" --config "$BAD_CONF/syntax.toml"
}
config_unknown_key() {
    mkdir -p "$BAD_CONF"
    printf 'uplink = "%s"\nuplnk = "%s"\n' "$SBX_UPLINK" "$SBX_UPLINK" >"$BAD_CONF/unknown.toml"
    bad_daemon 2 "uplnk" --config "$BAD_CONF/unknown.toml" &&
    grep -qF "$BAD_CONF/unknown.toml" <<<"$OUT"
}
# The default file is read without --config too (/etc is an overlay inside the sandbox).
default_config_syntax_error() {
    mkdir -p /etc/sessiond
    printf 'pool = [\n' >/etc/sessiond/sessiond.toml
    bad_daemon 2 /etc/sessiond/sessiond.toml "${VALID[@]}"
    local r=$?
    rm -rf /etc/sessiond
    return "$r"
}
config_missing() { bad_daemon 1 "$BAD_CONF/absent.toml" "${VALID[@]}" --config "$BAD_CONF/absent.toml"; }

# ------------------------------------------------------------ against a live daemon

daemon_up() {
    rm -rf "$STATE"
    start_daemon --uplink "$SBX_UPLINK" --addressing static --pool "$POOL2" --gateway "$SBX_GATEWAY" --state-dir "$STATE" &&
    nothing_left
}

two_sessions_fill_the_pool() {
    "$SESSIOND" start --session 1 && "$SESSIOND" start --session 2 &&
    [[ $("$SESSIOND" status --json | jq length) == 2 ]]
}

third_start_exhausted() {
    expect_exit 1 "exhausted" "$SESSIOND" start --session 3 || return 1
    nothing_left 3 || return 1
    expect_exit 1 "not running" "$SESSIOND" status --session 3 || return 1
    # and the two that were there are untouched
    [[ $("$SESSIOND" status --json | jq -c 'map(.session)') == "[1,2]" ]] &&
    ip netns list | grep -qE '^sessiond-1( |$)' && ip netns list | grep -qE '^sessiond-2( |$)'
}

no_daemon_env() { SESSIOND_SOCKET=/run/nowhere/sessiond.sock expect_exit 1 "cannot reach" "$SESSIOND" status; }
no_daemon_flag() { expect_exit 1 "cannot reach" "$SESSIOND" status --socket /run/nowhere/sessiond.sock; }
stop_needs_a_target() { expect_exit 2 "--session" "$SESSIOND" stop; }
stop_session_and_all() { expect_exit 2 "cannot be used with" "$SESSIOND" stop --session 1 --all; }

# sessions_intact: both sessions still exist for real, not just in the daemon's table.
sessions_intact() {
    local s
    for s in 1 2; do
        ip netns list | grep -qE "^sessiond-$s( |$)" || { echo "netns sessiond-$s is gone"; return 1; }
        [[ -e /etc/netns/sessiond-$s/resolv.conf ]] || { echo "/etc/netns/sessiond-$s/resolv.conf is gone"; return 1; }
        "$SESSIOND" exec --session "$s" -- ip -4 addr show dev eth0 | grep -q "inet $NET\." || { echo "session $s has no address"; return 1; }
    done
}

first_keeps_serving() {
    kill -0 "$DAEMON_PID" || { echo "first daemon died"; return 1; }
    [[ -S $SESSIOND_SOCKET ]] || { echo "the first daemon's socket was removed"; return 1; }
    [[ $(timeout 5 "$SESSIOND" status --json | jq -c 'map(.session)') == "[1,2]" ]] || { echo "status changed"; return 1; }
    sessions_intact
}

second_daemon_same_args() {
    expect_exit 1 "already listening" "$SESSIOND" daemon --socket "$SESSIOND_SOCKET" --uplink "$SBX_UPLINK" \
        --addressing static --pool "$POOL2" --gateway "$SBX_GATEWAY" --state-dir "$STATE" &&
    first_keeps_serving
}

# The refused second daemon must not touch the sessions the first one runs, whatever its
# other settings (here: another state dir, e.g. the default one).
second_daemon_other_state_dir() {
    expect_exit 1 "already listening" "$SESSIOND" daemon --socket "$SESSIOND_SOCKET" --uplink "$SBX_UPLINK" \
        --addressing static --pool "$POOL2" --gateway "$SBX_GATEWAY" --state-dir /run/sessiond-bad/other-state &&
    first_keeps_serving
}

# Another socket but the same state dir: refused too (a state-dir lock), and it leaves the first
# daemon's sessions and socket alone and removes the socket it had just bound.
second_daemon_same_state_dir() {
    local other=/run/sessiond-bad/other.sock
    expect_exit 1 "already using the state dir" "$SESSIOND" daemon --socket "$other" --uplink "$SBX_UPLINK" \
        --addressing static --pool "$POOL2" --gateway "$SBX_GATEWAY" --state-dir "$STATE" &&
    [[ ! -e $other ]] && first_keeps_serving
}

cleanup_leaves_nothing() {
    "$SESSIOND" stop --all && nothing_left
}

rm -rf /run/sessiond-bad; mkdir -p /run/sessiond-bad
check "daemon starts (2-address pool)" daemon_up
check "start --session 0: exit 2, names sid 0" sid_zero
check "start --session -1: exit 2, negative" sid_negative
check "start --session abc: exit 2, not a number" sid_not_a_number
check "start --session 16777215: exit 2, out of range" sid_just_too_large
check "start --session 99999999999999999999: exit 2, out of range" sid_overflows_u64
check "loopback --session 0: exit 2" loopback_zero
check "loopback --session 16777214 prints 127.255.255.255" loopback_max
check "daemon: uplink that does not exist: exit 1" uplink_missing
check "daemon: uplink that is down: exit 1" uplink_down
check "daemon: --link veth without --bridge: exit 2" veth_without_bridge
check "daemon: --link veth with a missing bridge: exit 1" veth_bridge_missing
check "daemon: pool without a range: exit 2, malformed" pool_no_range
check "daemon: pool a-b: exit 2, malformed" pool_not_addresses
check "daemon: pool last < first: exit 2, empty" pool_empty
check "daemon: gateway inside the pool range: exit 2" gateway_in_range
check "daemon: gateway outside the subnet: exit 2" gateway_outside
check "daemon: static without a pool: exit 2" static_without_pool
check "daemon: addressing none with wait_for both, ipv6 off or programs mode: exit 2, each named" ipv6_only_refusals
check "daemon: config syntax error: exit 2, names the file" config_syntax_error
check "daemon: config unknown key: exit 2, names the key" config_unknown_key
check "daemon: default config file with a syntax error: exit 2, names it" default_config_syntax_error
check "daemon: explicit --config that does not exist: exit 1" config_missing
check "two sessions fill the 2-address pool" two_sessions_fill_the_pool
check "third start: exit 1, exhausted, nothing left for sid 3" third_start_exhausted
check "no daemon (SESSIOND_SOCKET): exit 1, cannot reach" no_daemon_env
check "no daemon (--socket): exit 1, cannot reach" no_daemon_flag
check "stop with neither --session nor --all: exit 2" stop_needs_a_target
check "stop --session with --all: exit 2" stop_session_and_all
check "second daemon, same settings: refused, first keeps serving" second_daemon_same_args
check "second daemon, other state dir: refused, first's sessions untouched" second_daemon_other_state_dir
check "second daemon, other socket, same state dir: refused, first's sessions untouched" second_daemon_same_state_dir
check "stop --all leaves nothing" cleanup_leaves_nothing
kill_daemon TERM
finish
