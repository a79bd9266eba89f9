#!/usr/bin/env bash
# Root integration tests for DHCP addressing against real DHCP servers, run in a private
# sandbox (scripts/sandbox: bridge br-lan, server netns lan-srv with srv0 = 10.77.0.1/24).
# Usage: tests/shell/dhcp.sh [dnsmasq|kea|dhcpd|udhcpd ...]   (default: all four)
#
# Per server kind, with a fresh state dir, daemon and server:
#   1. two sessions lease distinct addresses; eth0, default route, resolv.conf; the server's
#      own lease DB lists both MACs
#   2. kill -9 + restart of the daemon keeps both addresses via INIT-REBOOT (no new DISCOVER)
#   3. stop sends DHCPRELEASE: the lease leaves the server's DB; then the same slot started
#      again gets the same address (the daemon asks for the slot's last address in DISCOVER:
#      Kea's allocator would otherwise hand out the next one)
#   4. short lease (not dnsmasq: 120 s minimum): renewal at T1 keeps the address, and the
#      address's kernel lifetime covers the renewed lease
#   5. server outage: RENEWING -> REBINDING past T2, address gone past expiry (not before),
#      bound again soon after the server is back
#   (and after the outage: a kill -9 + restart brings back only the current lease's address)
# Once, with the first short-lease kind:
#   7. the daemon restarts while the server is down: resolv.conf keeps its search domain, the
#      address stays until the lease expires and is gone past the expiry
# Once: 6. `start` with no server fails after --dhcp-timeout, naming the uplink, leaving nothing.
# Every wait is bounded in time; the whole suite takes about 1.5 minutes.
# a && b || fail is meant; eval '...' expands later on purpose; T2 is whole seconds on
# purpose; check runs the functions (shellcheck thinks them unreachable after enter_sandbox)
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2016,SC2017,SC2119,SC2120,SC2317
source "$(dirname "$0")/lib.sh"
enter_sandbox "$@"

