#!/usr/bin/env bash
# The Debian package as a new user gets it (issue 15, items 1, 2 and 7): build it with
# scripts/package, check its contents and lintian, install it with dpkg -i in a sandbox whose
# /usr, /lib, /etc and /var are copy-on-write overlays (the host's stay untouched), run the
# demo against the installed files, then dpkg -r (the daemon stops, the sessions keep running)
# and dpkg -P, and check that every path the package listed is gone.
#
# There is no systemd in the sandbox: a stand-in `systemctl` (in the overlay's /usr/local/sbin)
# records what the maintainer scripts ask of it, so that "enable, start only once configured,
# stop on remove" can be checked; the demo's daemon is started by hand, as on a host without
# systemd, which is also what the prerm's fallback (start-stop-daemon) is for.
# Usage: tests/shell/package.sh
source "$(dirname "$0")/lib.sh"

# Built before entering the sandbox: the first build installs cargo-deb from crates.io, which
# the sandbox (no network) cannot reach. The checks below report the result.
if [[ "${SBX:-}" != 1 && $(id -u) == 0 ]]; then
    mkdir -p "$RESULTS"
    export PKG_LOG=$RESULTS/package-build.log PKG_DEB='' PKG_BUILD=failed
    build_start=$(date +%s)
    # The dev build the other suites use (PACKAGE_PROFILE=release to test the real thing).
    PKG_DEB=$(PACKAGE_PROFILE=${PACKAGE_PROFILE:-dev} "$REPO/scripts/package" 2>"$PKG_LOG") && PKG_BUILD=ok
    export PKG_BUILD_SECS=$(($(date +%s) - build_start))
    export SBX_OVERLAYS="/usr /lib /var/log /var/cache"
