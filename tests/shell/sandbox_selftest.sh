#!/usr/bin/env bash
# tests/shell/sandbox_selftest.sh -- checks scripts/sandbox and scripts/dhcp-server.
#
# As non-root: prints "SKIP: ..." and exits 0. As root it runs, each with a
# PASS/FAIL line, and exits non-zero if any check failed:
#   host side : exit status is passed through; nesting is refused; cwd kept;
#               dhcp-server refuses to run outside the sandbox;
#               lifecycle: a sandbox that leaves a `sleep` and a DHCP server
#               running -- seen from the host while it runs -- leaves no
#               process, no namespace and no /etc, /var/lib or /run change
#               behind once its command exits.
#   inside    : (this script re-run through scripts/sandbox with --inner)
#               no eth0 (netlink and sysfs), fresh /run and /run/netns, the LAN
#               as documented, hostname, env, mounts; then for each DHCP server
#               (dnsmasq, kea, dhcpd, udhcpd): start, lease with busybox udhcpc
#               from a client netns (macvlan on br-lan), check the lease and
#               the options, `leases` lists it, release it, check whether it
#               leaves `leases`, stop, check the PID is gone.
# Every wait is bounded in count and time; the whole run takes a few seconds.
# shellcheck disable=SC2016  # bash -c '...' _ ARGS: expanded by the inner bash
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$(dirname "$SELF")")")
SANDBOX=$REPO/scripts/sandbox
DHCP=$REPO/scripts/dhcp-server
# shellcheck source=../../scripts/lib/sbx-common.sh disable=SC2034
. "$REPO/scripts/lib/sbx-common.sh"
SBX_PROG=sandbox_selftest

PASSES=0
FAILS=0
pass() { echo "PASS: $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
# check DESCRIPTION CMD...: PASS if CMD succeeds.
check() {
    local desc=$1
    shift
    if "$@"; then pass "$desc"; else fail "$desc"; fi
}
info() { echo "INFO: $*"; }

# Bound for one sandbox run seen from the host: TERM kills unshare, and
# --kill-child then takes the whole sandbox down.
run_sandbox() { timeout --kill-after=5 60 "$SANDBOX" "$@"; }

# ====================================================================== inner
# Runs inside the sandbox as PID 1's child.

inner_env_and_lan() {
    check "marker $SBX_MARKER exists and SBX=1" sbx_inside
    check "no eth0 via netlink" bash -c '! ip link show dev eth0 >/dev/null 2>&1'
    check "no eth0 in /sys/class/net (fresh sysfs)" test ! -e /sys/class/net/eth0
    check "/sys/class/net shows the sandbox's br-lan" test -e /sys/class/net/br-lan
    check "PID 1 is the sandbox script" grep -q 'scripts/sandbox' /proc/1/cmdline
    check "/run is a tmpfs" test "$(findmnt -n -o FSTYPE /run)" = tmpfs
    check "/run/netns is its own tmpfs" test "$(findmnt -n -o FSTYPE /run/netns)" = tmpfs
    check "/etc is an overlay" test "$(findmnt -n -o FSTYPE /etc)" = overlay
    check "/var/lib is an overlay" test "$(findmnt -n -o FSTYPE /var/lib)" = overlay
    check "/ is mounted private" test "$(findmnt -n -o PROPAGATION /)" = private
    # The host's /run entries (passed in by the host side) must not be here,
    # bar the few the sandbox makes itself (lock, user, utmp, netns) and
    # mount(8)'s own /run/mount.
    local e leaked=""
    for e in ${SELFTEST_HOST_RUN:-}; do
        case $e in lock|user|utmp|netns|mount) continue ;; esac
        [[ -e "/run/$e" ]] && leaked+=" $e"
    done
    check "none of the host's /run entries visible (fresh /run)${leaked:+: leaked$leaked}" test -z "$leaked"
    check "/run/netns holds only lan-srv at start" test "$(ls -A /run/netns)" = "$SBX_SERVER_NS"
    check "ip netns list shows exactly lan-srv" test "$(ip netns list | awk '{print $1}')" = "$SBX_SERVER_NS"
    check "hostname is $SBX_HOSTNAME" test "$(hostname)" = "$SBX_HOSTNAME"
    check "lo up in sandbox root ns" bash -c 'ip -o link show lo | grep -q "[<,]UP[,>]"'
    check "br-lan is a bridge and up" bash -c 'ip -d -o link show br-lan | grep -q "bridge " && ip -o link show br-lan | grep -q "[<,]UP[,>]"'
    check "lan0 is a port of br-lan" bash -c 'ip -o link show lan0 | grep -q "master br-lan"'
    check "srv0 in lan-srv has 10.77.0.1/24 and is up" bash -c \
        'ip -n lan-srv -o -4 addr show dev srv0 | grep -q "inet 10.77.0.1/24" && ip -n lan-srv -o link show srv0 | grep -q "state UP"'
    check "lo up in lan-srv" bash -c 'ip -n lan-srv -o link show lo | grep -q "[<,]UP[,>]"'
    local want="br-lan br-lan lan-srv srv0 10.77.0.1 10.77.0.0/24 10.77.0.1 10.77.0.100 10.77.0.199 1"
    local got="${SBX_UPLINK:-} ${SBX_BRIDGE:-} ${SBX_SERVER_NS:-} ${SBX_SERVER_IF:-} ${SBX_SERVER_IP:-} ${SBX_SUBNET:-} ${SBX_GATEWAY:-} ${SBX_POOL_FIRST:-} ${SBX_POOL_LAST:-} ${SBX:-}"
    check "SBX_* env vars exported" test "$got" = "$want"
    local out rc=0
    out=$("$SANDBOX" true 2>&1) || rc=$?
    check "nested scripts/sandbox refused (rc=$rc)" bash -c "[[ $rc -ne 0 && \"\$1\" == *'refusing to nest'* ]]" _ "$out"
    check "/etc writable inside (overlay)" bash -c 'echo x >/etc/.sbx-inner-probe && rm /etc/.sbx-inner-probe'
}

