#!/usr/bin/env python3
"""Control-socket abuse client for tests/shell/faults.sh and socket.sh (path from $SESSIOND_SOCKET).

  line TEXT              send TEXT + "\\n", print the reply line
  huge BYTES             stream one BYTES-long line in 1 MiB chunks while reading; print JSON
                         {sent, reply, end, write_error}
  idle N SECS            open N connections, sending nothing; after 1.5 s print JSON
                         {held, refused, refusal} (refused: the daemon answered and closed),
                         then keep the held ones open for SECS seconds
  concurrent N [SECS]    N threads connect, then all send a status request at once; print JSON
                         {ok, errors, first_errors, secs}; each thread may take SECS (default 30)
                         to connect and SECS to meet the others, and is given SECS + 10 to finish
  pipeline N SECS        open N connections, each sending 2000 status requests at once and
                         never reading a reply; after 1.5 s print JSON {held, refused, refusal}
                         (refused: the daemon's first answer was a refusal), then wait up to SECS
                         for the daemon to close the held ones and print JSON {closed, of, secs}
  start-and-vanish SID   send a start request for SID and close at once (no reply read)
  half                   send half a request and disconnect
"""
import json
import os
import select
import socket
import sys
import threading
import time

path = os.environ["SESSIOND_SOCKET"]


def conn(timeout=10):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    return s


def main():
    mode = sys.argv[1]
    if mode == "line":
        s = conn()
        s.sendall(sys.argv[2].encode() + b"\n")
        print(s.makefile("rb").readline().decode(), end="")
    elif mode == "huge":
        total = int(sys.argv[2])
        chunk = b"x" * (1 << 20)
        s = conn()
        s.setblocking(False)
        sent, reply, end, werr = 0, b"", None, None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and end is None:
            wl = [s] if (sent < total and werr is None) else []
            r, w, _ = select.select([s], wl, [], 1)
            if r:
                try:
                    d = s.recv(65536)
                    if d:
                        reply += d
                    else:
                        end = "eof"
                except OSError as e:
                    end = type(e).__name__
            if w:
                try:
                    sent += s.send(chunk[: min(len(chunk), total - sent)])
                except OSError as e:
                    werr = type(e).__name__
        print(json.dumps({"sent": sent, "reply": reply.decode(errors="replace"), "end": end, "write_error": werr}))
    elif mode == "idle":
        n, secs = int(sys.argv[2]), float(sys.argv[3])
        socks = []
        for _ in range(n):
            socks.append(conn())
        time.sleep(1.5)
        held, refused, refusal = [], 0, None
        for s in socks:
            r, _, _ = select.select([s], [], [], 0)
            if r:
                data = s.recv(4096)
                refused += 1
                refusal = refusal or data.decode(errors="replace").strip()
                s.close()
            else:
                held.append(s)
        print(json.dumps({"held": len(held), "refused": refused, "refusal": refusal}), flush=True)
        time.sleep(secs)
    elif mode == "concurrent":
        n = int(sys.argv[2])
        secs = float(sys.argv[3]) if len(sys.argv) > 3 else 30
        ok, errs, lock = [0], [], threading.Lock()
        ready = threading.Barrier(n)

        def one():
            try:
                s = conn(secs)
                ready.wait(timeout=secs)
                s.sendall(b'{"op":"status","session":null}\n')
                line = s.makefile("rb").readline()
                s.close()
                r = json.loads(line)
                with lock:
                    if r.get("result") == "sessions":
                        ok[0] += 1
                    else:
                        errs.append(line[:200].decode(errors="replace"))
            except Exception as e:  # noqa: BLE001 - every failure is counted
                with lock:
                    errs.append(repr(e))

        t0 = time.monotonic()
        ts = [threading.Thread(target=one) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(secs + 10)
        print(json.dumps({"ok": ok[0], "errors": len(errs), "first_errors": errs[:3], "secs": round(time.monotonic() - t0, 2)}))
    elif mode == "pipeline":
        n, secs = int(sys.argv[2]), float(sys.argv[3])
        burst = b'{"op":"status","session":null}\n' * 2000
        socks = []
        for _ in range(n):
            s = conn(5)
            try:
                s.sendall(burst)
            except OSError:
                pass  # refused: the daemon answered and closed
            socks.append(s)
        time.sleep(1.5)
        held, refused, refusal = [], 0, None
        for s in socks:
            first = b""
            try:
                first = s.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                pass
            if b"too many connections" in first.split(b"\n")[0]:
                refused += 1
                refusal = refusal or first.split(b"\n")[0].decode(errors="replace")
                s.close()
            else:
                held.append(s)
        print(json.dumps({"held": len(held), "refused": refused, "refusal": refusal}), flush=True)
        t0 = time.monotonic()
        p = select.poll()
        for s in held:
            p.register(s, select.POLLHUP)
        closed = set()
        while len(closed) < len(held) and time.monotonic() - t0 < secs:
            for fd, ev in p.poll(200):
                if ev & select.POLLHUP:
                    closed.add(fd)
                    p.unregister(fd)
        print(json.dumps({"closed": len(closed), "of": len(held), "secs": round(time.monotonic() - t0, 1)}), flush=True)
    elif mode == "start-and-vanish":
        s = conn()
        s.sendall(json.dumps({"op": "start", "session": int(sys.argv[2])}).encode() + b"\n")
        s.close()
        print("sent start and closed")
    elif mode == "half":
        s = conn()
        s.sendall(b'{"op":"sta')
        s.close()
        print("sent half")
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
