#!/bin/sh
# cni-start.sh N -- baseline (b): the CNI macvlan plugin with the dhcp IPAM plugin (whose daemon,
# `/usr/lib/cni/dhcp daemon`, the bench runs), per session netns cni-N, then the loopback and a
# resolv.conf (CNI's dhcp IPAM returns no DNS; a runtime writes it from its own config).
# BENCH_CNI_CONF: the network config (JSON) passed on stdin.
set -eu
n=$1
ns=cni-$n
lo=$(( 0x7f000001 + n ))
loip="$(( lo >> 24 & 255 )).$(( lo >> 16 & 255 )).$(( lo >> 8 & 255 )).$(( lo & 255 ))"
ip netns add "$ns"
CNI_COMMAND=ADD CNI_CONTAINERID="$ns" CNI_NETNS="/run/netns/$ns" CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni /usr/lib/cni/macvlan <"$BENCH_CNI_CONF" >/dev/null
ip -n "$ns" -batch - <<B
link set lo up
addr add $loip/32 dev lo scope host
B
mkdir -p "/etc/netns/$ns"
echo "nameserver ${BENCH_DNS:-10.77.0.1}" >"/etc/netns/$ns/resolv.conf"