ALL_KINDS=(dnsmasq kea dhcpd udhcpd)
KINDS=("$@")
[[ $# -eq 0 ]] && KINDS=("${ALL_KINDS[@]}")
for k in "${KINDS[@]}"; do
    [[ " ${ALL_KINDS[*]} " == *" $k "* ]] || { echo "unknown server kind '$k' (want: ${ALL_KINDS[*]})"; exit 2; }
done

DHCP=$SBX_DHCP_SERVER
STATE=/var/lib/sessiond-dhcp
SHORT_LEASE=12          # s: T1 6 s, T2 10.5 s
DNSMASQ_LEASE=120       # dnsmasq's minimum
SUITE_START=$(date +%s)

# check() sends stdout and stderr to a file shown only on failure; fd 3 reaches the terminal.
exec 3>&1
info() { echo "    info: $*" >&3; }

srv() { "$DHCP" "$KIND" "$@"; }
start_dhcp_daemon() { start_daemon --uplink "$SBX_UPLINK" --state-dir "$STATE" "$@"; }
status_of() { "$SESSIOND" status --json | jq -c ".[] | select(.session == $1)"; }
field() { jq -r "$2" <<<"$1"; }
addr_on_eth0() { ip netns exec "sessiond-$1" ip -4 addr show dev eth0 | grep -q "inet $2/"; }
any_addr_on_eth0() { ip netns exec "sessiond-$1" ip -4 addr show dev eth0 | grep -q "inet "; }
# log_has MARK SID REGEX: a "DHCP state" / "lease ..." line of session SID after MARK.
log_has() { log_since "$1" | grep -qE "dhcp\{sid=$2\}: $3"; }
dhcp_state_is() { [[ $(status_of "$1" | jq -r '.lease.dhcp_state') == "$2" ]]; }

# ------------------------------------------------------------------ 1. two sessions

in_pool() { # ADDR/PREFIX
    local ip=${1%/*} p=${1#*/}
    [[ $p == 24 && $ip =~ ^10\.77\.0\.([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 100 && BASH_REMATCH[1] <= 199))
}

two_sessions_lease() {
    S1=$("$SESSIOND" start --session 1 --json) || return 1
    S2=$("$SESSIOND" start --session 2 --json) || return 1
    A1=$(field "$S1" .address); A2=$(field "$S2" .address)
    M1=$(field "$S1" .mac); M2=$(field "$S2" .mac)
    echo "s1 $A1 $M1, s2 $A2 $M2"
    [[ $A1 != "$A2" ]] || { echo "same address"; return 1; }
    in_pool "$A1" && in_pool "$A2" || { echo "address outside 10.77.0.100-199/24"; return 1; }
    local s
    for s in "$S1" "$S2"; do
        [[ $(field "$s" .addressing) == dhcp && $(field "$s" .lease.server) == "$SBX_SERVER_IP" &&
           $(field "$s" .lease.dhcp_state) == bound && $(field "$s" .gateway) == "$SBX_GATEWAY" ]] ||
            { echo "unexpected lease fields: $s"; return 1; }
        (($(field "$s" .lease.expires) > $(now_ms))) || { echo "lease already expired: $s"; return 1; }
    done
}

netns_address_route_dns() {
    local n a out
    for n in 1 2; do
        a=A$n; a=${!a}
        out=$(ip netns exec "sessiond-$n" ip -4 addr show dev eth0); echo "$out"
        grep -q "inet $a " <<<"$out" || { echo "session $n: $a not on eth0"; return 1; }
        # finite lifetime: "valid_lft 11sec", not "forever"
        grep -qE "valid_lft [0-9]+sec" <<<"$out" || { echo "session $n: valid_lft not finite"; return 1; }
        ip netns exec "sessiond-$n" ip -4 route show default | tee /dev/stderr |
            grep -q "^default via $SBX_GATEWAY dev eth0" || { echo "session $n: no default route via $SBX_GATEWAY"; return 1; }
        cat "/etc/netns/sessiond-$n/resolv.conf"
        grep -qx "nameserver $SBX_SERVER_IP" "/etc/netns/sessiond-$n/resolv.conf" &&
            grep -qx "search $SBX_DOMAIN" "/etc/netns/sessiond-$n/resolv.conf" || { echo "session $n: resolv.conf"; return 1; }
    done
}

server_lists_both() {
    [[ $M1 == "${M1,,}" && $M2 == "${M2,,}" ]] || { echo "JSON mac not lowercase"; return 1; }
    local l; l=$(srv leases); echo "$l"
    grep -qx "${A1%/*} $M1" <<<"$l" && grep -qx "${A2%/*} $M2" <<<"$l"
}

# ------------------------------------------------------------------ 2. daemon restart

restart_keeps_addresses() {
    local mark n t0 seg a
    kill_daemon 9
    for n in 1 2; do
        a=A$n; addr_on_eth0 "$n" "${!a%/*}" || { echo "session $n lost its address with the daemon"; return 1; }
    done
    mark=$(log_mark); t0=$(now_ms)
    start_dhcp_daemon || return 1
    for n in 1 2; do
        wait_until_ms $((t0 + 10000)) log_has "$mark" "$n" "DHCP state (init-reboot|rebooting) -> bound" ||
            { echo "session $n: no init-reboot/rebooting -> bound"; log_since "$mark"; return 1; }
    done
    info "$KIND: both INIT-REBOOTs bound $(($(now_ms) - t0)) ms after the restart began"
    seg=$(log_since "$mark"); echo "$seg" | grep -E 'dhcp\{sid=[12]\}'
    if grep -qE 'dhcp\{sid=[12]\}: DHCP state .* -> selecting' <<<"$seg"; then
        echo "a session went back to selecting although its lease was valid"; return 1
    fi
    local st; st=$("$SESSIOND" status --json | jq -c 'map({session, address}) | sort_by(.session)')
    echo "status: $st"
    [[ $st == "[{\"session\":1,\"address\":\"$A1\"},{\"session\":2,\"address\":\"$A2\"}]" ]] || return 1
    for n in 1 2; do
        a=A$n; one_finite_address "$n" "${!a%/*}" || return 1
    done
}

# one_finite_address SID IP: eth0 holds IP, with a finite valid_lft, and no other IPv4 address.
one_finite_address() {
    local out; out=$(ip netns exec "sessiond-$1" ip -4 -o addr show dev eth0)
    echo "$out"
    [[ $(grep -c . <<<"$out") == 1 ]] || { echo "session $1: want exactly one IPv4 address on eth0"; return 1; }
    grep -q "inet $2/" <<<"$out" || { echo "session $1: $2 not on eth0"; return 1; }
    grep -qE "valid_lft [0-9]+sec" <<<"$out" || { echo "session $1: valid_lft not finite"; return 1; }
}

# ------------------------------------------------------------------ 3. release

lacks_mac() { ! srv leases | awk '{print $2}' | grep -qxF "$1"; }

stop_frees_lease() {
    local t0; t0=$(now_ms)
    "$SESSIOND" stop --session 1 || return 1
    wait_until_ms $((t0 + 10000)) lacks_mac "$M1" || { echo "$KIND still lists $M1:"; srv leases; return 1; }
    info "$KIND: lease of $M1 left the server's DB $(($(now_ms) - t0)) ms after stop"
    srv leases | tee /dev/stderr | grep -qx "${A2%/*} $M2" || { echo "session 2's lease went too"; return 1; }
    local left=""
    ip netns list | grep -qw sessiond-1 && left+=" netns"
    [[ -e $STATE/sessions/1.json ]] && left+=" state-file"
    [[ -e $STATE/leases/1.json ]] && left+=" lease-file"
    [[ -e /etc/netns/sessiond-1 ]] && left+=" /etc/netns/sessiond-1"
    [[ -z $left ]] || { echo "left behind:$left"; return 1; }
}

# After stop_frees_lease: session 1 (released) started again gets A1 back, and the server's DB
# gives A1 to session 1's MAC.
same_slot_same_address() {
    local s a
    s=$("$SESSIOND" start --session 1 --json) || return 1
    a=$(field "$s" .address)
    echo "session 1: $A1 before its stop, $a now"
    info "$KIND: session 1 started again after its stop: ${A1%/*} -> ${a%/*}"
    [[ $a == "$A1" ]] || { echo "session 1 got another address"; return 1; }
    addr_on_eth0 1 "${A1%/*}" || { echo "${A1%/*} not on eth0"; return 1; }
    srv leases | tee /dev/stderr | grep -qx "${A1%/*} $M1" || { echo "the server's DB does not give ${A1%/*} to $M1"; return 1; }
}

# ------------------------------------------------------------------ 4. renewal

short_lease_renews() {
    local mark s e0 r0 st0 deadline s1 e1 st1
    wait_until_ms $(($(now_ms) + 3000)) dhcp_state_is 2 bound || { echo "session 2 not bound"; return 1; }
    mark=$(log_mark)
    s=$(status_of 2); e0=$(field "$s" .lease.expires); r0=$(field "$s" .lease.next_renewal); st0=$(field "$s" .lease.lease_start)
    echo "before: $s"
    (( r0 > st0 && r0 < e0 )) || { echo "next_renewal not between start and expiry"; return 1; }
    deadline=$((r0 + 3000))   # T1 + 3 s margin
    wait_until_ms "$deadline" log_has "$mark" 2 "DHCP state bound -> renewing" || { echo "no bound -> renewing by T1+3s"; log_since "$mark"; return 1; }
    wait_until_ms "$deadline" log_has "$mark" 2 "DHCP state renewing -> bound" || { echo "no renewing -> bound by T1+3s"; log_since "$mark"; return 1; }
    log_since "$mark" | grep -E 'dhcp\{sid=2\}'
    s1=$(status_of 2); echo "after: $s1"
    e1=$(field "$s1" .lease.expires); st1=$(field "$s1" .lease.lease_start)
    info "$KIND: renewal sent $((st1 - r0)) ms after T1; expiry moved $((e1 - e0)) ms"
    (( e1 > e0 )) || { echo "expiry did not move forward"; return 1; }
    (( st1 >= r0 - 100 )) || { echo "renewed before T1"; return 1; }
    [[ $(field "$s1" .address) == "$A2" ]] && addr_on_eth0 2 "${A2%/*}" || { echo "address changed or gone"; return 1; }
}

# Run right after the renewal: the kernel's valid_lft must cover the rest of the lease, or
# the kernel deletes the address before the lease ends. (ip shows the lifetime set minus the
# whole seconds since; a lifetime rounded up always passes, one rounded down fails here.)
renewal_lifetime_covers_lease() {
    local out now v e
    out=$(ip netns exec sessiond-2 ip -4 -o addr show dev eth0); now=$(now_ms)
    echo "$out"
    v=$(grep -oE 'valid_lft [0-9]+sec' <<<"$out" | grep -oE '[0-9]+') || { echo "no finite valid_lft"; return 1; }
    e=$(status_of 2 | jq -r .lease.expires)
    echo "valid_lft ${v} s, lease ends in $((e - now)) ms"
    (( v * 1000 >= e - now )) || { info "$KIND: after renewal valid_lft ${v} s but the lease ends in $((e - now)) ms"; return 1; }
}

# After its unicast renewal session 2's kernel has resolved the server: the daemon marks that
# neighbour entry externally learned (extern_learn), which the kernel's garbage collector of the
# one table all namespaces share leaves alone -- else each renewal at scale broadcasts an ARP
# request that the macvlan copies into every session. A session started later is seeded with
# the same entry at once (no ARP broadcast of its own).
renewal_pins_and_seeds_server_neighbour() {
    local srv out2 out3 rc=0
    srv=$(status_of 2 | jq -r .lease.server)
    out2=$(ip -n sessiond-2 neigh show "$srv" dev eth0); echo "session 2: $out2"
    [[ $out2 == *extern_learn* ]] || { echo "session 2's entry for $srv is not pinned"; rc=1; }
    "$SESSIOND" start --session 3 >/dev/null || return 1
    out3=$(ip -n sessiond-3 neigh show "$srv" dev eth0); echo "session 3 right after start: $out3"
    [[ $out3 == *extern_learn* && $(grep -oE 'lladdr [0-9a-f:]+' <<<"$out3") == $(grep -oE 'lladdr [0-9a-f:]+' <<<"$out2") ]] ||
        { echo "session 3 not seeded"; rc=1; }
    "$SESSIOND" stop --session 3 >/dev/null
    (( rc == 0 )) || grep -iE "neighbour|sid=[23]" "$DAEMON_LOG" | tail -n 12
    return $rc
}

# ------------------------------------------------------------------ 5. outage

OUT_MARK=0 OUT_E=0 OUT_T2=0
outage_rebinding_past_t2() {
    local s st ex t
    s=$(status_of 2); echo "$s"
    ex=$(field "$s" .lease.expires)
    # T2 as the client will act on it: the server's (or 7/8 of the lease), moved by the
    # client's RFC 2131 4.4.5 fuzz, which status reports.
    OUT_E=$ex; OUT_T2=$(field "$s" .lease.next_rebinding)
    [[ $OUT_T2 =~ ^[0-9]+$ ]] || { echo "status has no next_rebinding"; return 1; }
    OUT_MARK=$(log_mark)
    srv stop || return 1
    info "$KIND: server stopped $((OUT_E - $(now_ms))) ms before expiry"
    wait_until_ms "$OUT_E" log_has "$OUT_MARK" 2 "DHCP state (renewing|bound) -> rebinding" ||
        { echo "no -> rebinding before expiry"; log_since "$OUT_MARK"; return 1; }
    t=$(now_ms)
    local state; state=$(status_of 2 | jq -r .lease.dhcp_state)
    log_since "$OUT_MARK" | grep -E 'dhcp\{sid=2\}'
    info "$KIND: rebinding seen $((t - OUT_T2)) ms after T2 (status dhcp_state=$state)"
    (( t >= OUT_T2 - 100 )) || { echo "rebinding before T2"; return 1; }
    [[ $state == rebinding ]] || { echo "status dhcp_state is $state, not rebinding"; return 1; }
}

# Watches eth0 every 50 ms from now until 250 ms before the lease expiry: the address
# must stay (the kernel's valid_lft must not run out before the lease does).
outage_address_kept_until_expiry() {
    local n=2000 t
    while ((n-- > 0)); do
        t=$(now_ms)
        ((t >= OUT_E - 250)) && break
        addr_on_eth0 2 "${A2%/*}" || {
            echo "address gone $((OUT_E - t)) ms BEFORE the lease expiry"
            log_since "$OUT_MARK" | grep -E 'dhcp\{sid=2\}'
            return 1
        }
        sleep 0.05
    done
    ip netns exec sessiond-2 ip -4 addr show dev eth0
    addr_on_eth0 2 "${A2%/*}" || { echo "address gone $((OUT_E - $(now_ms))) ms before expiry"; return 1; }
    echo "still there $((OUT_E - $(now_ms))) ms before expiry"
}

outage_address_gone_after_expiry() {
    wait_until_ms $((OUT_E + 3000)) eval '! addr_on_eth0 2 "${A2%/*}"' ||
        { echo "address still on eth0 3 s after expiry"; ip netns exec sessiond-2 ip -4 addr show dev eth0; return 1; }
    info "$KIND: address gone $(($(now_ms) - OUT_E)) ms after expiry"
    wait_until_ms $(($(now_ms) + 2000)) log_has "$OUT_MARK" 2 "lease removed" || { echo "no 'lease removed' logged"; return 1; }
    log_since "$OUT_MARK" | grep -E 'dhcp\{sid=2\}'
    any_addr_on_eth0 2 && { echo "some address still on eth0"; return 1; }
    return 0
}

bound_again() {
    local s a
    s=$(status_of 2)
    [[ $(jq -r .lease.dhcp_state <<<"$s") == bound ]] || return 1
    a=$(jq -r .address <<<"$s")
    [[ $a != null ]] && addr_on_eth0 2 "${a%/*}"
}

outage_server_back() {
    local t0
    srv start --lease "$SHORT_LEASE" >/dev/null || return 1
    t0=$(now_ms)
    wait_until_ms $((t0 + 20000)) bound_again || { echo "not bound 20 s after the server came back"; status_of 2; log_since "$OUT_MARK"; return 1; }
    info "$KIND: bound again $(($(now_ms) - t0)) ms after the server came back ($((t0 - OUT_E)) ms after expiry)"
    local s; s=$(status_of 2); echo "$s"
    in_pool "$(field "$s" .address)" && grep -qx "nameserver $SBX_SERVER_IP" /etc/netns/sessiond-2/resolv.conf
}

# After the outage the session may hold another address than at `start`: a restart must
# bring back the current lease only, with its finite lifetime.
restart_after_outage() {
    local s a mark t0
    s=$(status_of 2); a=$(field "$s" .address)
    echo "address at start $A2, now $a"
    info "$KIND: address at start $A2, after the outage $a"
    kill_daemon 9
    mark=$(log_mark); t0=$(now_ms)
    start_dhcp_daemon || return 1
    wait_until_ms $((t0 + 10000)) log_has "$mark" 2 "DHCP state (init-reboot|rebooting) -> bound" ||
        { echo "no init-reboot/rebooting -> bound"; log_since "$mark"; return 1; }
    [[ $(status_of 2 | jq -r .address) == "$a" ]] || { echo "address changed across the restart"; return 1; }
    one_finite_address 2 "${a%/*}"
}

# ------------------------------------------------------------------ 7. restart during an outage
# The daemon restarts while the server is unreachable: INIT-REBOOT goes unanswered, the
# session keeps its address until the lease expires, and not past it.
RO_E=0 RO_A=
restart_during_outage_setup() {
    srv start --lease "$SHORT_LEASE" >/dev/null || return 1
    start_dhcp_daemon || return 1
    local s; s=$("$SESSIOND" start --session 3 --json) || return 1
    echo "$s"
    RO_E=$(field "$s" .lease.expires); RO_A=$(field "$s" .address)
    srv stop || return 1
    kill_daemon 9
    start_dhcp_daemon || return 1
    info "$KIND: daemon restarted with the server down, $((RO_E - $(now_ms))) ms before expiry"
    addr_on_eth0 3 "${RO_A%/*}"
}

restart_during_outage_resolv_conf() {
    cat /etc/netns/sessiond-3/resolv.conf
    grep -qx "nameserver $SBX_SERVER_IP" /etc/netns/sessiond-3/resolv.conf &&
        grep -qx "search $SBX_DOMAIN" /etc/netns/sessiond-3/resolv.conf
}

restart_during_outage_expires() {
    if ! wait_until_ms $((RO_E + 3000)) eval '! addr_on_eth0 3 "${RO_A%/*}"'; then
        echo "address still on eth0 $(($(now_ms) - RO_E)) ms past the lease expiry:"
        ip netns exec sessiond-3 ip -4 addr show dev eth0
        grep -E 'dhcp\{sid=3\}' "$DAEMON_LOG"
        info "$KIND: $RO_A still on eth0 $(($(now_ms) - RO_E)) ms past expiry"
        return 1
    fi
    info "$KIND: address gone $(($(now_ms) - RO_E)) ms after expiry"
}

# ------------------------------------------------------------------ 6. no server

no_server_start_fails() {
    local out rc t0 left=""
    t0=$(now_ms)
    out=$("$SESSIOND" start --session 9 --json 2>&1); rc=$?
    echo "exit $rc after $(($(now_ms) - t0)) ms: $out"
    info "start with no server failed after $(($(now_ms) - t0)) ms: $out"
    [[ $rc == 1 ]] || { echo "exit status $rc, want 1"; return 1; }
    grep -q "$SBX_UPLINK" <<<"$out" && grep -q DISCOVER <<<"$out" || { echo "message does not name $SBX_UPLINK and DISCOVER"; return 1; }
    ip netns list | grep -qw sessiond-9 && left+=" netns"
    [[ -e /run/netns/sessiond-9 ]] && left+=" /run/netns/sessiond-9"
    [[ -e $STATE/sessions/9.json ]] && left+=" state-file"
    [[ -e $STATE/leases/9.json ]] && left+=" lease-file"
    [[ -e /etc/netns/sessiond-9 ]] && left+=" /etc/netns/sessiond-9"
    [[ -z $left ]] || { echo "left behind:$left"; return 1; }
    [[ $("$SESSIOND" status --json | jq length) == 0 ]]
}

# ------------------------------------------------------------------ run

for KIND in "${KINDS[@]}"; do
    echo "--- DHCP server: $KIND"
    kind_start=$(date +%s)
    rm -rf "$STATE"
    DAEMON_LOG=/run/sessiond-dhcp-$KIND.log
    : >"$DAEMON_LOG"
    lease=$SHORT_LEASE
    [[ $KIND == dnsmasq ]] && lease=$DNSMASQ_LEASE
    check "$KIND: server starts (lease $lease s)" eval 'srv start --lease "$lease" >/dev/null'
    check "$KIND: daemon starts" start_dhcp_daemon
    check "$KIND: two sessions lease distinct addresses in the pool" two_sessions_lease
    check "$KIND: eth0 has the address (finite valid_lft), default route, resolv.conf" netns_address_route_dns
    check "$KIND: server's lease DB lists both MACs" server_lists_both
    check "$KIND: kill -9 + restart keeps both addresses (INIT-REBOOT, no DISCOVER)" restart_keeps_addresses
    check "$KIND: stop releases session 1's lease in the server's DB" stop_frees_lease
    check "$KIND: same slot, same address: session 1 started again gets ${A1%/*} back" same_slot_same_address
    if [[ $KIND == dnsmasq ]]; then
        echo "SKIP: $KIND: short-lease renewal and outage (dnsmasq's minimum lease is ${DNSMASQ_LEASE} s; too slow for this suite)"
    else
        check "$KIND: renews at T1 and keeps its address" short_lease_renews
        check "$KIND: after the renewal eth0's valid_lft covers the rest of the lease" renewal_lifetime_covers_lease
        check "$KIND: the server's neighbour entry is pinned after the renewal and seeded into a new session" renewal_pins_and_seeds_server_neighbour
        check "$KIND: outage: past T2 the session is rebinding" outage_rebinding_past_t2
        check "$KIND: outage: address stays on eth0 until (250 ms before) expiry" outage_address_kept_until_expiry
        check "$KIND: outage: address gone from eth0 past expiry" outage_address_gone_after_expiry
        check "$KIND: outage: bound again soon after the server is back" outage_server_back
        check "$KIND: kill -9 + restart after the outage: only the current lease's address" restart_after_outage
    fi
    check "$KIND: stop --all" "$SESSIOND" stop --all
    kill_daemon TERM
    srv stop >/dev/null 2>&1
    info "$KIND took $(($(date +%s) - kind_start)) s"
done

# once, with the first short-lease server asked for
[[ " ${KINDS[*]} " == *" kea "* || " ${KINDS[*]} " == *" dhcpd "* || " ${KINDS[*]} " == *" udhcpd "* ]] ||
    echo "SKIP: daemon restart while the server is down: needs a short-lease server (kea, dhcpd or udhcpd)"
for KIND in "${KINDS[@]}"; do
    [[ $KIND == dnsmasq ]] && continue
    echo "--- daemon restart while the server is down ($KIND)"
    rm -rf "$STATE"
    DAEMON_LOG=/run/sessiond-dhcp-$KIND-restart-outage.log
    : >"$DAEMON_LOG"
    check "$KIND: session up, server stopped, daemon kill -9 + restarted" restart_during_outage_setup
    check "$KIND: restart during outage: resolv.conf keeps nameserver and search" restart_during_outage_resolv_conf
    check "$KIND: restart during outage: address gone from eth0 past the lease expiry" restart_during_outage_expires
    "$SESSIOND" stop --all >/dev/null
    kill_daemon TERM
    srv stop >/dev/null 2>&1
    break
done

# Replies are broadcast while clients have no address, and a macvlan bridge copies each to
# every session: the socket filter must keep other clients' replies out of each session.
only_own_replies() {
    local pids=() i
    for i in 31 32 33 34 35 36; do "$SESSIOND" start --session "$i" >/dev/null & pids+=($!); done
    for i in "${pids[@]}"; do wait "$i" || return 1; done
    local seen others
    seen=$(grep -c "DHCP packet" "$DAEMON_LOG"); others=$(grep -cE "ignored a DHCP packet: (xid|chaddr)" "$DAEMON_LOG")
    echo "6 concurrent starts: $seen packets reached the sessions' tasks, $others of them replies for other clients"
    [[ $others == 0 && $seen -ge 12 && $seen -le 18 ]]
}
echo "--- broadcast replies reach only their own session (dnsmasq)"
rm -rf "$STATE"
DAEMON_LOG=/run/sessiond-dhcp-filter.log
: >"$DAEMON_LOG"
if "$REPO/scripts/dhcp-server" dnsmasq start >/dev/null; then
    SESSIOND_LOG=debug check "daemon starts (debug log)" start_dhcp_daemon
    check "6 concurrent starts: each task sees only its own OFFER/ACK (socket filter)" only_own_replies
    "$SESSIOND" stop --all >/dev/null
    kill_daemon TERM
    "$REPO/scripts/dhcp-server" dnsmasq stop >/dev/null 2>&1
fi

echo "--- no DHCP server"
rm -rf "$STATE"
DAEMON_LOG=/run/sessiond-dhcp-noserver.log
: >"$DAEMON_LOG"
check "no server: daemon starts with --dhcp-timeout 3" start_dhcp_daemon --dhcp-timeout 3
check "no server: start fails (exit 1, names $SBX_UPLINK and DISCOVER) and leaves nothing" no_server_start_fails
kill_daemon TERM
info "suite took $(($(date +%s) - SUITE_START)) s"
finish
