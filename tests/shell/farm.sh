#!/usr/bin/env bash
# Root suite: a small session-host farm (issue 16), 3 hosts x 20 sessions against a Kea
# hot-standby pair, through scripts/farm: login storm (no failed start, no address twice on
# eth0 or in Kea's lease files), failover (primary SIGKILLed mid-storm: standby takes over,
# every start completes, no duplicates, the primary resyncs), host reboot (every session gets
# its old address back), renewals through a primary outage longer than a lease (16 s leases, T2
# at half of them, 20 s without the primary: every session must renew through the standby, and
# nothing expires), cloned machine-id (a probe from the second host's uplink MAC gets the answer
# from the first host's session, with the MAC of the second host's own session; sessiond's start
# probes from the uplink too, so the second host's start fails naming the machine-id). Each row
# of scripts/farm's results.tsv is one check here. About 55 s (on 2 cores, under load); in plain
# scripts/test. The full 10 x 100 farm runs from `scripts/farm --record` (docs/farm.md).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"
enter_sandbox "$@"

OUTDIR=$RESULTS/farm
rm -rf "$OUTDIR"
timeout 300 "$REPO/scripts/farm" --hosts 3 --sessions 20 --lease 16 --t2 50 --outage 20 --out "$OUTDIR" 2>&1 | sed 's/^/    /'
[[ -s $OUTDIR/results.tsv ]] || { tally_fail "scripts/farm wrote no results"; finish; }
for want in storm_all_started storm_no_duplicates failover_standby_takes_over failover_every_start_completes \
    failover_no_duplicates failover_primary_resyncs reboot_same_addresses renew_nothing_expires \
    clone_visible_from_uplink clone_detected; do
    grep -q "^$want"$'\t' "$OUTDIR/results.tsv" || tally_fail "$want: no result (scripts/farm stopped early)"
done
while IFS=$'\t' read -r name verdict detail; do
    case $verdict in
        pass) tally_pass "$name" ;;
        *) tally_fail "$name"; echo "    $detail" ;;
    esac
done <"$OUTDIR/results.tsv"
finish
