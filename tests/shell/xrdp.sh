#!/usr/bin/env bash
# Root end-to-end test of the desktop case (issue 15, item 6), in a private sandbox: xrdp and
# xrdp-sesman (Debian 12's 0.9.21, with xorgxrdp) on 127.0.0.1, pam_sessiond.so in
# /etc/pam.d/xrdp-sesman, a sessiond daemon leasing addresses by DHCP from the sandbox's
# dnsmasq, and two users logging in with a real RDP client (xfreerdp under Xvfb) with user and
# password. Each desktop's session script records what it sees; the test compares that, and
# the network namespace of every process of the desktop, with the daemon and the DHCP server.
# Needs `cargo build --workspace` first, and the packages xrdp xorgxrdp xvfb freerdp2-x11
# (scripts/deps installs them).
source "$(dirname "$0")/lib.sh"
enter_sandbox "$@"

PAM_SO=${PAM_SO:-$REPO/target/debug/libpam_sessiond.so}
STATE=/var/lib/sessiond
T=/run/xrdptest                      # sandbox tmpfs: configs, logs, what the desktops record
USERS=(alice bob)
RDP_PORT=3389
SESMAN_PORT=3350
CLIENT_DISPLAY=:99                   # Xvfb, where the RDP clients draw
declare -A PASSWORD CLIENT_PID
SESMAN_PID='' XRDP_PID='' XVFB_PID=''
mkdir -p "$T" && chmod 755 "$T"

# --------------------------------------------------------------------- setup

