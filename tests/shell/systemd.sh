#!/usr/bin/env bash
# Under a real systemd (issue 17): Debian 12 boots with systemd, logind and sshd in a
# systemd-nspawn container inside the sandbox; sessiond is installed into it from the Debian
# package, the way an admin would (dpkg -i, a config, systemctl start), and then:
#   1. sessiond.service gets to active (running) through Type=notify; `systemctl status` shows
#      the daemon's STATUS= line (the session count);
#   6. sessiond@7 starts and stops a session; a program in another unit with
#      NetworkNamespacePath=/run/netns/sessiond-7 has the session's address;
#   2. two users log in over ssh, through pam_systemd and then pam_sessiond: each login is in
#      sessiond-N where N is logind's session id, in logind's session-N.scope, with its own
#      leased address, and both listen on :9000;
#   7. user@UID.service (the user's systemd) runs outside the login's namespace;
#   3. `systemctl restart sessiond` and `systemctl stop sessiond` leave the logins and
#      sessiond@7 running, with their namespaces and addresses; the new daemon re-adopts them;
#   4. SIGKILL: Restart=on-failure brings the daemon back and it re-adopts the sessions;
#   5. log-out with logind's KillUserProcesses=no and =yes: the session is stopped, its lease
#      released, nothing of it is left;
#   -  sessiond@7 stopped and the daemon restarted at once (within the 0.6 s check that the
#      namespace went) while a unit still holds the namespace: the next daemon deletes its
#      interface, and sessiond@7 starts again;
#   8. the journal: WARN lines at priority warning, no second timestamp, SESSIOND_SID=N
#      selects one session's lines.
#   9. programs mode (PAM mode=programs) on logind's scope: an ssh log-in stays in its
#      session-N.scope, sessiond attaches its six hooks to that scope (bpf links, next to
#      systemd's own IP accounting programs there) and makes no cgroup of its own; the listed
#      program's bind(127.0.0.1:8080) lands on 127.0.0.(sid+1):8080 and its connect to
#      127.0.0.1:8080 reaches it; a daemon restart adopts the pinned hooks; log-out detaches our
#      hooks only, and the scope (systemd's) stays while a process of the login is left in it.
#
# The container's uplink is one end of a veth on the sandbox's test LAN (--network-bridge=
# br-lan; nspawn's --private-network otherwise): the sessions' macvlans sit on it and lease
# from dnsmasq on that LAN; ssh reaches the container from the DHCP server's namespace. Nothing
# of the host's network is used: all of it is inside scripts/sandbox.
#
# Built before entering the sandbox (which has no network): the package (scripts/package, the
# dev build) and the root file system (tests/shell/systemd/rootfs: debootstrap, cached under
# /var/cache/sessiond-test and rebuilt when its package list changes). The container boots an
# overlay of it on the sandbox's /run, so nothing it does is kept.
# Usage: tests/shell/systemd.sh
source "$(dirname "$0")/lib.sh"

if [[ "${SBX:-}" != 1 && $(id -u) == 0 ]]; then
    mkdir -p "$RESULTS"
    export SYS_PKG_LOG=$RESULTS/systemd-package.log SYS_ROOTFS_LOG=$RESULTS/systemd-rootfs.log SYS_DEB='' SYS_ROOTFS=''
    t=$(date +%s)
    SYS_DEB=$(PACKAGE_PROFILE=${PACKAGE_PROFILE:-dev} "$REPO/scripts/package" 2>"$SYS_PKG_LOG") || SYS_DEB=''
    export SYS_PKG_SECS=$(($(date +%s) - t))
    t=$(date +%s)
    SYS_ROOTFS=$("$REPO/tests/shell/systemd/rootfs" 2>"$SYS_ROOTFS_LOG") || SYS_ROOTFS=''
    export SYS_ROOTFS_SECS=$(($(date +%s) - t))
fi
enter_sandbox "$@"
# shellcheck source=../../scripts/lib/sbx-common.sh
. "$REPO/scripts/lib/sbx-common.sh"

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CT=/run/ct                  # the container's overlay (upper, work, root) and files of the test
ROOT=$CT/root
CT_NAME=sessiond-ct
CT_IP=10.77.0.250           # the container's own address on the LAN (outside the DHCP pool)
SHARE=/srv/sessiond-test    # in the container; $ROOT$SHARE from the sandbox
NSPAWN_PID=
LEADER=                     # the container's PID 1, as the sandbox sees it
suite_start=$(date +%s)
mkdir -p "$CT"

