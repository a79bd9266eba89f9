#!/bin/sh
# busybox udhcpc event script for the "admin script" baseline (benches/baselines/admin-start.sh):
# applies the lease the way a hand-written script does. udhcpc runs it inside the session's netns
# (ip netns exec); SESSION_NS names that netns, for its resolv.conf under /etc/netns.
# shellcheck disable=SC2154  # interface, ip, mask, router, dns, domain come from udhcpc
case "$1" in
deconfig)
    ip link set dev "$interface" up
    ip -4 addr flush dev "$interface"
    ;;
bound|renew)
    # busybox passes the prefix length as $mask
    ip -4 addr replace "$ip/$mask" dev "$interface"
    for r in $router; do
        ip route replace default via "$r" dev "$interface"
        break
    done
    {
        [ -n "$domain" ] && echo "search $domain"
        for d in $dns; do echo "nameserver $d"; done
    } >"/etc/netns/$SESSION_NS/resolv.conf"
    ;;
esac
exit 0