# The client's udhcpc hook: configure the address (needed for the unicast
# RELEASE) and record what the server gave us.
write_udhcpc_script() {
    cat >"$1" <<'EOF'
#!/bin/sh
case "$1" in
    deconfig) ip -4 addr flush dev "$interface" ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        echo "ip=$ip lease=$lease router=$router dns=$dns domain=$domain" >"$SELFTEST_BOUND.tmp"
        mv "$SELFTEST_BOUND.tmp" "$SELFTEST_BOUND" ;;
esac
exit 0
EOF
    chmod +x "$1"
}

field() { sed -n "s/.*\\b$2=\\([^ ]*\\).*/\\1/p" "$1"; }

# Stop a process we started (our child): TERM, bounded wait, KILL, reap.
stop_child() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    sbx_poll 30 0.1 bash -c '! kill -0 "$1" 2>/dev/null || grep -q "^State:.*Z" /proc/$1/status 2>/dev/null' _ "$pid" ||
        kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# dhcp_case KIND LEASE EXPECTED_LEASE
dhcp_case() {
    local kind=$1 lease=$2 want_lease=$3
    local work=$INNER_WORK/$kind ns=cli-$kind link=mv-$kind
    local pid rc=0
    mkdir -p "$work"
    echo "--- $kind"

    pid=$("$DHCP" "$kind" start --lease "$lease" 2>"$work/start.err") || rc=$?
    check "$kind: start (rc=$rc)" test "$rc" -eq 0
    if (( rc != 0 )); then sed 's/^/    /' "$work/start.err"; return; fi
    check "$kind: start printed a live PID ($pid)" sbx_proc_alive "$pid"
    check "$kind: PID $pid listens on UDP 67 in lan-srv" bash -c \
        'ip netns exec lan-srv ss -Hlunp "sport = :67" | grep -q "pid=$1,"' _ "$pid"
    check "$kind: status says running $pid" test "$("$DHCP" "$kind" status)" = "running $pid"
    if [[ $kind == dnsmasq ]]; then
        check "dnsmasq: lease $lease < 120 warned about" grep -q "minimum lease time is 120" "$work/start.err"
        check "dnsmasq: second start refused while running" bash -c '! "$1" dnsmasq start 2>/dev/null' _ "$DHCP"
        check "dnsmasq: other kind refused while UDP 67 is taken" bash -c '! "$1" udhcpd start 2>/dev/null' _ "$DHCP"
    fi

    # Client: a netns with a bridge-mode macvlan on br-lan.
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "$link" link "$SBX_UPLINK" type macvlan mode bridge
    ip link set "$link" netns "$ns"
    ip -n "$ns" link set "$link" up
    local mac
    mac=$(ip netns exec "$ns" cat "/sys/class/net/$link/address")

    local bound=$work/bound
    # -t 5 -T 1 -n: at most 5 discovers, 1 s apart, then give up (bounded).
    SELFTEST_BOUND=$bound ip netns exec "$ns" busybox udhcpc -f -R -n -t 5 -T 1 \
        -i "$link" -s "$INNER_WORK/udhcpc.sh" >"$work/udhcpc.log" 2>&1 &
    local cpid=$!
    if ! sbx_poll 80 0.1 test -s "$bound"; then
        fail "$kind: udhcpc got a lease within 8 s"
        sed 's/^/    /' "$work/udhcpc.log"
        tail -n 20 "/run/sbx-dhcp/$kind/log" | sed 's/^/    log: /'
        stop_child "$cpid"
        "$DHCP" "$kind" stop 2>/dev/null || true
        ip netns del "$ns"
        return
    fi
    pass "$kind: udhcpc got a lease"
    local ip
    ip=$(field "$bound" ip)
    check "$kind: leased $ip is in the pool" sbx_ip_in_pool "$ip"
    check "$kind: lease time $(field "$bound" lease) = $want_lease" test "$(field "$bound" lease)" = "$want_lease"
    check "$kind: router option 10.77.0.1" test "$(field "$bound" router)" = "$SBX_GATEWAY"
    check "$kind: dns option 10.77.0.1" test "$(field "$bound" dns)" = "$SBX_SERVER_IP"
    check "$kind: domain option sbx.test" test "$(field "$bound" domain)" = "$SBX_DOMAIN"
    check "$kind: client reaches 10.77.0.1 across br-lan (busybox ping)" bash -c \
        'ip netns exec "$1" busybox ping -c 1 -W 2 "$2" >/dev/null' _ "$ns" "$SBX_SERVER_IP"
    "$DHCP" "$kind" wait --mac "$mac" --timeout 5 2>/dev/null || true
    check "$kind: 'leases' lists '$ip $mac'" bash -c '"$1" "$2" leases | grep -qxF "$3 $4"' _ "$DHCP" "$kind" "$ip" "$mac"

    # Release (SIGUSR2) and see whether the server's lease db lets go of it.
    kill -USR2 "$cpid"
    sbx_poll 30 0.1 grep -q "entering released state" "$work/udhcpc.log" || true
    if "$DHCP" "$kind" wait --gone "$mac" --timeout 5 2>/dev/null; then
        pass "$kind: lease gone from 'leases' after DHCPRELEASE"
        info "$kind honours DHCPRELEASE in its lease db: yes"
    else
        fail "$kind: lease gone from 'leases' after DHCPRELEASE (still: $("$DHCP" "$kind" leases | tr '\n' ' '))"
        info "$kind honours DHCPRELEASE in its lease db: NO"
    fi
    stop_child "$cpid"

    rc=0
    "$DHCP" "$kind" stop 2>/dev/null || rc=$?
    check "$kind: stop (rc=$rc)" test "$rc" -eq 0
    check "$kind: server PID $pid is gone" bash -c '! kill -0 "$1" 2>/dev/null || grep -q "^State:.*Z" /proc/$1/status 2>/dev/null' _ "$pid"
    check "$kind: status says stopped" bash -c '[[ "$("$1" "$2" status)" == stopped ]]' _ "$DHCP" "$kind"
    check "$kind: nothing listens on UDP 67 any more" test -z "$(ip netns exec lan-srv ss -Hlun 'sport = :67')"
    ip netns del "$ns"
}

