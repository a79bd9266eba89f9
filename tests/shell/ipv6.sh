#!/usr/bin/env bash
# Root integration tests for a session's IPv6, in a private sandbox (scripts/sandbox: bridge
# br-lan, server netns lan-srv with srv0). radvd runs in lan-srv and advertises
# 2001:db8:77::/64 (SLAAC only: no M or O flag); srv0 also holds 2001:db8:77::1.
# Sessions use static IPv4 from a pool, so no DHCP server is needed here.
#   1. two sessions form distinct stable-privacy (RFC 7217) addresses in the prefix, not the
#      EUI-64 of their MAC, with the slot's stable_secret; status and --json show them
#   2. the sessions reach each other and the router over IPv6 (busybox ping -6); the SLAAC
#      address is in the session's hosts file and `exec`'s SESSIOND_ADDRESS6
#   3. the same sid gets the same address after stop/start, and after the daemon's kill -9
#      and restart (a new daemon process derives the same identity)
#   4. ipv6 = "off": no IPv6 address on the session's uplink (not even link-local), though
#      the router keeps advertising; the session's loopback keeps ::1
#   5. ipv6_privacy: a temporary address beside the stable one; wait_for = both: start answers
#      with a usable IPv6 address, and fails (leaving nothing) without a router
#   5c. an IPv6-only session (addressing = "none"): start answers with its usable SLAAC
#      address, eth0 has no IPv4 (nor routes), it reaches session 1 over IPv6; exec and a PAM
#      login (pamtester) get SESSIOND_ADDRESS6 and no SESSIOND_ADDRESS; hosts has it; the host
#      reaches it at its loopback (the bridge); a kill -9 and a new daemon re-adopt it
#   6. DHCPv6 against kea-dhcp6 (radvd now sets M, no autonomous prefix): two sessions lease
#      distinct /128s (status, eth0 and Kea's memfile agree), reach each other, get Kea's DNS
#      and search list merged into resolv.conf after IPv4's (hosts, SESSIOND_ADDRESS6: the
#      lease), renew at T1
#      (Kea's expiry moves), a kill -9 + new daemon Rebinds the persisted lease (same address),
#      stop's Release shows in Kea's memfile; ipv6 = "off" sends no DHCPv6 although M is set
#   7. dnsmasq in RA + DHCPv6 mode: a lease, its DNS and search list in resolv.conf, the
#      router reached, the Release leaves dnsmasq's lease file
# Every wait is bounded; the suite takes about 45 s (35-50 s on the shared 2-core VM).
# a && b || fail is meant; check runs the functions (shellcheck thinks them unreachable)
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2317
source "$(dirname "$0")/lib.sh"
enter_sandbox "$@"
source "$(dirname "$0")/pam_lib.sh"

exec 3>&1
info() { echo "    info: $*" >&3; }

PREFIX=2001:db8:77
ROUTER=$PREFIX::1
STATE=/var/lib/sessiond-ipv6
RADVD_PID=
G1='' G2=''   # the global addresses of sessions 1 and 2, once formed

start_radvd() {
    local conf=/run/radvd.conf
    cat >"$conf" <<EOF
interface $SBX_SERVER_IF {
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    prefix $PREFIX::/64 {
        AdvOnLink on;
        AdvAutonomous on;
        AdvValidLifetime 600;
        AdvPreferredLifetime 300;
    };
};
EOF
    # A router forwards: radvd wants forwarding on, in the server's namespace only.
    ip netns exec "$SBX_SERVER_NS" sysctl -qw net.ipv6.conf.all.forwarding=1 || return 1
    ip -n "$SBX_SERVER_NS" addr add "$ROUTER/64" dev "$SBX_SERVER_IF" nodad || return 1
    ip netns exec "$SBX_SERVER_NS" radvd -C "$conf" -p /run/radvd.pid -n -m stderr >/run/radvd.log 2>&1 &
    RADVD_PID=$!
    sleep 0.3
    kill -0 "$RADVD_PID" || { cat /run/radvd.log; return 1; }
}

start_v6_daemon() {
    start_daemon --uplink "$SBX_UPLINK" --state-dir "$STATE" --addressing static \
        --pool "10.77.0.100-10.77.0.199/24" --gateway "$SBX_GATEWAY" --acd-probe-ms 0 "$@"
}