# ct CMD...: runs CMD in the container (all its namespaces), with a clean environment.
ct() { nsenter -t "$LEADER" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"; }
# prop UNIT PROPERTY: one property of a unit, as systemctl show gives it.
prop() { ct systemctl show -p "$2" --value "$1"; }
# The sessions the daemon holds, what must not change across a restart: everything but the
# lease's times (a re-adopted lease is asked for again).
snapshot() {
    ct sessiond status --json | jq -c 'sort_by(.session) | map(.lease |= (if . == null then null else {server, dhcp_state} end))'
}
# lan CMD...: runs CMD on the LAN, in the DHCP server's namespace (10.77.0.1).
lan() { ip netns exec "$SBX_SERVER_NS" "$@"; }
# hello ADDRESS: what the listener on ADDRESS:9000 says, from the LAN.
# shellcheck disable=SC2016  # $1 is the inner shell's
hello() { lan timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/9000" && cat <&3' hello "$1"; }
journal_cursor() { ct journalctl -n 1 -o cat --show-cursor | sed -n 's/^-- cursor: //p'; }
unit_active() { [[ $(prop "$1" ActiveState) == active ]]; }
# is_pid X: X names one process (never 0 or empty: `kill 0` signals the whole process group).
is_pid() { [[ $1 =~ ^[1-9][0-9]*$ ]] || { echo "not a pid: '$1'"; return 1; }; }
gone() { is_pid "$1" && ! kill -0 "$1" 2>/dev/null; }
ct_gone() { is_pid "$1" && ! ct kill -0 "$1" 2>/dev/null; }
# lost_eth0 PID: the container's process PID runs, and its network namespace has no eth0.
lost_eth0() { is_pid "$1" && ct kill -0 "$1" && ! ct nsenter -t "$1" -n ip link show dev eth0 >/dev/null 2>&1; }

# ------------------------------------------------------------------ the container

built() {
    echo "scripts/package (${SYS_PKG_SECS}s): ${SYS_DEB:-failed}"; tail -3 "$SYS_PKG_LOG"
    echo "rootfs (${SYS_ROOTFS_SECS}s): ${SYS_ROOTFS:-failed}"; tail -3 "$SYS_ROOTFS_LOG"
    command -v systemd-nspawn >/dev/null || { echo "systemd-nspawn missing: apt-get install systemd-container (scripts/deps)"; return 1; }
    SYS_DEB=$REPO/${SYS_DEB#"$REPO"/}
    [[ -f $SYS_DEB && -x $SYS_ROOTFS/lib/systemd/systemd ]]
}

find_leader() {
    LEADER=$(ps -o pid= --ppid "$NSPAWN_PID" | head -1 | tr -d ' ')
    [[ -n $LEADER && $(cat "/proc/$LEADER/comm" 2>/dev/null) == systemd ]]
}
booted() { [[ $(ct systemctl is-system-running 2>/dev/null) == running ]]; }

boot() {
    mkdir -p "$CT/upper" "$CT/work" "$ROOT"
    mount -t overlay "$CT_NAME" -o "lowerdir=$SYS_ROOTFS,upperdir=$CT/upper,workdir=$CT/work" "$ROOT" || return 1
    local t0; t0=$(now_ms)
    # --register=no --keep-unit: no machined and no systemd outside (the sandbox has neither).
    # Programs mode (check 9) loads, attaches and pins its hooks from inside the container:
    # nspawn's seccomp filter refuses bpf(2) (EPERM) unless allowed, and its /sys has no
    # /sys/fs/bpf, so the sandbox's bpffs is bound there.
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || return 1
    systemd-nspawn -q -D "$ROOT" -M "$CT_NAME" -b --network-bridge="$SBX_BRIDGE" --register=no --keep-unit \
        --system-call-filter=bpf --bind=/sys/fs/bpf --console=read-only >"$CT/console.log" 2>&1 &
    NSPAWN_PID=$!
    wait_for 20 find_leader || { echo "no container PID 1"; tail -20 "$CT/console.log"; return 1; }
    if ! wait_for 60 booted; then
        ct systemctl is-system-running; ct systemctl --failed --no-pager; tail -20 "$CT/console.log"; return 1
    fi
    BOOT_MS=$(($(now_ms) - t0))
    # Its uplink: host0, the container's end of the veth whose other end is on br-lan.
    ct ip addr add "$CT_IP/24" dev host0 && ct ip link set host0 up || return 1
    wait_for 15 lan bash -c "echo >/dev/tcp/$CT_IP/22" || { echo "sshd not reachable on $CT_IP:22"; return 1; }
    echo "booted in $BOOT_MS ms; systemd $(ct systemctl --version | head -1)"
    for u in systemd-logind ssh dbus; do [[ $(prop "$u" ActiveState) == active ]] || { echo "$u not active"; return 1; }; done
}

# ------------------------------------------------------------------ install, as an admin would

install_package() {
    local deb; deb=$(basename "$SYS_DEB")
    cp "$SYS_DEB" "$ROOT/root/$deb" || return 1
    ct dpkg -i "/root/$deb" || return 1
    # Enabled; not started while /etc/sessiond/sessiond.toml does not exist.
    [[ $(ct systemctl is-enabled sessiond.service) == enabled && $(prop sessiond ActiveState) == inactive ]] || return 1
    printf 'uplink = "host0"\n' >"$ROOT/etc/sessiond/sessiond.toml"
    "$SBX_DHCP_SERVER" dnsmasq start >/dev/null
}

# Check 1.
daemon_ready_through_notify() {
    ct systemctl start sessiond.service || { ct journalctl -u sessiond --no-pager | tail; return 1; }
    local p; p=$(ct systemctl show -p Type -p ActiveState -p SubState -p StatusText -p NotifyAccess sessiond)
    echo "$p"
    grep -qx Type=notify <<<"$p" && grep -qx ActiveState=active <<<"$p" && grep -qx SubState=running <<<"$p" || return 1
    ct journalctl -u sessiond -o cat --no-pager | grep -F 'notified systemd: READY=1' || { echo "no READY=1 in the journal"; return 1; }
}

# status_line TEXT: `systemctl status sessiond` shows the daemon's STATUS= as TEXT.
status_line() {
    ct systemctl status sessiond --no-pager >"$CT/status.txt"
    head -8 "$CT/status.txt"
    grep -qF "Status: \"$1\"" "$CT/status.txt" && [[ $(prop sessiond StatusText) == "$1" ]]
}

# ------------------------------------------------------------------ the template unit (check 6)

S7_ADDR=
template_unit_and_a_unit_in_its_namespace() {
    ct systemctl start sessiond@7.service || { ct journalctl -u sessiond@7 --no-pager | tail; return 1; }
    [[ $(prop sessiond@7 ActiveState) == active ]] || return 1
    local s7; s7=$(ct sessiond status --session 7 --json) || return 1
    S7_ADDR=$(jq -r '.address | sub("/.*"; "")' <<<"$s7")
    echo "session 7: $S7_ADDR, owner $(jq -r '.owner_uid' <<<"$s7")"
    sbx_ip_in_pool "$S7_ADDR" || return 1
    # A program in another unit, in the session's namespace, as the README says to run one.
    ct mkdir -p "$SHARE"
    ct systemd-run --unit=ns7-probe -p NetworkNamespacePath=/run/netns/sessiond-7 \
        /bin/sh -c "ip -4 -o addr show dev eth0 >$SHARE/ns7.out; exec sleep 900" || return 1
    wait_for 10 test -s "$ROOT$SHARE/ns7.out" || return 1
    cat "$ROOT$SHARE/ns7.out"
    grep -q "inet $S7_ADDR/" "$ROOT$SHARE/ns7.out" && "$SBX_DHCP_SERVER" dnsmasq leases | grep -q "^$S7_ADDR "
}
probe7_pid() { prop ns7-probe MainPID; }
probe7_addr() { ct nsenter -t "$(probe7_pid)" -n ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1; }

# ------------------------------------------------------------------ log-ins (checks 2, 7)

LOGIN_SCRIPT=/usr/local/bin/sessiond-test-login
setup_logins() {
    mkdir -p "$CT/keys" && chmod 700 "$CT/keys"
    ct mkdir -p "$SHARE" && ct chmod 1777 "$SHARE" || return 1
    local u
    for u in alice bob; do
        ct useradd -m -s /bin/bash "$u" && ct usermod -p '*' "$u" || return 1  # no password; keys only
        ssh-keygen -q -t ed25519 -N '' -C "$u@test" -f "$CT/keys/id_$u" || return 1
        cp "$CT/keys/id_$u.pub" "$ROOT$SHARE/$u.pub"
        ct install -d -m 700 -o "$u" -g "$u" "/home/$u/.ssh" &&
            ct install -m 600 -o "$u" -g "$u" "$SHARE/$u.pub" "/home/$u/.ssh/authorized_keys" || return 1
    done
    # What the README says to add: after `@include common-session`, which runs pam_systemd.
    sed -i '/^@include common-session/a session    required     pam_sessiond.so' "$ROOT/etc/pam.d/sshd"
    grep -n 'pam_systemd\|pam_sessiond\|common-session' "$ROOT/etc/pam.d/sshd" "$ROOT/etc/pam.d/common-session"
    # Each login: reports what it sees, leaves a process behind (for log-out), and listens on
    # 0.0.0.0:9000 (greeting with its user and session) until released.
    cat >"$ROOT$LOGIN_SCRIPT" <<EOF
#!/bin/bash
u=\$(id -un)
echo "xdg=\${XDG_SESSION_ID:-} session=\${SESSIOND_SESSION:-} address=\${SESSIOND_ADDRESS:-}"
echo "netns=\$(readlink /proc/self/ns/net)"
echo "eth0=\$(ip -4 -o addr show dev eth0 2>/dev/null | awk '{print \$4}' | cut -d/ -f1)"
echo "cgroup=\$(sed -n 's/^0:://p' /proc/self/cgroup)"
setsid sleep 900 </dev/null >/dev/null 2>&1 &
echo "leftover=\$!"
printf '#!/bin/sh\necho "hello from %s in session %s"\n' "\$u" "\$SESSIOND_SESSION" >$SHARE/hello-\$u
chmod 755 $SHARE/hello-\$u
busybox nc -ll -p 9000 -e $SHARE/hello-\$u </dev/null >/dev/null 2>&1 &
nc=\$!
for i in \$(seq 50); do ss -Hltn 'sport = :9000' | grep -q . && break; sleep 0.1; done
ss -Hltn 'sport = :9000' | grep -q . && echo bound
for i in \$(seq 1200); do [[ -e $SHARE/release-\$u ]] && break; sleep 0.25; done
kill \$nc
echo released
EOF
    chmod 755 "$ROOT$LOGIN_SCRIPT"
}

ssh_as() { # USER CMD...
    local u=$1; shift
    timeout 400 ip netns exec "$SBX_SERVER_NS" ssh -F /dev/null -i "$CT/keys/id_$u" -o BatchMode=yes \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 -o LogLevel=ERROR \
        "$u@$CT_IP" "$@"
}
field() { tr ' ' '\n' <"$CT/login-$1.out" | sed -n "s/^$2=//p" | head -1; }
declare -A SSH_PID SID ADDR
login_alive() { is_pid "${SSH_PID[$1]:-}" && kill -0 "${SSH_PID[$1]}" 2>/dev/null; }

# Check 2.
two_logins_through_pam_systemd() {
    local u ok=1
    for u in alice bob; do
        rm -f "$ROOT$SHARE/release-$u"
        ssh_as "$u" "$LOGIN_SCRIPT" >"$CT/login-$u.out" 2>&1 &
        SSH_PID[$u]=$!
    done
    for u in alice bob; do wait_for 60 grep -q bound "$CT/login-$u.out" || ok=0; done
    head -20 "$CT"/login-*.out
    ((ok)) || { ct journalctl -u ssh -u sessiond --no-pager | tail -20; return 1; }
    local sessions; sessions=$(ct loginctl list-sessions --no-legend)
    echo "loginctl:"; echo "$sessions"
    for u in alice bob; do
        SID[$u]=$(field "$u" session); ADDR[$u]=$(field "$u" address)
        # sessiond-N, N being logind's session id for this login (loginctl lists it as u's).
        [[ -n ${SID[$u]} && $(field "$u" xdg) == "${SID[$u]}" ]] || { echo "$u: sid ${SID[$u]}, XDG_SESSION_ID $(field "$u" xdg)"; return 1; }
        awk -v s="${SID[$u]}" -v u="$u" '$1 == s && $3 == u { f = 1 } END { exit !f }' <<<"$sessions" || { echo "loginctl lacks $u's ${SID[$u]}"; return 1; }
        [[ $(ct ip netns identify "$(field "$u" leftover)") == "sessiond-${SID[$u]}" ]] || { echo "$u's processes are not in sessiond-${SID[$u]}"; return 1; }
        [[ $(field "$u" cgroup) == *"/session-${SID[$u]}.scope" ]] || { echo "$u: cgroup $(field "$u" cgroup), not logind's scope"; return 1; }
        # its own leased address: the environment, eth0, the daemon and the DHCP server agree
        sbx_ip_in_pool "${ADDR[$u]}" && [[ $(field "$u" eth0) == "${ADDR[$u]}" ]] || return 1
        [[ $(ct sessiond status --session "${SID[$u]}" --json | jq -r '.address | sub("/.*"; "")') == "${ADDR[$u]}" ]] || return 1
        "$SBX_DHCP_SERVER" dnsmasq leases | grep -q "^${ADDR[$u]} " || { echo "no lease for ${ADDR[$u]}"; return 1; }
        # both on :9000, each reached on its own address from the LAN
        hello "${ADDR[$u]}" | tee /dev/stderr | grep -qx "hello from $u in session ${SID[$u]}" || return 1
    done
    [[ ${ADDR[alice]} != "${ADDR[bob]}" && ${SID[alice]} != "${SID[bob]}" ]] || return 1
    # (the loopback bridge's sockets on the sessions' 127.0.0.(sid+1) are not the host's own)
    ! ct ss -Hltn 'sport = :9000' | awk '{print $4}' | grep -vE '^127\.([0-9]+\.){2}[0-9]+:' | grep -q . && ! ct ss -Hltn 'sport = :9000' | grep -q '127\.0\.0\.1:' ||
        { echo "the container's own :9000 is taken"; return 1; }
}

# Check 7.
user_manager_outside_the_namespace() {
    local uid pid ns root_ns
    uid=$(ct id -u alice)
    wait_for 10 unit_active "user@$uid.service" || { echo "user@$uid.service not active"; return 1; }
    pid=$(prop "user@$uid.service" MainPID)
    ns=$(ct readlink "/proc/$pid/ns/net"); root_ns=$(ct readlink /proc/1/ns/net)
    echo "user@$uid.service (pid $pid in the container): $ns; PID 1: $root_ns; alice's login: $(field alice netns)"
    [[ $ns == "$root_ns" && $ns != "$(field alice netns)" ]]
}

# ------------------------------------------------------------------ restarts (checks 3, 4)

BEFORE=
all_running() { # sessions, logins and the unit in the namespace all as before
    local u
    for u in alice bob; do
        login_alive "$u" || { echo "$u's login ended"; return 1; }
        hello "${ADDR[$u]}" | grep -q "hello from $u" || { echo "$u's :9000 does not answer on ${ADDR[$u]}"; return 1; }
        "$SBX_DHCP_SERVER" dnsmasq leases | grep -q "^${ADDR[$u]} " || { echo "${ADDR[$u]} released"; return 1; }
    done
    [[ $(probe7_addr) == "$S7_ADDR" ]] || { echo "the unit in sessiond-7 lost its address: '$(probe7_addr)'"; return 1; }
}
template_unit_untouched() { # the restart did not stop (nor restart) sessiond@7
    [[ $(prop sessiond@7 ActiveState) == active && $(prop sessiond@7 ActiveEnterTimestampMonotonic) == "$S7_SINCE" ]] ||
        { echo "sessiond@7: $(prop sessiond@7 ActiveState) since $(prop sessiond@7 ActiveEnterTimestampMonotonic), was $S7_SINCE"; ct journalctl -u sessiond@7 --no-pager | tail -5; return 1; }
}
readopted() { # the daemon has every session back, as it was
    [[ $(prop sessiond ActiveState) == active && $(snapshot) == "$BEFORE" ]]
}

# Check 3, restart.
restart_keeps_everything() {
    BEFORE=$(snapshot); S7_SINCE=$(prop sessiond@7 ActiveEnterTimestampMonotonic)
    echo "$BEFORE" | jq -c '.[] | {session, owner_uid, address, state}'
    local pid; pid=$(prop sessiond MainPID)
    ct systemctl restart sessiond || return 1
    [[ $(prop sessiond MainPID) != "$pid" ]] || { echo "not restarted"; return 1; }
    wait_for 15 readopted || { snapshot; prop sessiond StatusText; return 1; }
    template_unit_untouched && all_running
}

# Check 3, stop.
stop_keeps_everything() {
    ct systemctl stop sessiond || return 1
    local ok=1 n
    [[ $(prop sessiond ActiveState) == inactive ]] || ok=0
    template_unit_untouched && all_running || ok=0
    for n in 7 "${SID[alice]}" "${SID[bob]}"; do ct test -e "/run/netns/sessiond-$n" || { echo "sessiond-$n gone"; ok=0; }; done
    ct systemctl start sessiond || return 1   # in any case: the checks after this one need it
    wait_for 15 readopted || { snapshot; return 1; }
    template_unit_untouched && ((ok))
}

restarted_from() { local p; p=$(prop sessiond MainPID); [[ $p != 0 && $p != "$1" ]]; }

# Check 4.
sigkill_restarts_and_readopts() {
    local pid; pid=$(prop sessiond MainPID)
    local restarts; restarts=$(prop sessiond NRestarts)
    is_pid "$pid" && ct kill -KILL "$pid" || return 1
    # RestartSec=2s
    wait_for 20 restarted_from "$pid" || { prop sessiond ActiveState; return 1; }
    echo "NRestarts: $restarts -> $(prop sessiond NRestarts)"
    [[ $(prop sessiond NRestarts) == $((restarts + 1)) ]] || return 1
    wait_for 15 readopted || { snapshot; return 1; }
    template_unit_untouched && all_running
}

# ------------------------------------------------------------------ log-out (check 5)

kill_user_processes() { ct busctl get-property org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager KillUserProcesses; }

session_gone() { # USER: the daemon, the namespace, the holders, the files and the lease: all gone
    local u=$1 n=${SID[$1]}
    ! ct sessiond status --session "$n" >/dev/null 2>&1 || { echo "the daemon still has $n"; return 1; }
    ! ct test -e "/run/netns/sessiond-$n" || { echo "netns sessiond-$n left"; return 1; }
    ! ct test -e "/run/sessiond/pam/$n" || { echo "holder count of $n left"; return 1; }
    ! ct test -e "/etc/netns/sessiond-$n" || { echo "/etc/netns/sessiond-$n left"; return 1; }
    ! ct test -e "/run/sessiond/state/sessions/$n.json" || { echo "state of $n left"; return 1; }
    ! "$SBX_DHCP_SERVER" dnsmasq leases | grep -q "^${ADDR[$u]} " || { echo "lease of ${ADDR[$u]} not released"; return 1; }
    ! hello "${ADDR[$u]}" >/dev/null 2>&1 || { echo "${ADDR[$u]} still answers"; return 1; }
}
log_out() { # USER
    touch "$ROOT$SHARE/release-$1"
    wait_for 30 gone "${SSH_PID[$1]}" || { echo "$1's ssh did not end"; return 1; }
    wait "${SSH_PID[$1]}" 2>/dev/null
    tail -2 "$CT/login-$1.out"
}

logout_with_kill_user_processes_no() {
    kill_user_processes | tee /dev/stderr | grep -qx 'b false' || return 1
    local left; left=$(field alice leftover)
    is_pid "$left" && log_out alice || return 1
    wait_for 15 session_gone alice || { session_gone alice; ct journalctl -u sessiond --no-pager | tail; return 1; }
    # logind left alice's process running (that is what =no means): it is in the namespace the
    # daemon no longer has, which it stripped of its interface (nothing keeps the address).
    ct kill -0 "$left" || { echo "alice's process left behind was killed"; return 1; }
    wait_for 5 lost_eth0 "$left" || { ct nsenter -t "$left" -n ip -br addr; return 1; }
    ct nsenter -t "$left" -n ip -br link
    ct kill "$left"
}

logind_session_gone() { ! ct loginctl show-session "$1" >/dev/null 2>&1; }

logout_with_kill_user_processes_yes() {
    mkdir -p "$ROOT/etc/systemd/logind.conf.d"
    printf '[Login]\nKillUserProcesses=yes\n' >"$ROOT/etc/systemd/logind.conf.d/kill-user-processes.conf"
    ct systemctl restart systemd-logind || return 1
    kill_user_processes | tee /dev/stderr | grep -qx 'b true' || return 1
    local left; left=$(field bob leftover)
    is_pid "$left" && log_out bob || return 1
    wait_for 15 session_gone bob || { session_gone bob; return 1; }
    # logind ended the scope: bob's process left behind went with it, and so did the namespace.
    wait_for 10 ct_gone "$left" || { echo "bob's process $left still runs"; return 1; }
    wait_for 10 logind_session_gone "${SID[bob]}" || { ct loginctl list-sessions; return 1; }
}

# ------------------------------------------------------------------ a stop pending its check, then a restart

stop_then_restart_within_the_check() {
    local cursor; cursor=$(journal_cursor)
    # The unit in sessiond-7 still runs: it holds the namespace when the session stops.
    ct systemctl stop sessiond@7.service && ct systemctl restart sessiond.service || return 1
    echo "sessiond@7 stopped, daemon restarted; the unit in its namespace: pid $(probe7_pid)"
    # The new daemon does the old one's check: the held namespace loses its interface, so
    # nothing keeps the released address...
    local held; held=$(probe7_pid)
    is_pid "$held" || return 1
    wait_for 10 lost_eth0 "$held" ||
        { echo "the held namespace still has eth0 ($(probe7_addr))"; ct journalctl -u sessiond --no-pager --after-cursor="$cursor" | tail; return 1; }
    ct journalctl -u sessiond -o cat --no-pager --after-cursor="$cursor" | grep -E 'stopped by the last run|still in use'
    # ...and the slot can start again.
    ct systemctl start sessiond@7.service || { ct journalctl -u sessiond@7 --no-pager | tail -5; return 1; }
    local a; a=$(ct sessiond status --session 7 --json | jq -r '.address | sub("/.*"; "")')
    echo "session 7 again: $a"
    ct systemctl stop sessiond@7.service ns7-probe.service
}

no_state_files_left() {
    ! ct find /run/sessiond/state/sessions /run/sessiond/state/reaping /run/sessiond/pam -mindepth 1 2>/dev/null | grep -q .
}
nothing_left() {
    local out; out=$(ct sessiond status --json)
    [[ $(jq length <<<"$out") == 0 ]] || { echo "$out"; return 1; }
    [[ -z $(ct ip netns list) ]] || { ct ip netns list; return 1; }
    # (a stop's last files go a moment after its answer: wait a little, bounded)
    if ! wait_for 5 no_state_files_left; then
        ct find /run/sessiond/state/sessions /run/sessiond/state/reaping /run/sessiond/pam -mindepth 1; return 1
    fi
    wait_for 5 dnsmasq_leases_all_released || { "$SBX_DHCP_SERVER" dnsmasq leases; return 1; }
}

# ------------------------------------------------------------------ the journal (check 8)

journal_warnings_at_warning_priority() {
    # Log-out with a process left behind and the held namespace above: WARN lines both.
    ct journalctl -u sessiond -o cat --no-pager | grep -F 'still in use' | head -3
    local w; w=$(ct journalctl -u sessiond -p warning -o cat --no-pager)
    echo "journalctl -u sessiond -p warning:"; echo "${w:-(none)}"
    grep -qF 'still in use' <<<"$w"
}
journal_lines_have_no_timestamp_of_their_own() {
    local bad; bad=$(ct journalctl -u sessiond -o cat --no-pager | grep -E '^[^ ]*[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z?')
    [[ -z $bad ]] || { echo "$bad" | head -3; return 1; }
}
journal_one_sessions_life() {
    local n=${SID[alice]} lines
    lines=$(ct journalctl -u sessiond "SESSIOND_SID=$n" -o cat --no-pager)
    echo "journalctl -u sessiond SESSIOND_SID=$n:"; echo "${lines:-(none)}"
    grep -q 'session up' <<<"$lines" && grep -q 'session stopped' <<<"$lines"
}

# ------------------------------------------------------------------ programs mode on logind's scope (check 9)

PLOGIN_SCRIPT=/usr/local/bin/sessiond-test-programs-login
P_SCOPE= P_IDS= CT_CG=
setup_programs_logins() {
    # The listed program: busybox (its httpd binds 127.0.0.1:8080, its wget connects there).
    printf 'uplink = "host0"\nprograms = ["busybox"]\n' >"$ROOT/etc/sessiond/sessiond.toml"
    sed -i 's/^session    required     pam_sessiond.so$/& mode=programs/' "$ROOT/etc/pam.d/sshd"
    grep pam_sessiond "$ROOT/etc/pam.d/sshd" | grep -q 'mode=programs' || return 1
    # KillUserProcesses=no again: the process the log-in leaves keeps its scope after log-out.
    rm -f "$ROOT/etc/systemd/logind.conf.d/kill-user-processes.conf"
    ct systemctl restart systemd-logind sessiond || return 1
    # The container's cgroup v2 hierarchy: /sys/fs/cgroup, or /sys/fs/cgroup/unified (hybrid).
    CT_CG=$(ct findmnt -n -t cgroup2 -o TARGET | head -1)
    echo "the container's cgroup v2 hierarchy: $CT_CG"
    [[ -n $CT_CG ]] || return 1
    cat >"$ROOT$PLOGIN_SCRIPT" <<EOF
#!/bin/bash
u=\$(id -un)
echo "xdg=\${XDG_SESSION_ID:-} session=\${SESSIOND_SESSION:-} loopback=\${SESSIOND_LOOPBACK:-}"
echo "cgroup=\$(sed -n 's/^0:://p' /proc/self/cgroup)"
mkdir -p $SHARE/www-\$u && echo "\$u" >$SHARE/www-\$u/who
busybox httpd -f -p 127.0.0.1:8080 -h $SHARE/www-\$u </dev/null >/dev/null 2>&1 &
httpd=\$!
for i in \$(seq 50); do ss -Hltn 'sport = :8080' | grep -q . && break; sleep 0.1; done
echo "bound=\$(ss -Hltn 'sport = :8080' | awk '{print \$4}' | paste -sd,)"
echo "own=\$(busybox wget -qO- http://127.0.0.1:8080/who)"
setsid sleep 900 </dev/null >/dev/null 2>&1 &
echo "leftover=\$!"
echo ready
for i in \$(seq 1200); do [[ -e $SHARE/release-\$u ]] && break; sleep 0.25; done
kill \$httpd
echo released
EOF
    chmod 755 "$ROOT$PLOGIN_SCRIPT"
}

# The login's scope as the sandbox reaches it: the container's cgroup tree, through its PID 1.
scope_dir() { echo "/proc/$LEADER/root$CT_CG$P_SCOPE"; }
# our_hooks: the sessiond hooks bpftool lists on the scope ("ID NAME"), each multi-attached.
our_hooks() {
    bpftool cgroup show "$(scope_dir)" |
        awk '$NF ~ /^(bind4|connect4|sendmsg4|recvmsg4|getsockname4|getpeername4)$/ && / multi / {print $1, $NF}'
}
# systemds_hooks: how many of systemd's own there are (IPAccounting=: cgroup_skb ingress, egress).
systemds_hooks() { bpftool cgroup show "$(scope_dir)" | awk '$2 ~ /ingress|egress/' | grep -c .; }

# Check 9.
programs_login_on_logind_scope() {
    local u=alice uid sid lb out
    uid=$(ct id -u "$u")
    rm -f "$ROOT$SHARE/release-$u"
    ssh_as "$u" "$PLOGIN_SCRIPT" >"$CT/login-$u.out" 2>&1 &
    SSH_PID[$u]=$!
    wait_for 30 grep -q ready "$CT/login-$u.out" || { cat "$CT/login-$u.out"; ct journalctl -u ssh -u sessiond --no-pager | tail -20; return 1; }
    cat "$CT/login-$u.out"
    sid=$(field "$u" session); lb=$(field "$u" loopback)
    P_SCOPE=/user.slice/user-$uid.slice/session-$(field "$u" xdg).scope
    # The login stays in logind's scope, and the daemon says its hooks are on that scope.
    [[ -n $sid && $(field "$u" cgroup) == "$P_SCOPE" && $lb == "127.0.0.$((sid + 1))" ]] ||
        { echo "session $sid, loopback $lb, cgroup $(field "$u" cgroup), not $P_SCOPE"; return 1; }
    out=$(ct sessiond status --session "$sid" --json) || return 1
    jq -c .programs <<<"$out"
    [[ $(jq -r .programs.cgroup <<<"$out") == "$CT_CG$P_SCOPE" && $(jq -r .programs.cgroup_owner <<<"$out") == logind ]] || return 1
    ct sessiond status | grep -F "(logind's scope)" || return 1
    [[ -z $(ct find "$CT_CG/system.slice/sessiond.service" -mindepth 1 -type d) ]] || { echo "a cgroup of sessiond's own was made"; return 1; }
    # systemd's own programs on the scope, next to ours.
    ct systemctl set-property --runtime "session-$(field "$u" xdg).scope" IPAccounting=yes || return 1
    bpftool cgroup show "$(scope_dir)"
    P_IDS=$(our_hooks | awk '{print $1}')
    [[ $(wc -w <<<"$P_IDS") == 6 && $(systemds_hooks) -ge 2 ]] || { echo "ours: $(our_hooks | paste -sd' '); systemd's: $(systemds_hooks)"; return 1; }
    # The listed program's bind(127.0.0.1:8080) is at the session loopback; its connect to
    # 127.0.0.1:8080 reached it there; the container's host reaches it too.
    [[ $(field "$u" bound) == "$lb:8080" && $(field "$u" own) == "$u" ]] || return 1
    [[ $(ct busybox wget -qO- "http://$lb:8080/who") == "$u" ]] || { echo "the host does not reach $lb:8080"; return 1; }
    # A daemon restart: the pins (which name the scope) keep the same hooks on it, and the new
    # daemon adopts them.
    ct systemctl restart sessiond || return 1
    [[ $(ct sessiond status --session "$sid" --json | jq -r '"\(.state) \(.programs.cgroup_owner) \(.programs.attached | length)"') == "up logind 6" ]] || return 1
    ct journalctl -u sessiond -o cat --no-pager | grep -q "adopting the programs-mode session" || { echo "not adopted"; return 1; }
    [[ $(our_hooks | awk '{print $1}') == "$P_IDS" && $(ct readlink "/sys/fs/bpf/sessiond/$sid/cgroup") == "$CT_CG$P_SCOPE" ]] ||
        { echo "hooks after the restart: $(our_hooks | paste -sd' ')"; return 1; }
}

programs_session_gone() { ! ct sessiond status --session "$1" >/dev/null 2>&1; }

programs_logout_detaches_only_ours() {
    local u=alice left sid id
    left=$(field "$u" leftover); sid=$(field "$u" session)
    is_pid "$left" && log_out "$u" || return 1
    wait_for 15 programs_session_gone "$sid" || { ct sessiond status; return 1; }
    bpftool cgroup show "$(scope_dir)"
    # The scope is systemd's: it stays (alice's leftover process is in it), with systemd's own
    # programs; ours are detached and unloaded, and their pins are gone.
    [[ -d $(scope_dir) ]] && ct kill -0 "$left" || { echo "the scope went"; return 1; }
    [[ -z $(our_hooks) && $(systemds_hooks) -ge 2 ]] || return 1
    for id in $P_IDS; do ! bpftool prog show id "$id" >/dev/null 2>&1 || { echo "program $id still loaded"; return 1; }; done
    ! ct test -e "/sys/fs/bpf/sessiond/$sid" || { echo "pins left"; return 1; }
    ct kill "$left"
}

# ------------------------------------------------------------------ run

cleanup() {
    [[ -n $NSPAWN_PID ]] || return 0
    # SIGTERM: nspawn shuts the container down cleanly; bounded, then SIGKILL.
    kill "$NSPAWN_PID" 2>/dev/null
    wait_for 20 gone "$NSPAWN_PID" || kill -KILL "$NSPAWN_PID" 2>/dev/null
    wait "$NSPAWN_PID" 2>/dev/null
    NSPAWN_PID=
    "$SBX_DHCP_SERVER" dnsmasq stop >/dev/null 2>&1
    cp "$CT/console.log" "$RESULTS/systemd-console.log" 2>/dev/null
}

check "built outside the sandbox: the package (dev build) and the Debian 12 rootfs" built || finish
check "Debian 12 boots in systemd-nspawn, its uplink a veth on the sandbox's LAN: logind, dbus, sshd active" boot || { cleanup; finish; }
boot_secs=$(($(date +%s) - suite_start))
check "dpkg -i in the container: enabled, not started without a config" install_package || { cleanup; finish; }
check "1: sessiond.service active (running) through Type=notify (READY=1)" daemon_ready_through_notify || { cleanup; finish; }
check "1: systemctl status sessiond shows the daemon's status line: 0 sessions up" status_line "0 sessions up"
check "6: sessiond@7 starts a session; a unit with NetworkNamespacePath=/run/netns/sessiond-7 has its address" template_unit_and_a_unit_in_its_namespace
check "log-ins set up: users, keys, pam_sessiond.so after common-session (pam_systemd) in /etc/pam.d/sshd" setup_logins || { cleanup; finish; }
check "2: two ssh log-ins: each in sessiond-N, N = logind's session (loginctl, session-N.scope), own lease, both on :9000" two_logins_through_pam_systemd || { cleanup; finish; }
check "1: status line with two log-ins and sessiond@7: 3 sessions up" status_line "3 sessions up"
check "7: user@UID.service (the user's systemd) runs outside the log-in's namespace" user_manager_outside_the_namespace
check "3: systemctl restart sessiond: log-ins, addresses and sessiond@7 kept; status identical after re-adoption" restart_keeps_everything
check "3: systemctl stop sessiond leaves every session (and sessiond@7) running; start re-adopts them" stop_keeps_everything
check "4: SIGKILL: Restart=on-failure brings the daemon back, it re-adopts every session; sessiond@7 untouched" sigkill_restarts_and_readopts
check "5: log-out, KillUserProcesses=no: session stopped, lease released, nothing left; the process left behind has no interface" logout_with_kill_user_processes_no
check "5: log-out, KillUserProcesses=yes: session stopped, lease released, logind ends the rest" logout_with_kill_user_processes_yes
check "sessiond@7 stopped while a unit holds its namespace, daemon restarted at once: the next daemon deletes the interface; @7 starts again" stop_then_restart_within_the_check
check "nothing left: no session, namespace, state, holder or lease" nothing_left
check "1: status line after the log-outs and sessiond@7's stop: 0 sessions up" status_line "0 sessions up"
check "8: journalctl -u sessiond -p warning shows sessiond's warnings" journal_warnings_at_warning_priority
check "8: journal lines carry no timestamp of their own" journal_lines_have_no_timestamp_of_their_own
check "8: journalctl -u sessiond SESSIOND_SID=N shows one session's life (up, stopped)" journal_one_sessions_life
t9=$(now_ms)
check "9: programs mode set up: busybox listed, pam_sessiond.so mode=programs in /etc/pam.d/sshd" setup_programs_logins &&
    check "9: ssh log-in, mode=programs: stays in session-N.scope; six hooks on it next to systemd's; busybox's 127.0.0.1:8080 at 127.0.0.(sid+1); a restart adopts them" programs_login_on_logind_scope &&
    check "9: log-out: our hooks detached and unloaded, pins gone; the scope and systemd's programs stay" programs_logout_detaches_only_ours
echo "check 9 (programs mode on logind's scope) took $(($(now_ms) - t9)) ms"
ct journalctl -u sessiond -o short-precise --no-pager >"$RESULTS/systemd-journal-sessiond.log" 2>&1
cleanup
echo "systemd.sh: package ${SYS_PKG_SECS}s, rootfs ${SYS_ROOTFS_SECS}s (outside the sandbox); boot ${BOOT_MS:-?} ms; in the sandbox $(($(date +%s) - suite_start))s (up to a booted container: $boot_secs s)"
finish
