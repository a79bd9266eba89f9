# shellcheck shell=bash
# Log-in set-up shared by the root suites that log users in (pam.sh, faults.sh): users with
# ssh keys, a PAM service for pamtester, and an OpenSSH sshd on 127.0.0.1 whose PAM stack
# ends with pam_sessiond. Sourced after lib.sh, inside the sandbox (users and /etc/pam.d
# files go to its /etc overlay). The caller sets T, a scratch directory on the sandbox's /run
# (keys, homes, the sshd config and log), and may set PROBE, a pam_exec script the pamtester
# stack runs after the module.

PAM_SO=${PAM_SO:-$REPO/target/debug/libpam_sessiond.so}
SERVICE=sessiond-test
SSH_PORT=${SSH_PORT:-2222}
SSHD_PID=

# make_login_user NAME: a user of the sandbox overlay that can log in over ssh with the key
# $T/id_NAME (no password, home under $T: /home is the host's).
make_login_user() {
    local u=$1
    sandbox_user "$u" "$T/home/$u" || return 1
    usermod -p '*' "$u" || return 1           # no password, not "locked" for sshd
    mkdir -p "$T/home/$u/.ssh"
    ssh-keygen -q -t ed25519 -N '' -C "$u@test" -f "$T/id_$u" || return 1
    cp "$T/id_$u.pub" "$T/home/$u/.ssh/authorized_keys"
    chown -R "$u:$u" "$T/home/$u"; chmod 700 "$T/home/$u/.ssh"; chmod 600 "$T/home/$u/.ssh/authorized_keys"
}

# pam_service ARGS...: the pamtester stack $SERVICE, with ARGS for pam_sessiond.so.
pam_service() {
    {
        echo "auth     required pam_permit.so"
        echo "account  required pam_permit.so"
        echo "session  required $PAM_SO socket=$SESSIOND_SOCKET $*"
        [[ -n ${PROBE:-} ]] && echo "session  optional pam_exec.so quiet $PROBE"
    } >/etc/pam.d/$SERVICE
}

# sshd_up: sshd -D on 127.0.0.1:$SSH_PORT with UsePAM and pam_sessiond (debug) in the
# sandbox's own /etc/pam.d/sshd; its log in $T/sshd.log.
sshd_up() {
    mkdir -p /run/sshd && chmod 755 /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$T/host_ed25519" <<<y >/dev/null || return 1
    cat >"$T/sshd_config" <<EOS
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $T/host_ed25519
PidFile $T/sshd.pid
UsePAM yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin no
StrictModes yes
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
EOS
    # The sandbox's own sshd stack (the overlay hides the host's /etc/pam.d/sshd).
    cat >/etc/pam.d/sshd <<EOS
auth     required pam_unix.so
account  required pam_unix.so
session  required pam_unix.so
session  required $PAM_SO socket=$SESSIOND_SOCKET debug
EOS
    /usr/sbin/sshd -t -f "$T/sshd_config" || return 1
    /usr/sbin/sshd -D -e -f "$T/sshd_config" >>"$T/sshd.log" 2>&1 &
    SSHD_PID=$!
    wait_for 10 bash -c "echo >/dev/tcp/127.0.0.1/$SSH_PORT" || { cat "$T/sshd.log"; return 1; }
}

sshd_down() {
    [[ -n $SSHD_PID ]] || return 0
    kill "$SSHD_PID" 2>/dev/null; wait "$SSHD_PID" 2>/dev/null
    SSHD_PID=
}

# ssh_as USER CMD...: one login of USER running CMD (bounded to 90 s).
ssh_as() {
    local u=$1; shift
    timeout 90 ssh -F /dev/null -i "$T/id_$u" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 -o LogLevel=ERROR "$u@127.0.0.1" "$@"
}
