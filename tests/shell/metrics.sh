#!/usr/bin/env bash
# Root integration tests for what an admin watches (issue 15, items 3-5), in a private sandbox:
#   metrics  the daemon with --metrics-listen serves GET /metrics (Prometheus text format); its
#            values match `status --json` (sessions by state, starts, stops, a refused start
#            counted as failed) and DHCP messages are counted after DHCP starts; other paths 404
#   watch    `status --watch --json` streams a snapshot, then each change in order (new ->
#            starting -> up -> address, stopping -> address gone -> gone); a non-root user sees
#            only their own sessions; the text view prints the changes, on a terminal redrawn
#            in place
#   journal  under systemd (JOURNAL_STREAM naming its stderr) the daemon logs to journald's
#            native protocol with SESSIOND_SID, SESSIOND_ADDRESS and a failed start's
#            SESSIOND_STEP (received by a fake journald on the sandbox's private /run);
#            a JOURNAL_STREAM that is not its stderr leaves the logs on stderr
# Usage: tests/shell/metrics.sh      (about 6 s)
# shellcheck source=lib.sh disable=SC2317  # SC2317: functions run through `check`
source "$(dirname "$0")/lib.sh"
enter_sandbox "$@"

STATE=/var/lib/sessiond-metrics
GROUP=sdwatch
METRICS=127.0.0.1:9737
JOURNAL_SOCKET=/run/systemd/journal/socket
JOURNAL_OUT=/run/journal-entries.jsonl
W_ROOT=/run/watch-root.out W_USER=/run/watch-user.out W_TEXT=/run/watch-text.out
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    "$SESSIOND" stop --all >/dev/null 2>&1
    kill_daemon
    "$SBX_DHCP_SERVER" dnsmasq stop >/dev/null 2>&1
}
trap cleanup EXIT

# get [PATH]: GET http://$METRICS/metrics (or PATH); value SERIES [TEXT]: one series' value
# (scrape and metric: lib.sh).
get() { scrape "$METRICS" "$@"; }
value() { metric "$1" "${2:-$(get)}"; }
up_count() { "$SESSIOND" status --json | jq length; }

# A fake journald: receives native-protocol datagrams on $JOURNAL_SOCKET (also a memfd passed
# with SCM_RIGHTS, as the protocol allows), parses them strictly, and appends each as a JSON
# list of [FIELD, value] pairs to $JOURNAL_OUT ({"error": ...} for a malformed one).
JOURNAL_SINK='
import array, json, os, re, socket, struct, sys
path, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(path), exist_ok=True)
if os.path.exists(path):
    os.unlink(path)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
NAME = re.compile(rb"[A-Z0-9][A-Z0-9_]*")
def parse(b):
    fields, i = [], 0
    while i < len(b):
        nl = b.index(b"\n", i)
        line = b[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1); i = nl + 1
        else:
            k = line; (n,) = struct.unpack("<Q", b[nl + 1:nl + 9])
            v = b[nl + 9:nl + 9 + n]
            if len(v) != n or b[nl + 9 + n:nl + 10 + n] != b"\n":
                raise ValueError("bad length-encoded field " + k.decode(errors="replace"))
            i = nl + 10 + n
        if not NAME.fullmatch(k):
            raise ValueError("bad field name %r" % k)
        fields.append([k.decode(), v.decode(errors="replace")])
    return fields
print("listening", flush=True)
with open(out, "a") as f:
    while True:
        data, anc, _, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(16))
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fd = array.array("i", cdata[:4])[0]
                data = os.pread(fd, os.fstat(fd).st_size, 0); os.close(fd)
        if not data:
            continue  # the layer checks the socket with an empty datagram
        try:
            entry = parse(data)
        except Exception as e:
            entry = {"error": str(e)}
        f.write(json.dumps(entry) + "\n"); f.flush()