status_of() { "$SESSIOND" status --session "$1" --json; }
# global6 SID: the session's global addresses in the prefix (one per line) from status --json.
global6() { status_of "$1" | jq -r --arg p "$PREFIX:" '.addresses6[] | select(startswith($p))'; }
ipv6_is() { [[ $(status_of "$1" | jq -r .ipv6) == "$2" ]]; }
has_global() { [[ -n $(global6 "$1") ]] && ipv6_is "$1" slaac; }
sysctl_in() { ip netns exec "sessiond-$1" cat "/proc/sys/net/ipv6/conf/$2"; }
# addrs_of SID DEV: `ip -6 addr` of DEV in the session (captured whole: a grep -q reading a
# pipe would stop it early, and pipefail would count that as a failure).
addrs_of() { ip netns exec "sessiond-$1" ip -6 addr show dev "$2"; }

# eui64 MAC: the interface id the kernel would form from the MAC (addr_gen_mode 0).
eui64() {
    python3 -c 'import sys; m=[int(x,16) for x in sys.argv[1].split(":")]; m[0]^=2; b=m[:3]+[0xff,0xfe]+m[3:]; print(":".join("%x" % (b[i]<<8|b[i+1]) for i in range(0,8,2)))' "$1"
}
iid() { python3 -c 'import ipaddress,sys; a=ipaddress.IPv6Address(sys.argv[1].split("/")[0]).packed[8:]; print(":".join("%x" % (a[i]<<8|a[i+1]) for i in range(0,8,2)))' "$1"; }

# expected_secret SID: the slot's stable_secret as the kernel prints it, derived here the way
# identity.rs documents it (SHA-256 over a label, the machine-id and the sid as 4 bytes).
expected_secret() {
    python3 -c 'import hashlib,sys; mid=open("/etc/machine-id").read().strip().encode()
d=hashlib.sha256(b"sessiond-ipv6-stable-secret\0"+mid+b"\0"+int(sys.argv[1]).to_bytes(4,"big")).digest()[:16]
print(":".join("%04x" % (d[i]<<8|d[i+1]) for i in range(0,16,2)))' "$1"
}

# ------------------------------------------------------------------ 1. two sessions

two_sessions_form_stable_addresses() {
    "$SESSIOND" start --session 1 >/dev/null && "$SESSIOND" start --session 2 >/dev/null || return 1
    local n
    for n in 1 2; do
        wait_for 10 has_global "$n" || { echo "session $n: no global address in $PREFIX::/64"; status_of "$n"; return 1; }
    done
    G1=$(global6 1); G2=$(global6 2)
    echo "s1 $G1, s2 $G2"
    [[ $(wc -l <<<"$G1") == 1 && $(wc -l <<<"$G2") == 1 ]] || { echo "want one global address each"; return 1; }
    [[ $G1 != "$G2" ]] || { echo "same address"; return 1; }
    [[ $G1 == */64 && $G2 == */64 ]] || return 1
    for n in 1 2; do
        local mac g; mac=$(status_of "$n" | jq -r .mac); g=G$n; g=${!g}
        # 2: IN6_ADDR_GEN_MODE_STABLE_PRIVACY, keyed by stable_secret
        [[ $(sysctl_in "$n" eth0/addr_gen_mode) == 2 ]] || { echo "session $n: addr_gen_mode not stable_privacy"; return 1; }
        [[ $(sysctl_in "$n" eth0/stable_secret) == "$(expected_secret "$n")" ]] || { echo "session $n: secret $(sysctl_in "$n" eth0/stable_secret), not the slot's $(expected_secret "$n")"; return 1; }
        [[ $(iid "$g") != "$(eui64 "$mac")" ]] || { echo "session $n: the interface id is the MAC's EUI-64"; return 1; }
        [[ $(sysctl_in "$n" eth0/stable_secret) != "$(sysctl_in $((3 - n)) eth0/stable_secret)" ]] || { echo "the two sessions share a secret"; return 1; }
        grep -q "inet6 ${g%/*}/64 scope global" <<<"$(addrs_of "$n" eth0)" || { echo "session $n: $g not on eth0"; addrs_of "$n" eth0; return 1; }
    done
}

