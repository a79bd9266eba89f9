# shellcheck shell=bash disable=SC2034
# Shared bits for scripts/sandbox, scripts/dhcp-server and the shell selftest.
# Source it; it defines constants and small helpers only (no side effects).

# The test LAN's fixed names and addresses. Tests rely on these, so they are
# also exported into the sandbox's environment by scripts/sandbox.
SBX_UPLINK=br-lan
SBX_BRIDGE=br-lan
SBX_SERVER_NS=lan-srv
SBX_SERVER_IF=srv0
SBX_SERVER_PEER=lan0
SBX_SERVER_IP=10.77.0.1
SBX_PREFIXLEN=24
SBX_NETMASK=255.255.255.0
SBX_SUBNET=10.77.0.0/24
SBX_GATEWAY=10.77.0.1
SBX_POOL_FIRST=10.77.0.100
SBX_POOL_LAST=10.77.0.199
SBX_DOMAIN=sbx.test
SBX_HOSTNAME=sbx-host
# Only ever exists inside the sandbox: /run is a fresh tmpfs there.
SBX_MARKER=/run/sbx-sandbox

sbx_log() { printf '%s: %s\n' "${SBX_PROG:-sbx}" "$*" >&2; }
sbx_die() { sbx_log "error: $*"; exit 1; }

# True when running inside a sandbox made by scripts/sandbox. Both the env var
# and the marker are required: the var alone could be inherited by accident,
# the marker lives on a tmpfs that only the sandbox has.
sbx_inside() { [[ "${SBX:-}" == 1 && -f "$SBX_MARKER" ]]; }

# sbx_ip_to_int 10.77.0.5 -> integer, for pool range checks.
sbx_ip_to_int() {
    local a b c d
    IFS=. read -r a b c d <<<"$1"
    echo $(( (a << 24) | (b << 16) | (c << 8) | d ))
}

# True if $1 is a dotted quad inside [SBX_POOL_FIRST, SBX_POOL_LAST].
sbx_ip_in_pool() {
    [[ "$1" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || return 1
    local n lo hi
    n=$(sbx_ip_to_int "$1")
    lo=$(sbx_ip_to_int "$SBX_POOL_FIRST")
    hi=$(sbx_ip_to_int "$SBX_POOL_LAST")
    (( n >= lo && n <= hi ))
}

# sbx_poll TRIES INTERVAL CMD...: run CMD until it succeeds, at most TRIES
# times, sleeping INTERVAL seconds between tries. Bounded in count and so in
# time (TRIES * INTERVAL plus CMD's own run time).
sbx_poll() {
    local tries=$1 interval=$2 i
    shift 2
    for (( i = 0; i < tries; i++ )); do
        "$@" && return 0
        sleep "$interval"
    done
    return 1
}

# A process's start time (field 22 of /proc/PID/stat, in clock ticks since
# boot). PID plus start time names one process for good, even if the PID is
# reused later; we use it before signalling a PID we recorded earlier.
sbx_proc_starttime() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # comm (field 2) may contain spaces; cut after its closing parenthesis.
    stat=${stat##*) }
    # Now field 3 (state) is the first word; starttime is field 22.
    # shellcheck disable=SC2086
    set -- $stat
    echo "${20}"
}

# True while PID is alive and not a zombie.
sbx_proc_alive() {
    local state
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}