fi
enter_sandbox "$@"
# shellcheck source=../../scripts/lib/sbx-common.sh
. "$REPO/scripts/lib/sbx-common.sh"

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The demo uses the installed paths and defaults, not the suites' test socket.
unset SESSIOND_SOCKET
SESSIOND=/usr/sbin/sessiond
PKG_DEB=$REPO/${PKG_DEB#"$REPO"/}
PATHS=/run/pkg-paths          # every path the package lists, from dpkg-deb -c
PREEXISTING=/run/pkg-preexisting  # those of them that were there before the install
SYSTEMCTL_LOG=/run/systemctl.log
WANTS=/etc/systemd/system/multi-user.target.wants/sessiond.service
MA=x86_64-linux-gnu
suite_start=$(date +%s)

pam_sum() { (cd /etc/pam.d && sha256sum -- * | sha256sum); }
PAM_SUM=$(pam_sum)

# ------------------------------------------------------------------ the package file

package_builds() {
    echo "scripts/package: $PKG_BUILD in ${PKG_BUILD_SECS}s -> $PKG_DEB"
    tail -5 "$PKG_LOG"
    [[ $PKG_BUILD == ok && -f $PKG_DEB && $(basename "$PKG_DEB") =~ ^sessiond_[0-9][^_]*_amd64\.deb$ ]]
}

contents() {
    # "drwxr-xr-x 0/0 0 DATE TIME ./usr/sbin/" -> /usr/sbin
    dpkg-deb -c "$PKG_DEB" | awk '{print $6}' | sed 's|^\./|/|; s|/$||' | grep -v '^$' | sort -u >"$PATHS"
    local want=(
        /usr/sbin/sessiond
        "/usr/lib/$MA/security/pam_sessiond.so"
        /usr/lib/systemd/system/sessiond.service /usr/lib/systemd/system/sessiond@.service
        /usr/share/man/man8/sessiond.8.gz /usr/share/man/man5/sessiond.toml.5.gz /usr/share/man/man8/pam_sessiond.8.gz
        /usr/share/bash-completion/completions/sessiond /usr/share/zsh/vendor-completions/_sessiond
        /usr/share/fish/vendor_completions.d/sessiond.fish
        /etc/sessiond/sessiond.toml.sample
        /usr/share/doc/sessiond/README.md /usr/share/doc/sessiond/copyright /usr/share/doc/sessiond/changelog.Debian.gz
        /usr/share/doc/sessiond/docs/performance.md /usr/share/doc/sessiond/docs/reliability.md
    )
    local p bad=0
    for p in "${want[@]}"; do grep -qxF "$p" "$PATHS" || { echo "missing: $p"; bad=1; }; done
    # Nothing outside the places a package may use (no /usr/local, /run, /var, /opt, /home).
    if grep -Ev '^/(usr|etc)(/|$)|^/usr/local' "$PATHS" | grep . || grep '^/usr/local' "$PATHS"; then bad=1; fi
    ((bad == 0)) || { cat "$PATHS"; return 1; }
    local depends; depends=$(dpkg-deb -f "$PKG_DEB" Depends)
    echo "Depends: $depends"
    # Computed by dpkg-shlibdeps from the two ELF files, plus iproute2 (`ip netns` and friends).
    [[ $depends == *"libc6 (>="* && $depends == *"libpam0g (>="* && $depends == *iproute2* ]] || return 1
    [[ $(dpkg-deb -I "$PKG_DEB" conffiles) == /etc/sessiond/sessiond.toml.sample ]] || { echo "conffiles: $(dpkg-deb -I "$PKG_DEB" conffiles)"; return 1; }
    local unit; unit=$(dpkg-deb --fsys-tarfile "$PKG_DEB" | tar -xO ./usr/lib/systemd/system/sessiond.service)
    grep -qx 'ExecStart=/usr/sbin/sessiond daemon' <<<"$unit" && grep -qx 'KillMode=process' <<<"$unit"
}

lintian_has_no_errors() {
    local out=$RESULTS/package-lintian.txt rc=0
    lintian --pedantic --display-info "$PKG_DEB" >"$out" 2>&1 || rc=$?
    grep -v 'root privileges' "$out"
    echo "lintian exit $rc"
    ! grep -q '^E:' "$out" && ((rc == 0))
}

# ------------------------------------------------------------------ install

# The maintainer scripts' systemctl calls (their own and deb-systemd-helper's and -invoke's)
# go to this: it records them; what works on files alone (enable and preset with --root,
# is-enabled) it passes to the real systemctl, on the sandbox's /etc; it says every unit is
# inactive and does nothing for start, stop and the like. /run/systemd/system is how the
# scripts tell that systemd runs.
fake_systemd() {
    mkdir -p /run/systemd/system /usr/local/sbin
    cat >/usr/local/sbin/systemctl <<EOF
#!/bin/sh
echo "systemctl \$*" >>$SYSTEMCTL_LOG
case " \$* " in
    *" --root="*) exec /usr/bin/systemctl "\$@" ;;
    *" is-enabled "*) exec /usr/bin/systemctl --root=/ "\$@" ;;
    *" is-active "*) exit 3 ;;
esac
exit 0
EOF
    chmod 755 /usr/local/sbin/systemctl
    # A policy-rc.d (CI's apt step makes one for a while) would veto the starts checked below.
    rm -f /usr/sbin/policy-rc.d
    : >"$SYSTEMCTL_LOG"
    # Which of the package's directories exist already (dpkg must leave those).
    local p
    while read -r p; do [[ -d $p ]] && echo "$p"; done <"$PATHS" >"$PREEXISTING"
    command -v systemctl | grep -qx /usr/local/sbin/systemctl
}

DPKG_OUT=/run/dpkg.out
dpkg_do() { # ARGS...: dpkg with its output kept in $DPKG_OUT and shown
    : >"$SYSTEMCTL_LOG"
    local rc=0
    DEBIAN_FRONTEND=noninteractive dpkg "$@" >"$DPKG_OUT" 2>&1 || rc=$?
    echo "\$ dpkg $* -> $rc"; cat "$DPKG_OUT"; echo "systemctl calls:"; cat "$SYSTEMCTL_LOG"
    return $rc
}