status_shows_ipv6() {
    local j t; j=$(status_of 1); echo "$j"
    jq -e --arg g "$G1" '.ipv6 == "slaac" and (.addresses6 | index($g)) != null
        and (.addresses6 | map(select(startswith("fe80:"))) | length) == 1
        and (.addresses6_detail[] | select(.address == $g) | .origin == "slaac" and .valid_secs > 0 and .valid_secs <= 600 and .preferred_secs <= 300)' <<<"$j" >/dev/null ||
        { echo "unexpected IPv6 fields"; return 1; }
    t=$("$SESSIOND" status); echo "$t"
    grep -q "ipv6 slaac" <<<"$t" && grep -qE "$G1 slaac, valid [0-9]+ s, preferred [0-9]+ s" <<<"$t" || { echo "text view lacks the IPv6 lines"; return 1; }
}

# hosts_maps SID ADDR: the session's hosts file maps the host name to ADDR (and keeps IPv4's).
hosts_maps() {
    local h; h=$(cat "/etc/netns/sessiond-$1/hosts"); echo "$h"
    grep -qP "^${2%/*}\t$(hostname)" <<<"$h" && grep -qP "^10\.77\.0\.\d+\t$(hostname)" <<<"$h"
}
# env6 SID: SESSIOND_ADDRESS6 as `exec` sets it.
env6() { "$SESSIOND" exec --session "$1" -- printenv SESSIOND_ADDRESS6; }

slaac_address_in_hosts_and_exec() {
    wait_for 5 hosts_maps 1 "$G1" || { hosts_maps 1 "$G1"; return 1; }
    [[ $(env6 1) == "${G1%/*}" ]] || { echo "SESSIOND_ADDRESS6=$(env6 1), want ${G1%/*}"; return 1; }
}

# ------------------------------------------------------------------ 2. reachability

ping6() { ip netns exec "sessiond-$1" busybox ping -6 -c 1 -W 2 "$2"; }
sessions_reach_each_other() { ping6 1 "${G2%/*}" && ping6 2 "${G1%/*}" && ping6 1 "$ROUTER"; }

# ------------------------------------------------------------------ 3. same slot, same address

same_address_after_stop_start() {
    "$SESSIOND" stop --session 1 >/dev/null || return 1
    "$SESSIOND" start --session 1 >/dev/null || return 1
    wait_for 10 has_global 1 || { echo "no global address after the restart"; return 1; }
    echo "before $G1, after $(global6 1)"
    [[ $(global6 1) == "$G1" ]]
}

same_address_after_daemon_kill() {
    kill_daemon 9
    start_v6_daemon || return 1
    [[ $(global6 2) == "$G2" ]] || { echo "the re-adopted session shows $(global6 2), not $G2"; return 1; }
    "$SESSIOND" stop --session 2 >/dev/null && "$SESSIOND" start --session 2 >/dev/null || return 1
    wait_for 10 has_global 2 || { echo "no global address after the new daemon restarted the session"; return 1; }
    echo "before $G2, after $(global6 2)"
    [[ $(global6 2) == "$G2" ]]
}

# ------------------------------------------------------------------ 4. off

off_leaves_no_address() {
    kill_daemon
    start_v6_daemon --ipv6 off || return 1
    "$SESSIOND" start --session 3 >/dev/null || return 1
    # Past one unsolicited RA (radvd sends one every 3-4 s); an auto session sees it.
    sleep 4.5
    local a; a=$(ip netns exec sessiond-3 ip -6 addr show dev eth0); echo "eth0: $a"
    [[ -z $a ]] || { echo "IPv6 address on eth0 with ipv6 = off"; return 1; }
    [[ $(sysctl_in 3 eth0/disable_ipv6) == 1 ]] || return 1
    grep -q "inet6 ::1/128" <<<"$(addrs_of 3 lo)" || { echo "lo lost ::1"; return 1; }
    status_of 3 | jq -e '.ipv6 == "off" and .addresses6 == []' || return 1
    # The daemon's mode does not reach into sessions made before: session 1 keeps its address.
    [[ $(global6 1) == "$G1" ]]
}

# ------------------------------------------------------------------ 5. privacy

privacy_adds_a_temporary_address() {
    kill_daemon
    start_v6_daemon --ipv6-privacy || return 1
    "$SESSIOND" start --session 4 >/dev/null || return 1
    has_temp() { status_of 4 | jq -e '[.addresses6_detail[] | select(.origin == "temporary")] | length == 1' >/dev/null; }
    wait_for 10 has_temp || { status_of 4; return 1; }
    [[ $(sysctl_in 4 eth0/use_tempaddr) == 2 ]] || return 1
    status_of 4 | jq -e '[.addresses6_detail[] | select(.origin == "slaac")] | length == 1' >/dev/null || { echo "the stable address went"; return 1; }
}

# ------------------------------------------------------------------ 5b. wait_for

