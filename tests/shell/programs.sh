#!/usr/bin/env bash
# Root suite for programs mode (issue 14): no namespace, eBPF hooks on each session's cgroup
# rewrite the listed programs' socket addresses on the host's own stack. Run in a sandbox.
# Checks: two sessions' listed python3 both bind 127.0.0.1:8080 (landing on 127.0.0.2/3), the
# host reaches both, preferred loopback (a session's own listener first, else the host's),
# UDP both ways, getsockname, an unlisted program left alone, bad settings refused by name,
# and stop leaving nothing (bpftool cgroup, cgroups, ip addr/rule/link); the hooks survive a
# daemon restart (kill -9 and SIGTERM: pinned in bpffs) and the next daemon adopts the session.
# `ports` lists a listed program's 127.0.0.1:8080 under its session as 127.0.0.2:8080, rewritten.
# Address virtualization with a static pool and with DHCP (the sandbox's dnsmasq): two leases
# on the sessions' own links, a LAN peer sees the leased addresses, a kill -9 restart re-adopts
# (INIT-REBOOT), stop releases (gone from dnsmasq's DB) and leaves no address, rule, route, link
# or neighbour; a host socket on 0.0.0.0:68 makes the start fail naming port 68.
#
# The suite moves itself into a cgroup of its own (under the cgroup v2 root) before it starts
# the daemon: the daemon makes the sessions' cgroups inside its own, so every cgroup and hook
# of this run lives under that one, never on the root cgroup.
source "$(dirname "$0")/lib.sh"
enter_sandbox "$@"

PY=/usr/bin/python3          # its process name (comm) is python3: the listed program
WORK=/run/programs-test
mkdir -p "$WORK/bin"
ln -sf "$PY" "$WORK/bin/pyother"   # the same interpreter under a name that is not listed

CG_ROOT=$(findmnt -n -t cgroup2 -o TARGET | head -1)
[[ -n $CG_ROOT ]] || { echo "SKIP: programs.sh: no cgroup v2 hierarchy mounted"; exit 0; }
command -v bpftool >/dev/null || { echo "FAIL: bpftool missing (scripts/deps installs it)"; exit 1; }
TEST_CG=$CG_ROOT/sessiond-test.$$
mkdir "$TEST_CG" && echo $$ >"$TEST_CG/cgroup.procs" || { echo "cannot make the suite's cgroup $TEST_CG"; exit 1; }

PIDS=()
S1= S2= CG1= CG2= S3= S4= CG3= CG4= A3= A4=
cleanup() {
    kill_daemon
    local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    echo $$ >"$CG_ROOT/cgroup.procs" 2>/dev/null
    # Whatever is still in the suite's cgroups goes back to the root one, then they go.
    local d pid
    for d in $(find "$TEST_CG" -depth -type d 2>/dev/null); do
        for pid in $(cat "$d/cgroup.procs" 2>/dev/null); do echo "$pid" >"$CG_ROOT/cgroup.procs" 2>/dev/null; done
        rmdir "$d" 2>/dev/null
    done
}
trap cleanup EXIT

# in_session CG CMD...: runs CMD in the session cgroup CG (as a login that joined it would).
in_session() { local cg=$1; shift; bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$@"; }
# bg_in_session CG CMD...: the same in the background; $! is CMD's pid.
bg_in_session() { local cg=$1; shift; bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$@" & }

SERVE='
import http.server, os, socketserver, sys
os.chdir(sys.argv[3])
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), http.server.SimpleHTTPRequestHandler).serve_forever()
'
GET='
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())
except Exception as e:
    print("ERR", e)
'
UDP_ECHO='
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
print("bound", s.getsockname()[0], flush=True)
while True:
    data, peer = s.recvfrom(100); s.sendto(data + b" from " + sys.argv[3].encode(), peer)
'
UDP_ASK='
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b"hi", (sys.argv[1], int(sys.argv[2])))
try:
    data, peer = s.recvfrom(100); print(data.decode(), "peer", peer[0])
except Exception as e:
    print("ERR", e)
'
BIND_NAME='
import socket, subprocess, sys
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1)
print("getsockname", s.getsockname()[0])
print(subprocess.run(["ss", "-Hltn", "sport = :" + sys.argv[1]], capture_output=True, text=True).stdout.strip())
'
for n in 1 2; do mkdir -p "$WORK/www$n" && echo "session$n" >"$WORK/www$n/who"; done
mkdir -p "$WORK/wwwhost" && echo host >"$WORK/wwwhost/who"

RULES_BEFORE=$(ip rule); LINKS_BEFORE=$(ip -o link | awk -F': ' '{print $2}' | sort)

start_daemon --uplink "$SBX_UPLINK" --mode programs --programs python3 --state-dir /run/sessiond-programs-state || exit 1

start_two() {
    S1=$("$SESSIOND" start --session 1 --json) && S2=$("$SESSIOND" start --session 2 --json) || return 1
    CG1=$(json .programs.cgroup <<<"$S1"); CG2=$(json .programs.cgroup <<<"$S2")
    echo "s1: $(jq -c '{loopback, netns, programs}' <<<"$S1")"
    echo "s2: $(jq -c '{loopback, netns, programs}' <<<"$S2")"
    [[ $CG1 == "$TEST_CG/sessiond-1" && $CG2 == "$TEST_CG/sessiond-2" && -d $CG1 && -d $CG2 ]] &&
        [[ $(json .loopback <<<"$S1") == 127.0.0.2 && $(json .loopback <<<"$S2") == 127.0.0.3 ]] &&
        [[ $(json '.programs.attached | length' <<<"$S1") == 6 ]]
}
check "two programs-mode sessions start, each with its cgroup and six hooks" start_two

hooks_attached_multi() {
    local cg out
    for cg in "$CG1" "$CG2"; do
        out=$(bpftool cgroup show "$cg") || return 1
        echo "$cg:"; echo "$out"
        for h in bind4 connect4 sendmsg4 recvmsg4 getsockname4 getpeername4; do
            [[ -n $(awk -v h="$h" '$NF == h && / multi /' <<<"$out") ]] || { echo "no multi-attached $h"; return 1; }
        done
    done
    [[ -z $(bpftool cgroup show "$CG_ROOT" | tail -n +2) ]] || { echo "something on the root cgroup"; bpftool cgroup show "$CG_ROOT"; return 1; }
    ip -4 addr show dev lo
    ip -4 addr show dev lo | grep -c "inet 127.0.0.2/32" >/dev/null && ip -4 addr show dev lo | grep -c "inet 127.0.0.3/32" >/dev/null
}
check "the hooks are multi-attached to the session cgroups only, the loopbacks are on lo" hooks_attached_multi

