#!/usr/bin/env python3
"""A small scripted DHCPv4 server for tests/shell/faults.sh. Test sandbox only.

Modes
  rogue          Answers every DISCOVER with a burst of bad OFFERs and every REQUEST with a
                 burst of bad ACKs, one per defect in VARIANTS (each reply wrong in exactly one
                 way, so the client's log names each reason). It never sends a usable reply and
                 never a NAK. With --spray SECS it also broadcasts unsolicited garbage that often.
                 With --sniff it also reads, on a promiscuous AF_PACKET socket, the unicast
                 REQUESTs meant for another server (RENEWING; seen when the bridge floods,
                 e.g. ageing_time 0) and answers those too, racing the real server's ACK, plus
                 one hijacking ACK: valid in every way (the client's own address, a long lease)
                 except that it comes from this server, not the one the client renews with.
  nak-renew      A working server, except that the first REQUEST of each client in RENEWING or
                 REBINDING (ciaddr set) is NAKed; the client is then given another address.
  move-on-renew  A working server, except that the first renewal of each client is ACKed with
                 another address (and other DNS options) than the one being renewed.
  serve          A working server (with --mtu: option 26; --router: option 3, default itself).
  tight-renew    A working server whose lease times would make a client renew in a loop: the
                 1st, 3rd, ... client it meets gets T1 = 0 on a --lease lease, the 2nd, 4th, ...
                 a 1 s lease (no T1/T2, so the defaults round to 0).

Working modes hand out --pool-start + n (n = order of first contact), lease --lease seconds
with T1 --t1 / T2 --t2; after a NAK or a move, leases last --after-lease seconds.

Every reply and every decision is printed on stdout, one line each, flushed. Runs until killed.
"""
import argparse
import ipaddress
import os
import random
import socket
import struct
import sys
import threading
import time

BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE = 1, 2, 3, 4, 5, 6, 7
MAGIC = b"\x63\x82\x53\x63"
SO_BINDTODEVICE = 25
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0

# Each variant breaks exactly one rule; the rest of the reply is valid. The comment is the
# text the client logs (src/dhcp/reject.rs).
VARIANTS = [
    "wrong_xid",          # xid mismatch (debug level)
    "wrong_chaddr",       # chaddr mismatch (debug level)
    "yiaddr_loopback",    # invalid offered address 127.0.0.1: loopback
    "yiaddr_zero",        # invalid offered address 0.0.0.0: in 0.0.0.0/8
    "yiaddr_broadcast",   # invalid offered address 255.255.255.255: limited broadcast
    "yiaddr_is_server",   # offered address X equals the server identifier
    "netmask_noncontig",  # invalid netmask 255.0.255.0: not contiguous or zero
    "lease_zero",         # lease time is zero
    "no_server_id",       # missing server identifier (option 54)
    "truncated",          # truncated packet: 100 bytes, need at least 240
    "oversized",          # oversize packet: 1600 bytes > 1500
    "option_overflow",    # malformed options area at offset N: option overruns the packet
    "bad_magic",          # bad magic cookie
    "not_bootreply",      # not a BOOTREPLY (op 1)
    "no_msg_type",        # missing DHCP message type (option 53)
    "server_id_broadcast",  # invalid server identifier 255.255.255.255: limited broadcast
    "server_id_loopback",   # invalid server identifier 127.0.0.1: loopback
    "server_id_zero",       # invalid server identifier 0.0.0.0: in 0.0.0.0/8
    "server_id_multicast",  # invalid server identifier 224.0.0.1: multicast
    "netmask_slash1",     # netmask 128.0.0.0 (/1) is wider than /8
]


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def ip4(s):
    return socket.inet_aton(str(s))


def opt(code, data):
    return bytes([code, len(data)]) + data


def parse(pkt):
    """A client message -> dict, or None if it is not one we answer."""
    if len(pkt) < 240 or pkt[0] != BOOTREQUEST or pkt[236:240] != MAGIC:
        return None
    xid, = struct.unpack("!I", pkt[4:8])
    flags, = struct.unpack("!H", pkt[10:12])
    m = {"xid": xid, "flags": flags, "ciaddr": socket.inet_ntoa(pkt[12:16]),
         "hlen": pkt[2], "chaddr": pkt[28:44], "opts": {}}
    i, area = 0, pkt[240:]
    while i < len(area):
        c = area[i]
        if c == 0:
            i += 1
            continue
        if c == 255 or i + 1 >= len(area):
            break
        n = area[i + 1]
        m["opts"][c] = m["opts"].get(c, b"") + area[i + 2:i + 2 + n]
        i += 2 + n
    t = m["opts"].get(53)
    m["type"] = t[0] if t else None
    m["mac"] = m["chaddr"][:6].hex(":")
    return m


