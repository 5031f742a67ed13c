#!/usr/bin/env bash
# bench/smtp/run.sh [RUNS=3] -- SMTP ingest, mailgate next to Postfix, in one
# run on loopback. Uses the peer harness in ../shared/bench (copied to a
# temporary folder): Postfix delivering to Maildir (durable per message) on
# 127.0.0.1:2525, load from Postfix's smtp-source, sizes 4 KiB, 64 KiB and
# 1 MiB with 1, 8 and 32 sessions, interleaved per configuration; then the
# end-of-data -> 250 latency at c=1 (eod_latency.py: median, p90, p99; the
# issue's target is a median <= 2 ms for mailgate).
#
# SIZES="4096" CONC="1" narrow the throughput part (default: all of them);
# EOD_COUNT (default 500) messages per target for the latency part.
# RAW_OUT=FILE keeps every turn's figures (the summary gives medians).
# POSTFIX=0 leaves out Postfix's turns and PAUSE=S waits S seconds before
# each mailgated turn: with both, no other program frees page-cache pages
# just before a turn, and memory freed earlier has been reported to the
# host (free page reporting waits 2 s), as on a machine that only archives
# mail (bench/README.md, "Dropping the written pages").
# BASE=DIR (an install prefix of another build, e.g. main's) adds a second
# mailgated ("base", 127.0.0.1:2601, its own data folder) that takes its
# turn next to mailgate's in every configuration (after it in odd runs,
# before it in even ones), and in the end-of-data latency rounds: a
# before/after comparison in one run.
#
# mailgate runs from the non-sanitized build (./quickstart run builds it
# into build/ and var/install/) on 127.0.0.1:2600 with its own data folder;
# every 250 it gives is durable by design, so its ingest rate is its e2e
# rate. Besides the harness's whole-machine CPU per message (which counts
# the load generator and the kernel's loopback and writeback work too),
# the summary gives each server's own CPU: Postfix's master and every
# child it starts (smtpd, cleanup, qmgr, local, ... including those that
# exit) and each mailgated, each in a cgroup of its own (cpuacct.usage on
# cgroup v1, cpu.stat usage_usec on v2) read around its turn; mailgated's
# utime + stime from /proc as well. The headline CPU ratio is
# mailgated's own / Postfix's own. Run as root (the harness installs and
# configures the peers).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
. "$top/bench/lib.sh"
RUNS=${1:-3}
SIZES=${SIZES:-4096,65536,1048576}
CONC=${CONC:-1,8,32}
EOD_COUNT=${EOD_COUNT:-500}
PREFIX=${PREFIX:-$top/var/install}
PEERS=${PEERS:-$top/../shared/bench}
WORK=$(mktemp -d /var/tmp/mailgate-smtp-bench.XXXXXX)
PORT=2600
BASE=${BASE:-}
POSTFIX=${POSTFIX:-1}
PAUSE=${PAUSE:-0}
BASE_PORT=2601
[ -x "$PREFIX/sbin/mailgated" ] || { echo "no $PREFIX/sbin/mailgated: run ./quickstart run first" >&2; exit 1; }
bench_require_fresh "$PREFIX"
[ -z "$BASE" ] || [ -x "$BASE/sbin/mailgated" ] || { echo "no $BASE/sbin/mailgated" >&2; exit 1; }
[ -d "$PEERS" ] || { echo "no peer harness at $PEERS" >&2; exit 1; }

cp -r "$PEERS" "$WORK/peers"
cd "$WORK/peers"
make -s
# the test suite installs postfix without a system configuration; the peer
# harness configures the system instance and needs a main.cf to start from
if [ ! -f /etc/postfix/main.cf ]; then
    grep -v '^[a-z_]* =$' /etc/postfix/main.cf.proto >/etc/postfix/main.cf
fi
postconf -e setgid_group=postdrop mail_owner=postfix compatibility_level=3.6 \
    mailbox_size_limit=0 alias_maps=hash:/etc/aliases alias_database=hash:/etc/aliases
