#!/usr/bin/env bash
# bench/smtp/ab.sh BASE [TURNS=4] -- two builds of mailgated alone, taking
# turns (no Postfix, no other program freeing memory between turns): each
# turn sends COUNT messages of SIZE bytes over CONC sessions with Postfix's
# smtp-source and prints, per turn, the rate and where the CPU went:
# mailgated's utime and stime (/proc/PID/stat, all threads), the whole
# machine's user, system and softirq time (/proc/stat), how much the page
# cache grew (the whole machine's: other programs count too), and how much
# of the store's file is cached (util-linux fincore). PAUSE seconds (default 4) before each turn let freed
# memory be reported to the host first (free page reporting waits 2 s).
#
#   BASE=/tmp/main/install bench/smtp/ab.sh "$BASE" 6
#   SIZE=65536 COUNT=2000 CONC=8 bench/smtp/ab.sh "$BASE"
#   GW_STORE='drop_written_pages = false;' ...   (this build's store group)
#
# This build is PREFIX (default var/install). Run as root, under the
# bench lock; ports 2600 and 2601.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
. "$top/bench/lib.sh"
BASE=${1:?usage: ab.sh BASE_PREFIX [TURNS]}
TURNS=${2:-4}
PREFIX=${PREFIX:-$top/var/install}
bench_require_fresh "$PREFIX"
SIZE=${SIZE:-1048576}
COUNT=${COUNT:-400}
CONC=${CONC:-8}
PAUSE=${PAUSE:-4}
GW_STORE=${GW_STORE:-}
BASE_STORE=${BASE_STORE:-}
WORK=$(mktemp -d /var/tmp/mailgate-ab.XXXXXX)
command -v smtp-source >/dev/null || { echo "no smtp-source (postfix)" >&2; exit 1; }

# start NAME PREFIX PORT STORE: a mailgated with its own data folder;
# prints "PID ID"
start() {
    local name=$1 prefix=$2 port=$3 store=$4 dir=$WORK/$1 id
    bench_data_dir "$dir/data"
    cat >"$dir/mailgate.conf" <<CONF
data_dir = "$dir/data";
email_domain = "bench.localdomain";
log_level = "warning";
max_connections_per_ip = 1000;
store = { $store };
modules = ( { name = "smtp"; max_message_size = 209715200;
              listen = ( { address = "127.0.0.1"; port = $port; tls = "starttls"; } ); } );
CONF
    id=$("$prefix/sbin/mailgatectl" -c "$dir/mailgate.conf" --json mailbox create --name bench |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    "$prefix/sbin/mailgated" -c "$dir/mailgate.conf" --foreground 2>"$dir/mailgated.log" &
    echo "$! $id"
}
read -r GW GW_ID < <(start gw "$PREFIX" 2600 "$GW_STORE")
read -r BGW BASE_ID < <(start base "$BASE" 2601 "$BASE_STORE")
# at the end: stop both, show what they logged (warnings and errors)
trap 'kill $GW $BGW 2>/dev/null; wait; tail -n 5 "$WORK"/*/mailgated.log; rm -rf "$WORK"' EXIT
sleep 1

TICK=$(getconf CLK_TCK)
# turn NAME PID PORT ID
turn() {
    local p0 p1 s0 s1 c0 c1 t0 t1
    sleep "$PAUSE"
    p0=$(awk '{print $14 " " $15}' "/proc/$2/stat")
    s0=$(head -1 /proc/stat)
    c0=$(awk '/^Cached:/{print $2}' /proc/meminfo)
    t0=$(date +%s.%N)
    smtp-source -4 -d -s "$CONC" -m "$COUNT" -l "$SIZE" \
        -f sender@bench.localdomain -t "$4@bench.localdomain" \
        -M bench.localdomain -S bench "127.0.0.1:$3" >/dev/null
    t1=$(date +%s.%N)
    p1=$(awk '{print $14 " " $15}' "/proc/$2/stat")
    s1=$(head -1 /proc/stat)
    c1=$(awk '/^Cached:/{print $2}' /proc/meminfo)
    local st=$WORK/$1/data/store/data.mdb res
    res=$(fincore -b -n -r -o RES,SIZE "$st" 2>/dev/null || echo "0 0")
    echo "$1 $p0 $p1 $s0 $s1 $c0 $c1 $t0 $t1 $res" | awk -v n="$COUNT" -v sz="$SIZE" -v tick="$TICK" '{
        # $2 $3: utime stime before; $4 $5 after; then two /proc/stat
        # lines of 11 fields ("cpu" and 10 counters), Cached, times
        ms = 1000 / tick / n
        u0 = $7;  sy0 = $9;  si0 = $13; st0 = $14
        u1 = $18; sy1 = $20; si1 = $24; st1 = $25
        wall = $31 - $30
        printf "ab target=%s size=%d msgs=%d MB/s=%.1f gw_user_ms=%.3f gw_sys_ms=%.3f " \
               "machine_user_ms=%.3f machine_sys_ms=%.3f machine_softirq_ms=%.3f " \
               "steal_ms=%.3f cache_growth_MB=%.0f store_cached_MB=%.0f/%.0f\n",
               $1, sz, n, n * sz / 1e6 / wall, ($4 - $2) * ms, ($5 - $3) * ms,
               (u1 - u0) * ms, (sy1 - sy0) * ms, (si1 - si0) * ms,
               (st1 - st0) * ms, ($29 - $28) / 1024, $32 / 1e6, $33 / 1e6
    }'
}
for r in $(seq "$TURNS"); do
    if [ $((r % 2)) -eq 1 ]; then
        turn gw "$GW" 2600 "$GW_ID"
        turn base "$BGW" 2601 "$BASE_ID"
    else
        turn base "$BGW" 2601 "$BASE_ID"
        turn gw "$GW" 2600 "$GW_ID"
    fi
done
