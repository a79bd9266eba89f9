#!/usr/bin/env python3
"""Logs every DHCP frame seen on one interface, one line each, until SIGTERM (a diagnostic for
scripts/farm's storm, FARM_CAPTURE_HOST): TIME DIR SRC_MAC DST_MAC TYPE XID CHADDR YIADDR HOST.
DIR is in/out (PACKET_OUTGOING); HOST is option 12 (the requests carry it). Needs root."""
import signal, socket, struct, sys, time

ETH_P_ALL = 0x0003
TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE", 8: "INFORM"}


def mac(b):
    return ":".join(f"{x:02x}" for x in b)


def main():
    iface, out = sys.argv[1], open(sys.argv[2], "w", buffering=1)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    s.bind((iface, 0))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    out.write("ready\n")
    while True:
        f, addr = s.recvfrom(4096)
        if len(f) < 14 + 20 + 8 + 240 or f[12:14] != b"\x08\x00" or f[14 + 9] != 17:
            continue
        ihl = (f[14] & 15) * 4
        u = 14 + ihl
        sport, dport = struct.unpack("!HH", f[u:u + 4])
        if {sport, dport} != {67, 68}:
            continue
        d = f[u + 8:]
        xid = d[4:8].hex()
        chaddr = mac(d[28:34])
        yiaddr = socket.inet_ntoa(d[16:20])
        kind, host, i = "?", "-", 240
        while i < len(d) and d[i] != 255:
            if d[i] == 0:
                i += 1
                continue
            code, ln = d[i], d[i + 1]
            val = d[i + 2:i + 2 + ln]
            if code == 53 and ln:
                kind = TYPES.get(val[0], str(val[0]))
            elif code == 12:
                host = val.decode(errors="replace")
            i += 2 + ln
        direction = "out" if addr[2] == socket.PACKET_OUTGOING else "in"
        out.write(f"{time.time():.3f} {direction} {mac(f[6:12])} {mac(f[0:6])} {kind} {xid} {chaddr} {yiaddr} {host}\n")


main()