wait_for_both_answers_with_ipv6() {
    kill_daemon
    start_v6_daemon --wait-for both --dhcp-timeout 3 || return 1
    local j; j=$("$SESSIOND" start --session 8 --json) || return 1
    # no polling here: the start answered only once the address was usable
    local s; s=$(status_of 8); echo "$s"
    jq -e '.ipv6 == "slaac" and (.addresses6 | map(select(startswith("2001:db8:77:"))) | length) == 1' <<<"$s" >/dev/null
}

wait_for_fails_without_a_router() {
    kill "$RADVD_PID" 2>/dev/null; wait "$RADVD_PID" 2>/dev/null; RADVD_PID=
    expect_exit 1 "no usable global IPv6 address within 3 s" "$SESSIOND" start --session 9 || return 1
    [[ ! -e /run/netns/sessiond-9 && ! -e /etc/netns/sessiond-9 ]] || { echo "the failed start left its namespace"; return 1; }
    [[ $("$SESSIOND" status --json | jq 'map(select(.session == 9)) | length') == 0 ]]
}

# ------------------------------------------------------------------ 5c. IPv6-only
# addressing = "none" (wait_for is ipv6 there): no IPv4 on eth0 at all; start answers once
# the SLAAC address is usable, with it; the session reaches session 1 over IPv6; exec and a
# PAM login (pamtester) get SESSIOND_ADDRESS6 and no SESSIOND_ADDRESS; hosts maps the host
# name to it; a kill -9 and a new daemon re-adopt it.

A11=''
V6ONLY=(--uplink "$SBX_UPLINK" --state-dir "$STATE" --addressing none --dhcp-timeout 5)
ipv6_only_session_works() {
    kill_daemon
    start_daemon "${V6ONLY[@]}" || return 1
    local j; j=$("$SESSIOND" start --session 11 --json) || { tail -5 "$DAEMON_LOG"; return 1; }
    echo "start: $j"
    # no polling: start answered once the address was usable, and with it
    A11=$(jq -r --arg p "$PREFIX:" '.addresses6[] | select(startswith($p))' <<<"$j")
    [[ -n $A11 ]] || { echo "the start's answer has no address in $PREFIX::/64"; return 1; }
    jq -e '.address == null and .gateway == null and .addressing == "none" and .ipv6 == "slaac"' <<<"$j" >/dev/null || return 1
    [[ -z $(ip -n sessiond-11 -4 addr show dev eth0) ]] || { echo "IPv4 on eth0:"; ip -n sessiond-11 -4 addr show dev eth0; return 1; }
    [[ -z $(ip -n sessiond-11 -4 route show) ]] || { echo "IPv4 routes:"; ip -n sessiond-11 -4 route show; return 1; }
    grep -q "inet 127.0.0.12/32" <<<"$(ip -n sessiond-11 -4 addr show dev lo)" || { echo "no session loopback"; return 1; }
    ping6 11 "${G1%/*}" && ping6 1 "${A11%/*}" || return 1
    local env; env=$("$SESSIOND" exec --session 11 -- env); grep SESSIOND_ <<<"$env"
    grep -qx "SESSIOND_ADDRESS6=${A11%/*}" <<<"$env" && ! grep -q "^SESSIOND_ADDRESS=" <<<"$env" || { echo "exec's environment is wrong"; return 1; }
    wait_for 5 grep -qP "^${A11%/*}\t$(hostname)" /etc/netns/sessiond-11/hosts || { cat /etc/netns/sessiond-11/hosts; return 1; }
}

# The loopback bridge does not need IPv4 on eth0: the host reaches 127.0.0.1:8000 in the
# IPv6-only session at its loopback 127.0.0.12:8000.
greet() { timeout 5 python3 -c 'import socket; print(socket.create_connection(("127.0.0.12", 8000), timeout=3).recv(16).decode())' 2>/dev/null; }
greets() { [[ $(greet) == hello ]]; }
ipv6_only_session_bridged() {
    ip netns exec sessiond-11 timeout 20 python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 8000)); s.listen()
while True:
    c, _ = s.accept(); c.sendall(b"hello"); c.close()' &
    local pid=$! got
    wait_for 5 greets
    got=$(greet); kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    echo "from the host, 127.0.0.12:8000 said: $got"
    [[ $got == hello ]]
}

