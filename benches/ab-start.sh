#!/usr/bin/env bash
# benches/ab-start.sh OLD_BIN NEW_BIN [ROUNDS]: A/B start latency of two sessiond binaries, in
# the sandbox (re-execs itself there), against dnsmasq: each round runs OLD then NEW, each a
# daemon of its own doing 40 sequential `sessiond start` (CLI, DHCP, ARP probe off where the
# binary has the flag), and prints p50/p90 per run. Interleaved rounds on one machine at one
# time are what can be compared; figures from other days or machines cannot.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [[ "${SBX:-}" != 1 ]]; then exec "$REPO/scripts/sandbox" "$0" "$@"; fi
OLD=${1:?OLD_BIN}; NEW=${2:?NEW_BIN}; ROUNDS=${3:-3}
export SESSIOND_SOCKET=/run/sessiond/sessiond.sock
"$REPO/scripts/dhcp-server" dnsmasq start --lease 600 --range 10.77.0.100,10.77.0.250,255.255.255.0 >/dev/null
run() { # LABEL BIN
    local label=$1 bin=$2 extra=() t=() d n t0 t1
    "$bin" daemon --help | grep -q -- --acd-probe-ms && extra=(--acd-probe-ms 0)
    "$bin" daemon --uplink "$SBX_UPLINK" "${extra[@]}" 2>"/run/d-$label.log" & d=$!
    for _ in $(seq 100); do "$bin" status >/dev/null 2>&1 && break; sleep 0.05; done
    "$bin" start --session 1 >/dev/null && "$bin" stop --all >/dev/null || { echo "$label: not up"; tail -n 5 "/run/d-$label.log"; kill "$d"; return 1; }
    for n in $(seq 1 40); do
        t0=$(date +%s%N); "$bin" start --session "$n" >/dev/null || echo "$label: start $n failed"; t1=$(date +%s%N)
        t+=($(( (t1 - t0) / 1000 )))
    done
    "$bin" stop --all >/dev/null; kill "$d"; wait "$d" 2>/dev/null; sleep 0.5
    printf '%s\n' "${t[@]}" | sort -n | awk -v l="$label" '{a[NR]=$1} END {printf "%-4s p50 %.2f ms  p90 %.2f ms\n", l, a[int(NR/2)]/1000, a[int(NR*0.9)]/1000}'
}
for _ in $(seq "$ROUNDS"); do run old "$OLD"; run new "$NEW"; done
"$REPO/scripts/dhcp-server" dnsmasq stop >/dev/null
