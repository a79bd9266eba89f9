#!/bin/sh
# admin-start.sh N -- baseline (a): a session the way an admin scripts it today.
# netns adm-N, a bridge-mode macvlan eth0 on br-lan created in place inside it (cheaper than
# creating it on the host and moving it with `ip link set ... netns`), lo up with 127.0.0.1/8 and
# the session loopback 127.0.0.0+N+1, then busybox udhcpc (-q: exit once bound, -n: fail if no
# lease) with an event script that applies address, default route and resolv.conf.
# Returns when the session is usable, like `sessiond start`. No renewals afterwards (udhcpc -q
# has exited), no lease lifetimes on the address.
set -eu
n=$1
ns=adm-$n
lo=$(( 0x7f000001 + n ))
loip="$(( lo >> 24 & 255 )).$(( lo >> 16 & 255 )).$(( lo >> 8 & 255 )).$(( lo & 255 ))"
here=$(dirname "$0")
ip netns add "$ns"
ip link add link "${BENCH_UPLINK:-br-lan}" name eth0 netns "$ns" type macvlan mode bridge
ip -n "$ns" -batch - <<B
link set lo up
addr add $loip/32 dev lo scope host
B
mkdir -p "/etc/netns/$ns"
SESSION_NS=$ns ip netns exec "$ns" busybox udhcpc -q -n -i eth0 -s "$here/udhcpc-event.sh" >/dev/null 2>&1