install_enables_but_does_not_start_unconfigured() {
    dpkg_do -i "$PKG_DEB" || return 1
    [[ $(dpkg-query -W -f='${Status}' sessiond) == "install ok installed" ]] || return 1
    "$SESSIOND" --version | grep -qx "sessiond $(dpkg-query -W -f='${Version}' sessiond | cut -d- -f1)" || return 1
    [[ -L $WANTS ]] || { echo "not enabled: no $WANTS"; return 1; }
    if grep -q ' start ' "$SYSTEMCTL_LOG"; then echo "started without a config"; return 1; fi
    grep -q 'not started: /etc/sessiond/sessiond.toml does not exist' "$DPKG_OUT"
}

pam_d_untouched_and_how_to_printed() {
    [[ $(pam_sum) == "$PAM_SUM" ]] || { echo "/etc/pam.d changed"; return 1; }
    ! grep -rqs pam_sessiond /etc/pam.d && grep -q 'session    required     pam_sessiond.so' "$DPKG_OUT"
}

man_pages_installed() {
    local p
    for p in "8 sessiond" "5 sessiond.toml" "8 pam_sessiond"; do
        # shellcheck disable=SC2086
        man -w $p | grep -q "^/usr/share/man/" || { echo "man -w $p: not found"; return 1; }
    done
    # Generated from the clap definitions and the config struct: flags, keys, PAM arguments.
    local s toml pam
    s=$(MANWIDTH=120 man 8 sessiond 2>/dev/null | col -b)
    toml=$(MANWIDTH=120 man 5 sessiond.toml 2>/dev/null | col -b)
    pam=$(MANWIDTH=120 man 8 pam_sessiond 2>/dev/null | col -b)
    grep -q -- '--dhcp-timeout <DHCP_TIMEOUT>' <<<"$s" && grep -q 'sessiond exec' <<<"$s" &&
        grep -q 'dhcp_timeout_secs = integer' <<<"$toml" && grep -q 'exclude_groups=g,...' <<<"$pam" ||
        { echo "rendered pages lack generated parts"; return 1; }
    # The installed units: their binary and their man page exist, their syntax is right.
    local out; out=$(cd / && systemd-analyze verify sessiond.service sessiond@7.service 2>&1)
    echo "$out"; [[ -z $out ]]
}

completions_installed() {
    [[ -s /usr/share/zsh/vendor-completions/_sessiond && -s /usr/share/fish/vendor_completions.d/sessiond.fish ]] || return 1
    head -1 /usr/share/zsh/vendor-completions/_sessiond | grep -qx '#compdef sessiond' || return 1
    # bash: complete as bash-completion would, after loading the installed file.
    local words
    words=$(bash -c '. /usr/share/bash-completion/completions/sessiond
        comp() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
                 COMPREPLY=(); _sessiond sessiond "${@: -1}" "${@: -2:1}"; echo "${COMPREPLY[*]}"; }
        comp sessiond st; comp sessiond daemon --dhcp-t')
    echo "$words"
    grep -qw start <<<"$words" && grep -qw status <<<"$words" && grep -qw stop <<<"$words" && grep -q -- '--dhcp-timeout' <<<"$words"
}

# ------------------------------------------------------------------ the demo

DAEMON_PID=
start_installed_daemon() { # ARGS...: /usr/sbin/sessiond daemon ARGS, default socket
    "$SESSIOND" daemon "$@" >>"$DAEMON_LOG" 2>&1 &
    DAEMON_PID=$!
    wait_for 10 "$SESSIOND" status || { echo "daemon does not answer"; tail -20 "$DAEMON_LOG"; return 1; }
}

# Holds 0.0.0.0:9000 until killed.
BINDER='
import socket, time
s = socket.socket(); s.bind(("0.0.0.0", 9000)); s.listen(1)
print("bound", flush=True)
time.sleep(600)
'
BINDERS=()

