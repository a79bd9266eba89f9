#!/usr/bin/env python3
"""Runs a command on a terminal, as a person at a terminal would, and prints what it showed.

Usage: pty_run.py ROWS COLS NEW_ROWS NEW_COLS INPUT -- CMD [ARGS...]

CMD gets a pty of ROWS x COLS as its controlling terminal. After 1 s the terminal is resized
to NEW_ROWS x NEW_COLS (the kernel sends SIGWINCH), then INPUT is typed (\\n for Enter, \\003
for ^C; "<pause>" waits a second, as a person would before pressing ^C). Prints
the output (CR LF as LF) and then "EXIT:<status>"; gives up after 20 s.
"""
import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time

rows, cols, new_rows, new_cols, text = sys.argv[1:6]
cmd = sys.argv[7:] if sys.argv[6] == "--" else sys.exit("usage: see the docstring")


def set_size(fd, r, c):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", int(r), int(c), 0, 0))


pid, fd = pty.fork()
if pid == 0:
    set_size(0, rows, cols)
    os.execvp(cmd[0], cmd)

out = b""
start = time.time()
chunks = [c.encode().decode("unicode_escape").encode() for c in text.split("<pause>")]
typed = False
next_at = start + 1
status = None
while time.time() < start + 20:
    if not typed and time.time() > next_at:
        if next_at == start + 1:
            set_size(fd, new_rows, new_cols)
        os.write(fd, chunks.pop(0))
        next_at = time.time() + 1
        typed = not chunks
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            break
        out += data
    elif typed:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
end = time.time() + 5
while status is None:
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = os.waitstatus_to_exitcode(st)
    elif time.time() > end:
        status = "timeout"
    else:
        time.sleep(0.05)
sys.stdout.write(out.decode(errors="replace").replace("\r\n", "\n"))
print(f"\nEXIT:{status}")
