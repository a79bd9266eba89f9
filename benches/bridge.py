#!/usr/bin/env python3
"""The loopback bridge's benchmark (scripts/bench --bridge), run inside scripts/sandbox.

Measures, with one sessiond daemon (static addressing, loopback_reach = owner):
  - bulk TCP: iperf3 inside one session over its loopback (direct), host -> session through
    the bridge (the host's client to 127.0.0.2, the session's server on 127.0.0.1), and
    session -> host through a host service (the session's client to its 127.0.0.1:5202, the
    host's server on 127.0.0.1:5202, `--host-service tcp:5202`);
  - latency: connect + one 64-byte request/response, p50/p90/p99 over many connections, from
    inside the session (direct) and from the host through the bridge; client and server are
    the same Python programs both times, so both figures carry the same interpreter overhead;
  - idle cost: the daemon's CPU (utime + stime from /proc) and RSS over an idle period while
    N sessions are up with the bridge on.
Prints the figures and writes them between the markers of the "Loopback bridge" section of
docs/performance.md.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

BEGIN = "<!-- bridge:begin (scripts/bench --bridge writes this part) -->"
END = "<!-- bridge:end -->"

ECHO_SERVER = r'''
import os, selectors, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
open(sys.argv[2], "w").write(str(os.getpid()))
while True:
    c, _ = s.accept()
    data = b""
    while len(data) < 64:
        d = c.recv(64 - len(data))
        if not d: break
        data += d
    c.sendall(data); c.close()
'''

RTT_CLIENT = r'''
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
msg = b"x" * 64
out = []
for i in range(n + 50):
    t0 = time.perf_counter_ns()
    c = socket.create_connection((host, port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(msg)
    got = b""
    while len(got) < 64:
        d = c.recv(64 - len(got))
        if not d: raise SystemExit("short answer")
        got += d
    t1 = time.perf_counter_ns()
    c.close()
    if i >= 50:  # warm-up
        out.append((t1 - t0) / 1000)
print(json.dumps(out))
'''


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


class Daemon:
    def __init__(self, binary, sock, log):
        self.binary, self.sock = binary, sock
        self.env = dict(os.environ, SESSIOND_SOCKET=sock)
        self.proc = subprocess.Popen(
            [binary, "daemon", "--socket", sock, "--uplink", os.environ.get("SBX_UPLINK", "br-lan"),
             "--addressing", "static", "--pool", "10.77.1.0-10.77.7.254/16", "--gateway", "10.77.0.1",
             "--acd-probe-ms", "0", "--loopback-reach", "owner", "--host-service", "tcp:5202", "--state-dir", "/run/bench-bridge-state"],
            stdout=open(log, "w"), stderr=subprocess.STDOUT)
        for _ in range(100):
            if os.path.exists(sock) and subprocess.run([binary, "status"], env=self.env, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise SystemExit("daemon did not come up")

    def cli(self, *args):
        return run([self.binary, *args], env=self.env)

    def cpu_ticks(self):
        f = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])  # utime + stime (fields 14, 15)

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        try:
            self.cli("stop", "--all")
        finally:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def start_bg(cmd, pidfile):
    if os.path.exists(pidfile):
        os.unlink(pidfile)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(pidfile) and os.path.getsize(pidfile) > 0:
            return p
        time.sleep(0.05)
    raise SystemExit(f"{cmd[0]} did not come up")


def iperf(ns, host, secs, port=5201):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["iperf3", "-c", host, "-p", str(port), "-t", str(secs), "-J"]
    j = json.loads(run(cmd))
    return j["end"]["sum_received"]["bits_per_second"] / 1e9


def rtt(ns, host, n):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["python3", "-c", RTT_CLIENT, host, "7000", str(n)]
    xs = sorted(json.loads(run(cmd)))
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]
    return {"p50": statistics.median(xs), "p90": q(0.9), "p99": q(0.99)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessiond", required=True)
    ap.add_argument("--bin-desc", default="")
    ap.add_argument("--md", required=True)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    secs, n_rtt, n_idle, idle_secs = (3, 500, 200, 10) if a.quick else (10, 2000, 1000, 30)
    work = "/run/bench-bridge"
    os.makedirs(work, exist_ok=True)
    d = Daemon(a.sessiond, f"{work}/sessiond.sock", f"{work}/daemon.log")
    procs = []
    r = {}
    try:
        d.cli("start", "--session", "1")
        ns = "sessiond-1"
        procs.append(start_bg(["ip", "netns", "exec", ns, "iperf3", "-s", "-B", "127.0.0.1", "-p", "5201", "-I", f"{work}/iperf.pid"], f"{work}/iperf.pid"))
        procs.append(start_bg(["ip", "netns", "exec", ns, "python3", "-c", ECHO_SERVER, "7000", f"{work}/echo.pid"], f"{work}/echo.pid"))
        procs.append(start_bg(["iperf3", "-s", "-B", "127.0.0.1", "-p", "5202", "-I", f"{work}/iperf-host.pid"], f"{work}/iperf-host.pid"))
        r["tput_direct"] = iperf(ns, "127.0.0.1", secs)
        r["tput_h2s"] = iperf(None, "127.0.0.2", secs)
        r["tput_s2h"] = iperf(ns, "127.0.0.1", secs, port=5202)
        r["rtt_direct"] = rtt(ns, "127.0.0.1", n_rtt)
        r["rtt_bridge"] = rtt(None, "127.0.0.2", n_rtt)
        for p in procs:
            p.terminate()
            p.wait()
        procs = []
        # Idle: N sessions up, the bridge on, nobody connecting.
        ids = [str(i) for i in range(2, n_idle + 1)]
        subprocess.run(["xargs", "-P", "8", "-I{}", a.sessiond, "start", "--session", "{}"], input="\n".join(ids), text=True,
                       env=d.env, check=True, stdout=subprocess.DEVNULL)
        time.sleep(3)  # let the starts' after-work settle
        hz = os.sysconf("SC_CLK_TCK")
        t0, c0 = time.time(), d.cpu_ticks()
        time.sleep(idle_secs)
        t1, c1 = time.time(), d.cpu_ticks()
        r["idle_sessions"] = n_idle
        r["idle_secs"] = idle_secs
        r["idle_cpu_pct"] = 100.0 * (c1 - c0) / hz / (t1 - t0)
        r["idle_rss_mib"] = d.rss_kib() / 1024
        r["set_size"] = len(json.loads(run(["nft", "-j", "list", "set", "inet", "sessiond", "sessions"]))["nftables"][1]["set"].get("elem", []))
    finally:
        for p in procs:
            p.terminate()
        d.stop()
    print(json.dumps(r, indent=1))
    write_md(a.md, r, a.bin_desc, a.quick)


def write_md(path, r, desc, quick):
    ratio = lambda x: x / r["tput_direct"]
    lat = r["rtt_bridge"]["p50"] / r["rtt_direct"]["p50"]
    lines = [
        BEGIN,
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{' (--quick)' if quick else ''}; binary {desc or 'given'}; "
        f"2-core VM, inside scripts/sandbox; load average at the end {' '.join(open('/proc/loadavg').read().split()[:3])}.",
        "",
        "| measure | direct (inside one session) | through the bridge | bridge / direct | target |",
        "| --- | --- | --- | --- | --- |",
        f"| iperf3, host -> session | {r['tput_direct']:.2f} Gbit/s | {r['tput_h2s']:.2f} Gbit/s | {ratio(r['tput_h2s']):.2f}x | >= 0.8x |",
        f"| iperf3, session -> host (host service) | {r['tput_direct']:.2f} Gbit/s | {r['tput_s2h']:.2f} Gbit/s | {ratio(r['tput_s2h']):.2f}x | >= 0.8x |",
        f"| connect + 64-byte request/response, p50 | {r['rtt_direct']['p50']:.0f} us | {r['rtt_bridge']['p50']:.0f} us | {lat:.2f}x | <= 2x |",
        f"| the same, p90 | {r['rtt_direct']['p90']:.0f} us | {r['rtt_bridge']['p90']:.0f} us | | |",
        f"| the same, p99 | {r['rtt_direct']['p99']:.0f} us | {r['rtt_bridge']['p99']:.0f} us | | |",
        "",
        f"Idle, {r['idle_sessions']} sessions up with the bridge on (loopback_reach = owner; {r['set_size']} loopbacks in the set), "
        f"nobody connecting, over {r['idle_secs']} s: the daemon used **{r['idle_cpu_pct']:.2f} % of a core** (target <= 1 %), "
        f"RSS **{r['idle_rss_mib']:.1f} MiB** (target <= 64 MiB).",
        END,
    ]
    text = open(path).read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + "\n".join(lines) + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Loopback bridge\n\n" + "\n".join(lines) + "\n"
    open(path, "w").write(text)


if __name__ == "__main__":
    sys.exit(main())
