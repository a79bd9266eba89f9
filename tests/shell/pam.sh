#!/usr/bin/env bash
# Root integration tests for log-in integration (issue: PAM module, units, install), run in a
# private sandbox: pam_sessiond.so under pamtester, then end to end under a real OpenSSH sshd
# on 127.0.0.1:2222 inside the sandbox, then the systemd units and scripts/install.
# Needs `cargo build --workspace` first (target/debug/sessiond and libpam_sessiond.so).
source "$(dirname "$0")/lib.sh"
enter_sandbox "$@"
T=/run/pamtest                       # sandbox tmpfs: gone with the sandbox
source "$(dirname "$0")/pam_lib.sh"

POOL="$SBX_POOL_FIRST-$SBX_POOL_LAST/24"
STATE=/var/lib/sessiond
REFDIR=/run/sessiond/pam
DARGS=(--uplink "$SBX_UPLINK" --addressing static --pool "$POOL" --gateway "$SBX_GATEWAY" --state-dir "$STATE")
mkdir -p "$T" && chmod 755 "$T"


# --------------------------------------------------------------------- setup

built() {
    [[ -x $SESSIOND && -f $PAM_SO ]] || { echo "build first: cargo build --workspace (need $SESSIOND and $PAM_SO)"; return 1; }
    nm -D --defined-only "$PAM_SO" | grep -qw pam_sm_open_session && nm -D --defined-only "$PAM_SO" | grep -qw pam_sm_close_session
}

# Users live only in the sandbox's /etc overlay; homes on the sandbox's /run tmpfs
# (/home is shared with the host). dave is in sudo: excluded by default.
make_users() {
    local u
    getent group sessiond-remote >/dev/null || groupadd sessiond-remote
    for u in alice bob carol dave; do make_login_user "$u" || return 1; done
    usermod -aG sudo dave && usermod -aG sessiond-remote bob
}

# Runs after pam_sessiond in the test stack, forked by pamtester after the module entered the
# session: records what a login shell would see (netns, PAM env, /etc/hosts).
PROBE=$T/probe.sh
cat >"$PROBE" <<'EOF'
#!/bin/bash
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[[ $PAM_TYPE == open_session ]] || exit 0
out=/run/pamtest/probe-$PAM_USER.out
{
    echo "session=${SESSIOND_SESSION:-} address=${SESSIOND_ADDRESS:-} loopback=${SESSIOND_LOOPBACK:-}"
    echo "eth0=$(ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)"
    echo "lo=$(ip -4 -o addr show dev lo 2>/dev/null | awk '{print $4}' | tr '\n' ' ')"
    echo "hostname=$(getent hosts "$(hostname)" | awk '{print $1}')"
} >"$out"
EOF
chmod 755 "$PROBE"