'
# journal FIELD=VALUE: the entries that `journalctl FIELD=VALUE` would show, one JSON object each
# (a field given twice, by a span and by its event, keeps one value).
journal() {
    local k=${1%%=*} v=${1#*=}
    jq -c --arg k "$k" --arg v "$v" 'select(type == "array") | select(any(.[]; .[0] == $k and .[1] == $v)) | map({(.[0]): .[1]}) | add' "$JOURNAL_OUT"
}

# ------------------------------------------------------------------ set-up

setup() {
    groupadd "$GROUP" && useradd -M -G "$GROUP" wanda || return 1
    read -ra WANDA <<<"setpriv --reuid=$(id -u wanda) --regid=$(id -g wanda) --init-groups --"
    "$SBX_DHCP_SERVER" dnsmasq start >/dev/null || return 1
    : >"$JOURNAL_OUT"
    timeout 120 python3 -c "$JOURNAL_SINK" "$JOURNAL_SOCKET" "$JOURNAL_OUT" >/run/journal-sink.log 2>&1 &
    PIDS+=($!)
    wait_for 5 test -S "$JOURNAL_SOCKET" || { cat /run/journal-sink.log; return 1; }
    rm -rf "$STATE"
    # JOURNAL_STREAM names some other stream (as a child of a systemd service whose stderr was
    # redirected sees it): the logs must stay on stderr.
    JOURNAL_STREAM=1:1 start_daemon --uplink "$SBX_UPLINK" --state-dir "$STATE" --socket-group "$GROUP" \
        --metrics-listen "$METRICS" --dhcp-timeout 10
}

stderr_logs_when_journal_stream_is_not_stderr() {
    grep -q "serving metrics at http://$METRICS/metrics" "$DAEMON_LOG" || { cat "$DAEMON_LOG"; return 1; }
    [[ ! -s $JOURNAL_OUT ]] || { echo "logged to the journal:"; head -3 "$JOURNAL_OUT"; return 1; }
}

metrics_before_any_session() {
    local t; t=$(get) || return 1
    echo "$t" | grep -E '^sessiond_(sessions|session_starts_total)'
    [[ $(value 'sessiond_sessions{state="up"}' "$t") == 0 && $(value 'sessiond_session_starts_total{result="started"}' "$t") == 0 ]] &&
    [[ $(value sessiond_uplink_faults "$t") == 0 && $(value sessiond_session_stops_total "$t") == 0 ]] &&
    grep -q '^# TYPE sessiond_start_duration_seconds histogram$' <<<"$t" &&
    grep -q '^sessiond_dhcp_rejected_total{reason="xid_mismatch"} 0$' <<<"$t" &&
    grep -q '^sessiond_dhcp_renewals_total{result="renewed"} 0$' <<<"$t"
}

only_metrics_is_served() {
    [[ $(get /) == "HTTP 404" && $(get /metrics/x) == "HTTP 404" && $(get /favicon.ico) == "HTTP 404" ]] || return 1
    # not HTTP at all: a 400, and the server goes on serving
    python3 -c 'import socket; s = socket.create_connection(("127.0.0.1", 9737), timeout=5); s.sendall(b"hello\n\n"); print(s.recv(100))' | grep -q "400" &&
    value sessiond_session_stops_total >/dev/null
}

# ------------------------------------------------------------------ watch

watchers_get_their_snapshots() {
    S2=$("$SESSIOND" start --session 2 --json) || return 1   # nobody's: root's watcher only
    "$SESSIOND" status --watch --json >"$W_ROOT" 2>&1 & PIDS+=($!)
    "${WANDA[@]}" "$SESSIOND" status --watch --json >"$W_USER" 2>&1 & PIDS+=($!)
    "$SESSIOND" status --watch >"$W_TEXT" 2>&1 & PIDS+=($!)
    wait_for 5 grep -q '"event":"snapshot"' "$W_ROOT" && wait_for 5 grep -q '"event":"snapshot"' "$W_USER" &&
        wait_for 5 grep -q '^SESSION' "$W_TEXT" || { head -5 "$W_ROOT" "$W_USER" "$W_TEXT"; return 1; }
    head -c 300 "$W_ROOT"; echo; cat "$W_USER"
    [[ $(head -1 "$W_ROOT" | jq -c '[.sessions[].session]') == "[2]" && $(head -1 "$W_USER" | jq -c '.sessions') == "[]" ]]
}

start_counted_and_matches_status() {
    S1=$("$SESSIOND" start --session 1 --owner wanda --json) || return 1
    A1=$(json .address <<<"$S1")
    # refused: session 1 belongs to wanda
    expect_exit 1 "another user" "$SESSIOND" start --session 1 --owner root || return 1
    local t; t=$(get) || return 1
    echo "$t" | grep -E '^sessiond_(sessions|session_starts_total|start_duration_seconds_count|dhcp_messages_total)'
    [[ $(value 'sessiond_sessions{state="up"}' "$t") == "$(up_count)" && $(up_count) == 2 ]] &&
    [[ $(value 'sessiond_sessions{state="starting"}' "$t") == 0 && $(value 'sessiond_sessions{state="stopping"}' "$t") == 0 ]] &&
    [[ $(value 'sessiond_session_starts_total{result="started"}' "$t") == 2 ]] &&
    [[ $(value 'sessiond_session_starts_total{result="failed"}' "$t") == 1 ]] &&
    [[ $(value 'sessiond_start_duration_seconds_count' "$t") == 2 ]] &&
    (($(value 'sessiond_dhcp_messages_total{type="discover",direction="sent"}' "$t") >= 2)) &&
    (($(value 'sessiond_dhcp_messages_total{type="request",direction="sent"}' "$t") >= 2)) &&
    (($(value 'sessiond_dhcp_messages_total{type="offer",direction="received"}' "$t") >= 2)) &&
    (($(value 'sessiond_dhcp_messages_total{type="ack",direction="received"}' "$t") >= 2))
}

stops_counted() {
    "$SESSIOND" stop --session 1 && "$SESSIOND" stop --session 2 || return 1
    local t; t=$(get) || return 1
    echo "$t" | grep -E '^sessiond_(sessions|session_stops_total|dhcp_messages_total\{type="release")'
    [[ $(value sessiond_session_stops_total "$t") == 2 && $(value 'sessiond_sessions{state="up"}' "$t") == 0 && $(up_count) == 0 ]] &&
    [[ $(value 'sessiond_dhcp_messages_total{type="release",direction="sent"}' "$t") == 2 ]]
}

# What a watcher was told about session $2, one "event:detail" per line.
told() { jq -r --argjson s "$2" 'select(.session == $s) | .event + ":" + ((.to // .fault // "") | tostring)' "$1"; }

root_saw_each_change_in_order() {
    wait_for 5 grep -q '"event":"gone","session":2' "$W_ROOT" || { cat "$W_ROOT"; return 1; }
    local want got
    want=$(printf '%s\n' state:starting state:up "address:$A1" state:stopping address: gone:)
    got=$(told "$W_ROOT" 1)
    echo "session 1:"; echo "$got"
    [[ "$got" == "$want" ]] || return 1
    got=$(told "$W_ROOT" 2)
    echo "session 2 (up before the watch began):"; echo "$got"
    [[ "$got" == "$(printf '%s\n' state:stopping address: gone:)" ]]
}

user_saw_only_their_own() {
    wait_for 5 grep -q '"event":"gone","session":1' "$W_USER" || { cat "$W_USER"; return 1; }
    cat "$W_USER"
    ! grep -q '"session":2' "$W_USER" && [[ $(told "$W_USER" 1 | tail -1) == "gone:" && $(told "$W_USER" 1 | head -1) == "state:starting" ]]
}

text_view_prints_changes() {
    wait_for 5 grep -q "session 2: gone" "$W_TEXT" || { cat "$W_TEXT"; return 1; }
    cat "$W_TEXT"
    grep -qE "^[0-9:]{8}Z session 1: new, starting$" "$W_TEXT" && grep -qE "^[0-9:]{8}Z session 1: starting -> up \($A1\)$" "$W_TEXT" &&
    grep -qE "^[0-9:]{8}Z session 1: up -> stopping$" "$W_TEXT" && grep -qE "^[0-9:]{8}Z session 1: gone$" "$W_TEXT"
}

terminal_view_redraws_in_place() {
    # script(1) gives the view a terminal; it draws once (the snapshot) and is then ended
    local out; out=$(timeout 6 script -qfec "timeout 2 $SESSIOND status --watch" /dev/null 2>&1 | head -c 2000 | od -c | head -20)
    echo "$out"
    grep -q '033   \[   H' <<<"$out" && grep -q 'l   i   v   e' <<<"$out"
}

# ------------------------------------------------------------------ journald

journal_daemon() {
    kill_daemon
    DAEMON_LOG=/run/sessiond-journal.log
    : >"$DAEMON_LOG"
    local stream; stream=$(stat -c '%d:%i' "$DAEMON_LOG")
    JOURNAL_STREAM=$stream start_daemon --uplink "$SBX_UPLINK" --addressing static --pool "$SBX_POOL_FIRST-$SBX_POOL_FIRST/24" \
        --gateway "$SBX_GATEWAY" --state-dir "$STATE-static" || return 1
    "$SESSIOND" start --session 7 >/dev/null || return 1
    expect_exit 1 "exhausted" "$SESSIOND" start --session 8 || return 1   # a pool of one address
    "$SESSIOND" stop --session 7 >/dev/null || return 1
    wait_for 5 grep -q '"session stopped"' "$JOURNAL_OUT" || { tail -3 "$JOURNAL_OUT"; return 1; }
    echo "daemon stderr:"; cat "$DAEMON_LOG"
    [[ ! -s $DAEMON_LOG ]] # everything went to the journal
}

journal_entries_are_well_formed() {
    wc -l <"$JOURNAL_OUT"
    ! grep -q '"error"' "$JOURNAL_OUT" || { grep '"error"' "$JOURNAL_OUT" | head -3; return 1; }
    [[ $(jq -c 'select(type == "array") | map(select(.[0] == "SYSLOG_IDENTIFIER") | .[1]) | unique' "$JOURNAL_OUT" | sort -u) == '["sessiond"]' ]]
}

# has JSON-LINES JQ-CONDITION: some line satisfies the condition (false for no line at all:
# `jq -e` alone succeeds on empty input).
has() { jq -s -e "any(.[]; $2)" <<<"$1" >/dev/null; }

journalctl_sid_7_shows_its_life() {
    local e; e=$(journal SESSIOND_SID=7) || return 1
    jq -c '{MESSAGE, SESSIOND_ADDRESS, SPAN_NAME, PRIORITY}' <<<"$e"
    has "$e" ".MESSAGE == \"session up\" and .SESSIOND_ADDRESS == \"$SBX_POOL_FIRST\" and .PRIORITY == \"5\"" &&
    has "$e" '.MESSAGE == "session stopped" and .SPAN_NAME == "stop"' &&
    ! has "$e" '.MESSAGE // "" | test("not started")' && # session 8's failure is not session 7's
    [[ $(journal "SESSIOND_ADDRESS=$SBX_POOL_FIRST" | jq -r .SESSIOND_SID | sort -u) == 7 ]] ||
        { echo "entries with SESSIOND_ADDRESS=$SBX_POOL_FIRST:"; journal "SESSIOND_ADDRESS=$SBX_POOL_FIRST"; return 1; }
}

failed_start_names_its_step() {
    local e; e=$(journal SESSIOND_SID=8) || return 1
    jq -c '{MESSAGE, SESSIOND_STEP, PRIORITY}' <<<"$e"
    has "$e" '(.MESSAGE | test("session not started: .*exhausted")) and .SESSIOND_STEP == "allocate an address" and .PRIORITY == "4"'
}

check "set-up: users, dnsmasq, a fake journald, the daemon with --metrics-listen" setup || finish
check "JOURNAL_STREAM naming another stream: the logs stay on stderr" stderr_logs_when_journal_stream_is_not_stderr
check "metrics: every family there before any session, at zero" metrics_before_any_session
check "metrics: only GET /metrics is served (404, 400 for other requests)" only_metrics_is_served
check "watch: root's snapshot has the running session, a user's only theirs (none)" watchers_get_their_snapshots
check "metrics: sessions by state match status --json; starts, a refused start, DHCP messages counted" start_counted_and_matches_status
check "metrics: stops and DHCPRELEASEs counted, no session left" stops_counted
check "watch: root was told each change, in order" root_saw_each_change_in_order
check "watch: a non-root user was told only of their own session" user_saw_only_their_own
check "watch: the text view prints each change as it happens" text_view_prints_changes
check "watch: on a terminal the view is redrawn in place (ANSI)" terminal_view_redraws_in_place
check "journal: under systemd the daemon logs to journald, not stderr" journal_daemon
check "journal: every datagram is well-formed native protocol, SYSLOG_IDENTIFIER=sessiond" journal_entries_are_well_formed
check "journal: SESSIOND_SID=7 shows its start (SESSIOND_ADDRESS) and stop" journalctl_sid_7_shows_its_life
check "journal: a failed start names its step (SESSIOND_STEP)" failed_start_names_its_step
finish