# The pam_exec probe after pam_sessiond in the pamtester stack: what the login sees.
V6PROBE=/run/v6probe.sh V6PROBE_OUT=/run/v6probe.out
cat >"$V6PROBE" <<'EOF'
#!/bin/sh
[ "$PAM_TYPE" = open_session ] || exit 0
echo "address=${SESSIOND_ADDRESS:-} address6=${SESSIOND_ADDRESS6:-} eth0=$(ip -6 -o addr show dev eth0 scope global | awk '{print $4}')" >/run/v6probe.out
EOF
chmod 755 "$V6PROBE"
v6_pam_login_gets_address6() {
    getent passwd v6user >/dev/null || sandbox_user v6user /run/v6user || return 1
    PROBE=$V6PROBE pam_service debug
    rm -f "$V6PROBE_OUT"
    timeout 30 pamtester -v "$SERVICE" v6user open_session close_session || return 1
    local p; p=$(cat "$V6PROBE_OUT"); echo "$p"
    local a6; a6=$(sed -n 's/.*address6=\([^ ]*\).*/\1/p' <<<"$p")
    [[ -n $a6 && $p == "address= "* && $p == *"eth0=$a6/64"* ]] || { echo "the login's SESSIOND_ADDRESS6 is not eth0's global address, or SESSIOND_ADDRESS is set"; return 1; }
}

ipv6_only_session_readopted() {
    kill_daemon 9
    start_daemon "${V6ONLY[@]}" || return 1
    local s; s=$(status_of 11); echo "$s"
    jq -e --arg a "$A11" '.address == null and .addressing == "none" and .ipv6 == "slaac" and (.addresses6 | index($a)) != null' <<<"$s" >/dev/null || return 1
    [[ $("$SESSIOND" exec --session 11 -- printenv SESSIOND_ADDRESS6) == "${A11%/*}" ]] || return 1
    wait_for 5 grep -qP "^${A11%/*}\t$(hostname)" /etc/netns/sessiond-11/hosts || { echo "the new daemon lost the IPv6 line of hosts"; cat /etc/netns/sessiond-11/hosts; return 1; }
    ping6 11 "${G1%/*}" || return 1
    # back to the daemon the next checks expect
    kill_daemon
    start_v6_daemon --wait-for both --dhcp-timeout 3
}

# ------------------------------------------------------------------ 6. DHCPv6 (Kea)
# radvd now sets M (addresses from DHCPv6, no SLAAC prefix), and kea-dhcp6 leases from
# $PREFIX::1:0/112 with short timers: T1 8 s, T2 14 s, valid 40 s.

KEA_DIR=/run/kea6
KEA_PID=
KEA_LEASES=$KEA_DIR/leases6.csv

radvd_managed() {
    kill "$RADVD_PID" 2>/dev/null; wait "$RADVD_PID" 2>/dev/null
    cat >/run/radvd.conf <<EOF
interface $SBX_SERVER_IF {
    AdvSendAdvert on;
    AdvManagedFlag on;
    AdvOtherConfigFlag on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    prefix $PREFIX::/64 {
        AdvOnLink on;
        AdvAutonomous off;
    };
};
EOF
    ip netns exec "$SBX_SERVER_NS" radvd -C /run/radvd.conf -p /run/radvd.pid -n -m stderr >/run/radvd.log 2>&1 &
    RADVD_PID=$!
    sleep 0.3
    kill -0 "$RADVD_PID" || { cat /run/radvd.log; return 1; }
}

start_kea6() {
    mkdir -p "$KEA_DIR"
    cat >"$KEA_DIR/kea-dhcp6.conf" <<EOF
{ "Dhcp6": {
    "interfaces-config": { "interfaces": [ "$SBX_SERVER_IF" ] },
    "lease-database": { "type": "memfile", "persist": true, "lfc-interval": 0, "name": "$KEA_LEASES" },
    "server-id": { "type": "EN", "enterprise-id": 2495, "identifier": "0102030405", "persist": false },
    "preferred-lifetime": 30, "valid-lifetime": 40, "renew-timer": 8, "rebind-timer": 14,
    "option-data": [ { "name": "dns-servers", "data": "$ROUTER" }, { "name": "domain-search", "data": "v6.example" } ],
    "subnet6": [ { "id": 1, "subnet": "$PREFIX::/64", "interface": "$SBX_SERVER_IF",
                   "pools": [ { "pool": "$PREFIX::1:0/112" } ] } ],
    "loggers": [ { "name": "kea-dhcp6", "output_options": [ { "output": "$KEA_DIR/kea.log" } ], "severity": "INFO" } ]
} }
EOF
    ip netns exec "$SBX_SERVER_NS" env KEA_PIDFILE_DIR="$KEA_DIR" KEA_LOCKFILE_DIR="$KEA_DIR" \
        kea-dhcp6 -c "$KEA_DIR/kea-dhcp6.conf" >"$KEA_DIR/kea.out" 2>&1 &
    KEA_PID=$!
    wait_for 5 grep -q "DHCP6_STARTED" "$KEA_DIR/kea.log" || { cat "$KEA_DIR/kea.out" "$KEA_DIR/kea.log"; return 1; }
    kill -0 "$KEA_PID" || { cat "$KEA_DIR/kea.out"; return 1; }
}
dhcp6_servers() { radvd_managed && start_kea6; }

