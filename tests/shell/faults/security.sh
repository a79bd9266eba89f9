# shellcheck shell=bash
# Scenario 13 of tests/shell/faults.sh (sourced by it): the security review's fixes to
# `sessiond exec --user`, the PAM module and the daemon's owner and state-file rules (issue 11,
# items 4.1, 4.2, 4.3, 4.7, 4.9). Each row runs its checks directly; each check fails on the
# code before the fix. Uses faults.sh's row_begin/expect/note/row_end, begin_daemon/end_daemon.

PAM_SO=${PAM_SO:-$REPO/target/debug/libpam_sessiond.so}
SEC_SERVICE=sessiond-sec
SEC_REFDIR=/run/sessiond/pam
SEC_HOME=$W/home
SEC_POOL="$SBX_POOL_FIRST-$SBX_POOL_LAST/24"

# sec_users: alice (also in group sec-extra, for supplementary groups) and bob, in the
# sandbox's /etc overlay, homes on its /run tmpfs; idempotent.
sec_users() {
    getent group sec-extra >/dev/null || groupadd sec-extra || return 1
    local u
    for u in alice bob; do
        getent passwd "$u" >/dev/null || useradd -M -d "$SEC_HOME/$u" -s /bin/bash "$u" || return 1
        mkdir -p "$SEC_HOME/$u" && chown "$u:" "$SEC_HOME/$u" && chmod 700 "$SEC_HOME/$u"
    done
    usermod -aG sec-extra alice
}
sec_daemon() { begin_daemon f13 --addressing static --pool "$SEC_POOL" --gateway "$SBX_GATEWAY"; }

# sec_pam ARGS...: a pamtester stack with pam_sessiond (ARGS) and a probe that records what
# the login sees; a login of a user with a file $W/hold-USER waits (at most 30 s) until it is
# removed, holding its session open.
SEC_PROBE=$W/sec-probe.sh
cat >"$SEC_PROBE" <<'EOF'
#!/bin/bash
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[[ $PAM_TYPE == open_session ]] || exit 0
{
    echo "session=${SESSIOND_SESSION:-}"
    echo "eth0=$(ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')"
    echo "sysnet=$(ls /sys/class/net | tr '\n' ' ')"
    echo "cgroupfs=$(ls /sys/fs/cgroup 2>/dev/null | tr '\n' ' ')"
    # this process's own cgroup directory, as cgroup tools look it up (v2, or v1's name=systemd)
    # (v2 at /sys/fs/cgroup, or under /sys/fs/cgroup/unified on a hybrid v1/v2 host)
    base=/sys/fs/cgroup; [[ -d $base/unified ]] && base=$base/unified
    own=$(awk -F: -v b="$base" '$1 == 0 {print b $3; exit}' /proc/self/cgroup)
    echo "own_cgroup=$own exists=$([[ -d $own ]] && echo yes || echo no)"
} >"/run/faults/probe-$PAM_USER.out"
for ((i = 0; i < 300; i++)); do [[ -e /run/faults/hold-$PAM_USER ]] || break; sleep 0.1; done
EOF
chmod 755 "$SEC_PROBE"
sec_pam() {
    cat >"/etc/pam.d/$SEC_SERVICE" <<EOF
auth     required pam_permit.so
account  required pam_permit.so
session  required $PAM_SO socket=$SESSIOND_SOCKET refdir=$SEC_REFDIR $*
session  optional pam_exec.so quiet $SEC_PROBE
EOF
}
sec_pt() { # USER [pamtester options]: open+close in one pamtester
    local u=$1; shift
    rm -f "$W/probe-$u.out"
    timeout 40 pamtester "$@" "$SEC_SERVICE" "$u" open_session close_session
}
sec_probe() { sed -n "s/^$2=//p" "$W/probe-$1.out" 2>/dev/null | head -1; }
# logind_says ID USER: what pam_systemd's logind would have written for session ID of USER.
logind_says() { mkdir -p /run/systemd/sessions && printf 'UID=%s\nUSER=%s\nACTIVE=1\n' "$(id -u "$2")" "$2" >"/run/systemd/sessions/$1"; }
no_sessions() { [[ $(status_json | jq length) == 0 ]] || { echo "running: $(status_json | jq -c 'map({session, owner_uid})')"; return 1; }; }