def header(op, xid, flags, ciaddr, yiaddr, siaddr, chaddr, hlen=6):
    return (struct.pack("!BBBBIHH", op, 1, hlen, 0, xid, 0, flags) + ip4(ciaddr) + ip4(yiaddr)
            + ip4(siaddr) + ip4("0.0.0.0") + chaddr[:16].ljust(16, b"\0") + b"\0" * 192)


def lease_opts(server_id, lease, t1, t2, mask="255.255.255.0", router=None, dns=None, domain=None, mtu=None):
    o = b""
    if mask is not None:
        o += opt(1, ip4(mask))
    if mtu is not None:
        o += opt(26, struct.pack("!H", mtu))
    if router:
        o += opt(3, ip4(router))
    if dns:
        o += opt(6, ip4(dns))
    if domain:
        o += opt(15, domain.encode())
    if lease is not None:
        o += opt(51, struct.pack("!I", lease))
    if server_id is not None:
        o += opt(54, ip4(server_id))
    if t1 is not None:
        o += opt(58, struct.pack("!I", t1))
    if t2 is not None:
        o += opt(59, struct.pack("!I", t2))
    return o


def reply(kind, m, yiaddr, server_id, lease, t1, t2, router, dns=None, domain=None, ciaddr="0.0.0.0", mtu=None):
    """A well-formed OFFER/ACK/NAK."""
    h = header(BOOTREPLY, m["xid"], m["flags"], ciaddr, yiaddr, server_id, m["chaddr"])
    if kind == NAK:
        o = opt(53, bytes([NAK])) + opt(54, ip4(server_id))
    else:
        o = opt(53, bytes([kind])) + lease_opts(server_id, lease, t1, t2, router=router, dns=dns, domain=domain, mtu=mtu)
    return h + MAGIC + o + b"\xff"


def bad(variant, kind, m, server_id, good_yiaddr):
    """One reply of type `kind` (OFFER/ACK) answering `m`, wrong in exactly the way `variant` says."""
    xid, chaddr, yiaddr, sid = m["xid"], m["chaddr"], good_yiaddr, server_id
    mask, lease, op, magic, with_type = "255.255.255.0", 3600, BOOTREPLY, MAGIC, True
    if variant == "wrong_xid":
        xid ^= 0xDEADBEEF
    elif variant == "wrong_chaddr":
        chaddr = bytes([0x02, 0xBA, 0xD0, 0xBA, 0xD0, 0x01]) + b"\0" * 10
    elif variant == "yiaddr_loopback":
        yiaddr = "127.0.0.1"
    elif variant == "yiaddr_zero":
        yiaddr = "0.0.0.0"
    elif variant == "yiaddr_broadcast":
        yiaddr = "255.255.255.255"
    elif variant == "yiaddr_is_server":
        yiaddr = server_id
    elif variant == "netmask_noncontig":
        mask = "255.0.255.0"
    elif variant == "lease_zero":
        lease = 0
    elif variant == "no_server_id":
        sid = None
    elif variant == "bad_magic":
        magic = b"\x63\x82\x53\x64"
    elif variant == "not_bootreply":
        op = BOOTREQUEST
    elif variant == "no_msg_type":
        with_type = False
    elif variant == "server_id_broadcast":
        sid = "255.255.255.255"
    elif variant == "server_id_loopback":
        sid = "127.0.0.1"
    elif variant == "server_id_zero":
        sid = "0.0.0.0"
    elif variant == "server_id_multicast":
        sid = "224.0.0.1"
    elif variant == "netmask_slash1":
        mask = "128.0.0.0"
    h = header(op, xid, m["flags"], "0.0.0.0", yiaddr, server_id, chaddr)
    o = opt(53, bytes([kind])) if with_type else b""
    o += lease_opts(sid, lease, None, None, mask=mask, router=server_id, dns=server_id)
    pkt = h + magic + o + b"\xff"
    if variant == "truncated":
        return pkt[:100]
    if variant == "oversized":
        # valid options, then PADs after END up to 1600 bytes: only the size is wrong
        return pkt.ljust(1600, b"\0")
    if variant == "option_overflow":
        # option 51 claims 200 bytes but the packet ends 4 bytes later
        return h + magic + opt(53, bytes([kind])) + bytes([51, 200]) + b"\0\0\x0e\x10"
    return pkt