# kea_rows: "address iaid valid_lifetime expire" for the last row of each address in Kea's
# memfile (valid_lifetime 0: released).
kea_rows() {
    [[ -f $KEA_LEASES ]] || return 0
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { a = $(col["address"]); row[a] = a " " $(col["iaid"]) " " $(col["valid_lifetime"]) " " $(col["expire"]); if (!(a in seen)) { seen[a] = 1; order[++n] = a } }
        END { for (i = 1; i <= n; i++) print row[order[i]] }' "$KEA_LEASES"
}
kea_row_of() { kea_rows | awk -v a="$1" '$1 == a'; }
kea_released() { [[ -n $(kea_row_of "$1" | awk '$3 == 0') ]]; }
leased6() { status_of "$1" | jq -r --arg p "$PREFIX::1:" '.addresses6_detail[] | select(.origin == "dhcpv6" and (.address | startswith($p))) | .address'; }
has_lease6() { [[ -n $(leased6 "$1") ]] && ipv6_is "$1" dhcpv6; }
# logged_since MARK REGEX: the daemon logged a line matching REGEX after MARK.
logged_since() { grep -qE "$2" <<<"$(log_since "$1")"; }
D5='' D6=''

two_sessions_lease_from_kea() {
    "$SESSIOND" stop --all >/dev/null || return 1
    kill_daemon
    start_v6_daemon || return 1
    "$SESSIOND" start --session 5 >/dev/null && "$SESSIOND" start --session 6 >/dev/null || return 1
    local n
    for n in 5 6; do
        wait_for 15 has_lease6 "$n" || { echo "session $n: no DHCPv6 address"; status_of "$n"; tail -20 "$DAEMON_LOG"; return 1; }
    done
    D5=$(leased6 5); D6=$(leased6 6); echo "s5 $D5, s6 $D6"
    [[ $D5 != "$D6" && $D5 == */128 ]] || return 1
    status_of 5 | jq -e '.dhcp6_state == "bound" and ([.addresses6_detail[] | select(.origin == "dhcpv6")][0] | .valid_secs <= 40 and .preferred_secs <= 30)' || return 1
    [[ $(grep -A1 "inet6 ${D5%/*}/128 " <<<"$(addrs_of 5 eth0)") =~ valid_lft\ [0-9]+sec ]] || { echo "not on eth0 with a finite lifetime"; addrs_of 5 eth0; return 1; }
    kea_rows
    for n in 5 6; do
        local d=D$n; d=${!d}
        [[ -n $(kea_row_of "${d%/*}" | awk -v iaid="$n" '$2 == iaid && $3 > 0') ]] || { echo "Kea has no lease of ${d%/*} for IAID $n"; return 1; }
    done
    local slaac; slaac=$(global6 5 | grep -v "^$PREFIX::1:")
    [[ -z $slaac ]] || { echo "a SLAAC address ($slaac) although the RA has no autonomous prefix"; return 1; }
}

dhcp6_reach_each_other() { ping6 5 "${D6%/*}" && ping6 6 "${D5%/*}"; }

dhcp6_names_in_files() {
    local r; r=$(cat /etc/netns/sessiond-5/resolv.conf); echo "$r"
    grep -qx "nameserver $ROUTER" <<<"$r" && grep -qE "^search (.* )?v6\.example( |$)" <<<"$r" || { echo "no IPv6 DNS in resolv.conf"; return 1; }
    grep -qx "nameserver $SBX_GATEWAY" <<<"$r" || { echo "the IPv4 name server went"; return 1; }
    hosts_maps 5 "$D5" || return 1
    [[ $(env6 5) == "${D5%/*}" ]] || { echo "SESSIOND_ADDRESS6=$(env6 5), want ${D5%/*}"; return 1; }
}