inner_main() {
    INNER_WORK=/run/sbx-selftest   # sandbox tmpfs
    mkdir -p "$INNER_WORK"
    write_udhcpc_script "$INNER_WORK/udhcpc.sh"
    inner_env_and_lan
    dhcp_case dnsmasq 30 120     # dnsmasq clamps to its 120 s minimum
    dhcp_case kea 300 300
    dhcp_case dhcpd 300 300
    dhcp_case udhcpd 300 300
    (( FAILS == 0 ))
}

# Lifecycle probe, run inside the sandbox: leave things running, tell the host,
# wait for its go-ahead, exit without cleaning up.
inner_lifecycle() {
    local work=$1 token=$2
    echo "$token" >"/etc/$token"
    echo "$token" >"/var/lib/$token"
    # argv[0] = token, so the host can find this process in its own /proc.
    (exec -a "$token" sleep 1000) &
    "$DHCP" udhcpd start >/dev/null 2>"$work/dhcp.err" || true
    readlink /proc/self/ns/net >"$work/netns"
    : >"$work/ready"
    sbx_poll 200 0.1 test -e "$work/go" || true   # <= 20 s
    exit 0
}

# ====================================================================== host

host_basic() {
    local rc out
    rc=0; run_sandbox bash -c 'exit 7' || rc=$?
    check "exit status of CMD passed through (7 -> $rc)" test "$rc" -eq 7
    rc=0; run_sandbox -- true || rc=$?
    check "'--' separator accepted, true -> $rc" test "$rc" -eq 0
    out=$(cd /tmp && run_sandbox pwd) || true
    check "cwd kept when invoked from /tmp (got '$out')" test "$out" = /tmp
    rc=0; out=$(SBX=1 "$SANDBOX" true 2>&1) || rc=$?
    check "SBX=1 in env: refused with a message (rc=$rc)" bash -c "[[ $rc -ne 0 && \"\$1\" == *'refusing to nest'* ]]" _ "$out"
    # The inner stage's own guards, each tried in a throwaway namespace so a
    # regression could not touch the host's network:
    # 1. it sees a link named eth0 (we make one in a scratch netns);
    rc=0
    out=$(timeout 20 unshare --net --mount --pid --fork --kill-child --mount-proc bash -c '
        ip link add eth0 type veth peer name eth0-peer || exit 99
        exec env _SBX_STAGE=inner _SBX_HOST_NETNS=bogus "$1" -- true' _ "$SANDBOX" 2>&1) || rc=$?
    check "refuses when a link named eth0 is visible (rc=$rc)" bash -c "[[ $rc -eq 1 && \"\$1\" == *'eth0 is visible'* ]]" _ "$out"
    # 2. its netns is the one it was started from (unshare --net "failed");
    rc=0
    out=$(timeout 20 unshare --net --mount --pid --fork --kill-child --mount-proc bash -c '
        exec env _SBX_STAGE=inner _SBX_HOST_NETNS="$(readlink /proc/self/ns/net)" "$1" -- true' _ "$SANDBOX" 2>&1) || rc=$?
    check "refuses when still in the starting netns (rc=$rc)" bash -c "[[ $rc -eq 1 && \"\$1\" == *'still in the host'* ]]" _ "$out"
    # 3. it is not PID 1 of a new pid namespace (stage var set by hand).
    rc=0; out=$(env _SBX_STAGE=inner _SBX_HOST_NETNS=bogus "$SANDBOX" true 2>&1) || rc=$?
    check "refuses an inner stage that is not PID 1 (rc=$rc)" bash -c "[[ $rc -eq 1 && \"\$1\" == *'not PID 1'* ]]" _ "$out"
    rc=0; out=$(env -u SBX "$DHCP" dnsmasq start 2>&1) || rc=$?
    check "dhcp-server refuses outside the sandbox (rc=$rc)" bash -c "[[ $rc -ne 0 && \"\$1\" == *'inside scripts/sandbox'* ]]" _ "$out"
}

# Host PIDs of processes whose namespace link $2 (pid|net|mnt) equals $1.
procs_in_ns() {
    local want=$1 kind=$2 p
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/ns/$kind" 2>/dev/null)" == "$want" ]] && echo "${p#/proc/}"
    done
    return 0
}