scripts/setup.sh >/dev/null

# Each server's own CPU: a cgroup per server (cgroup v1 cpuacct, else v2),
# which counts every process in it, also the children that have exited
CG_ROOT='' CG_V=''
if [ -w /sys/fs/cgroup/cpuacct/cgroup.procs ]; then
    CG_ROOT=/sys/fs/cgroup/cpuacct CG_V=1
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && [ -w /sys/fs/cgroup/cgroup.procs ]; then
    CG_ROOT=/sys/fs/cgroup CG_V=2
fi
# cg_new NAME: prints the cgroup's folder (empty without cgroups)
cg_new() {
    [ -n "$CG_ROOT" ] || return 0
    local d=$CG_ROOT/mailgate-bench-$1-$$
    mkdir -p "$d" && echo "$d"
}
# cg_ns DIR: CPU used by the cgroup so far, in ns
cg_ns() {
    if [ "$CG_V" = 1 ]; then cat "$1/cpuacct.usage"; else
        awk '$1 == "usage_usec" { printf "%d\n", $2 * 1000 }' "$1/cpu.stat"; fi
}
# cg_join DIR PID...: move the processes into the cgroup
cg_join() {
    local d=$1 p
    shift
    [ -n "$d" ] || return 0
    for p in "$@"; do echo "$p" >"$d/cgroup.procs" 2>/dev/null || true; done
}
PF_CG=$(cg_new postfix)
# Postfix starts inside its cgroup; if it was running already, its master
# and the children it has are moved there (new children inherit it)
(cg_join "$PF_CG" "$BASHPID" && scripts/servers.sh start postfix >/dev/null)
PF_MASTER=$(head -1 /var/spool/postfix/pid/master.pid 2>/dev/null | tr -d ' ')
if [ -n "$PF_CG" ] && [ -n "$PF_MASTER" ]; then
    # shellcheck disable=SC2046
    cg_join "$PF_CG" "$PF_MASTER" $(ps -o pid= --ppid "$PF_MASTER")
fi