renews_at_t1() {
    local mark before after
    mark=$(log_mark)
    before=$(kea_row_of "${D5%/*}" | awk '{print $4}')
    wait_for 15 logged_since "$mark" 'dhcp6\{sid=5\}.*renewing -> bound' || { echo "no renewal"; log_since "$mark" | grep dhcp6; return 1; }
    log_since "$mark" | grep "dhcp6{sid=5}"
    after=$(kea_row_of "${D5%/*}" | awk '{print $4}')
    echo "Kea's expiry for ${D5%/*}: $before -> $after"
    ((after > before)) || { echo "Kea did not extend the lease"; return 1; }
    [[ $(leased6 5) == "$D5" ]]
}

dhcp6_survives_daemon_kill() {
    kill_daemon 9
    grep -q "${D5%/*}/128" <<<"$(addrs_of 5 eth0)" || { echo "the address went with the daemon"; return 1; }
    local mark; mark=$(log_mark)
    start_v6_daemon || return 1
    wait_for 10 logged_since "$mark" 'dhcp6\{sid=5\}.*rebinding -> bound' || { echo "the persisted lease was not rebound"; log_since "$mark" | grep dhcp6; return 1; }
    [[ $(leased6 5) == "$D5" ]] || { echo "now $(leased6 5)"; return 1; }
}

release_shows_in_kea() {
    "$SESSIOND" stop --session 5 >/dev/null || return 1
    wait_for 5 kea_released "${D5%/*}" || { kea_row_of "${D5%/*}"; grep -i release "$KEA_DIR/kea.log" | tail -3; return 1; }
    kea_row_of "${D5%/*}"
}

off_sends_no_dhcpv6() {
    kill_daemon
    start_v6_daemon --ipv6 off || return 1
    "$SESSIOND" start --session 7 >/dev/null || return 1
    sleep 4.5   # past an RA with M set
    [[ -z $(ip netns exec sessiond-7 ip -6 addr show dev eth0) ]] || { echo "IPv6 on eth0"; return 1; }
    [[ -z $(kea_rows | awk '$2 == 7') ]] || { echo "Kea leased to IAID 7"; return 1; }
    ! grep -q "dhcp6{sid=7}" "$DAEMON_LOG" || { echo "a DHCPv6 task ran for session 7"; return 1; }
}

# ------------------------------------------------------------------ 7. dnsmasq (RA + DHCPv6)
# radvd and Kea go; dnsmasq sends the RAs itself (M set) and leases from $PREFIX::2:0/112.

DNSMASQ_PID=
DNSMASQ_LEASES=/run/dnsmasq6.leases

start_dnsmasq6() {
    kill "$RADVD_PID" "$KEA_PID" 2>/dev/null; wait "$RADVD_PID" "$KEA_PID" 2>/dev/null; RADVD_PID='' KEA_PID=''
    ip netns exec "$SBX_SERVER_NS" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface="$SBX_SERVER_IF" \
        --enable-ra --ra-param="$SBX_SERVER_IF",4 --dhcp-range="$PREFIX::2:0,$PREFIX::2:ffff,64,300" \
        --dhcp-option="option6:dns-server,[$ROUTER]" --dhcp-option="option6:domain-search,dq.example" \
        --dhcp-leasefile="$DNSMASQ_LEASES" --pid-file=/run/dnsmasq6.pid --log-dhcp >/run/dnsmasq6.log 2>&1 &
    DNSMASQ_PID=$!
    sleep 0.3
    kill -0 "$DNSMASQ_PID" || { cat /run/dnsmasq6.log; return 1; }
}
# dnsmasq_has ADDR: dnsmasq's lease file lists ADDR.
dnsmasq_has() { [[ -f $DNSMASQ_LEASES ]] && [[ -n $(awk -v a="$1" '$3 == a' "$DNSMASQ_LEASES") ]]; }
has_dq_lease() { [[ -n $(status_of 10 | jq -r --arg p "$PREFIX::2:" '.addresses6_detail[] | select(.origin == "dhcpv6" and (.address | startswith($p))) | .address') ]]; }

