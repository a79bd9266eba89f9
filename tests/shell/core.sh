#!/usr/bin/env bash
# Root integration tests for the session core (issue 2), run in a private sandbox.
# Usage: tests/shell/core.sh [macvlan|veth]   (default: both)
source "$(dirname "$0")/lib.sh"
enter_sandbox "$@"

KINDS=("${@:-macvlan}")
[[ $# -eq 0 ]] && KINDS=(macvlan veth)
POOL="$SBX_POOL_FIRST-$SBX_POOL_LAST/24"
STATE=/var/lib/sessiond

daemon_args() { # $1 kind
    local a=(--uplink "$SBX_UPLINK" --addressing static --pool "$POOL" --gateway "$SBX_GATEWAY" --state-dir "$STATE")
    [[ $1 == veth ]] && a+=(--link veth --bridge "$SBX_BRIDGE")
    echo "${a[@]}"
}

# Holds 0.0.0.0:9000 and 127.0.0.1:8080 (and the session loopback :8080) until killed.
BINDER='
import socket, sys, time, os
socks = []
for host, port in (("0.0.0.0", 9000), ("127.0.0.1", 8080), (os.environ["SESSIOND_LOOPBACK"], 8081)):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    s.bind((host, port)); s.listen(8); socks.append(s)
print("bound", flush=True)
time.sleep(60)
'
CONNECT='
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
print("connected")
'

two_sessions_distinct() {
    S1=$("$SESSIOND" start --session 1 --json) || return 1
    S2=$("$SESSIOND" start --session 2 --json) || return 1
    A1=$(json .address <<<"$S1"); A2=$(json .address <<<"$S2")
    L1=$(json .loopback <<<"$S1"); L2=$(json .loopback <<<"$S2")
    echo "s1 $A1 $L1, s2 $A2 $L2"
    [[ $A1 != "$A2" && $L1 == 127.0.0.2 && $L2 == 127.0.0.3 && $A1 == 10.77.0.* && $A2 == 10.77.0.* ]]
}

json_has_all_fields() {
    for f in session netns interface mac address gateway dns loopback addressing state; do
        json "has(\"$f\")" <<<"$S1" | grep -qx true || { echo "missing $f"; return 1; }
    done
    [[ $(json .netns <<<"$S1") == sessiond-1 && $(json .interface <<<"$S1") == eth0 && $(json .state <<<"$S1") == up ]]
}

ip_netns_sees_address() {
    ip netns list | grep -qw sessiond-1 &&
    ip netns exec sessiond-1 ip -4 addr show dev eth0 | grep -q "inet ${A1%/*}/" &&
    ip netns exec sessiond-1 ip -4 addr show dev lo | grep -q "inet 127.0.0.2/32"
}

both_bind_same_ports() {
    local o1=/run/bind1.out o2=/run/bind2.out
    "$SESSIOND" exec --session 1 -- python3 -c "$BINDER" >"$o1" 2>&1 & B1=$!
    "$SESSIOND" exec --session 2 -- python3 -c "$BINDER" >"$o2" 2>&1 & B2=$!
    wait_for 5 grep -q bound "$o1" && wait_for 5 grep -q bound "$o2"
    local r=$?
    cat "$o1" "$o2"
    return $r
}

lan_reach_and_loopback_isolation() {
    # session 1 reaches session 2's LAN address on the port both hold
    "$SESSIOND" exec --session 1 -- python3 -c "$CONNECT" "${A2%/*}" 9000 || { echo "s1 cannot reach s2 over the LAN"; return 1; }
    # session 1 reaches its own loopback service...
    "$SESSIOND" exec --session 1 -- python3 -c "$CONNECT" 127.0.0.2 8081 || { echo "s1 cannot reach its own loopback"; return 1; }
    # ...session 2 cannot reach it (127.0.0.2 in s2 is s2's own lo, with nothing on 8081... but
    # s2 holds 127.0.0.3:8081, so 127.0.0.2:8081 is refused there)
    if "$SESSIOND" exec --session 2 -- python3 -c "$CONNECT" 127.0.0.2 8081; then echo "s2 reached s1's loopback service"; return 1; fi
    # the host (root) does: the loopback bridge is on by default (loopback_reach owner;
    # tests/shell/bridge.sh tests it)
    python3 -c "$CONNECT" 127.0.0.2 8081 || { echo "the host (root) cannot reach s1's loopback service"; return 1; }
}

files_written() {
    grep -q "^nameserver $SBX_GATEWAY" /etc/netns/sessiond-1/resolv.conf &&
    grep -qP "^${A1%/*}\t$(hostname)" /etc/netns/sessiond-1/hosts &&
    "$SESSIOND" exec --session 1 -- getent hosts "$(hostname)" | grep -q "^${A1%/*} " &&
    ip netns exec sessiond-1 getent ahostsv4 localhost | grep -q "^127.0.0.1 "
}

start_is_idempotent() {
    local again; again=$("$SESSIOND" start --session 1 --json) || return 1
    [[ $(json .address <<<"$again") == "$A1" && $(json .mac <<<"$again") == $(json .mac <<<"$S1") ]]
}

restart_readopts() {
    local before after
    before=$("$SESSIOND" status --json | jq -c 'map({session, address, mac, loopback})')
    kill_daemon 9
    ip netns list | grep -qw sessiond-1 || { echo "netns died with the daemon"; return 1; }
    start_daemon $(daemon_args "$KIND") || return 1
    after=$("$SESSIOND" status --json | jq -c 'map({session, address, mac, loopback})')
    echo "before $before"; echo "after  $after"
    [[ "$before" == "$after" && $(jq length <<<"$after") == 2 ]] &&
    ip netns exec sessiond-2 ip -4 addr show dev eth0 | grep -q "inet ${A2%/*}/"
}

sigterm_leaves_sessions_running() {
    kill_daemon TERM
    ip netns exec sessiond-1 ip -4 addr show dev eth0 | grep -q "inet ${A1%/*}/" || return 1
    start_daemon $(daemon_args "$KIND") && [[ $("$SESSIOND" status --json | jq length) == 2 ]]
}

# After a reboot /etc/netns still has the entries of the sessions that were running (symlinks into
# /run, now dangling); the next daemon removes them, and leaves other software's entries alone.
restart_removes_files_of_dead_sessions() {
    mkdir -p /etc/netns/blue
    ln -sfn /run/sessiond/etc-netns/sessiond-77 /etc/netns/sessiond-77
    kill_daemon TERM
    start_daemon $(daemon_args "$KIND") || return 1
    ls -la /etc/netns
    [[ ! -L /etc/netns/sessiond-77 && -d /etc/netns/blue && -e /etc/netns/sessiond-1/resolv.conf ]] || return 1
    rmdir /etc/netns/blue
}

stop_leaves_nothing() {
    kill "$B1" "$B2" 2>/dev/null; wait "$B1" "$B2" 2>/dev/null
    "$SESSIOND" stop --session 1 | grep -q "session 1 stopped" || return 1
    "$SESSIOND" stop --session 1 | grep -q "not running" || return 1
    "$SESSIOND" stop --all || return 1
    local left=""
    ip netns list | grep -q sessiond- && left+=" netns:$(ip netns list | grep sessiond- | tr '\n' ' ')"
    ip -o link show | grep -q ' sdv' && left+=" links:$(ip -o link show | grep -o ' sdv[0-9]*')"
    ls /run/netns | grep -q sessiond- && left+=" /run/netns files"
    [[ -z "$(ls -A /etc/netns 2>/dev/null)" ]] || left+=" /etc/netns:$(ls /etc/netns)"
    [[ -z "$(ls -A $STATE/sessions)" ]] || left+=" state:$(ls $STATE/sessions)"
    [[ -z "$left" ]] || { echo "left behind:$left"; return 1; }
}

# Stop unmounts a macvlan session's namespace and leaves its interface to the kernel: the
# namespace itself must die, not linger unmounted (held by something the daemon forgot, which
# the daemon would report with a "still in use" warning after deleting the interface itself).
# The uplink shows it: it is promiscuous while any macvlan's MAC is on it.
uplink_promiscuity() { ip -d link show "$SBX_UPLINK" | grep -oE 'promiscuity [0-9]+'; }
PROMISC0=$(uplink_promiscuity)
stopped_namespaces_die() {
    wait_for 3 eval '[[ $(uplink_promiscuity) == "$PROMISC0" ]]' || { echo "uplink still has macvlans: $(uplink_promiscuity), was $PROMISC0"; return 1; }
    local held; held=$(grep -c "still in use" "$DAEMON_LOG")
    [[ $held == "${1:-0}" ]] || { grep "still in use" "$DAEMON_LOG"; return 1; }
}

# A process left in a stopped session keeps its namespace alive: the session interface in it
# must still go (no address left in use after the release), and the sid must start again.
held_namespace_loses_its_uplink() {
    "$SESSIOND" start --session 5 >/dev/null || return 1
    ip netns exec sessiond-5 sleep 30 &
    local h=$!
    # wait until the sleeper is in the session's namespace
    wait_for 3 eval "[[ \$(readlink /proc/$h/ns/net) != \$(readlink /proc/self/ns/net) ]]" || { kill $h; return 1; }
    "$SESSIOND" stop --session 5 >/dev/null || { kill $h; return 1; }
    local gone=0
    wait_for 3 eval "! nsenter --net=/proc/$h/ns/net ip link show eth0 >/dev/null 2>&1" && gone=1
    echo "left in the held namespace: $(nsenter --net=/proc/$h/ns/net ip -br link | tr '\n' ' ')"
    "$SESSIOND" start --session 5 >/dev/null; local rc=$?
    kill $h; wait $h 2>/dev/null
    "$SESSIOND" stop --session 5 >/dev/null
    [[ $gone == 1 && $rc == 0 ]]
}

# The kernel frees a stopped session's interface a little after stop answers; a new start of the
# same sid at once must not trip over the old MAC.
restart_same_sid_at_once() {
    local i
    for i in $(seq 10); do
        "$SESSIOND" start --session 6 >/dev/null || { echo "start $i failed"; return 1; }
        "$SESSIOND" stop --session 6 >/dev/null || { echo "stop $i failed"; return 1; }
    done
}

hundred_concurrent_starts() {
    local pids=() i fail=0
    for i in $(seq 10 109); do "$SESSIOND" start --session "$i" --json >/run/c$i.json 2>&1 & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || fail=$((fail + 1)); done
    local n addrs
    n=$("$SESSIOND" status --json | jq length)
    addrs=$(cat /run/c*.json | jq -r .address | sort -u | wc -l)
    echo "failed=$fail sessions=$n distinct_addresses=$addrs"
    "$SESSIOND" stop --all >/dev/null
    [[ $fail == 0 && $n == 100 && $addrs == 100 && -z "$(ip netns list | grep sessiond-)" ]]
}

for KIND in "${KINDS[@]}"; do
    echo "--- link kind: $KIND"
    rm -rf "$STATE"
    check "$KIND: daemon starts" start_daemon $(daemon_args "$KIND")
    check "$KIND: two sessions get distinct addresses and loopbacks" two_sessions_distinct
    check "$KIND: start --json carries every documented field" json_has_all_fields
    check "$KIND: ip netns exec sees the address and loopback" ip_netns_sees_address
    check "$KIND: both sessions bind 0.0.0.0:9000 and 127.0.0.1:8080 at once" both_bind_same_ports
    check "$KIND: LAN reachable between sessions, loopback isolated" lan_reach_and_loopback_isolation
    check "$KIND: resolv.conf and hosts (hostname -> session address)" files_written
    check "$KIND: start is idempotent" start_is_idempotent
    check "$KIND: kill -9 and restart re-adopt both sessions unchanged" restart_readopts
    check "$KIND: SIGTERM leaves sessions running" sigterm_leaves_sessions_running
    check "$KIND: restart removes the /etc/netns entries of sessions gone with a reboot" restart_removes_files_of_dead_sessions
    check "$KIND: stop leaves no netns, link, file or state" stop_leaves_nothing
    if [[ $KIND == macvlan ]]; then
        check "$KIND: stopped sessions' namespaces die with their macvlans (none held)" stopped_namespaces_die 0
    fi
    check "$KIND: a process left in a stopped session: its namespace loses the uplink; the sid starts again" held_namespace_loses_its_uplink
    check "$KIND: stop and start the same sid 10 times back to back" restart_same_sid_at_once
    if [[ $KIND == macvlan ]]; then
        check "$KIND: ... and those namespaces die too (only the held one was held)" stopped_namespaces_die 1
    fi
    check "$KIND: 100 concurrent starts" hundred_concurrent_starts
    kill_daemon TERM
done
finish