demo_two_sessions_with_leases() {
    printf 'uplink = "%s"\n' "$SBX_UPLINK" >/etc/sessiond/sessiond.toml   # the admin's config
    "$SBX_DHCP_SERVER" dnsmasq start >/dev/null || return 1
    start_installed_daemon || return 1
    S1=$("$SESSIOND" start --session 1 --json) && S2=$("$SESSIOND" start --session 2 --json) || return 1
    A1=$(json .address <<<"$S1"); A2=$(json .address <<<"$S2")
    echo "session 1: $A1, session 2: $A2"
    [[ $A1 != "$A2" ]] && sbx_ip_in_pool "${A1%/*}" && sbx_ip_in_pool "${A2%/*}" || return 1
    [[ $(json .lease.dhcp_state <<<"$S1") == bound ]] || { echo "$S1"; return 1; }
    ip -n sessiond-1 -4 addr show dev eth0 | grep -q "inet ${A1%/*}/" || return 1
    local n o
    for n in 1 2; do
        o=/run/binder$n.out
        "$SESSIOND" exec --session "$n" -- python3 -c "$BINDER" >"$o" 2>&1 &
        BINDERS+=($!)
    done
    wait_for 5 grep -q bound /run/binder1.out && wait_for 5 grep -q bound /run/binder2.out || { cat /run/binder*.out; return 1; }
}

reinstall_with_config_starts_unit_and_keeps_daemon() {
    dpkg_do -i "$PKG_DEB" || return 1
    # configure: the unit is started now that the config exists (deb-systemd-invoke asks
    # is-enabled first, then starts)...
    grep -q 'systemctl --quiet --system start sessiond.service' "$SYSTEMCTL_LOG" || { echo "unit not started"; return 1; }
    # ...and the upgrade's prerm did not stop the running daemon (it stops only on remove).
    kill -0 "$DAEMON_PID" || { echo "the daemon died in an upgrade"; return 1; }
    [[ $(json .address < <("$SESSIOND" status --session 1 --json)) == "$A1" ]]
}

daemon_gone() { ! kill -0 "$DAEMON_PID" 2>/dev/null; }

remove_stops_daemon_keeps_sessions() {
    dpkg_do -r sessiond || return 1
    grep -q 'stop sessiond.service' "$SYSTEMCTL_LOG" || { echo "prerm did not stop the unit"; return 1; }
    # The daemon (not run by systemd here) got SIGTERM from the prerm's start-stop-daemon.
    wait_for 15 daemon_gone || { echo "daemon $DAEMON_PID still running"; return 1; }
    wait "$DAEMON_PID" 2>/dev/null
    DAEMON_PID=
    grep -q 'SIGTERM: exiting; sessions keep running' "$DAEMON_LOG" || { tail -5 "$DAEMON_LOG"; return 1; }
    [[ $(dpkg-query -W -f='${Status}' sessiond) == "deinstall ok config-files" && ! -e $SESSIOND ]] || return 1
    [[ -f /etc/sessiond/sessiond.toml.sample && -f /etc/sessiond/sessiond.toml ]] || { echo "remove took the config"; return 1; }
    # The sessions: namespaces, addresses and the users' processes are all still there.
    ip -n sessiond-1 -4 addr show dev eth0 | grep -q "inet ${A1%/*}/" &&
        ip -n sessiond-2 -4 addr show dev eth0 | grep -q "inet ${A2%/*}/" || return 1
    kill -0 "${BINDERS[@]}" || { echo "a session's process died"; return 1; }
    grep -q 'these sessions keep running: sessiond-1 sessiond-2' "$DPKG_OUT"
}

# Every path the package listed is gone, except the directories that were there before it.
listed_paths_gone() {
    local p left=0
    while read -r p; do
        if grep -qxF "$p" "$PREEXISTING"; then
            [[ -d $p ]] || { echo "removed a directory it did not make: $p"; left=1; }
        elif [[ -e $p || -L $p ]]; then
            echo "left behind: $p"; left=1
        fi
    done <"$PATHS"
    echo "$(wc -l <"$PATHS") paths checked, $(wc -l <"$PREEXISTING") of them directories that were there before"
    ((left == 0))
}