dnsmasq_leases_and_releases() {
    kill_daemon
    start_v6_daemon || return 1
    "$SESSIOND" start --session 10 >/dev/null || return 1
    wait_for 15 has_dq_lease || { echo "no DHCPv6 address from dnsmasq"; status_of 10; tail -20 /run/dnsmasq6.log; return 1; }
    local a; a=$(status_of 10 | jq -r --arg p "$PREFIX::2:" '.addresses6_detail[] | select(.origin == "dhcpv6" and (.address | startswith($p))) | .address')
    echo "session 10: $a"; cat "$DNSMASQ_LEASES"
    wait_for 3 dnsmasq_has "${a%/*}" || { echo "dnsmasq does not list ${a%/*}"; return 1; }
    local r; r=$(cat /etc/netns/sessiond-10/resolv.conf); echo "$r"
    grep -qx "nameserver $ROUTER" <<<"$r" && grep -qE "^search (.* )?dq\\.example( |$)" <<<"$r" || { echo "no IPv6 DNS from dnsmasq"; return 1; }
    ping6 10 "$ROUTER" || return 1
    "$SESSIOND" stop --session 10 >/dev/null || return 1
    wait_for 5 bash -c "! awk -v a='${a%/*}' '\$3 == a { f = 1 } END { exit !f }' '$DNSMASQ_LEASES'" || { echo "dnsmasq still lists ${a%/*} after the Release"; cat "$DNSMASQ_LEASES"; return 1; }
}

t0=$(date +%s)
check "radvd advertises $PREFIX::/64 in the server namespace" start_radvd
check "daemon starts" start_v6_daemon
check "two sessions form distinct stable-privacy addresses in the prefix" two_sessions_form_stable_addresses
check "status and --json show ipv6 and addresses6 with origin and lifetimes" status_shows_ipv6
check "sessions reach each other and the router (busybox ping -6)" sessions_reach_each_other
check "the SLAAC address is in the session's hosts and SESSIOND_ADDRESS6" slaac_address_in_hosts_and_exec
check "same sid, same address after stop/start" same_address_after_stop_start
check "same sid, same address after kill -9 and a new daemon" same_address_after_daemon_kill
check "ipv6 = off: no address on the uplink, lo keeps ::1" off_leaves_no_address
check "ipv6_privacy: a temporary address beside the stable one" privacy_adds_a_temporary_address
check "wait_for = both: start answers once the IPv6 address is usable" wait_for_both_answers_with_ipv6
check "an IPv6-only session works: start answers with its SLAAC address, no IPv4, ping -6 to another session, exec's env, hosts" ipv6_only_session_works
check "an IPv6-only session: the host reaches it at its loopback (the bridge needs no IPv4)" ipv6_only_session_bridged
check "an IPv6-only session: a PAM login gets SESSIOND_ADDRESS6 (eth0's address) and no SESSIOND_ADDRESS" v6_pam_login_gets_address6
check "an IPv6-only session: kill -9 and a new daemon re-adopt it (status, exec, hosts, reachability)" ipv6_only_session_readopted
check "wait_for = both without a router: start fails naming IPv6 and leaves nothing" wait_for_fails_without_a_router
check "radvd sets M, kea-dhcp6 serves $PREFIX::1:0/112" dhcp6_servers
check "kea: two sessions lease distinct addresses, shown in status and in Kea's lease DB" two_sessions_lease_from_kea
check "kea: the sessions reach each other at their leased addresses" dhcp6_reach_each_other
check "kea: DHCPv6 DNS and search merged into resolv.conf with IPv4's; the lease in hosts and SESSIOND_ADDRESS6" dhcp6_names_in_files
check "kea: renewal at T1 extends the lease (Kea's expiry moves)" renews_at_t1
check "kea: kill -9 and a new daemon: the persisted lease is rebound, same address" dhcp6_survives_daemon_kill
check "kea: stop sends Release, visible in Kea's lease DB" release_shows_in_kea
check "ipv6 = off: no address and no DHCPv6 although the RA sets M" off_sends_no_dhcpv6
check "dnsmasq sends the RAs (M) and leases by DHCPv6" start_dnsmasq6
check "dnsmasq: a lease, its DNS in resolv.conf, reachability; the Release leaves dnsmasq's lease file" dnsmasq_leases_and_releases
"$SESSIOND" stop --all >/dev/null 2>&1
kill_daemon
[[ -n $RADVD_PID ]] && kill "$RADVD_PID" 2>/dev/null
[[ -n $KEA_PID ]] && kill "$KEA_PID" 2>/dev/null
[[ -n $DNSMASQ_PID ]] && kill "$DNSMASQ_PID" 2>/dev/null
info "took $(($(date +%s) - t0)) s"
finish