# pt USER [pamtester options]: open_session + close_session in one pamtester process.
pt() {
    local user=$1; shift
    rm -f "$T/probe-$user.out"
    timeout 30 pamtester -v "$@" "$SERVICE" "$user" open_session close_session
}
probe() { cat "$T/probe-$1.out" 2>/dev/null; }
probe_field() { probe "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
uid_of() { id -u "$1"; }

# --------------------------------------------------------------------- (a) pamtester

pam_open_close_alice() {
    pam_service debug
    pt alice || return 1
    probe alice
    local s a e h
    s=$(probe_field alice session); a=$(probe_field alice address); e=$(probe_field alice eth0); h=$(probe_field alice hostname)
    # inside: env, eth0, hostname all agree on one pool address; loopback 127.0.0.(sid+1)
    [[ $s =~ ^[0-9]+$ && $a == 10.77.0.* && $e == "$a" && $h == "$a" ]] || { echo "session/address/eth0/hostname disagree"; return 1; }
    [[ $(probe_field alice loopback) == "127.0.0.$((s + 1))" ]] || return 1
    probe alice | grep -q "^lo=.*127.0.0.$((s + 1))/32" || return 1
    no_sessions_left
}

pam_session_exists_while_open() {
    # A stack whose probe checks the daemon's view from inside, while the session is open.
    pam_service debug
    # (pam_exec's child: its parent is pamtester, the process that opened the session)
    printf '#!/bin/sh\n[ "$PAM_TYPE" = open_session ] || exit 0\necho $PPID >%q\nexec %q status --socket %q --json >%q\n' "$T/opener" "$SESSIOND" "$SESSIOND_SOCKET" "$T/status-during.json" >"$T/status.sh"
    chmod 755 "$T/status.sh"
    echo "session  required pam_exec.so quiet $T/status.sh" >>/etc/pam.d/$SERVICE
    pt alice || return 1
    jq -c . "$T/status-during.json"
    [[ $(jq length "$T/status-during.json") == 1 && $(jq '.[0].owner_uid' "$T/status-during.json") == "$(uid_of alice)" ]] || return 1
    # the holder the daemon watches (reaping the session if it dies) is that process
    [[ $(jq -c '.[0].holding.holders | map(.pid)' "$T/status-during.json") == "[$(cat "$T/opener")]" ]] || { echo "holders: not [$(cat "$T/opener")]"; return 1; }
    no_sessions_left
}

not_virtualized() { # USER: pamtester succeeds, the probe ran on the host, no session was made
    pt "$1" || return 1
    probe "$1"
    [[ -z $(probe_field "$1" session) && -z $(probe_field "$1" eth0) ]] || { echo "$1 was virtualized"; return 1; }
    [[ $("$SESSIOND" status --json | jq length) == 0 ]]
}
excluded_users() { pam_service exclude_users=carol && not_virtualized carol && not_virtualized dave && not_virtualized root; }
users_filter() {
    pam_service users=bob || return 1
    not_virtualized alice || return 1
    pt bob && [[ -n $(probe_field bob session) ]] && no_sessions_left
}
groups_filter() {
    pam_service groups=sessiond-remote || return 1
    not_virtualized alice || return 1
    pt bob && [[ -n $(probe_field bob session) ]] && no_sessions_left
}
# logind_session ID USER: what pam_systemd's logind writes for session ID of USER (the sandbox
# has no logind; the module trusts XDG_SESSION_ID only when this file names the user's uid).
logind_session() { mkdir -p /run/systemd/sessions && printf 'UID=%s\nUSER=%s\nACTIVE=1\n' "$(uid_of "$2")" "$2" >"/run/systemd/sessions/$1"; }
xdg_session_id() {
    pam_service || return 1
    logind_session 42 alice
    pt alice -E XDG_SESSION_ID=42 && probe alice && [[ $(probe_field alice session) == 42 && $(probe_field alice loopback) == 127.0.0.43 ]] || return 1
    pt alice -E XDG_SESSION_ID=c7 && [[ $(probe_field alice session) != 42 && -n $(probe_field alice session) ]] || return 1
    # an id logind does not confirm for this user (~/.pam_environment can set one) is not used
    logind_session 44 bob
    local id
    for id in 43 44; do
        pt alice -E XDG_SESSION_ID=$id && [[ $(probe_field alice session) != "$id" && -n $(probe_field alice session) ]] || { echo "XDG_SESSION_ID=$id was used"; return 1; }
    done
    pam_service sid=auto && pt alice -E XDG_SESSION_ID=42 && [[ $(probe_field alice session) != 42 ]] || return 1
    # (`session required` runs the rest of the stack after a failure: the probe ran on the host)
    pam_service sid=xdg && ! pt alice && [[ -z $(probe_field alice session) ]] || return 1
    ! pt alice -E XDG_SESSION_ID=44 && [[ -z $(probe_field alice session) ]] || { echo "sid=xdg took bob's logind session"; return 1; }
    rm -f /run/systemd/sessions/42 /run/systemd/sessions/44
    no_sessions_left
}
concurrent_pamtesters() { # 8 sharing XDG id 50 and 8 with their own ids, all at once
    pam_service
    logind_session 50 alice
    local pids=() i fail=0
    for i in $(seq 8); do
        timeout 60 pamtester -E XDG_SESSION_ID=50 "$SERVICE" alice open_session close_session >/dev/null 2>&1 & pids+=($!)
        timeout 60 pamtester "$SERVICE" bob open_session close_session >/dev/null 2>&1 & pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || fail=$((fail + 1)); done
    rm -f /run/systemd/sessions/50
    echo "failed: $fail of ${#pids[@]}"
    ((fail == 0)) && no_sessions_left
}
bad_argument_refuses() { pam_service fail=opne && ! pt alice && [[ $("$SESSIOND" status --json | jq length) == 0 ]]; }

fail_closed_without_daemon() {
    kill_daemon TERM
    pam_service fail=closed timeout=2
    local t0=$SECONDS out
    if out=$(pt alice 2>&1); then echo "$out"; echo "login allowed with the daemon down"; return 1; fi
    echo "$out"
    [[ -z $(probe_field alice session) && -z $(probe_field alice eth0) ]] && ((SECONDS - t0 < 10))
}
fail_open_without_daemon() {
    pam_service fail=open timeout=2
    local out
    out=$(pt alice 2>&1) || { echo "$out"; return 1; }
    echo "$out"
    grep -q "NOT network-isolated" <<<"$out" && [[ -z $(probe_field alice session) && -z $(probe_field alice eth0) ]]
}
default_is_fail_closed() { pam_service && ! pt alice >/dev/null 2>&1; }

# --------------------------------------------------------------------- (b) sshd end to end

cat >"$T/remote.sh" <<'EOF'
#!/bin/bash
# Run by each ssh login: report what the login sees, then hold 0.0.0.0:9000 until released.
echo "session=${SESSIOND_SESSION:-} address=${SESSIOND_ADDRESS:-} loopback=${SESSIOND_LOOPBACK:-}"
echo "eth0=$(ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)"
echo "hostname=$(getent hosts "$(hostname)" | awk '{print $1}')"
echo "cgroupfs=$(ls /sys/fs/cgroup | tr '\n' ',') sysnet=$(ls /sys/class/net | tr '\n' ',')"
exec /usr/bin/python3 -c '
import os, socket, time
s = socket.socket(); s.bind(("0.0.0.0", 9000)); s.listen(4)
l = socket.socket(); l.bind((os.environ["SESSIOND_LOOPBACK"], 9001)); l.listen(4)
print("bound", flush=True)
end = time.time() + 60
while time.time() < end and not os.path.exists("/run/pamtest/release"):
    time.sleep(0.1)
print("released", flush=True)
'
EOF
chmod 755 "$T/remote.sh"

field() { tr ' ' '\n' <"$1" | sed -n "s/^$2=//p" | head -1; }

two_concurrent_logins() {
    rm -f "$T/release" "$T/ssh-alice.out" "$T/ssh-bob.out"
    ssh_as alice "$T/remote.sh" >"$T/ssh-alice.out" 2>&1 & SSH_A=$!
    ssh_as bob "$T/remote.sh" >"$T/ssh-bob.out" 2>&1 & SSH_B=$!
    local ok=0
    wait_for 30 grep -q bound "$T/ssh-alice.out" && wait_for 30 grep -q bound "$T/ssh-bob.out" && ok=1
    cat "$T/ssh-alice.out" "$T/ssh-bob.out"
    ((ok)) || { tail -20 "$T/sshd.log"; return 1; }
    local a b
    a=$(field "$T/ssh-alice.out" address); b=$(field "$T/ssh-bob.out" address)
    [[ $a == 10.77.0.* && $b == 10.77.0.* && $a != "$b" ]] || { echo "addresses not distinct: $a $b"; return 1; }
    [[ $(field "$T/ssh-alice.out" eth0) == "$a" && $(field "$T/ssh-bob.out" eth0) == "$b" ]] || { echo "eth0 disagrees with SESSIOND_ADDRESS"; return 1; }
    [[ $(field "$T/ssh-alice.out" hostname) == "$a" && $(field "$T/ssh-bob.out" hostname) == "$b" ]] || { echo "getent hosts \$(hostname) is not the session address"; return 1; }
    [[ $(field "$T/ssh-alice.out" loopback) != "$(field "$T/ssh-bob.out" loopback)" ]] || { echo "same loopback"; return 1; }
    local st; st=$(sessions); echo "daemon: $st"
    [[ $(jq length <<<"$st") == 2 ]] &&
    jq -e --argjson a "$(uid_of alice)" --argjson b "$(uid_of bob)" 'map(.owner_uid) | sort == ([$a, $b] | sort)' <<<"$st" >/dev/null
}

# The module's private /sys (for the session's /sys/class/net) keeps the host's cgroupfs.
logins_see_cgroupfs() {
    local host; host=$(ls /sys/fs/cgroup | tr '\n' ',')
    [[ -n $host ]] || { echo "no cgroupfs on the host"; return 1; }
    [[ $(field "$T/ssh-alice.out" cgroupfs) == "$host" ]] || { echo "in the login: '$(field "$T/ssh-alice.out" cgroupfs)', on the host: '$host'"; return 1; }
    [[ $(field "$T/ssh-alice.out" sysnet) == *eth0* ]] || { echo "/sys/class/net is not the session's"; return 1; }
}

logins_reach_each_other_not_the_host_port() {
    # Both hold 0.0.0.0:9000; the host's own 9000 is free (nothing leaked to the host netns).
    python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0", 9000))' || return 1
    local b; b=$(field "$T/ssh-bob.out" address)
    ssh_as alice "/usr/bin/python3 -c 'import socket; socket.create_connection((\"$b\", 9000), timeout=3); print(\"reached\")'"
}

logout_removes_sessions() {
    touch "$T/release"
    wait_pid 30 "$SSH_A" "$SSH_B"
    grep -q released "$T/ssh-alice.out" && grep -q released "$T/ssh-bob.out" || return 1
    wait_for 15 no_sessions_left || { no_sessions_left; grep -i pam_sessiond "$T/sshd.log" | tail; return 1; }
}

# After logout nothing of the login may hold the stopped namespaces (else the daemon says "still
# in use" and deletes the interface itself). The PAM module leaves the namespace before asking
# for the stop (unit test: close_leaves_the_namespace_before_stopping_the_session); sshd's
# closing process also exits within the daemon's 0.6 s of patience, so this holds either way.
logout_leaves_nothing_holding_the_namespace() {
    sleep 1 # the daemon checks within 0.6 s of each stop
    ! grep "still in use" "$DAEMON_LOG"
}

excluded_user_over_ssh() {
    local out; out=$(ssh_as dave 'echo "session=${SESSIOND_SESSION:-none}"; ip -4 -o addr show dev eth0 2>&1 | head -1') || return 1
    echo "$out"
    grep -q "session=none" <<<"$out" && [[ $("$SESSIOND" status --json | jq length) == 0 ]]
}

daemon_restart_keeps_login() {
    rm -f "$T/release" "$T/ssh-alice.out"
    ssh_as alice "$T/remote.sh" >"$T/ssh-alice.out" 2>&1 & SSH_A=$!
    wait_for 30 grep -q bound "$T/ssh-alice.out" || { cat "$T/ssh-alice.out"; return 1; }
    local before; before=$(sessions)
    kill_daemon TERM
    start_daemon "${DARGS[@]}" || return 1
    [[ $(sessions) == "$before" ]] || { echo "before $before after $(sessions)"; return 1; }
    touch "$T/release"
    wait_pid 30 "$SSH_A"
    wait_for 15 no_sessions_left
}

ssh_refused_while_daemon_down() {
    kill_daemon TERM
    local out rc=0
    out=$(ssh_as alice 'echo logged-in; ip -4 -o addr show' 2>&1) || rc=$?
    echo "rc=$rc $out"; tail -5 "$T/sshd.log"
    start_daemon "${DARGS[@]}" || return 1
    ((rc != 0)) && ! grep -q logged-in <<<"$out" && grep -q "pam_open_session" "$T/sshd.log"
}

login_after_daemon_back() {
    local out; out=$(ssh_as alice 'echo "session=${SESSIOND_SESSION:-none}"') || return 1
    echo "$out"
    grep -q "^session=[0-9]" <<<"$out" && wait_for 15 no_sessions_left
}

# --------------------------------------------------------------------- (c) units and install

units_verify() {
    local root=$T/unitroot
    rm -rf "$root"; mkdir -p "$root/lib/systemd"
    cp -a /lib/systemd/system "$root/lib/systemd/"        # sysinit.target & co. for dependencies
    "$REPO/scripts/install" --destdir "$root" --bindir-from "$(dirname "$SESSIOND")" >/dev/null || return 1
    local out
    out=$(cd / && systemd-analyze verify --root="$root" sessiond.service sessiond@7.service 2>&1) || { echo "$out"; return 1; }
    # verify exits 0 on "ignoring" parse warnings: any output is a failure here
    [[ -z $out ]] || { echo "$out"; return 1; }
    grep -qx 'Type=notify' "$REPO/systemd/sessiond.service" && grep -qx 'KillMode=process' "$REPO/systemd/sessiond.service" &&
    ! grep -Eq '^(PrivateTmp|PrivateMounts|ProtectSystem|ProtectHome|PrivateNetwork|MountFlags)=' "$REPO/systemd/sessiond.service"
}

install_round_trip() {
    local d=$T/destdir
    rm -rf "$d"
    "$REPO/scripts/install" --destdir "$d" --bindir-from "$(dirname "$SESSIOND")" >/dev/null || return 1
    local want got
    want=$(printf '%s\n' /etc/sessiond/sessiond.toml.sample /etc/systemd/system/sessiond.service /etc/systemd/system/sessiond@.service \
        "$(pkg-config --variable=libdir pam 2>/dev/null || echo /lib/x86_64-linux-gnu)/security/pam_sessiond.so" \
        /usr/local/sbin/sessiond /usr/local/share/doc/sessiond/README.md | sort)
    got=$(cd "$d" && find . -type f | sed 's/^\.//' | sort)
    [[ $want == "$got" ]] || { echo "want:"; echo "$want"; echo "got:"; echo "$got"; return 1; }
    [[ $(stat -c %a "$d/usr/local/sbin/sessiond") == 755 ]] || return 1
    # The sample parses as a daemon config: the daemon gets as far as checking the uplink.
    local out; out=$("$SESSIOND" daemon --config "$d/etc/sessiond/sessiond.toml.sample" --uplink nosuch0 --socket "$T/sample.sock" 2>&1)
    echo "$out"
    grep -q "uplink nosuch0 does not exist" <<<"$out" || return 1
    # An admin's own config next to the sample survives uninstall; nothing else is left.
    echo '# mine' >"$d/etc/sessiond/sessiond.toml"
    "$REPO/scripts/install" --destdir "$d" --uninstall >/dev/null || return 1
    got=$(cd "$d" && find . -type f | sed 's/^\.//' | sort)
    [[ $got == /etc/sessiond/sessiond.toml ]] || { echo "left after uninstall: $got"; return 1; }
    rm "$d/etc/sessiond/sessiond.toml"
    "$REPO/scripts/install" --destdir "$d" --uninstall >/dev/null && [[ ! -e $d/etc/sessiond && ! -e $d/usr/local/share/doc/sessiond ]]
}

uninstall_refuses_while_pam_uses_it() {
    # No DESTDIR but --dry-run: nothing on the host is touched either way.
    pam_service
    local out; out=$("$REPO/scripts/install" --uninstall --dry-run 2>&1) && { echo "$out"; return 1; }
    echo "$out"; grep -q "still named in: /etc/pam.d/$SERVICE" <<<"$out"
}

# --------------------------------------------------------------------- run

rm -rf "$STATE" "$REFDIR"
check "artifacts built (sessiond, libpam_sessiond.so exports the session hooks)" built
((FAILS)) && finish
check "test users in the sandbox overlay" make_users
check "daemon starts (static, $SBX_UPLINK)" start_daemon "${DARGS[@]}"
echo "--- (a) pamtester"
check "open+close: the PAM process enters the session; env, eth0, lo, hostname agree; then nothing left" pam_open_close_alice
check "while open the daemon has the session, owned by the user's uid, held by the opening process" pam_session_exists_while_open
check "root, exclude_users= and sudo members are not virtualized" excluded_users
check "users= selects who is virtualized" users_filter
check "groups= selects who is virtualized" groups_filter
check "XDG_SESSION_ID picks the sid when logind confirms it for the user; sid=auto / sid=xdg force it" xdg_session_id
check "16 concurrent pamtester logins (8 sharing one sid): all succeed, nothing left" concurrent_pamtesters
check "a mistyped argument refuses the session" bad_argument_refuses
check "fail=closed: daemon down refuses the login, within the timeout" fail_closed_without_daemon
check "fail=open: daemon down allows the login without isolation, loudly" fail_open_without_daemon
check "default is fail=closed" default_is_fail_closed
echo "--- (b) sshd, addresses by DHCP from a real server (dnsmasq)"
kill_daemon TERM
rm -rf "$STATE"
DARGS=(--uplink "$SBX_UPLINK" --state-dir "$STATE")   # DHCP is the default addressing
check "dnsmasq serves the LAN" "$REPO/scripts/dhcp-server" dnsmasq start
check "daemon restarts with DHCP addressing" start_daemon "${DARGS[@]}"
check "sshd with UsePAM and pam_sessiond on 127.0.0.1:$SSH_PORT" sshd_up
check "two concurrent ssh logins: own address, loopback, hostname; both bind 0.0.0.0:9000" two_concurrent_logins
check "a login's /sys shows its session's links and keeps the host's cgroupfs" logins_see_cgroupfs
check "logins reach each other over the LAN; the host's port 9000 stays free" logins_reach_each_other_not_the_host_port
check "logout stops both sessions: no netns, no holder counts" logout_removes_sessions
check "logout: nothing of the login still holds the stopped namespaces" logout_leaves_nothing_holding_the_namespace
check "logout released both DHCP leases in the server's own database" wait_for 10 dnsmasq_leases_all_released
check "a sudo member logs in over ssh on the host's network" excluded_user_over_ssh
check "daemon restart during a login keeps it; logout still cleans up" daemon_restart_keeps_login
check "daemon down: ssh login refused (default fail=closed); sshd keeps serving" ssh_refused_while_daemon_down
check "after the daemon is back, a login is isolated again and cleaned up" login_after_daemon_back
echo "--- (c) units and install"
check "systemd-analyze verify passes on both units (clean --root)" units_verify
check "scripts/install --destdir installs exactly the manifest; --uninstall removes it" install_round_trip
check "uninstall refuses while /etc/pam.d names the module" uninstall_refuses_while_pam_uses_it

sshd_down
kill_daemon TERM
"$REPO/scripts/dhcp-server" dnsmasq stop >/dev/null 2>&1
finish