purge_with_sessions_running_keeps_their_state() {
    dpkg_do -P sessiond || return 1
    if dpkg-query -W -f='${Status}' sessiond 2>/dev/null | grep -qv not-installed; then echo "still known to dpkg"; return 1; fi
    listed_paths_gone || return 1
    [[ ! -e /etc/sessiond ]] || { ls -la /etc/sessiond; return 1; }
    if [[ -e $WANTS ]] || find /var/lib/systemd/deb-systemd-helper-enabled -name '*sessiond*' 2>/dev/null | grep -q .; then
        echo "enablement left"; return 1
    fi
    [[ $(pam_sum) == "$PAM_SUM" ]] || return 1
    # Sessions run: their records and leases stay (the next daemon re-adopts them).
    find /run/sessiond/state -name 1.json | grep -q . && grep -q 'sessions still running' "$DPKG_OUT"
}

reinstall_readopts_then_purge_clears_state() {
    dpkg_do -i "$PKG_DEB" || return 1
    start_installed_daemon --uplink "$SBX_UPLINK" || return 1   # /etc/sessiond/sessiond.toml went with the purge
    local s1; s1=$("$SESSIOND" status --session 1 --json) || return 1
    [[ $(json .address <<<"$s1") == "$A1" && $(json .state <<<"$s1") == up ]] || { echo "not re-adopted: $s1"; return 1; }
    "$SESSIOND" stop --all || return 1
    kill "${BINDERS[@]}" 2>/dev/null; wait "${BINDERS[@]}" 2>/dev/null; BINDERS=()
    wait_for 10 bash -c '! ls /run/netns | grep -q ^sessiond-' || { ls /run/netns; return 1; }
    dpkg_do -P sessiond || return 1
    wait_for 15 daemon_gone || return 1
    wait "$DAEMON_PID" 2>/dev/null; DAEMON_PID=
    [[ ! -e /run/sessiond ]] || { echo "left: $(find /run/sessiond | head)"; return 1; }
    listed_paths_gone
}

# ------------------------------------------------------------------ run

check "scripts/package builds the .deb" package_builds || finish
check "contents: binary, PAM module (multiarch), units, man pages, completions, conffile, docs; Depends computed + iproute2" contents
check "lintian: no errors (warnings listed)" lintian_has_no_errors
check "sandbox: systemctl stand-in, policy-rc.d out of the way" fake_systemd || finish
check "dpkg -i: installed and enabled, not started without /etc/sessiond/sessiond.toml" install_enables_but_does_not_start_unconfigured || finish
check "dpkg -i: /etc/pam.d untouched, how to enable the module printed" pam_d_untouched_and_how_to_printed
check "man -w finds sessiond(8), sessiond.toml(5), pam_sessiond(8); units verify" man_pages_installed
check "bash, zsh and fish completions installed; bash completes commands and flags" completions_installed
check "demo from the installed files: two sessions lease addresses, both bind :9000" demo_two_sessions_with_leases || finish
check "dpkg -i again with a config: unit started, running daemon kept through the upgrade" reinstall_with_config_starts_unit_and_keeps_daemon
check "dpkg -r: daemon stopped, sessions (netns, address, processes) and config kept" remove_stops_daemon_keeps_sessions
check "dpkg -P with sessions running: every listed path gone, their state kept" purge_with_sessions_running_keeps_their_state
check "reinstall re-adopts them; after stop --all, dpkg -P leaves nothing" reinstall_readopts_then_purge_clears_state
"$SBX_DHCP_SERVER" dnsmasq stop >/dev/null 2>&1
echo "package.sh: build ${PKG_BUILD_SECS}s, checks $(($(date +%s) - suite_start))s"
finish
