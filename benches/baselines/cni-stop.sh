#!/bin/sh
# cni-stop.sh N -- teardown for baseline (b): CNI DEL (the dhcp daemon sends DHCPRELEASE and
# forgets the lease; the plugin deletes the macvlan), then the netns and its files.
set -u
ns=cni-$1
CNI_COMMAND=DEL CNI_CONTAINERID="$ns" CNI_NETNS="/run/netns/$ns" CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni /usr/lib/cni/macvlan <"$BENCH_CNI_CONF" >/dev/null
ip netns del "$ns"
rm -rf "/etc/netns/$ns"