procs_with_token() {
    local p c
    for p in /proc/[0-9]*; do
        c=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
        # argv[0] is the token: the sleep itself, not the command lines that
        # merely carry the token as an argument.
        [[ "$c" == "$1 "* ]] && echo "${p#/proc/}"
    done
    return 0
}

# wait_bounded PID SECS: reap our child PID, SIGKILLing it after SECS.
wait_bounded() {
    sbx_poll $(( $2 * 10 )) 0.1 bash -c '[ ! -e /proc/$1 ] || grep -q "^State:.*Z" /proc/$1/status 2>/dev/null' _ "$1" ||
        kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null
}

ns_empty() { [[ -z "$(procs_in_ns "$1" "$2")" ]]; }

# host_lifecycle MODE: MODE "exit" lets the sandbox's command exit by itself;
# MODE "kill" SIGKILLs the host-side unshare instead (--kill-child must then
# take the sandbox down). Either way nothing may be left behind.
host_lifecycle() {
    local mode=$1 work=$WORK/lifecycle-$1 token="sbx-selftest-$$-$RANDOM"
    local t="lifecycle($mode)"
    mkdir -p "$work"
    local host_run_before
    host_run_before=$(ls -A /run /run/netns 2>&1 || true)
    # Started directly (not via the run_sandbox function) so that $! is the
    # process that becomes unshare: sandbox execs env, env execs unshare.
    "$SANDBOX" "$SELF" --inner-lifecycle "$work" "$token" >"$work/out" 2>&1 &
    local spid=$!
    if ! sbx_poll 200 0.1 test -e "$work/ready"; then
        fail "$t: sandbox got ready within 20 s"
        sed 's/^/    /' "$work/out"
        : >"$work/go"
        wait "$spid" || true
        return
    fi
    local sleep_pid pidns netns mntns
    sleep_pid=$(procs_with_token "$token")
    sleep_pid=${sleep_pid%%$'\n'*}
    check "$t: host sees the sandbox's sleep (host pid ${sleep_pid:-none})" test -n "$sleep_pid"
    if [[ -z "$sleep_pid" ]]; then
        : >"$work/go"
        wait "$spid" || true
        return
    fi
    pidns=$(readlink "/proc/$sleep_pid/ns/pid")
    netns=$(readlink "/proc/$sleep_pid/ns/net")
    mntns=$(readlink "/proc/$sleep_pid/ns/mnt")
    check "$t: sleep's netns ($netns) is the one the sandbox reported" test "$netns" = "$(cat "$work/netns")"
    check "$t: sleep's pid ns differs from the host's" test "$pidns" != "$(readlink /proc/self/ns/pid)"
    local p c has_udhcpd="" n=0
    for p in $(procs_in_ns "$pidns" pid); do
        n=$((n + 1))
        c=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
        [[ "$c" == *udhcpd* ]] && has_udhcpd=$p
    done
    check "$t: sandbox pid ns has >= 3 processes while running (init, sleep, udhcpd: $n)" test "$n" -ge 3
    check "$t: host sees the sandbox's udhcpd (host pid ${has_udhcpd:-none})" test -n "$has_udhcpd"
    check "$t: /etc/$token not on the host while running" test ! -e "/etc/$token"

    local rc=0
    if [[ $mode == exit ]]; then
        : >"$work/go"
        wait_bounded "$spid" 30 || rc=$?
        check "$t: sandbox exited 0 (rc=$rc)" test "$rc" -eq 0
    else
        # SIGKILL: the host side dying without any chance to clean up.
        # (SIGTERM to unshare alone is ignored: util-linux unshare --fork
        # ignores INT/TERM while waiting for its child.)
        kill -KILL "$spid"
        # 2>/dev/null: bash's "Killed" job notice
        wait_bounded "$spid" 10 2>/dev/null || rc=$?
        check "$t: unshare died of SIGKILL (rc=$rc)" test "$rc" -eq 137
    fi
    # The kernel tears the pid namespace down as PID 1 exits; give it a moment.
    sbx_poll 50 0.1 ns_empty "$pidns" pid || true
    check "$t: sleep (host pid $sleep_pid) is gone" test -z "$(procs_with_token "$token")"
    check "$t: udhcpd (host pid $has_udhcpd) is gone" test ! -e "/proc/$has_udhcpd/cmdline" -o -z "$has_udhcpd"
    check "$t: no process left in the sandbox's pid ns" ns_empty "$pidns" pid
    check "$t: no process left in the sandbox's net ns" ns_empty "$netns" net
    check "$t: no process left in the sandbox's mount ns" ns_empty "$mntns" mnt
    check "$t: /etc/$token absent on host" test ! -e "/etc/$token"
    check "$t: /var/lib/$token absent on host" test ! -e "/var/lib/$token"
    check "$t: host /run and /run/netns listings unchanged" test "$(ls -A /run /run/netns 2>&1 || true)" = "$host_run_before"
    check "$t: host has no br-lan/lan0 links" bash -c '! ip link show br-lan >/dev/null 2>&1 && ! ip link show lan0 >/dev/null 2>&1'
    check "$t: host hostname unchanged ($(hostname))" test "$(hostname)" = "$HOST_HOSTNAME"
}