# ------------------------------------------------------------------ 13a: exec --user

# sec_takeover [null]: tty_takeover.py against session 1; sets TAKE (its transcript).
TAKE=
sec_takeover() {
    rm -f "$W/pwned"
    TAKE=$(timeout 40 python3 "$HERE/tty_takeover.py" "$SESSIOND" 1 alice "$W/pwned" "$@" 2>&1)
    echo "$TAKE"
}
root_ran_nothing() {
    echo "$TAKE"
    [[ ! -e $W/pwned ]] || { echo "root ran the user's command: $W/pwned holds $(cat "$W/pwned")"; return 1; }
    grep -q '^ROOT-READ:\[\]' <<<"$TAKE" || { echo "root's shell read input it never typed"; return 1; }
    grep -q '^EXEC-RC:0' <<<"$TAKE"
}
# the program ran on a terminal of its own, as the leader of its own session
own_pty() {
    local victim user
    victim=$(sed -n 's/^VICTIM-TTY://p' <<<"$TAKE" | tr -d '\r'); user=$(sed -n 's/^USER-TTY:\([^ ]*\).*/\1/p' <<<"$TAKE")
    echo "root's terminal $victim, the program's $user"
    [[ $user == /dev/pts/* && $user != "$victim" ]] && grep -q 'sid-leader=True' <<<"$TAKE"
}
# what the user's program is given: groups, environment, working directory
exec_as_alice_env() {
    local out
    # shellcheck disable=SC2016  # expanded by the user's sh
    out=$(cd /var && SEC_ROOT_SECRET=s3cr3t "$SESSIOND" exec --session 1 --user alice -- \
        sh -c 'echo "groups=$(id -G | tr " " "\n" | sort -n | tr "\n" " ")"; echo "pwd=$(pwd)"; grep SigBlk /proc/self/status; env | sort') || return 1
    echo "$out"
    local want_groups; want_groups=$(id -G alice | tr ' ' '\n' | sort -n | tr '\n' ' ')
    grep -qxF "groups=$want_groups" <<<"$out" || { echo "groups are not alice's ($want_groups)"; return 1; }
    grep -qxF "pwd=$SEC_HOME/alice" <<<"$out" || { echo "cwd is not alice's home"; return 1; }
    grep -qx 'SigBlk:.0*' <<<"$out" || { echo "the program starts with signals blocked"; return 1; }
    # (PWD, SHLVL and _ are sh's own; TERM is passed on when root has one)
    local names; names=$(grep -v -e '^groups=' -e '^pwd=' -e '^SigBlk:' <<<"$out" | cut -d= -f1 | grep -vx -e PWD -e SHLVL -e _ -e TERM | sort | tr '\n' ' ')
    [[ $names == "HOME LOGNAME PATH SESSIOND_ADDRESS SESSIOND_LOOPBACK SESSIOND_SESSION SHELL USER " ]] || { echo "environment: $names"; return 1; }
    [[ -z ${TERM:-} ]] || grep -qxF "TERM=$TERM" <<<"$out" || { echo "TERM not passed on"; return 1; }
    grep -qxF "HOME=$SEC_HOME/alice" <<<"$out" && grep -qx 'USER=alice' <<<"$out" && grep -qx 'SHELL=/bin/bash' <<<"$out"
}
# An interactive shell through `exec --user` on a terminal: typing reaches it, the window size
# (and a resize) too, ^C stops its foreground command (not the shell), and its status comes back.
interactive_shell() {
    local out
    # shellcheck disable=SC2016  # typed into the user's shell
    out=$(timeout 40 python3 "$HERE/pty_run.py" 24 80 33 101 'stty size; id -un; sleep 30\n<pause>\003<pause>echo done-$((6*7))\nexit 3\n' -- \
        "$SESSIOND" exec --session 1 --user alice -- bash --norc --noprofile -i 2>&1 | sed 's/\x1b\[[?0-9;]*[a-zA-Z]//g' | tr -d '\r')
    echo "$out"
    grep -qx '33 101' <<<"$out" || { echo "the resize did not reach the pty"; return 1; }
    if ! grep -qx 'alice' <<<"$out" || ! grep -qx 'done-42' <<<"$out"; then echo "typed commands did not run (or ^C killed the shell)"; return 1; fi
    grep -qx 'EXIT:3' <<<"$out" || { echo "the shell's exit status did not come back"; return 1; }
}
preserve_env_keeps_named() {
    local out
    out=$(LANG=C.UTF-8 SEC_OTHER=x "$SESSIOND" exec --session 1 --user alice --preserve-env=LANG -- env) || return 1
    grep -qx 'LANG=C.UTF-8' <<<"$out" && ! grep -q '^SEC_OTHER=' <<<"$out" &&
    expect_exit 2 "HOME" "$SESSIOND" exec --session 1 --user alice --preserve-env=HOME -- true
}
scenario_13a() {
    row_begin 13a "\`exec --user\` cannot take over root's terminal; the user gets a login's groups, environment and home" \
        "root, in a terminal (a pty, as over ssh), runs \`sessiond exec --session 1 --user alice\` of a program that pushes \`echo PWNED-\$(id -un) >FILE\` into its terminal with TIOCSTI (its controlling tty, stdin, stdout, stderr), then root's shell reads and runs a line; again with exec's stdin on /dev/null; \`exec --user alice\` of id/pwd/env with a secret in root's environment" \
        "root's shell reads nothing and FILE never appears; the program ran on a new pty as the leader of its own session; its groups are \`id -G alice\` (supplementary included), its cwd alice's home, its environment exactly HOME USER LOGNAME SHELL PATH SESSIOND_* (TERM when set); --preserve-env=LANG keeps LANG, --preserve-env=HOME is a usage error"
    sec_users || fail "test users"
    sec_daemon || { fail "daemon did not start"; row_end; return; }
    "$SESSIOND" start --session 1 --owner alice >/dev/null || fail "session 1"
    sec_takeover >/dev/null
    expect "from a terminal: root's shell runs nothing the user pushed" root_ran_nothing
    expect "from a terminal: the program has a pty and a session of its own" own_pty
    sec_takeover null >/dev/null
    expect "stdin /dev/null, stdout on root's terminal: root's shell runs nothing the user pushed" root_ran_nothing
    note "what the attack saw: $(grep -h '^ATTACK:' <<<"$TAKE" | head -1)"
    expect "an interactive shell on a terminal: input, window size and resize, ^C, exit status" interactive_shell
    expect "supplementary groups, clean login environment, cwd = home, no signal blocked" exec_as_alice_env
    expect "--preserve-env keeps what it names, never the identity" preserve_env_keeps_named
    end_daemon
    row_end
}

# ------------------------------------------------------------------ 13b: XDG_SESSION_ID

# bob's login holds session 5 (logind's session 5 is bob's); then alice's login comes with
# XDG_SESSION_ID=5 (from ~/.pam_environment, or su inside bob's session).
# how many holders a holder file lists (one "PID START_TIME" line each)
holder_lines() { grep -c . "$1" 2>/dev/null; }
one_holder() { [[ $(holder_lines "$1") == 1 ]]; }
bob_holds_5() {
    logind_says 5 bob
    touch "$W/hold-bob"
    timeout 40 pamtester -E XDG_SESSION_ID=5 "$SEC_SERVICE" bob open_session close_session >"$W/pt-bob.out" 2>&1 &
    BOB_PT=$!; bg_track "$BOB_PT"
    poll 15 one_holder "$SEC_REFDIR/5" || { cat "$W/pt-bob.out"; return 1; }
    [[ $(st_field 5 .owner_uid) == "$(id -u bob)" ]]
}
alice_gets_her_own() { # pamtester options
    sec_pt alice "$@" -E XDG_SESSION_ID=5 || return 1
    cat "$W/probe-alice.out"
    local s; s=$(sec_probe alice session)
    [[ $s =~ ^[0-9]+$ && $s != 5 ]] || { echo "alice's login got session '${s}', not one of her own"; return 1; }
    [[ -n $(sec_probe alice eth0) ]] || { echo "alice's login is not isolated"; return 1; }
    [[ $(st_field 5 .owner_uid) == "$(id -u bob)" && $(holder_lines "$SEC_REFDIR/5") == 1 ]] || { echo "bob's session 5 changed"; return 1; }
}
release_bob() { rm -f "$W/hold-bob"; wait "$BOB_PT" 2>/dev/null; poll 15 no_sessions; }
trusted_id_is_used() {
    logind_says 7 alice
    sec_pt alice -E XDG_SESSION_ID=7 || return 1
    [[ $(sec_probe alice session) == 7 ]] || { echo "got $(sec_probe alice session)"; return 1; }
    no_sessions
}
scenario_13b() {
    row_begin 13b "a login whose XDG_SESSION_ID names another user's session gets its own" \
        "bob's PAM login holds session 5 (logind's session 5 is bob's); alice logs in with XDG_SESSION_ID=5, with fail=closed, then with fail=open; alice logs in with XDG_SESSION_ID=7, logind's session 7 being hers" \
        "alice's logins succeed, isolated, in a session other than 5 (the module lets the daemon pick); bob's session 5 keeps its owner and holder; the id logind confirms for her (7) is used"
    sec_users || fail "test users"
    sec_daemon || { fail "daemon did not start"; row_end; return; }
    sec_pam debug
    expect "bob's login holds session 5" bob_holds_5
    expect "fail=closed: alice's login is not refused and gets a session of her own" alice_gets_her_own
    sec_pam debug fail=open
    expect "fail=open: alice's login is isolated, not left on the host network" alice_gets_her_own
    expect "bob logs out: nothing left" release_bob
    sec_pam debug
    expect "an XDG_SESSION_ID that logind confirms for the user is used" trusted_id_is_used
    rm -f /run/systemd/sessions/5 /run/systemd/sessions/7
    end_daemon
    row_end
}

# ------------------------------------------------------------------ 13c: start's owner

same_as_before() { # SID STATUS_JSON START_ARGS...: `start` returns the record status had
    local sid=$1 before=$2; shift 2
    local got want
    # (less what status reads live, which start does not: the IPv6 facts from the namespace,
    # and the loopback bridge's view)
    local live='del(.ipv6, .addresses6, .addresses6_detail, .dhcp6_state, .bridge)'
    got=$("$SESSIOND" start --session "$sid" "$@" --json | jq -S -c "$live") || return 1
    want=$(jq -S -c ".[] | select(.session == $sid) | $live" <<<"$before")
    echo "got  $got"; echo "want $want"
    [[ $got == "$want" ]]
}
scenario_13c() {
    row_begin 13c "a root \`start\` never joins a running session of another owner" \
        "session 5 started for bob (\`start --session 5 --owner bob\`); then \`start --session 5\` (as the unit sessiond@5 does), \`start --session 5 --owner alice\`, \`start --session 5 --owner bob\`; session 6 started without an owner, then again without, then with --owner alice" \
        "the start without an owner and the one for alice exit 1 naming bob's uid; bob's start returns his session unchanged; the ownerless session is returned to an ownerless start and refused to alice; status unchanged throughout"
    sec_users || fail "test users"
    sec_daemon || { fail "daemon did not start"; row_end; return; }
    local before
    "$SESSIOND" start --session 5 --owner bob >/dev/null || fail "start for bob"
    "$SESSIOND" start --session 6 >/dev/null || fail "start of 6"
    before=$(status_json)
    expect "start --session 5 (no owner): refused, naming bob's uid" expect_exit 1 "uid $(id -u bob)" "$SESSIOND" start --session 5
    expect "start --session 5 --owner alice: refused" expect_exit 1 "another user" "$SESSIOND" start --session 5 --owner alice
    expect "start --session 5 --owner bob: his session, unchanged" same_as_before 5 "$before" --owner bob
    expect "an ownerless session: idempotent for no owner, refused to alice" bash -c "'$SESSIOND' start --session 6 >/dev/null && ! '$SESSIOND' start --session 6 --owner alice"
    expect "status unchanged" test "$(status_json)" = "$before"
    end_daemon
    row_end
}

# ------------------------------------------------------------------ 13d: state file modes

state_private() {
    stat -c '%a %n' "$STATE" "$STATE"/* "$STATE"/sessions/*
    local bad
    bad=$(find "$STATE" -mindepth 0 \( -type d ! -perm 700 \) -o \( -type f -name '*.json' ! -perm 600 \) -o \( -path '*/addresses/*' -type f ! -perm 600 \))
    [[ -z $bad ]] || { echo "not private: $bad"; return 1; }
}
user_cannot_read() {
    local f; f=$(find "$STATE/sessions" -name '*.json' | head -1)
    [[ -n $f ]] || { echo "no state file"; return 1; }
    if setpriv --reuid=nobody --regid=nogroup --clear-groups cat "$f"; then echo "nobody read $f"; return 1; fi
    if setpriv --reuid=nobody --regid=nogroup --clear-groups ls "$STATE"; then echo "nobody listed $STATE"; return 1; fi
    return 0
}
scenario_13d() {
    row_begin 13d "state files are root's alone" \
        "a state dir left 0755 (with 0755 subdirectories) by an older daemon under umask 022; the daemon started on it, two sessions started; then the daemon restarted on a fresh dir" \
        "the dir and its subdirectories are 0700 after the daemon starts, every session, lease and address file 0600; user nobody can neither list the dir nor read a record"
    sec_daemon || { fail "daemon did not start"; row_end; return; }
    "$SESSIOND" start --session 1 >/dev/null || fail "session 1"
    kill_daemon TERM
    chmod 755 "$STATE" "$STATE"/*; chmod 644 "$STATE"/sessions/*.json
    restart_daemon --addressing static --pool "$SEC_POOL" --gateway "$SBX_GATEWAY" || fail "restart"
    "$SESSIOND" start --session 2 >/dev/null || fail "session 2"
    expect "an existing 0755 dir is tightened on start; files 0600" state_private
    expect "user nobody cannot read the state" user_cannot_read
    end_daemon
    umask 022; sec_daemon || fail "daemon on a fresh dir"
    "$SESSIOND" start --session 3 >/dev/null || fail "session 3"
    expect "a fresh dir (umask 022) is made 0700, its files 0600" state_private
    end_daemon
    row_end
}

# ------------------------------------------------------------------ 13e: the PAM module

# "ALICE": another spelling of alice, the way case-insensitive NSS (sssd, winbind) resolves it.
alias_user() {
    grep -q '^ALICE:' /etc/passwd && return 0
    local e; e=$(getent passwd alice) || return 1
    echo "ALICE:${e#alice:}" >>/etc/passwd
}
uppercase_is_alice() {
    sec_pt ALICE || return 1
    cat "$W/probe-ALICE.out"
    [[ -n $(sec_probe ALICE session) && -n $(sec_probe ALICE eth0) ]] || { echo "ALICE escaped users=alice"; return 1; }
    no_sessions
}
uppercase_excluded() {
    sec_pt ALICE || return 1
    [[ -z $(sec_probe ALICE session) ]] || { echo "ALICE escaped exclude_users=alice"; return 1; }
    no_sessions
}
refdir_of_a_user_refused() {
    mkdir -p "$W/refdir-alice" && chown alice "$W/refdir-alice" && chmod 700 "$W/refdir-alice"
    sec_pam "refdir=$W/refdir-alice"
    if sec_pt alice; then echo "login allowed with a refdir owned by alice"; return 1; fi
    [[ -z $(sec_probe alice session) ]] && no_sessions
}
tiny_timeout_refused() {
    sec_pam timeout=1e-10 fail=open
    # fail=open lets a login through when the daemon fails; a bad argument refuses it
    if sec_pt alice; then echo "timeout=1e-10 was taken (as no wait at all)"; return 1; fi
    sec_pam timeout=inf fail=open
    ! sec_pt alice
}
no_empty_holder_file() {
    # the pool (one address) is taken: the daemon refuses alice's start of session 42
    logind_says 42 alice
    if sec_pt alice -E XDG_SESSION_ID=42; then echo "login allowed"; return 1; fi
    ls -la "$SEC_REFDIR"
    [[ ! -e $SEC_REFDIR/42 ]] || { echo "empty holder file $SEC_REFDIR/42 left"; return 1; }
}
cgroupfs_visible() {
    sec_pt alice || return 1
    cat "$W/probe-alice.out"
    [[ $(sec_probe alice sysnet) == *eth0* ]] || { echo "/sys/class/net is not the session's"; return 1; }
    [[ -n $(sec_probe alice cgroupfs) ]] || { echo "/sys/fs/cgroup is empty inside the session"; return 1; }
    [[ $(sec_probe alice cgroupfs) == "$(ls /sys/fs/cgroup | tr '\n' ' ')" ]] || { echo "/sys/fs/cgroup differs from the host's"; return 1; }
    [[ $(sec_probe alice own_cgroup) == *exists=yes ]] || { echo "the login's own cgroup directory is not visible"; return 1; }
    no_sessions
}
exec_sees_cgroupfs() {
    "$SESSIOND" start --session 3 >/dev/null || return 1
    local out; out=$("$SESSIOND" exec --session 3 -- sh -c 'ls /sys/class/net | tr "\n" " "; echo; ls /sys/fs/cgroup | tr "\n" " "') || return 1
    echo "$out"
    "$SESSIOND" stop --session 3 >/dev/null
    [[ $(sed -n 1p <<<"$out") == *eth0* && $(sed -n 2p <<<"$out") == "$(ls /sys/fs/cgroup | tr '\n' ' ')" ]]
}
scenario_13e() {
    row_begin 13e "the PAM module: users by uid, its refdir, timeout=, holder files, cgroupfs in the session" \
        "a passwd alias ALICE with alice's uid (what case-insensitive NSS returns for \"ALICE\"); logins as ALICE with users=alice, then exclude_users=alice; refdir= owned by alice; timeout=1e-10 and timeout=inf with fail=open; a login refused by the daemon (pool exhausted) with a logind-confirmed XDG_SESSION_ID=42; a login's and an \`exec\`'s view of /sys" \
        "ALICE is isolated under users=alice and left alone under exclude_users=alice; the alice-owned refdir and both timeouts refuse the login; the refused login leaves no holder file; inside the session /sys/class/net is the session's while /sys/fs/cgroup lists what the host's does and the login's own cgroup directory exists"
    sec_users || fail "test users"
    alias_user || fail "passwd alias"
    sec_daemon || { fail "daemon did not start"; row_end; return; }
    sec_pam users=alice
    expect "users=alice: ALICE (alice's uid) is isolated" uppercase_is_alice
    sec_pam exclude_users=alice
    expect "exclude_users=alice: ALICE is not isolated" uppercase_excluded
    expect "a refdir owned by a user refuses the login" refdir_of_a_user_refused
    expect "timeout=1e-10 and timeout=inf are bad arguments (refused even with fail=open)" tiny_timeout_refused
    sec_pam
    expect "cgroupfs stays visible in a login's session; /sys/class/net is the session's" cgroupfs_visible
    expect "and in \`exec\`'s" exec_sees_cgroupfs
    end_daemon
    # a pool of one address, taken by session 1
    begin_daemon f13e --addressing static --pool "$SBX_POOL_FIRST-$SBX_POOL_FIRST/24" --gateway "$SBX_GATEWAY" || fail "daemon with a one-address pool"
    "$SESSIOND" start --session 1 >/dev/null || fail "session 1"
    sec_pam
    expect "a login the daemon refuses leaves no holder file" no_empty_holder_file
    rm -f /run/systemd/sessions/42
    end_daemon
    row_end
}

scenario_13() { scenario_13a; scenario_13b; scenario_13c; scenario_13d; scenario_13e; }
