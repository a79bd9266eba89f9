#!/bin/sh
# admin-stop.sh N -- teardown for baseline (a). No DHCPRELEASE: `udhcpc -q` has exited, and
# busybox 1.35's `udhcpc -q -R` does not send one either (checked); the lease just runs out.
# Deleting the netns removes its macvlan (the kernel does that asynchronously).
set -u
ns=adm-$1
ip netns del "$ns"
rm -rf "/etc/netns/$ns"