class Server:
    def __init__(self, a):
        self.a = a
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, a.iface.encode())
        # let the kernel fragment the 1600-byte reply instead of refusing it
        self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        self.sock.bind(("0.0.0.0", 67))
        self.lock = threading.Lock()
        self.addr = {}      # mac -> address handed out
        self.order = {}     # mac -> order of first contact (0, 1, ...)
        self.next = 0
        self.done = set()   # macs already NAKed / moved once

    def send(self, pkt, m, what):
        # Broadcast unless the client has an address and did not ask for broadcast.
        if m is None or m["ciaddr"] == "0.0.0.0" or (m["flags"] & 0x8000):
            dest = "255.255.255.255"
        else:
            dest = m["ciaddr"]
        try:
            self.sock.sendto(pkt, (dest, 68))
            log("sent", what, "to", dest, "len", len(pkt))
        except OSError as e:
            log("send failed", what, e)

    def alloc(self, mac):
        with self.lock:
            if mac not in self.addr:
                base = ipaddress.IPv4Address(self.a.pool_start)
                self.addr[mac] = str(base + self.next)
                self.order[mac] = len(self.order)
                self.next += 1
            return self.addr[mac]

    def reassign(self, mac):
        with self.lock:
            base = ipaddress.IPv4Address(self.a.pool_start)
            self.addr[mac] = str(base + self.next + self.a.move_offset)
            self.next += 1
            return self.addr[mac]

    # ------------------------------------------------------------ rogue

    def rogue(self, m):
        kind = OFFER if m["type"] == DISCOVER else ACK
        bait = self.a.bait
        for v in VARIANTS:
            self.send(bad(v, kind, m, self.a.server_ip, bait), m, f"{v} {'OFFER' if kind == OFFER else 'ACK'} xid={m['xid']:#010x} mac={m['mac']}")

    def hijack(self, m):
        """A valid ACK of the client's own address, from this server instead of the one asked."""
        ip = self.a.server_ip
        pkt = reply(ACK, m, m["ciaddr"], ip, 3600, None, None, ip, dns=ip, ciaddr=m["ciaddr"])
        self.send(pkt, m, f"hijack ACK {m['ciaddr']} xid={m['xid']:#010x} mac={m['mac']}")

    def spray(self):
        fake = {"xid": 0, "flags": 0x8000, "ciaddr": "0.0.0.0", "chaddr": b"\0" * 16, "mac": "-"}
        while True:
            time.sleep(self.a.spray)
            fake["xid"] = random.getrandbits(32)
            for v in ("truncated", "oversized", "option_overflow", "yiaddr_loopback", "lease_zero"):
                self.send(bad(v, ACK, fake, self.a.server_ip, self.a.bait), fake, f"spray {v}")

    # ------------------------------------------------------------ working modes

    def serve(self, m):
        a, mac = self.a, m["mac"]
        t = m["type"]
        after = mac in self.done
        lease, t1, t2 = (a.after_lease, None, None) if after else (a.lease, a.t1, a.t2)
        router = a.router or a.server_ip
        if a.mode == "tight-renew":
            self.alloc(mac)
            lease, t1, t2 = (a.lease, 0, None) if self.order[mac] % 2 == 0 else (1, None, None)
        if t == DISCOVER:
            y = self.alloc(mac)
            self.send(reply(OFFER, m, y, a.server_ip, lease, t1, t2, router, dns=a.server_ip, domain="sbx.test", mtu=a.mtu), m,
                      f"OFFER {y} mac={mac}")
        elif t == REQUEST:
            renewing = m["ciaddr"] != "0.0.0.0"
            if renewing and not after and a.mode == "nak-renew":
                self.done.add(mac)
                self.reassign(mac)
                self.send(reply(NAK, m, "0.0.0.0", a.server_ip, None, None, None, None), m, f"NAK renew of {m['ciaddr']} mac={mac}")
                return
            if renewing and not after and a.mode == "move-on-renew":
                self.done.add(mac)
                y = self.reassign(mac)
                self.send(reply(ACK, m, y, a.server_ip, a.after_lease, None, None, a.server_ip, dns=a.moved_dns, domain=a.moved_domain,
                                ciaddr=m["ciaddr"]), m, f"ACK-MOVED {m['ciaddr']} -> {y} mac={mac}")
                return
            y = self.alloc(mac)
            want = m["opts"].get(50)
            want = socket.inet_ntoa(want) if want and len(want) == 4 else m["ciaddr"]
            if want != y:
                self.send(reply(NAK, m, "0.0.0.0", a.server_ip, None, None, None, None), m, f"NAK {want} (has {y}) mac={mac}")
                return
            dns, dom = (a.moved_dns, a.moved_domain) if (after and a.mode == "move-on-renew") else (a.server_ip, "sbx.test")
            self.send(reply(ACK, m, y, a.server_ip, lease, t1, t2, router, dns=dns, domain=dom, ciaddr=m["ciaddr"], mtu=a.mtu), m,
                      f"ACK {y} mac={mac}")
        elif t == RELEASE:
            log("RELEASE", m["ciaddr"], "mac", mac)
        elif t == DECLINE:
            log("DECLINE mac", mac)

    def sniff(self):
        """Unicast client->server DHCP frames for other hosts (PACKET_OTHERHOST)."""
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        raw.bind((self.a.iface, 0))
        while True:
            frame, addr = raw.recvfrom(65535)
            if addr[2] != socket.PACKET_OTHERHOST or len(frame) < 14 + 20 + 8:
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 17 or len(ip) < ihl + 8:
                continue
            dport, = struct.unpack("!H", ip[ihl + 2:ihl + 4])
            if dport != 67:
                continue
            m = parse(ip[ihl + 8:])
            if m is None or m["type"] != REQUEST:
                continue
            log("sniffed type", m["type"], "xid", f"{m['xid']:#010x}", "mac", m["mac"], "ciaddr", m["ciaddr"],
                "to", socket.inet_ntoa(ip[16:20]))
            self.rogue(m)
            self.hijack(m)

    def run(self):
        log("listening", self.a.mode, "on", self.a.iface, "as", self.a.server_ip, "pid", os.getpid())
        if self.a.mode == "rogue" and self.a.spray:
            threading.Thread(target=self.spray, daemon=True).start()
        if self.a.mode == "rogue" and self.a.sniff:
            threading.Thread(target=self.sniff, daemon=True).start()
        while True:
            pkt, src = self.sock.recvfrom(4096)
            m = parse(pkt)
            if m is None:
                continue
            log("got type", m["type"], "xid", f"{m['xid']:#010x}", "mac", m["mac"], "ciaddr", m["ciaddr"], "from", src[0])
            if self.a.mode == "rogue":
                if m["type"] in (DISCOVER, REQUEST):
                    self.rogue(m)
            else:
                self.serve(m)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", required=True, choices=["rogue", "nak-renew", "move-on-renew", "serve", "tight-renew"])
    p.add_argument("--iface", required=True)
    p.add_argument("--server-ip", required=True)
    p.add_argument("--bait", default="10.77.0.150", help="rogue: the otherwise-valid yiaddr of bad replies")
    p.add_argument("--spray", type=float, default=0.0)
    p.add_argument("--sniff", action="store_true")
    p.add_argument("--pool-start", default="10.77.0.150")
    p.add_argument("--move-offset", type=int, default=20)
    p.add_argument("--lease", type=int, default=8)
    p.add_argument("--t1", type=int, default=2)
    p.add_argument("--t2", type=int, default=6)
    p.add_argument("--after-lease", type=int, default=600)
    p.add_argument("--moved-dns", default="10.77.0.53")
    p.add_argument("--moved-domain", default="moved.test")
    p.add_argument("--mtu", type=int, default=None, help="working modes: option 26")
    p.add_argument("--router", default=None, help="working modes: option 3 (default: --server-ip)")
    a = p.parse_args()
    if not os.path.exists("/run/sbx-sandbox"):
        sys.exit("dhcp_fake.py: refusing to run outside the test sandbox (/run/sbx-sandbox missing)")
    Server(a).run()


if __name__ == "__main__":
    main()