host_inner() {
    local rc=0
    SELFTEST_HOST_RUN="$(ls -A /run | tr '\n' ' ')" run_sandbox "$SELF" --inner >"$WORK/inner.out" 2>&1 || rc=$?
    # Show and count the inner PASS/FAIL lines as ours.
    cat "$WORK/inner.out"
    local p f
    p=$(grep -c '^PASS:' "$WORK/inner.out" || true)
    f=$(grep -c '^FAIL:' "$WORK/inner.out" || true)
    PASSES=$((PASSES + p))
    FAILS=$((FAILS + f))
    if (( rc != 0 && f == 0 )); then
        fail "inner checks exited rc=$rc without a FAIL line"
    fi
}

host_main() {
    if [[ $EUID -ne 0 ]]; then
        echo "SKIP: needs root (creates namespaces, mounts and links inside scripts/sandbox)"
        exit 0
    fi
    local start t
    start=$(date +%s.%N)
    HOST_HOSTNAME=$(hostname)
    WORK=$(mktemp -d /tmp/sbx-selftest.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
    if ip link show dev eth0 >/dev/null 2>&1; then
        pass "host sanity: eth0 exists on the host (so the no-eth0 checks mean something)"
    else
        info "host has no eth0: the no-eth0 checks inside prove less here"
    fi
    host_basic
    host_lifecycle exit
    host_lifecycle kill
    host_inner
    t=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    echo "sandbox_selftest: $PASSES passed, $FAILS failed"
    info "took ${t}s"
    (( FAILS == 0 ))
}

case "${1:-}" in
    --inner) inner_main ;;
    --inner-lifecycle) inner_lifecycle "$2" "$3" ;;
    *) host_main ;;
esac