needs() {
    local f missing=()
    for f in "$SESSIOND" "$PAM_SO" /usr/sbin/xrdp /usr/sbin/xrdp-sesman /usr/lib/xorg/Xorg \
        /usr/lib/xorg/modules/drivers/xrdpdev_drv.so /usr/bin/Xvfb /usr/bin/xfreerdp /usr/bin/xdpyinfo /usr/bin/xauth; do
        [[ -e $f ]] || missing+=("$f")
    done
    ((${#missing[@]} == 0)) || { echo "missing: ${missing[*]} (cargo build --workspace; scripts/deps installs xrdp xorgxrdp xvfb freerdp2-x11 x11-utils)"; return 1; }
}

# /tmp is shared with the host (scripts/sandbox): X servers put their sockets and lock files
# there (/tmp/.X11-unix, /tmp/.X10-lock) and sesman picks a free display by looking at them.
# A tmpfs of this sandbox's mount namespace keeps both apart from the host's.
private_tmp() { mount -t tmpfs -o mode=1777,nosuid,nodev sbx-tmp /tmp && mkdir -m 1777 /tmp/.X11-unix; }

make_users() {
    local u
    for u in "${USERS[@]}"; do
        sandbox_user "$u" "$T/home/$u" || return 1
        PASSWORD[$u]="pw-$u-$RANDOM$RANDOM"
        echo "$u:${PASSWORD[$u]}" | chpasswd || return 1
    done
}

# xrdp's own configuration, in the sandbox's /etc overlay (the host's /etc/xrdp is untouched):
# both daemons on 127.0.0.1 only, logs on the sandbox tmpfs, no syslog, no FUSE drive mapping.
# The "window manager" is the session script below; the X server is xorgxrdp as Debian ships it.
xrdp_config() {
    cat >/etc/xrdp/xrdp.ini <<EOF
[Globals]
ini_version=1
fork=true
port=tcp://.:$RDP_PORT
security_layer=negotiate
crypt_level=high
certificate=
key_file=
ssl_protocols=TLSv1.2, TLSv1.3
autorun=Xorg
allow_channels=true
max_bpp=24
new_cursors=true
use_fastpath=both

[Logging]
LogFile=$T/xrdp.log
LogLevel=INFO
EnableSyslog=false

[Channels]
rdpdr=false
rdpsnd=false
drdynvc=false
cliprdr=false
rail=false
xrdpvr=false
tcutils=false

[Xorg]
name=Xorg
lib=libxup.so
username=ask
password=ask
ip=127.0.0.1
port=-1
code=20
EOF
    cat >/etc/xrdp/sesman.ini <<EOF
[Globals]
ListenAddress=127.0.0.1
ListenPort=$SESMAN_PORT
EnableUserWindowManager=false
DefaultWindowManager=$T/session.sh
ReconnectScript=/etc/xrdp/reconnectwm.sh

[Security]
AllowRootLogin=false
MaxLoginRetry=4
AlwaysGroupCheck=false

[Sessions]
X11DisplayOffset=10
MaxSessions=10
KillDisconnected=false
DisconnectedTimeLimit=0
IdleTimeLimit=0
Policy=Default

[Logging]
LogFile=$T/sesman.log
LogLevel=INFO
EnableSyslog=false

[Xorg]
param=/usr/lib/xorg/Xorg
param=-config
param=xrdp/xorg.conf
param=-noreset
param=-nolisten
param=tcp
param=-logfile
param=.xorgxrdp.%s.log

[Chansrv]
FuseMountName=thinclient_drives
FileUmask=077
EnableFuseMount=false

[ChansrvLogging]
LogLevel=INFO
EnableSyslog=false
EOF
    # The stack an admin writes (README): password auth, then pam_sessiond in the session
    # phase. `debug` copies the module's messages to sesman's stderr (our log).
    cat >/etc/pam.d/xrdp-sesman <<EOF
auth     required pam_unix.so
account  required pam_unix.so
session  required pam_unix.so
session  required $PAM_SO socket=$SESSIOND_SOCKET debug
EOF
}

# The desktop's session script (sesman's DefaultWindowManager: the process sesman waits on,
# whose end is the log-out). It records what the desktop sees, checks that an X client reaches
# the session's X server, then a child of it holds 0.0.0.0:9000 until the test logs it out.
cat >"$T/session.sh" <<'EOF'
#!/bin/bash
out=$HOME/desktop
{
    echo "pid=$$"
    echo "netns=$(readlink /proc/self/ns/net)"
    echo "display=$DISPLAY"
    echo "session=${SESSIOND_SESSION:-} address=${SESSIOND_ADDRESS:-} loopback=${SESSIOND_LOOPBACK:-}"
    xdpyinfo >/dev/null 2>&1 && echo "x=reached" || echo "x=unreachable"
} >"$out.env.tmp"
ip -j addr >"$out.addr.json"
mv "$out.env.tmp" "$out.env"
exec 3>"$out.bind"
/usr/bin/python3 - "$out" <<'PY' >&3 2>&1 &
import os, socket, sys, time
out = sys.argv[1]
print("pid=%d netns=%s" % (os.getpid(), os.readlink("/proc/self/ns/net")), flush=True)
try:
    s = socket.socket(); s.bind(("0.0.0.0", 9000)); s.listen(4)
    print("bind=ok", flush=True)
except OSError as e:
    print("bind=failed %s" % e, flush=True)
end = time.time() + 300                 # bounded: never outlives a broken test by much
while time.time() < end and not os.path.exists(out + ".logout"):
    time.sleep(0.1)
print("released", flush=True)
PY
wait
EOF
chmod 755 "$T/session.sh"

# listening PORT: the local addresses something listens on at TCP PORT.
listening() { ss -Hltn "sport = :$1" | awk '{print $4}'; }
# loopback_only PORT: something listens on PORT, and only on a loopback address. (sesman's
# ListenAddress=127.0.0.1 becomes [::1] in Debian's IPv6-enabled build.)
loopback_only() { [[ -n $(listening "$1") ]] && ! listening "$1" | grep -Evq '^(127\.0\.0\.1|\[::1\]):'; }

xrdp_up() {
    sh /usr/share/xrdp/socksetup || return 1          # /run/xrdp/sockdir, as the unit's ExecStartPre
    /usr/sbin/xrdp-sesman --nodaemon >>"$T/sesman.out" 2>&1 &
    SESMAN_PID=$!
    wait_for 10 loopback_only "$SESMAN_PORT" || { echo "sesman is not listening on loopback only"; ss -ltn; cat "$T/sesman.out" "$T/sesman.log"; return 1; }
    /usr/sbin/xrdp --nodaemon >>"$T/xrdp.out" 2>&1 &
    XRDP_PID=$!
    wait_for 10 loopback_only "$RDP_PORT" || { echo "xrdp is not listening on loopback only"; ss -ltn; cat "$T/xrdp.out" "$T/xrdp.log"; return 1; }
    ss -Hltn | awk '{print $4}'
}

xvfb_up() {
    Xvfb "$CLIENT_DISPLAY" -screen 0 1024x768x24 -nolisten tcp >>"$T/xvfb.log" 2>&1 &
    XVFB_PID=$!
    wait_for 10 test -S "/tmp/.X11-unix/X${CLIENT_DISPLAY#:}" || { cat "$T/xvfb.log"; return 1; }
}

# rdp_login USER: a real RDP client, user and password on the command line (the client sends
# them with INFO_AUTOLOGON, so xrdp logs in without its login screen).
rdp_login() {
    local u=$1
    mkdir -p "$T/client-$u"
    HOME=$T/client-$u DISPLAY=$CLIENT_DISPLAY timeout 600 xfreerdp /v:127.0.0.1:$RDP_PORT /u:"$u" /p:"${PASSWORD[$u]}" \
        /cert:ignore /size:800x600 /bpp:16 -sound -microphone /log-level:WARN >>"$T/client-$u.log" 2>&1 &
    CLIENT_PID[$u]=$!
}

# --------------------------------------------------------------------- what the desktops saw

# what USER's session script recorded, in the user's home: desktop.{env,addr.json,bind}
desk_file() { echo "$T/home/$1/desktop.$2"; }
desk() { cat "$(desk_file "$1" env)" 2>/dev/null; }
desk_field() { tr ' ' '\n' <"$(desk_file "$1" env)" | sed -n "s/^$2=//p" | head -1; }
bind_field() { tr ' ' '\n' <"$(desk_file "$1" bind)" | sed -n "s/^$2=//p" | head -1; }
netns_of_sid() { echo "net:[$(stat -L -c %i "/run/netns/sessiond-$1")]"; }
# the user's processes named COMM (Xorg, xrdp-chansrv, ...): PIDs
pids_of() { ps -u "$1" -o pid=,comm= | awk -v c="$2" '$2 == c {print $1}'; }
sid_of() { desk_field "$1" session; }
leased() { "$REPO/scripts/dhcp-server" dnsmasq leases | awk '{print $1}'; }
daemon_has() { "$SESSIOND" status --json | jq -e --argjson s "$1" 'any(.[]; .session == $s)' >/dev/null; }

both_desktops_up() {
    local u ok=1
    for u in "${USERS[@]}"; do
        wait_for 120 grep -q '^bind=' "$(desk_file "$u" bind)" || { echo "$u: no desktop"; ok=0; }
    done
    for u in "${USERS[@]}"; do echo "--- $u"; desk "$u"; cat "$(desk_file "$u" bind)" 2>/dev/null; done
    ((ok)) || { tail -30 "$T/sesman.log"; tail -20 "$T/sesman.out"; tail -10 "$T/xrdp.log"; return 1; }
}

# Every process of the desktop -- the sesman process that opened the PAM session, Xorg, the
# channel server, the session script and its child -- is in sessiond-N of the PAM session.
desktop_in_its_namespace() { # USER
    local u=$1 sid want p comm bad=0 seen=()
    sid=$(sid_of "$u")
    [[ $sid =~ ^[0-9]+$ ]] || { echo "$u: no SESSIOND_SESSION in the desktop: $(desk "$u")"; return 1; }
    want=$(netns_of_sid "$sid") || return 1
    [[ $want != "$(readlink /proc/self/ns/net)" ]] || { echo "sessiond-$sid is the host's netns?"; return 1; }
    [[ $(desk_field "$u" netns) == "$want" ]] || { echo "$u: session script in $(desk_field "$u" netns), sessiond-$sid is $want"; bad=1; }
    [[ $(bind_field "$u" netns) == "$want" ]] || { echo "$u: its child in $(bind_field "$u" netns), sessiond-$sid is $want"; bad=1; }
    for comm in Xorg xrdp-chansrv; do
        p=$(pids_of "$u" "$comm")
        [[ -n $p ]] || { echo "$u: no $comm process"; bad=1; continue; }
        for p in $p; do
            seen+=("$comm $p")
            [[ $(readlink "/proc/$p/ns/net") == "$want" ]] || { echo "$u: $comm pid $p in $(readlink "/proc/$p/ns/net")"; bad=1; }
        done
    done
    # Every process of the user's is in it (nothing of the desktop stayed on the host).
    for p in $(ps -u "$u" -o pid=); do
        [[ $(readlink "/proc/$p/ns/net" 2>/dev/null) == "$want" || ! -e /proc/$p ]] ||
            { echo "$u: pid $p ($(cat "/proc/$p/comm")) in $(readlink "/proc/$p/ns/net")"; bad=1; }
    done
    # ... and the sesman process that called pam_open_session (Xorg's parent, root's).
    p=$(ps -o ppid= -p "$(pids_of "$u" Xorg | head -1)" | tr -d ' ')
    seen+=("sesman-session $p" "session-script $(desk_field "$u" pid)" "its-child $(bind_field "$u" pid)")
    [[ $(readlink "/proc/$p/ns/net") == "$want" ]] || { echo "$u: sesman pid $p (Xorg's parent) in $(readlink "/proc/$p/ns/net")"; bad=1; }
    [[ $(readlink "/proc/$SESMAN_PID/ns/net") == "$(readlink /proc/self/ns/net)" ]] || { echo "the listening sesman left the host's netns"; bad=1; }
    echo "$u: in sessiond-$sid ($want): $(IFS=,; echo "${seen[*]}")"
    ((!bad))
}

desktop_has_its_lease() { # USER: eth0 in `ip -j addr` = SESSIOND_ADDRESS = daemon = dnsmasq lease
    local u=$1 sid addr eth0 st
    sid=$(sid_of "$u"); addr=$(desk_field "$u" address)
    eth0=$(jq -r '.[] | select(.ifname == "eth0") | .addr_info[] | select(.family == "inet") | .local' "$(desk_file "$u" addr.json)")
    st=$("$SESSIOND" status --session "$sid" --json) || return 1
    echo "$u: sid $sid SESSIOND_ADDRESS=$addr eth0=$eth0 daemon=$(jq -c '{address, owner_uid}' <<<"$st")"
    [[ $addr == 10.77.0.* && $eth0 == "$addr" ]] || { echo "$u: eth0 disagrees with SESSIOND_ADDRESS"; return 1; }
    [[ $(jq -r '.address | sub("/.*"; "")' <<<"$st") == "$addr" ]] || return 1
    [[ $(jq -r .owner_uid <<<"$st") == "$(id -u "$u")" ]] || { echo "$u: owner is not $u"; return 1; }
    leased | grep -qx "$addr" || { echo "$u: dnsmasq has no lease for $addr: $(leased)"; return 1; }
    # the desktop sees only lo and its eth0, with the session's loopback on lo
    [[ $(jq -r '[.[].ifname] | sort | join(",")' "$(desk_file "$u" addr.json)") == eth0,lo ]] || { echo "$u: links $(jq -c '[.[].ifname]' "$(desk_file "$u" addr.json)")"; return 1; }
    jq -e --arg l "$(desk_field "$u" loopback)" '.[] | select(.ifname == "lo") | .addr_info[] | select(.local == $l)' "$(desk_file "$u" addr.json)" >/dev/null
}

two_desktops_distinct() {
    local a b
    a=$(desk_field alice address); b=$(desk_field bob address)
    [[ $(sid_of alice) != "$(sid_of bob)" && $a != "$b" ]] || { echo "same session or address: $a $b"; return 1; }
    [[ $(desk_field alice netns) != "$(desk_field bob netns)" ]] || return 1
    [[ $(jq length <<<"$(sessions)") == 2 ]] || { echo "daemon: $(sessions)"; return 1; }
    echo "daemon: $(sessions)"
}

both_bind_9000() {
    local u
    for u in "${USERS[@]}"; do
        [[ $(bind_field "$u" bind) == ok ]] || { echo "$u: $(cat "$(desk_file "$u" bind)")"; return 1; }
    done
    # and the host's own 9000 stays free: nothing of the desktops is bound on the host
    python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0", 9000))'
}

x_clients_work() { # the session script's X client reached the desktop's X server
    local u
    for u in "${USERS[@]}"; do [[ $(desk_field "$u" x) == reached ]] || { echo "$u: $(desk "$u")"; return 1; }; done
}

# --------------------------------------------------------------------- log-out

# logout USER: the desktop's session ends as when the user logs out of it: the session script,
# which sesman waits on, exits; sesman then calls pam_close_session and terminates Xorg.
LOGOUT_SID='' LOGOUT_ADDR='' LOGOUT_NETNS=''
logout() {
    local u=$1
    LOGOUT_SID=$(sid_of "$u"); LOGOUT_ADDR=$(desk_field "$u" address)
    [[ $LOGOUT_SID =~ ^[0-9]+$ && -e /run/netns/sessiond-$LOGOUT_SID ]] || { echo "$u has no session to log out of"; return 1; }
    LOGOUT_NETNS=$(netns_of_sid "$LOGOUT_SID")
    leased | grep -qx "$LOGOUT_ADDR" || { echo "no lease for $LOGOUT_ADDR before the log-out"; return 1; }
    [[ -e /run/sessiond/pam/$LOGOUT_SID ]] || { echo "no PAM holder count for session $LOGOUT_SID"; return 1; }
    touch "$(desk_file "$u" logout)"
    wait_for 30 grep -q released "$(desk_file "$u" bind)" || { echo "$u: the session script did not end"; return 1; }
}
lease_gone() { ! leased | grep -qx "$LOGOUT_ADDR"; }
session_gone() { # the daemon no longer has it, its netns is gone: not named, and no process in it
    ! daemon_has "$LOGOUT_SID" || return 1
    [[ ! -e /run/netns/sessiond-$LOGOUT_SID ]] || return 1
    local p
    for p in /proc/[0-9]*; do [[ $(readlink "$p/ns/net" 2>/dev/null) != "$LOGOUT_NETNS" ]] || return 1; done
}
logout_ends_session() { # USER
    local u=$1 p mark
    mark=$(wc -l <"$T/sesman.out")
    logout "$u" || return 1
    wait_for 30 session_gone || {
        echo "sessiond-$LOGOUT_SID still there: $(sessions)"; ls /run/netns
        for p in /proc/[0-9]*; do [[ $(readlink "$p/ns/net" 2>/dev/null) == "$LOGOUT_NETNS" ]] && echo "held by ${p#/proc/} $(cat "$p/comm")"; done
        tail -20 "$T/sesman.log"; return 1
    }
    wait_for 10 lease_gone || { echo "dnsmasq still leases $LOGOUT_ADDR: $(leased)"; return 1; }
    # sesman's session process called pam_close_session: the module (debug) said so, and
    # dropped its holder count
    tail -n "+$((mark + 1))" "$T/sesman.out" | grep -x "pam_sessiond: session $LOGOUT_SID: released" || { echo "pam_close_session did not release session $LOGOUT_SID"; return 1; }
    [[ ! -e /run/sessiond/pam/$LOGOUT_SID ]] || { echo "holder count left: $(cat "/run/sessiond/pam/$LOGOUT_SID")"; return 1; }
    echo "$u: sid $LOGOUT_SID ($LOGOUT_ADDR) stopped, lease released, namespace gone"
}

# bob first ends his RDP client: xrdp keeps a disconnected desktop (KillDisconnected=false),
# so his session, namespace and lease must stay until he logs out.
disconnect_keeps_session() {
    local sid display
    sid=$(sid_of bob); display=$(desk_field bob display); display=${display#:}; display=${display%.*}
    kill "${CLIENT_PID[bob]}" 2>/dev/null; wait_pid 10 "${CLIENT_PID[bob]}"
    # xorgxrdp logs the client's going away; give a wrong ending a second to show
    wait_for 15 grep -q rdpClientConDisconnect "$T/home/bob/.xorgxrdp.$display.log" || { echo "Xorg :$display saw no disconnect"; return 1; }
    sleep 1
    [[ -e /run/netns/sessiond-$sid && -n $(pids_of bob Xorg) ]] || { echo "bob's desktop ended with his client"; return 1; }
    ! grep -q released "$(desk_file bob bind)" || { echo "bob's session script ended"; return 1; }
    daemon_has "$sid" && leased | grep -qx "$(desk_field bob address)"
}

# After both log-outs: did the daemon find a process of the desktop still in a stopped session's
# namespace (sesman calls pam_close_session before it terminates Xorg and chansrv)? Reported, so
# the README can say what happens; the outcome (interface deleted, lease released) is asserted above.
report_still_in_use() { grep -i "still in use" "$DAEMON_LOG" || echo "the daemon found no stopped namespace still in use"; }
nothing_left() { no_sessions_left && dnsmasq_leases_all_released; }

# --------------------------------------------------------------------- daemon down

# With the daemon down, pam_sessiond (fail=closed, the default) refuses the PAM session, and
# sesman must then not start the desktop. Upstream xrdp before 0.9.23 ignored
# pam_open_session's result (CVE-2023-40184) and started it anyway, on the host's network;
# Debian 12's 0.9.21.1-1+deb12u1 and later carry the fix: sesman's session process exits.
refused_login_gets_no_desktop() {
    local u=alice
    kill_daemon TERM
    rm -f "$T/home/$u"/desktop.*
    local mark; mark=$(wc -l <"$T/sesman.log")
    rdp_login "$u"
    wait_for 60 bash -c "tail -n +$((mark + 1)) '$T/sesman.log' | grep -q 'pam_open_session failed'" || { echo "sesman did not report a failed pam_open_session"; tail -15 "$T/sesman.log"; return 1; }
    wait_for 15 bash -c "tail -n +$((mark + 1)) '$T/sesman.log' | grep -q 'Process [0-9]* has exited'" || { echo "sesman's session process did not end"; return 1; }
    tail -n "+$((mark + 1))" "$T/sesman.log" | grep -E "PAM|pam_|exited"
    grep "refusing the session" "$T/sesman.out" | tail -1
    grep -q "user $u: .*refusing the session (fail=closed)" "$T/sesman.out" || { echo "not refused by pam_sessiond (fail=closed)"; return 1; }
    [[ -z $(ps -u "$u" -o pid=,comm=) ]] || { echo "$u has processes:"; ps -u "$u" -o pid=,comm=; return 1; }
    [[ ! -e $(desk_file "$u" env) ]] || { echo "the session script ran:"; desk "$u"; return 1; }
    kill "${CLIENT_PID[$u]}" 2>/dev/null; wait_pid 10 "${CLIENT_PID[$u]}"
}

# Ends what this suite started, by PID (the sandbox's end would kill the rest anyway), and
# keeps the logs of xrdp, sesman, the daemon, the clients and the X servers in the results.
cleanup() {
    local p pids=("${CLIENT_PID[@]}")
    for p in "$XRDP_PID" "$SESMAN_PID" "$XVFB_PID"; do [[ -n $p ]] && pids+=("$p"); done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait_pid 10 "${pids[@]}"
    kill_daemon TERM
    "$REPO/scripts/dhcp-server" dnsmasq stop >/dev/null 2>&1
    mkdir -p "$RESULTS/xrdp" && rm -f "$RESULTS/xrdp/"*
    cp "$T"/*.log "$T"/*.out "$DAEMON_LOG" "$RESULTS/xrdp/" 2>/dev/null
    for p in "$T"/home/*/.xorgxrdp.*.log "$T"/home/*/desktop.*; do
        [[ -e $p ]] && cp "$p" "$RESULTS/xrdp/$(basename "$(dirname "$p")")-$(basename "$p" | sed 's/^\.//')"
    done
    echo "xrdp.sh took $((SECONDS - T0)) s; logs in $RESULTS/xrdp/"
}

# --------------------------------------------------------------------- run

T0=$SECONDS
check "xrdp, xorgxrdp, Xvfb, xfreerdp installed; sessiond and pam_sessiond.so built" needs
((FAILS)) && finish
check "a private /tmp for the X servers" private_tmp
check "test users with passwords in the sandbox overlay" make_users
check "dnsmasq serves the LAN" "$REPO/scripts/dhcp-server" dnsmasq start
check "daemon starts (DHCP on $SBX_UPLINK)" start_daemon --uplink "$SBX_UPLINK" --state-dir "$STATE"
check "xrdp config and /etc/pam.d/xrdp-sesman with pam_sessiond.so" xrdp_config
check "xrdp-sesman and xrdp listen on loopback only" xrdp_up
check "Xvfb for the RDP clients" xvfb_up
((FAILS)) && { cleanup; finish; }
for u in "${USERS[@]}"; do rdp_login "$u"; done
check "xfreerdp logs in alice and bob (user + password): both desktops run" both_desktops_up
((FAILS)) && { cleanup; finish; }
check "alice's desktop (sesman's session process, Xorg, chansrv, session script, its child) is in her sessiond-N" desktop_in_its_namespace alice
check "bob's desktop is in his sessiond-N" desktop_in_its_namespace bob
check "alice's desktop has its own leased address (eth0 = SESSIOND_ADDRESS = daemon = dnsmasq lease)" desktop_has_its_lease alice
check "bob's desktop has its own leased address" desktop_has_its_lease bob
check "two sessions, two namespaces, two addresses" two_desktops_distinct
check "both desktops bind 0.0.0.0:9000; the host's 9000 stays free" both_bind_9000
check "X clients in the session reach the desktop's X server" x_clients_work
check "alice logs out (session script ends): sesman closes the PAM session; session stopped, lease released, namespace gone" logout_ends_session alice
check "bob ends his RDP client: his disconnected desktop, namespace and lease stay" disconnect_keeps_session
check "bob logs out: session stopped, lease released, namespace gone" logout_ends_session bob
check "no session, namespace, holder count or lease left" nothing_left
echo "note: $(report_still_in_use)"
check "daemon down (fail=closed): pam_open_session fails and sesman starts no desktop, no X server" refused_login_gets_no_desktop

cleanup
finish