both_bind_8080() {
    bg_in_session "$CG1" "$PY" -c "$SERVE" 127.0.0.1 8080 "$WORK/www1" >"$WORK/srv1.log" 2>&1; PIDS+=($!)
    bg_in_session "$CG2" "$PY" -c "$SERVE" 127.0.0.1 8080 "$WORK/www2" >"$WORK/srv2.log" 2>&1; PIDS+=($!)
    wait_for 20 bash -c 'ss -Hltn "sport = :8080" | grep -c 127.0.0.2:8080 >/dev/null && ss -Hltn "sport = :8080" | grep -c 127.0.0.3:8080' >/dev/null ||
        { ss -Hltn; cat "$WORK"/srv*.log; return 1; }
    ss -Hltn "sport = :8080"
    ! ss -Hltn "sport = :8080" | grep -c "127.0.0.1:8080" >/dev/null
}
check "a listed python3 binds 127.0.0.1:8080 in each session: no collision, at 127.0.0.2 and .3" both_bind_8080

host_reaches_both() {
    local a b
    a=$("$PY" -c "$GET" http://127.0.0.2:8080/who); b=$("$PY" -c "$GET" http://127.0.0.3:8080/who)
    echo "127.0.0.2 -> $a, 127.0.0.3 -> $b"
    [[ $a == session1 && $b == session2 ]]
}
check "the host reaches both sessions' services at 127.0.0.2:8080 and 127.0.0.3:8080" host_reaches_both

ports_shows_rewritten() {
    local p1 host
    p1=$("$SESSIOND" ports --session 1 --listening --json) || return 1
    jq -c '.[] | {session, local, program, rewritten}' <<<"$p1"
    "$SESSIOND" ports --session 1 --listening
    [[ $(jq -c '[.[] | select(.local == "127.0.0.2:8080")] | map({session, program, rewritten})' <<<"$p1") == '[{"session":1,"program":"python3","rewritten":true}]' ]] || return 1
    # Attributed to its session, not to the host; session 2's own is its own.
    host=$("$SESSIOND" ports --session 0 --listening --json) || return 1
    [[ -z $(jq -r '.[] | select(.local | test("^127\\.0\\.0\\.[23]:8080$")) | .local' <<<"$host") ]] || { echo "on the host's list too"; return 1; }
    [[ $("$SESSIOND" ports --session 2 --listening --json | jq -r '.[] | select(.rewritten) | .local') == 127.0.0.3:8080 ]] &&
        "$SESSIOND" ports --session 1 --listening | head -1 | grep -q REWRITTEN
}
check "ports: a listed program's 127.0.0.1:8080 shows in its session as 127.0.0.2:8080, rewritten (not the host's)" ports_shows_rewritten

"$PY" -c "$SERVE" 127.0.0.1 9090 "$WORK/wwwhost" >"$WORK/srvhost.log" 2>&1 & PIDS+=($!)
wait_for 20 bash -c 'ss -Hltn "sport = :9090" | grep -c 127.0.0.1:9090' >/dev/null

preferred_loopback() {
    local a b h
    a=$(in_session "$CG1" "$PY" -c "$GET" http://127.0.0.1:8080/who); b=$(in_session "$CG2" "$PY" -c "$GET" http://127.0.0.1:8080/who)
    h=$(in_session "$CG1" "$PY" -c "$GET" http://127.0.0.1:9090/who)
    echo "session 1 -> 127.0.0.1:8080 = $a; session 2 -> 127.0.0.1:8080 = $b; session 1 -> 127.0.0.1:9090 = $h"
    [[ $a == session1 && $b == session2 && $h == host ]]
}
check "preferred loopback: a session's own listener first, the host's when it has none" preferred_loopback

udp_both_ways() {
    bg_in_session "$CG1" "$PY" -c "$UDP_ECHO" 127.0.0.1 5353 session1 >"$WORK/udp1.log" 2>&1; PIDS+=($!)
    wait_for 20 grep -q bound "$WORK/udp1.log" || return 1
    local own host
    own=$(in_session "$CG1" "$PY" -c "$UDP_ASK" 127.0.0.1 5353); host=$("$PY" -c "$UDP_ASK" 127.0.0.2 5353)
    echo "bound: $(cat "$WORK/udp1.log"); session 1 asks 127.0.0.1:5353: $own; host asks 127.0.0.2:5353: $host"
    ss -Hlun "sport = :5353"
    # The listed client reads its answer as coming from 127.0.0.1, the address it sent to.
    [[ $own == "hi from session1 peer 127.0.0.1" && $host == "hi from session1 peer 127.0.0.2" ]] &&
        ss -Hlun "sport = :5353" | grep -c 127.0.0.2:5353 >/dev/null
}
check "UDP: bound at the session loopback, a session client reaches it at 127.0.0.1, the host at 127.0.0.2" udp_both_ways

names_as_asked() {
    local out; out=$(in_session "$CG1" "$PY" -c "$BIND_NAME" 8181); echo "$out"
    grep -qx "getsockname 127.0.0.1" <<<"$out" && grep -q "127.0.0.2:8181" <<<"$out"
}
check "getsockname shows the listed program 127.0.0.1 where it is bound at 127.0.0.2" names_as_asked

unlisted_unaffected() {
    local out get; out=$(in_session "$CG1" "$WORK/bin/pyother" -c "$BIND_NAME" 8182); echo "$out"
    get=$(in_session "$CG1" "$WORK/bin/pyother" -c "$GET" http://127.0.0.1:8080/who); echo "unlisted GET 127.0.0.1:8080: $get"
    grep -qx "getsockname 127.0.0.1" <<<"$out" && grep -q "127.0.0.1:8182" <<<"$out" && [[ $get == ERR* ]]
}
check "an unlisted program in the session (pyother) binds and connects as on any host" unlisted_unaffected

exec_joins_the_cgroup() {
    local out; out=$("$SESSIOND" exec --session 2 -- "$PY" -c "$BIND_NAME" 8183) || return 1
    echo "$out"
    grep -qx "getsockname 127.0.0.1" <<<"$out" && grep -q "127.0.0.3:8183" <<<"$out" &&
        [[ $("$SESSIOND" exec --session 2 -- cat /proc/self/cgroup | sed -n 's/^0:://p') == "${CG2#"$CG_ROOT"}" ]]
}
check "sessiond exec runs a command in a programs-mode session's cgroup (its listed python3 binds 127.0.0.3)" exec_joins_the_cgroup

status_counts() {
    local s; s=$("$SESSIOND" status --session 1 --json) || return 1
    jq -c '.programs' <<<"$s"
    [[ $(json '.programs.rewritten' <<<"$s") -ge 4 && $(json '.programs.programs[0]' <<<"$s") == python3 ]]
}
check "status shows the session's hooks, its listed programs and how many addresses they rewrote" status_counts

bad_settings() {
    expect_exit 2 "/usr/bin/python3" "$SESSIOND" daemon --socket /run/x.sock --uplink "$SBX_UPLINK" --mode programs --programs /usr/bin/python3 &&
        expect_exit 2 "crmclient-longn" "$SESSIOND" daemon --socket /run/x.sock --uplink "$SBX_UPLINK" --mode programs --programs crmclient-longname &&
        expect_exit 2 "container" "$SESSIOND" daemon --socket /run/x.sock --uplink "$SBX_UPLINK" --mode container
}
check "bad programs-mode settings are refused, naming what was wrong" bad_settings

stop_leaves_nothing() {
    "$SESSIOND" stop --session 1 && "$SESSIOND" stop --session 2 || return 1
    [[ ! -e $CG1 && ! -e $CG2 ]] || { echo "cgroup left"; return 1; }
    [[ -z $(bpftool cgroup tree "$TEST_CG" | tail -n +3) ]] || { bpftool cgroup tree "$TEST_CG"; return 1; }
    ! ip -4 addr show dev lo | grep -Ec "127.0.0.[23]/32" >/dev/null || { ip -4 addr show dev lo; return 1; }
    [[ $(ip rule) == "$RULES_BEFORE" ]] || { echo "ip rule changed:"; ip rule; return 1; }
    [[ $(ip -o link | awk -F': ' '{print $2}' | sort) == "$LINKS_BEFORE" ]] || { echo "ip link changed:"; ip -o link; return 1; }
    # The programs the sessions left running go on, moved out to the daemon's cgroup.
    kill -0 "${PIDS[0]}" && [[ $(json length < <("$SESSIOND" status --json)) == 0 ]]
}
check "stop detaches the hooks and removes the cgroups and loopbacks; ip rule and ip link as before" stop_leaves_nothing
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
wait_pid 5 "${PIDS[@]}"
PIDS=()

many_at_once() {
    local n pids=() rc=0
    for n in $(seq 11 18); do "$SESSIOND" start --session "$n" >/dev/null & pids+=($!); done
    for n in "${pids[@]}"; do wait "$n" || rc=1; done
    ((rc == 0)) && [[ $("$SESSIOND" status --json | jq length) == 8 ]] || { "$SESSIOND" status; return 1; }
    "$SESSIOND" stop --all || return 1
    [[ -z $(find "$TEST_CG" -mindepth 1 -type d) ]] && ! ip -4 addr show dev lo | grep -cE "127\.0\.0\.(1[2-9])/32" >/dev/null
}
check "eight programs-mode sessions started at once and stopped at once (stop --all): no error, nothing left" many_at_once

# --------------------------------------------------------------------- address virtualization
# The host gets its own address on the test LAN; each session a pool address on a macvlan of
# its own. A LAN peer (in the sandbox's lan-srv namespace) tells who connected from where.
kill_daemon
HOST_LAN=10.77.0.250
ip addr add "$HOST_LAN/24" dev "$SBX_UPLINK" || exit 1
RULES_BEFORE=$(ip rule); LINKS_BEFORE=$(ip -o link | awk -F': ' '{print $2}' | sort)
start_daemon --uplink "$SBX_UPLINK" --mode programs --programs python3 --virtualize address,loopback --addressing static \
    --pool 10.77.0.100-10.77.0.109/24 --gateway "$SBX_GATEWAY" --state-dir /run/sessiond-programs-state-address || exit 1
PEER='
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind((sys.argv[1], int(sys.argv[2]))); l.listen(16)
print("listening", flush=True)
while True:
    c, peer = l.accept(); print(peer[0], flush=True); c.close()
'
CONNECT='
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); print("from", s.getsockname()[0])
'
ip netns exec "$SBX_SERVER_NS" "$PY" -c "$PEER" "$SBX_SERVER_IP" 7000 >"$WORK/peer.log" 2>&1 & PIDS+=($!)
wait_for 20 grep -q listening "$WORK/peer.log"

address_sessions() {
    S3=$("$SESSIOND" start --session 3 --json) && S4=$("$SESSIOND" start --session 4 --json) || return 1
    CG3=$(json .programs.cgroup <<<"$S3"); CG4=$(json .programs.cgroup <<<"$S4")
    A3=$(json .address <<<"$S3" | cut -d/ -f1); A4=$(json .address <<<"$S4" | cut -d/ -f1)
    echo "session 3: $A3 on $(json .interface <<<"$S3"); session 4: $A4 on $(json .interface <<<"$S4")"
    ip -4 -o addr show dev sdp3; ip rule; ip route show table all | grep -E "sdp[34]"
    [[ $A3 == 10.77.0.1[0-9][0-9] && $A4 == 10.77.0.1[0-9][0-9] && $A3 != "$A4" ]] || return 1
    ip -4 -o addr show dev sdp3 | grep -c "inet $A3/24" >/dev/null && ip rule | grep -c "from $A3 lookup" >/dev/null && ip rule | grep -c "from $A4 lookup" >/dev/null || return 1
    # No prefix route in the main table: the host's own traffic to the LAN keeps its own address.
    ! ip route show table main | grep -c sdp >/dev/null || { echo "a session link in the main table"; return 1; }
    [[ $(cat /proc/sys/net/ipv4/conf/sdp3/arp_ignore) == 1 && $(cat /proc/sys/net/ipv4/conf/sdp3/arp_announce) == 2 && $(cat /proc/sys/net/ipv4/conf/sdp3/arp_filter) == 1 &&
        $(cat /proc/sys/net/ipv4/conf/sdp3/rp_filter) == 0 ]]
}
check "address virtualization: each session's pool address on its own macvlan, with its rule and table and ARP scoped to it" address_sessions

peer_sees_session_addresses() {
    local c3 c4 other
    c3=$(in_session "$CG3" "$PY" -c "$CONNECT" "$SBX_SERVER_IP" 7000); c4=$(in_session "$CG4" "$PY" -c "$CONNECT" "$SBX_SERVER_IP" 7000)
    other=$(in_session "$CG3" "$WORK/bin/pyother" -c "$CONNECT" "$SBX_SERVER_IP" 7000)
    sleep 0.3
    echo "session 3 listed: $c3; session 4 listed: $c4; session 3 unlisted: $other"; echo "the peer saw:"; cat "$WORK/peer.log"
    [[ $(tail -3 "$WORK/peer.log" | tr '\n' ' ') == "$A3 $A4 $HOST_LAN " ]]
}
check "a LAN peer sees a listed program's connection from its session's address and an unlisted one's from the host's" peer_sees_session_addresses

both_bind_9000() {
    bg_in_session "$CG3" "$PY" -c "$SERVE" 0.0.0.0 9000 "$WORK/www1" >"$WORK/srv9000-3.log" 2>&1; PIDS+=($!)
    bg_in_session "$CG4" "$PY" -c "$SERVE" 0.0.0.0 9000 "$WORK/www2" >"$WORK/srv9000-4.log" 2>&1; PIDS+=($!)
    wait_for 20 bash -c "ss -Hltn 'sport = :9000' | grep -c $A3:9000 >/dev/null && ss -Hltn 'sport = :9000' | grep -c $A4:9000" >/dev/null ||
        { ss -Hltnp; cat "$WORK"/srv9000-*.log; ps -ef | grep -c http.server; return 1; }
    ss -Hltn "sport = :9000"
    local got; got=$(ip netns exec "$SBX_SERVER_NS" "$PY" -c "$GET" "http://$A4:9000/who"); echo "the peer gets http://$A4:9000/who: $got"
    [[ $got == session2 ]] || { ip netns exec "$SBX_SERVER_NS" ip neigh; ip -s link show sdp4; ip route get "$SBX_SERVER_IP" from "$A4"; cat "$WORK"/srv9000-*.log; return 1; }
}
check "a listed python3 binds 0.0.0.0:9000 in two sessions: no collision, each on its address, reachable from the LAN" both_bind_9000

uplink_down_and_back() {
    local log0; log0=$(log_mark)
    ip link set "$SBX_UPLINK" down
    wait_for 20 bash -c "[[ \$('$SESSIOND' status --session 3 --json | jq -r '.fault // empty') == *down* ]]" || { echo "no fault shown"; "$SESSIOND" status; ip link set "$SBX_UPLINK" up; return 1; }
    ip link set "$SBX_UPLINK" up
    wait_for 20 bash -c "[[ -z \$('$SESSIOND' status --session 3 --json | jq -r '.fault // empty') ]]" || { echo "the fault stays:"; "$SESSIOND" status; log_since "$log0" | tail -5; return 1; }
    log_since "$log0" | grep -E "fault|restored" | head -4
    sleep 2   # no repeated repair attempts once it is restored
    [[ $(log_since "$log0" | grep -c "could not be restored") == 0 ]] || { log_since "$log0" | tail -5; return 1; }
    local c; c=$(in_session "$CG3" "$PY" -c "$CONNECT" "$SBX_SERVER_IP" 7000); echo "after: $c"
    [[ $c == "from $A3" ]]
}
check "the uplink down and back: programs-mode sessions show the fault, then are restored once (no retry loop)" uplink_down_and_back

address_stop_leaves_nothing() {
    "$SESSIOND" stop --session 3 && "$SESSIOND" stop --session 4 || return 1
    [[ $(ip rule) == "$RULES_BEFORE" ]] || { echo "ip rule changed:"; ip rule; return 1; }
    [[ $(ip -o link | awk -F': ' '{print $2}' | sort) == "$LINKS_BEFORE" ]] || { echo "ip link changed:"; ip -o link; return 1; }
    [[ -z $(ip route show table all | grep -E "sdp|10\.77\.0\.10[0-9] ") ]] || { ip route show table all | grep -E "sdp|10.77.0.10"; return 1; }
    ! ip -4 addr | grep -Ec "10\.77\.0\.10[0-9]|127\.0\.0\.[45]/32" >/dev/null && [[ -z $(find "$TEST_CG" -mindepth 1 -type d) ]]
}
check "stop removes the macvlans, addresses, rules and tables too" address_stop_leaves_nothing

start_address_daemon() {
    start_daemon --uplink "$SBX_UPLINK" --mode programs --programs python3 --virtualize address,loopback --addressing static \
        --pool 10.77.0.100-10.77.0.109/24 --gateway "$SBX_GATEWAY" --state-dir /run/sessiond-programs-state-address
}
# rewrites_work CG LOOPBACK ADDRESS PORT WHEN: a listed python3 in the session cgroup CG binds
# 127.0.0.1:PORT at LOOPBACK, reaches its session's 127.0.0.1:8080 listener (www1: "session1")
# and the LAN peer from ADDRESS: the hooks' bind and connect rewrites.
rewrites_work() {
    local cg=$1 lb=$2 addr=$3 port=$4 bound got from
    bound=$(in_session "$cg" "$PY" -c "$BIND_NAME" "$port"); got=$(in_session "$cg" "$PY" -c "$GET" http://127.0.0.1:8080/who)
    from=$(in_session "$cg" "$PY" -c "$CONNECT" "$SBX_SERVER_IP" 7000)
    echo "$5: bind 127.0.0.1:$port -> $(tail -1 <<<"$bound" | awk '{print $4}'); GET 127.0.0.1:8080 -> $got; to the peer: $from"
    grep -q "$lb:$port" <<<"$bound" && [[ $got == session1 && $from == "from $addr" ]]
}
S5= CG5= A5= PINS5=/sys/fs/bpf/sessiond/5 R5=
hooks_survive_kill_9() {
    S5=$("$SESSIOND" start --session 5 --json) || return 1
    CG5=$(json .programs.cgroup <<<"$S5"); A5=$(json .address <<<"$S5" | cut -d/ -f1)
    bg_in_session "$CG5" "$PY" -c "$SERVE" 127.0.0.1 8080 "$WORK/www1" >"$WORK/srv5.log" 2>&1; PIDS+=($!)
    wait_for 20 bash -c 'ss -Hltn "sport = :8080" | grep -c 127.0.0.6:8080' >/dev/null || { ss -Hltn; cat "$WORK/srv5.log"; return 1; }
    rewrites_work "$CG5" 127.0.0.6 "$A5" 8191 "with the daemon" || return 1
    R5=$("$SESSIOND" status --session 5 --json | jq .programs.rewritten)
    echo "pins: $(ls "$PINS5" | paste -sd' ')"
    kill_daemon KILL
    bpftool cgroup show "$CG5"
    rewrites_work "$CG5" 127.0.0.6 "$A5" 8192 "no daemon (after kill -9)"
}
check "a daemon killed (-9) with a programs-mode session up: its hooks stay pinned and keep rewriting binds and connects" hooks_survive_kill_9

adopted_after_restart() {
    local log0 s
    start_address_daemon || return 1
    grep -E "adopting the programs-mode|recovered state" "$DAEMON_LOG" | tail -2
    s=$("$SESSIOND" status --session 5 --json) || return 1
    jq -c '{state, programs}' <<<"$s"
    [[ $(json .state <<<"$s") == up && $(json '.programs.attached | length' <<<"$s") == 6 && -d $CG5 ]] || return 1
    # The counters map is the same one (pinned): its count goes on from before the kill.
    [[ $(json .programs.rewritten <<<"$s") -gt $R5 ]] || { echo "rewritten $R5 before the kill"; return 1; }
    rewrites_work "$CG5" 127.0.0.6 "$A5" 8193 "adopted by the restarted daemon" || return 1
    kill_daemon TERM
    rewrites_work "$CG5" 127.0.0.6 "$A5" 8194 "no daemon (after SIGTERM)" || return 1
    start_address_daemon || return 1
    [[ $("$SESSIOND" status --session 5 --json | jq -r .state) == up ]] && rewrites_work "$CG5" 127.0.0.6 "$A5" 8195 "after the SIGTERM restart"
}
check "the restarted daemon adopts it (kill -9, then SIGTERM): it stays up, its rewrites work throughout" adopted_after_restart

stop_after_restart_leaves_nothing() {
    echo "pins before the stop: $(ls "$PINS5" 2>/dev/null | paste -sd' ')"
    [[ $(ls "$PINS5" 2>/dev/null | wc -l) == 8 ]] || { echo "no pins (six links, the counters map, the cgroup link) to remove"; return 1; }
    [[ $(readlink "$PINS5/cgroup") == "$CG5" ]] || { echo "the pins do not name the cgroup: $(readlink "$PINS5/cgroup")"; return 1; }
    "$SESSIOND" stop --session 5 || return 1
    [[ ! -e $CG5 && ! -e $PINS5 ]] || { echo "left: $(ls -d "$CG5" "$PINS5" 2>/dev/null)"; ls "$PINS5" 2>/dev/null; return 1; }
    [[ -z $(bpftool cgroup tree "$TEST_CG" | tail -n +3) ]] || { bpftool cgroup tree "$TEST_CG"; return 1; }
    [[ $(ip rule) == "$RULES_BEFORE" && $(ip -o link | awk -F': ' '{print $2}' | sort) == "$LINKS_BEFORE" ]] || { ip rule; ip -o link; return 1; }
    ! ip -4 addr show dev lo | grep -c "127.0.0.6/32" >/dev/null && [[ $("$SESSIOND" status --json | jq length) == 0 ]] &&
        kill -0 "${PIDS[-1]}"   # the session's process goes on, moved out
}
check "stop after the restarts: no pin, hook, cgroup, loopback, link or rule left" stop_after_restart_leaves_nothing

missing_pins_torn_down() {
    local s6 cg6 pins6=/sys/fs/bpf/sessiond/6 had_pins=0
    s6=$("$SESSIOND" start --session 6 --json) || return 1
    cg6=$(json .programs.cgroup <<<"$s6")
    bg_in_session "$cg6" sleep 60 >/dev/null 2>&1; PIDS+=($!)
    kill_daemon KILL
    # No pins: the hooks go, as a lost bpffs would take them.
    [[ -d $pins6 ]] && rm -r "$pins6" && had_pins=1
    [[ -d $cg6 ]] && ip link show sdp6 >/dev/null || { echo "nothing was left to recover (the test needs it)"; return 1; }
    start_address_daemon || return 1
    tail -3 "$DAEMON_LOG"
    [[ ! -e $cg6 && ! -e /sys/fs/bpf/sessiond/6 ]] || { echo "cgroup or pins left: $cg6"; return 1; }
    [[ $(ip rule) == "$RULES_BEFORE" && $(ip -o link | awk -F': ' '{print $2}' | sort) == "$LINKS_BEFORE" ]] || { ip rule; ip -o link; return 1; }
    ! ip -4 addr show dev lo | grep -c "127.0.0.7/32" >/dev/null && [[ $("$SESSIOND" status --json | jq length) == 0 ]] &&
        kill -0 "${PIDS[-1]}" || return 1   # the session's process goes on, moved out
    ((had_pins)) || { echo "the session had no pins to remove"; return 1; }
}
check "a session whose pins are gone after kill -9: the next daemon tears it down, leaving nothing" missing_pins_torn_down

# --------------------------------------------------------------------- address virtualization, DHCP
# The same, with each session's address leased from the sandbox LAN's dnsmasq by sessiond's own
# client on the session's link in the host namespace (port 68 bound to sdpN).
kill_daemon
start_dhcp_address_daemon() {
    start_daemon --uplink "$SBX_UPLINK" --mode programs --programs python3 --virtualize address,loopback \
        --state-dir /run/sessiond-programs-state-dhcp "$@"
}
S7= S8= CG7= CG8= A7= A8= M7= M8=
"$REPO/scripts/dhcp-server" dnsmasq start >/dev/null || { echo "FAIL: dnsmasq did not start"; exit 1; }
# Reverse-path filtering as systemd sets it (default 2, all 0): new links inherit 2, under
# which the server's replies on an address-less sdpN, whose sender the host reaches through
# the uplink (it has an address there), would be dropped.
RP_BEFORE=$(sysctl -n net.ipv4.conf.all.rp_filter net.ipv4.conf.default.rp_filter | paste -sd' ')
sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=2
check "DHCP: the daemon starts with virtualize = address and addressing = dhcp (the default)" start_dhcp_address_daemon

dhcp_sessions() {
    S7=$("$SESSIOND" start --session 7 --json) && S8=$("$SESSIOND" start --session 8 --json) || return 1
    CG7=$(json .programs.cgroup <<<"$S7"); CG8=$(json .programs.cgroup <<<"$S8")
    A7=$(json .address <<<"$S7" | cut -d/ -f1); A8=$(json .address <<<"$S8" | cut -d/ -f1)
    M7=$(json .mac <<<"$S7"); M8=$(json .mac <<<"$S8")
    echo "session 7: $A7 ($M7) on $(json .interface <<<"$S7"), lease $(jq -c .lease <<<"$S7"); session 8: $A8 ($M8)"
    echo "the server's leases:"; "$REPO/scripts/dhcp-server" dnsmasq leases
    ip -4 -o addr show dev sdp7; ip rule | grep -E "from ($A7|$A8) "; ip route show table all | grep -E "sdp[78]"
    [[ $A7 == 10.77.0.1[0-9][0-9] && $A8 == 10.77.0.1[0-9][0-9] && $A7 != "$A8" ]] || return 1
    [[ $(json .lease.dhcp_state <<<"$S7") == bound && $(json .lease.server <<<"$S7") == "$SBX_SERVER_IP" ]] || return 1
    "$REPO/scripts/dhcp-server" dnsmasq leases | grep -qx "$A7 $M7" && "$REPO/scripts/dhcp-server" dnsmasq leases | grep -qx "$A8 $M8" || return 1
    ip -4 -o addr show dev sdp7 | grep "inet $A7/24" | grep -c noprefixroute >/dev/null && ip rule | grep -c "from $A7 lookup" >/dev/null &&
        ip rule | grep -c "from $A8 lookup" >/dev/null || return 1
    ip route show table all | grep -c "default via $SBX_GATEWAY dev sdp7 table 268435463 proto static src $A7" >/dev/null || return 1
    ! ip route show table main | grep -c sdp >/dev/null || { echo "a session link in the main table"; return 1; }
    # The login shares the host's files: nothing under /etc/netns.
    [[ ! -e /etc/netns/sessiond-7 ]] || { echo "/etc/netns/sessiond-7 written"; return 1; }
    # Both sessions' DHCP sockets on port 68, each bound to its own link.
    ss -Hlunp "sport = :68"
    [[ $(ss -Hlun "sport = :68" | grep -cE "%sdp[78]:68") == 2 ]]
}
check "DHCP: two programs-mode sessions lease distinct addresses on their own links (port 68 on each), rule and table, no files" dhcp_sessions

strict_rp_filter_refused() {
    sysctl -qw net.ipv4.conf.all.rp_filter=1
    expect_exit 1 "rp_filter" "$SESSIOND" start --session 12; local rc=$?
    sysctl -qw net.ipv4.conf.all.rp_filter=0
    ((rc == 0)) && ! ip link show sdp12 >/dev/null 2>&1 && [[ $("$SESSIOND" status --json | jq 'map(.session) | index(12)') == null ]]
}
check "DHCP: net.ipv4.conf.all.rp_filter 1 (the replies would be dropped): the start is refused naming it, nothing is made" strict_rp_filter_refused
read -r rp_all rp_default <<<"$RP_BEFORE"
sysctl -qw net.ipv4.conf.all.rp_filter="$rp_all" net.ipv4.conf.default.rp_filter="$rp_default"

dhcp_peer_sees_leased_addresses() {
    local c7 c8 other
    c7=$(in_session "$CG7" "$PY" -c "$CONNECT" "$SBX_SERVER_IP" 7000); c8=$(in_session "$CG8" "$PY" -c "$CONNECT" "$SBX_SERVER_IP" 7000)
    other=$(in_session "$CG7" "$WORK/bin/pyother" -c "$CONNECT" "$SBX_SERVER_IP" 7000)
    sleep 0.3
    echo "session 7 listed: $c7; session 8 listed: $c8; session 7 unlisted: $other"; echo "the peer saw:"; tail -3 "$WORK/peer.log"
    [[ $(tail -3 "$WORK/peer.log" | tr '\n' ' ') == "$A7 $A8 $HOST_LAN " ]]
}
check "DHCP: a LAN peer sees a listed program's connection from its session's leased address, an unlisted one's from the host's" dhcp_peer_sees_leased_addresses

dhcp_readopted() {
    local log0 s
    kill_daemon KILL
    log0=$(log_mark)
    start_dhcp_address_daemon || return 1
    wait_for 15 bash -c "[[ \$('$SESSIOND' status --session 7 --json | jq -r .lease.dhcp_state) == bound ]]" || { "$SESSIOND" status --session 7 --json; return 1; }
    s=$("$SESSIOND" status --session 7 --json); jq -c '{state, address, lease}' <<<"$s"
    log_since "$log0" | grep -E "adopting|DHCP state" | head -4
    [[ $(json .state <<<"$s") == up && $(json .address <<<"$s" | cut -d/ -f1) == "$A7" ]] || return 1
    log_since "$log0" | grep -q "dhcp{sid=7}: DHCP state rebooting -> bound" || { echo "no INIT-REBOOT (rebooting -> bound) after the restart"; return 1; }
    local c; c=$(in_session "$CG7" "$PY" -c "$CONNECT" "$SBX_SERVER_IP" 7000); echo "after the restart: $c"
    [[ $c == "from $A7" ]]
}
check "DHCP: a restarted daemon (kill -9) re-adopts the session and its lease (INIT-REBOOT), the same address goes on" dhcp_readopted

dhcp_stop_releases_and_leaves_nothing() {
    "$SESSIOND" stop --session 7 && "$SESSIOND" stop --session 8 || return 1
    "$REPO/scripts/dhcp-server" dnsmasq wait --gone "$M7" --timeout 5 && "$REPO/scripts/dhcp-server" dnsmasq wait --gone "$M8" --timeout 5 ||
        { echo "the server still lists:"; "$REPO/scripts/dhcp-server" dnsmasq leases; return 1; }
    [[ $(ip rule) == "$RULES_BEFORE" ]] || { echo "ip rule changed:"; ip rule; return 1; }
    [[ $(ip -o link | awk -F': ' '{print $2}' | sort) == "$LINKS_BEFORE" ]] || { echo "ip link changed:"; ip -o link; return 1; }
    [[ -z $(ip route show table all | grep -E "sdp|$A7 |$A8 ") ]] || { ip route show table all | grep -E "sdp|$A7|$A8"; return 1; }
    [[ -z $(ip neigh show | grep sdp) ]] || { ip neigh show; return 1; }
    [[ ! -e /run/sessiond-programs-state-dhcp/leases/7.json ]] || { echo "lease file left"; return 1; }
    ! ip -4 addr | grep -Ec "$A7|$A8|127\.0\.0\.(8|9)/32" >/dev/null && [[ -z $(find "$TEST_CG" -mindepth 1 -type d) ]]
}
check "DHCP: stop releases the leases (gone from dnsmasq's DB) and leaves no address, rule, route, link or neighbour" dhcp_stop_releases_and_leaves_nothing

dhcp_orphan_released() {
    local s10 m10 a10
    s10=$("$SESSIOND" start --session 10 --json) || return 1
    m10=$(json .mac <<<"$s10"); a10=$(json .address <<<"$s10" | cut -d/ -f1)
    kill_daemon KILL
    rm -r /sys/fs/bpf/sessiond/10 || return 1   # its hooks are lost: the next daemon cannot adopt it
    "$REPO/scripts/dhcp-server" dnsmasq leases | grep -qx "$a10 $m10" || { echo "no lease for $m10 before the restart"; return 1; }
    start_dhcp_address_daemon || return 1
    grep -E "released its lease|removing a programs-mode" "$DAEMON_LOG" | tail -2
    "$REPO/scripts/dhcp-server" dnsmasq wait --gone "$m10" --timeout 5 || { echo "the server still lists:"; "$REPO/scripts/dhcp-server" dnsmasq leases; return 1; }
    [[ $(ip rule) == "$RULES_BEFORE" && $(ip -o link | awk -F': ' '{print $2}' | sort) == "$LINKS_BEFORE" ]] || { ip rule; ip -o link; return 1; }
    [[ $("$SESSIOND" status --json | jq length) == 0 && ! -e /run/sessiond-programs-state-dhcp/leases/10.json ]]
}
check "DHCP: a session the restarted daemon cannot adopt (pins gone) has its lease released before it is torn down" dhcp_orphan_released

port_68_taken() {
    local holder
    "$PY" -c 'import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 68)); print("held", flush=True); time.sleep(30)' >"$WORK/p68.log" 2>&1 &
    holder=$!
    wait_for 10 grep -q held "$WORK/p68.log" || { kill "$holder"; return 1; }
    expect_exit 1 "port 68" "$SESSIOND" start --session 9; local rc=$?
    kill "$holder"; wait "$holder" 2>/dev/null
    echo "$OUT"
    ((rc == 0)) && ! ip link show sdp9 >/dev/null 2>&1 && [[ $("$SESSIOND" status --json | jq length) == 0 ]] && [[ $(ip rule) == "$RULES_BEFORE" ]]
}
check "DHCP: a host socket on 0.0.0.0:68 bound to no interface: the start fails naming port 68, nothing is left" port_68_taken
kill_daemon
"$REPO/scripts/dhcp-server" dnsmasq stop >/dev/null

no_dhcp_answer() {
    start_dhcp_address_daemon --dhcp-timeout 2 || return 1
    expect_exit 1 "no DHCP lease" "$SESSIOND" start --session 11 || return 1
    ! ip link show sdp11 >/dev/null 2>&1 && [[ $("$SESSIOND" status --json | jq length) == 0 && $(ip rule) == "$RULES_BEFORE" ]] &&
        [[ -z $(find "$TEST_CG" -mindepth 1 -type d) ]] && ! ip -4 addr show dev lo | grep -c "127.0.0.12/32" >/dev/null
}
check "DHCP: no server answers: the start fails after --dhcp-timeout naming it; no link, cgroup, loopback or rule is left" no_dhcp_answer
kill_daemon

for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
wait_pid 5 "${PIDS[@]}"
PIDS=()
ip addr del "$HOST_LAN/24" dev "$SBX_UPLINK"

# --------------------------------------------------------------------- through PAM logins
# The daemon's own mode stays namespace; the PAM stack's mode=programs asks for programs mode.
# Each login's probe (pam_exec, a child of the pamtester process that joined the cgroup) starts
# the user's listed python3 on 127.0.0.1:8080 and holds the login open until released.
kill_daemon
start_daemon --uplink "$SBX_UPLINK" --programs python3 --state-dir /run/sessiond-programs-state || exit 1
T=$WORK/pam
mkdir -p "$T"
source "$(dirname "$0")/pam_lib.sh"
PROBE=$T/probe.sh
cat >"$PROBE" <<EOS
#!/bin/bash
[[ \$PAM_TYPE == open_session ]] || exit 0
mkdir -p $WORK/www-\$PAM_USER && echo "\$PAM_USER" >$WORK/www-\$PAM_USER/who
grep '^0::' /proc/self/cgroup >$T/cgroup-\$PAM_USER
echo "\${SESSIOND_SESSION:-} \${SESSIOND_LOOPBACK:-}" >$T/env-\$PAM_USER
setsid $PY -c '$SERVE' 127.0.0.1 8080 $WORK/www-\$PAM_USER >$T/srv-\$PAM_USER.log 2>&1 </dev/null &
echo \$! >$T/srv-\$PAM_USER.pid
for _ in \$(seq 300); do [[ -e $T/release-\$PAM_USER ]] && exit 0; sleep 0.1; done
EOS
chmod 755 "$PROBE"
for u in alice bob; do sandbox_user "$u" "$T/home/$u" >/dev/null || exit 1; done
PT_PIDS=()
cgroup_of_login() { # USER: the session cgroup its probe ran in, as a path under $CG_ROOT
    sed -n 's/^0:://p' "$T/cgroup-$1" 2>/dev/null | sed "s|^|$CG_ROOT|"
}

two_pam_logins() {
    pam_service mode=programs sid=auto debug || return 1
    local u
    for u in alice bob; do
        timeout 60 pamtester -v "$SERVICE" "$u" open_session close_session >"$T/pt-$u.log" 2>&1 & PT_PIDS+=($!)
    done
    wait_for 30 bash -c "[[ -s $T/srv-alice.pid && -s $T/srv-bob.pid ]]" || { cat "$T"/pt-*.log; return 1; }
    PIDS+=("$(cat "$T/srv-alice.pid")" "$(cat "$T/srv-bob.pid")")
    wait_for 20 bash -c 'ss -Hltn "sport = :8080" | grep -c 127.0.0.2:8080 >/dev/null && ss -Hltn "sport = :8080" | grep -c 127.0.0.3:8080' >/dev/null ||
        { ss -Hltn; cat "$T"/srv-*.log; return 1; }
    "$SESSIOND" status
    for u in alice bob; do
        local sid lb; read -r sid lb <"$T/env-$u"
        echo "$u: session $sid loopback $lb cgroup $(cgroup_of_login "$u")"
        [[ $(cgroup_of_login "$u") == "$TEST_CG/sessiond-$sid" && $lb == "127.0.0.$((sid + 1))" ]] || return 1
        [[ $("$SESSIOND" status --session "$sid" --json | jq -r '.programs.cgroup') == "$TEST_CG/sessiond-$sid" ]] || return 1
        local got; got=$("$PY" -c "$GET" "http://$lb:8080/who")
        [[ $got == "$u" ]] || { echo "the host does not reach $u at $lb:8080: $got"; cat "$T/srv-$u.log"; return 1; }
        [[ $(in_session "$(cgroup_of_login "$u")" "$PY" -c "$GET" http://127.0.0.1:8080/who) == "$u" ]] || { echo "$u's session does not prefer its own listener"; return 1; }
    done
}
check "PAM mode=programs: two logins, each joined to its session cgroup, both python3 on 127.0.0.1:8080; the host and each session reach their own" two_pam_logins

pam_logout_leaves_nothing() {
    touch "$T/release-alice" "$T/release-bob"
    local p rc=0
    for p in "${PT_PIDS[@]}"; do wait "$p" || rc=1; done
    cat "$T"/pt-*.log
    ((rc == 0)) || return 1
    [[ $("$SESSIOND" status --json | jq length) == 0 ]] || { "$SESSIOND" status; return 1; }
    [[ -z $(find "$TEST_CG" -mindepth 1 -type d) ]] || { echo "cgroups left: $(find "$TEST_CG" -mindepth 1 -type d)"; return 1; }
    [[ -z $(bpftool cgroup tree "$TEST_CG" | tail -n +3) ]] && ! ip -4 addr show dev lo | grep -Ec "127.0.0.[23]/32" >/dev/null
}
check "PAM logout: both sessions stopped, no cgroup, hook or loopback address left" pam_logout_leaves_nothing

refused_when_the_cgroup_cannot_be_made() {
    pam_service mode=programs sid=auto fail=closed debug || return 1
    echo 0 >"$TEST_CG/cgroup.max.descendants" || return 1
    rm -f "$T/env-alice"
    local rc=0
    timeout 30 pamtester -v "$SERVICE" alice open_session close_session >"$T/pt-refused.log" 2>&1 || rc=$?
    echo max >"$TEST_CG/cgroup.max.descendants"
    cat "$T/pt-refused.log"
    ((rc != 0)) || { echo "the login was let through"; return 1; }
    grep -q "create the session cgroup" "$T/pt-refused.log" && grep -q "refusing the session (fail=closed)" "$T/pt-refused.log" || return 1
    [[ ! -e $T/env-alice || -z $(cut -d' ' -f1 "$T/env-alice") ]] || { echo "the probe ran inside a session"; return 1; }
    [[ $("$SESSIOND" status --json | jq length) == 0 ]]
}
check "PAM fail=closed: a session cgroup that cannot be made refuses the login, naming the step" refused_when_the_cgroup_cannot_be_made

# --------------------------------------------------------------------- a cgroup set-up that cannot attach
# Another tool holds a hook on the cgroup above the sessions' exclusively (attached with no
# BPF_F_ALLOW_MULTI or _OVERRIDE flag): the kernel then refuses every attachment of that hook
# below it (EPERM). Here the other tool is bpftool, attaching alice's own connect4 program.
EXCL_ID=
refused_when_the_hooks_cannot_attach() {
    pam_service mode=programs sid=auto fail=closed debug || return 1
    rm -f "$T/release-alice" "$T/srv-alice.pid" "$T/env-bob"
    touch "$T/release-bob"   # bob's probe (pam_exec runs after a failed required module) ends at once
    local holder rc=0
    timeout 60 pamtester -v "$SERVICE" alice open_session close_session >"$T/pt-holder.log" 2>&1 & holder=$!
    wait_for 30 test -s "$T/srv-alice.pid" || { cat "$T/pt-holder.log"; return 1; }
    PIDS+=("$(cat "$T/srv-alice.pid")")
    EXCL_ID=$(bpftool cgroup show "$(cgroup_of_login alice)" | awk '$NF == "connect4" {print $1}')
    [[ -n $EXCL_ID ]] && bpftool cgroup attach "$TEST_CG" connect4 id "$EXCL_ID" || return 1
    bpftool cgroup show "$TEST_CG"
    timeout 30 pamtester -v "$SERVICE" bob open_session close_session >"$T/pt-noattach.log" 2>&1 || rc=$?
    bpftool cgroup detach "$TEST_CG" connect4 id "$EXCL_ID" && EXCL_ID=
    [[ -s $T/srv-bob.pid ]] && PIDS+=("$(cat "$T/srv-bob.pid")")
    cat "$T/pt-noattach.log"
    touch "$T/release-alice"
    wait "$holder" || { cat "$T/pt-holder.log"; return 1; }
    ((rc != 0)) || { echo "the login was let through"; return 1; }
    grep -q "attach the hooks: connect4" "$T/pt-noattach.log" && grep -q "refusing the session (fail=closed)" "$T/pt-noattach.log" || return 1
    [[ ! -e $T/env-bob || -z $(cut -d' ' -f1 "$T/env-bob") ]] || { echo "bob's probe ran inside a session"; return 1; }
    # Nothing of bob's half-made session (nor of alice's, logged out) is left.
    [[ $("$SESSIOND" status --json | jq length) == 0 && -z $(find "$TEST_CG" -mindepth 1 -type d) ]] || { "$SESSIOND" status; return 1; }
    [[ -z $(ls /sys/fs/bpf/sessiond 2>/dev/null) && -z $(bpftool cgroup tree "$TEST_CG" | tail -n +3) ]] || { ls /sys/fs/bpf/sessiond; bpftool cgroup tree "$TEST_CG"; return 1; }
}
check "PAM fail=closed: hooks that cannot attach (an exclusive hook above) refuse the login, naming the hook; nothing left" refused_when_the_hooks_cannot_attach
[[ -z $EXCL_ID ]] || bpftool cgroup detach "$TEST_CG" connect4 id "$EXCL_ID"

finish
