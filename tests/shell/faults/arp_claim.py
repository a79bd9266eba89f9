#!/usr/bin/env python3
"""Claim an IPv4 address on a LAN interface with ARP announcements (RFC 5227 §2.3 form:
sender IP = target IP = the address), as a host that starts using an address does.

Usage: arp_claim.py IFACE IP [--mac MAC] [--count N] [--interval-ms MS]
Sends N (default 1) broadcast announcements MS (default 100) apart from IFACE, with sender
MAC --mac (default: IFACE's own). Run inside the namespace that holds IFACE. Bounded: at most
1000 packets, at most 60 s.
"""
import argparse
import socket
import struct
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("iface")
    ap.add_argument("ip")
    ap.add_argument("--mac")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--interval-ms", type=int, default=100)
    a = ap.parse_args()
    if not 1 <= a.count <= 1000 or a.count * a.interval_ms > 60_000:
        sys.exit("arp_claim.py: at most 1000 packets and 60 s")
    mac = a.mac or open(f"/sys/class/net/{a.iface}/address").read().strip()
    hw = bytes.fromhex(mac.replace(":", ""))
    ip = socket.inet_aton(a.ip)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + ip + b"\0" * 6 + ip
    frame = b"\xff" * 6 + hw + b"\x08\x06" + arp
    frame += b"\0" * (60 - len(frame))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((a.iface, 0))
    print(f"sending {a.count} ARP announcements of {a.ip} from {mac} on {a.iface}", flush=True)
    for i in range(a.count):
        s.send(frame)
        if i + 1 < a.count:
            time.sleep(a.interval_ms / 1000)


if __name__ == "__main__":
    main()