# start_gw PREFIX NAME PORT: a mailgated with its own data folder; sets
# GW_PID and GW_ID
start_gw() {
    local prefix=$1 name=$2 port=$3 dir=$WORK/$2
    bench_data_dir "$dir/data"
    cat >"$dir/mailgate.conf" <<CONF
data_dir = "$dir/data";
email_domain = "bench.localdomain";
log_level = "warning";
max_connections_per_ip = 1000;
modules = ( { name = "smtp"; max_message_size = 209715200;
              listen = ( { address = "127.0.0.1"; port = $port; tls = "starttls"; } ); } );
CONF
    GW_ID=$("$prefix/sbin/mailgatectl" -c "$dir/mailgate.conf" --json mailbox create --name bench |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    GW_CG=$(cg_new "$name")
    (cg_join "$GW_CG" "$BASHPID" &&
        exec "$prefix/sbin/mailgated" -c "$dir/mailgate.conf" --foreground 2>"$dir/mailgated.log") &
    GW_PID=$!
}
start_gw "$PREFIX" gw "$PORT"
GW=$GW_PID ID=$GW_ID
declare -A CG=([postfix]=$PF_CG [gw]=$GW_CG)
BGW=
if [ -n "$BASE" ]; then
    start_gw "$BASE" base "$BASE_PORT"
    BGW=$GW_PID BID=$GW_ID
    CG[base]=$GW_CG
fi
cleanup() {
    kill $GW $BGW 2>/dev/null
    scripts/servers.sh stop postfix >/dev/null 2>&1
    sleep 1
    local d
    for d in "${CG[@]}"; do [ -z "$d" ] || rmdir "$d" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
sleep 1

RAW=$WORK/smtp.raw
gw_cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # clock ticks
TICK_MS=$((1000 / $(getconf CLK_TCK)))
# turn_msgs: the message count of the turn just written to RAW
turn_msgs() { grep '^smtp ' "$RAW" | tail -1 | sed -n 's/.* msgs=\([0-9]*\) .*/\1/p'; }
# own_cpu NAME SIZE CONC NS: the server's own CPU (cgroup) for the turn
# just written to RAW
own_cpu() {
    local n
    n=$(turn_msgs)
    awk -v g="$1" -v s="$2" -v c="$3" -v d="$4" -v n="$n" \
        'BEGIN { printf "owncpu target=%s size=%s conc=%s own_cpu_ms_per_msg=%.4f\n", g, s, c, d / 1e6 / n }' >>"$RAW"
}
# postfix_turn SIZE CONC: one smtp.py run against Postfix and its own CPU
postfix_turn() {
    local a b
    a=$([ -z "$PF_CG" ] || cg_ns "$PF_CG")
    /usr/bin/python3 scripts/smtp.py --runs 1 --targets postfix \
        --sizes "$1" --conc "$2" --out "$RAW" >/dev/null 2>&1
    b=$([ -z "$PF_CG" ] || cg_ns "$PF_CG")
    [ -z "$PF_CG" ] || own_cpu postfix "$1" "$2" $((b - a))
}
# turn NAME PID PORT ID SIZE CONC: one smtp.py run and the daemon's own CPU
turn() {
    local a b n ca cb cg=${CG[$1]}
    sleep "$PAUSE"
    a=$(gw_cpu "$2")
    ca=$([ -z "$cg" ] || cg_ns "$cg")
    /usr/bin/python3 scripts/smtp.py --runs 1 --targets "$1=$3" \
        --sizes "$5" --conc "$6" --rcpt "$4@bench.localdomain" \
        --out "$RAW" >/dev/null 2>&1
    b=$(gw_cpu "$2")
    cb=$([ -z "$cg" ] || cg_ns "$cg")
    n=$(turn_msgs)
    awk -v g="$1" -v s="$5" -v c="$6" -v d=$((b - a)) -v t="$TICK_MS" -v n="$n" \
        'BEGIN { printf "gwcpu target=%s size=%s conc=%s gw_cpu_ms_per_msg=%.3f\n", g, s, c, d * t / n }' >>"$RAW"
    [ -z "$cg" ] || own_cpu "$1" "$5" "$6" $((cb - ca))
}
# one configuration at a time, Postfix then mailgate (then the base build),
# so that mailgated's own CPU (utime + stime) can be read around its turn:
# the harness's cpu_ms_per_msg is the whole machine's (load generator,
# kernel writeback)
for r in $(seq "$RUNS"); do
    echo "# run $r/$RUNS" >&2
    for size in ${SIZES//,/ }; do
        for c in ${CONC//,/ }; do
            [ "$POSTFIX" = 0 ] || postfix_turn "$size" "$c"
            # with a base build, the two take turns going first
            if [ -n "$BASE" ] && [ $((r % 2)) -eq 0 ]; then
                turn base "$BGW" "$BASE_PORT" "$BID" "$size" "$c"
                turn gw "$GW" "$PORT" "$ID" "$size" "$c"
            else
                turn gw "$GW" "$PORT" "$ID" "$size" "$c"
                [ -z "$BASE" ] || turn base "$BGW" "$BASE_PORT" "$BID" "$size" "$c"
            fi
        done
    done
done
# end of data -> 250 at c=1: one session each, interleaved rounds
EOD=$(/usr/bin/python3 "$top/bench/smtp/eod_latency.py" --count "$EOD_COUNT" \
    --target postfix=2525 --target "gw=$PORT/$ID@bench.localdomain" \
    ${BASE:+--target "base=$BASE_PORT/$BID@bench.localdomain"})
RSS="$(awk '/VmHWM/{print $2}' "/proc/$GW/status") kB"
[ -z "$BASE" ] || RSS="$RSS (base: $(awk '/VmHWM/{print $2}' "/proc/$BGW/status") kB)"
[ -z "${RAW_OUT:-}" ] || cp "$RAW" "$RAW_OUT" # every turn's figures
grep -v '^gwcpu\|^owncpu' "$RAW" | /usr/bin/python3 scripts/med.py
echo "mailgated peak RSS: $RSS"
/usr/bin/python3 - "$RAW" <<'PY'
import statistics, sys
rows, gwcpu, owncpu = {}, {}, {}
for line in open(sys.argv[1]):
    t = line.split()
    if t and t[0] == "gwcpu":
        f = dict(x.split("=", 1) for x in t[1:] if "=" in x)
        gwcpu.setdefault((f["target"], f["size"], f["conc"]), []).append(float(f["gw_cpu_ms_per_msg"]))
        continue
    if t and t[0] == "owncpu":
        f = dict(x.split("=", 1) for x in t[1:] if "=" in x)
        owncpu.setdefault((f["target"], f["size"], f["conc"]), []).append(float(f["own_cpu_ms_per_msg"]))
        continue
    if not t or t[0] != "smtp":
        continue
    f = dict(x.split("=", 1) for x in t[1:] if "=" in x)
    rows.setdefault((f["target"], f["size"], f["conc"]), []).append(f)
def med(name, size, conc, field):
    v = [float(r[field]) for r in rows.get((name, size, conc), []) if field in r]
    return statistics.median(v) if v else None
def own(name, size, conc):
    v = owncpu.get((name, size, conc))
    return statistics.median(v) if v else None
# the like-for-like CPU figure: each server's own processes (cgroups), the
# load generator and the kernel's loopback work left out on both sides
if owncpu:
    print("own CPU per message (cgroup: mailgated / Postfix's master and all its children), medians:")
    for name in [n for n in ("gw", "base") if any(k[0] == n for k in owncpu)]:
        for size in sorted({k[1] for k in owncpu}, key=int):
            for conc in sorted({k[2] for k in owncpu}, key=int):
                g, p = own(name, size, conc), own("postfix", size, conc)
                if g is not None and p:
                    print(f"  {name:>4} {size:>8} c={conc:>2}: {g:8.4f} ms vs postfix {p:8.4f} ms = {g/p:5.3f}x")
                elif g is not None:
                    print(f"  {name:>4} {size:>8} c={conc:>2}: {g:8.4f} ms")
# Postfix: delivered into Maildir (e2e); mailgate: every 250 is durable
print("gw / postfix, medians (postfix e2e = delivered to Maildir; cpu/msg = whole machine;")
print("  mailgated alone = its /proc utime + stime against Postfix's whole machine):")
for name in [n for n in ("gw", "base") if any(k[0] == n for k in rows)]:
    for size in sorted({k[1] for k in rows}, key=int):
        for conc in sorted({k[2] for k in rows}, key=int):
            g = med(name, size, conc, "ingest_msgs/s")
            p = med("postfix", size, conc, "e2e_msgs/s")
            gc = med(name, size, conc, "cpu_ms_per_msg")
            pc = med("postfix", size, conc, "cpu_ms_per_msg")
            mine = gwcpu.get((name, size, conc))
            own = statistics.median(mine) if mine else None
            if g and p:
                print(f"  {name:>4} {size:>8} c={conc:>2}: {g:8.1f}/s vs {p:8.1f}/s = {g/p:5.2f}x"
                      f"   cpu/msg {gc:.3f} vs {pc:.3f} ms = {gc/pc:4.2f}x"
                      + (f"   mailgated alone {own:.3f} ms = {own/pc:4.2f}x" if own else ""))
            elif g:  # POSTFIX=0
                print(f"  {name:>4} {size:>8} c={conc:>2}: {g:8.1f}/s"
                      f"   cpu/msg {gc:.3f} ms"
                      + (f"   mailgated alone {own:.3f} ms" if own else ""))
PY
echo "end of data -> 250 at c=1 (4 KiB, one session each):"
echo "$EOD" | sed 's/^/  /'
