#!/usr/bin/env bash
# bench/proxy/run.sh [RUNS=3] [N=500] -- POP3 retrieval of N x 64 KiB
# through mailgate's recording proxy, next to Dovecot itself over TLS and
# nginx's mail proxy with TCP_NODELAY forced, interleaved in one run on
# loopback. Uses the peer harness in ../shared/bench (copied to a
# temporary folder): its Dovecot (127.0.0.1:1110 plain with STLS, :1995
# implicit TLS; a self-signed certificate for CN=localhost), its nginx-nd
# (127.0.0.1:1112 plain, :1997 TLS at nginx; plaintext to Dovecot 1110:
# nginx cannot do TLS upstream and records nothing), its C client
# bin/pop3bench and its message template, driven by bench/proxy/drive.py.
#
# mailgate runs from the non-sanitized build (./quickstart run builds it
# into build/ and var/install/) with its own data folder: POP3 on
# 127.0.0.1:2620 (plain, allow_plaintext_auth: a loopback bench listener)
# and 2621 (implicit TLS), the proxy module trusting the harness's Dovecot
# certificate (ca_file) and allowing 127.0.0.1 (allow_targets). Logins are
# popbench%localhost:1110%MAILBOX: port 1110 means STLS upstream (only
# 995 is implicit TLS), verified for the name "localhost" (the harness's
# certificate has no IP address in it). Run as root.
#
# Two more relays bound what any proxy can reach here: nginx's stream
# module (TCP relay, parses and records nothing, TCP_NODELAY on) from
# 127.0.0.1:2628 to Dovecot's plaintext 1110 (stream-plain: the stream
# relay against the mail proxy nginx-nd), and from 2629 over verified
# TLS to Dovecot's implicit-TLS 1995 (stream-tls: the fastest relay that
# speaks TLS to Dovecot as the issue asks of the proxy; Dovecot's TLS
# passes through its login process). Debian's libnginx-mod-stream is
# installed when missing. STREAM=0 leaves them out.
#
# BASE=DIR (the install prefix of another build, e.g. the branch point's)
# starts a second mailgate from it on 127.0.0.1:2622 (plain) and 2623
# (TLS) with its own data folder, and adds its targets base-proxy,
# base-proxy-tls and base-proxy-relay, each right next to ours (the order
# alternates between runs), so that a before/after comparison shares the
# machine's load of the moment.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
. "$top/bench/lib.sh"
RUNS=${1:-3}
N=${2:-500}
PREFIX=${PREFIX:-$top/var/install}
if [ -z "${PEERS:-}" ]; then
    PEERS=$top/../shared/bench
    [ -d "$PEERS" ] || PEERS=$top/../../shared/bench
fi
WORK=$(mktemp -d /var/tmp/mailgate-proxy-bench.XXXXXX)
POP3_PORT=2620
POP3S_PORT=2621
UPSTREAM=localhost:1110
[ -x "$PREFIX/sbin/mailgated" ] || { echo "no $PREFIX/sbin/mailgated: run ./quickstart run first" >&2; exit 1; }
bench_require_fresh "$PREFIX"
[ -f "$PREFIX/lib/mailgate/proxy.so" ] || { echo "no proxy module in $PREFIX" >&2; exit 1; }
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
STATE=${STATE:-${TMPDIR:-/var/tmp}/mailgate-bench}
CA=$STATE/tls/ec.crt
trap 'kill $GW $BGW $STREAM_PID 2>/dev/null; scripts/servers.sh stop dovecot >/dev/null 2>&1;
      scripts/servers.sh stop nginx >/dev/null 2>&1; rm -rf "$WORK"' EXIT
GW= BGW= STREAM_PID=
scripts/servers.sh start dovecot >/dev/null
scripts/servers.sh start nginx >/dev/null

# the stream relays (STREAM=0: none)
STREAM=${STREAM:-1}
STREAM_PID=
STREAM_TARGETS=
if [ "$STREAM" = 1 ]; then
    bench_nginx_stream "$WORK/stream" "$CA" 2628:1110 2629:1995:tls
    STREAM_TARGETS=",stream-plain=2628:plain:peer,stream-tls=2629:plain:peer"
fi

# start_gw PREFIX NAME PORT TLSPORT: a mailgate with its own data folder
# and $WORK/NAME.conf; its pid in GW_PID
start_gw() {
    local prefix=$1 name=$2 port=$3 tlsport=$4 data=$WORK/$2-data
    bench_data_dir "$data"
    cat >"$WORK/$name.conf" <<CONF
data_dir = "$data";
module_dir = "$prefix/lib/mailgate";
email_domain = "bench.localdomain";
log_level = "warning";
max_connections_per_ip = 1000;
tls = { cert = "cert.pem"; key = "key.pem"; };
modules = (
  { name = "pop3";
    listen = ( { address = "127.0.0.1"; port = $port; tls = "none"; allow_plaintext_auth = true; },
               { address = "127.0.0.1"; port = $tlsport; tls = "implicit"; } ); },
  { name = "proxy"; ca_file = "$CA"; allow_targets = [ "127.0.0.1" ]; }
);
CONF
    "$prefix/sbin/mailgated" -c "$WORK/$name.conf" --foreground 2>"$WORK/$name.log" &
    GW_PID=$!
    for _ in $(seq 50); do
        ss -ltn | grep -q "127.0.0.1:$tlsport " && break
        sleep 0.1
    done
}
start_gw "$PREFIX" mailgate "$POP3_PORT" "$POP3S_PORT"
GW=$GW_PID
BGW=
if [ -n "${BASE:-}" ]; then
    [ -x "$BASE/sbin/mailgated" ] || { echo "no $BASE/sbin/mailgated" >&2; exit 1; }
    start_gw "$BASE" base 2622 2623
    BGW=$GW_PID
fi

RAW=$WORK/proxy.raw
STORE_BENCH=${STORE_BENCH:-$top/build/bench/store/mg-store-bench}
[ -x "$STORE_BENCH" ] || STORE_BENCH=
if [ -n "$BGW" ]; then
    TARGETS=${TARGETS:-dovecot-tls,nginx-nd,nginx-nd-tls,proxy=$POP3_PORT,base-proxy=2622,proxy-tls=$POP3S_PORT:tls,base-proxy-tls=2623:tls,proxy-relay=$POP3_PORT,base-proxy-relay=2622$STREAM_TARGETS}
fi
TARGETS=${TARGETS:-dovecot-tls,nginx-nd,nginx-nd-tls,proxy=$POP3_PORT,proxy-tls=$POP3S_PORT:tls,proxy-relay=$POP3_PORT$STREAM_TARGETS}
# PERF=FILE: a CPU profile of mailgated over the whole drive (perf record -g)
if [ -n "${PERF:-}" ]; then
    perf record -g -o "$PERF" -p "$GW" >/dev/null 2>&1 &
    PERFPID=$!
fi
/usr/bin/python3 "$top/bench/proxy/drive.py" --peers "$WORK/peers" --runs "$RUNS" --n "$N" \
    --targets "$TARGETS" \
    --ctl "$PREFIX/sbin/mailgatectl" --conf "$WORK/mailgate.conf" \
    --upstream "$UPSTREAM" --gw-pid "$GW" --out "$RAW" \
    ${BGW:+--base-ctl "$BASE/sbin/mailgatectl" --base-conf "$WORK/base.conf" --base-pid "$BGW"} \
    ${STORE_BENCH:+--store-bench "$STORE_BENCH"} >&2
if [ -n "${PERF:-}" ]; then
    kill -INT "$PERFPID"
    wait "$PERFPID" || true
fi
RSS=$(awk '/VmHWM/{print $2}' "/proc/$GW/status")
echo "mailgated peak RSS: ${RSS} kB"
for log in "$WORK"/mailgate.log "$WORK"/base.log; do
    [ -f "$log" ] || continue
    if grep -v "running as root" "$log" | grep -qi "error\|warn"; then
        echo "$log:"; tail -20 "$log"
    fi
done
/usr/bin/python3 - "$RAW" "$N" <<'PY'
import statistics, sys
n = int(sys.argv[2])
runs, bad = {}, 0
for line in open(sys.argv[1]):
    t = line.split()
    if not t:
        continue
    f = dict(x.split("=", 1) for x in t[1:] if "=" in x)
    if "FAILED" in t or f.get("left", "0") != "0" or f.get("recorded", str(n)) != str(n):
        bad += 1
        continue
    runs.setdefault(f["run"], {})[f["target"]] = float(f["retr_msgs/s"])
targets = []
for r in runs.values():
    targets += [t for t in r if t not in targets]
print("retrieval excluding login (STAT..QUIT), msgs/s, median of %d runs (each run):" % len(runs))
for t in targets:
    v = [r[t] for r in runs.values() if t in r]
    print("  %-13s %6.0f  (%s)" % (t, statistics.median(v), " ".join("%.0f" % x for x in v)))
def ratio(a, b, target=None):
    v = [r[a] / r[b] for r in runs.values() if a in r and b in r]
    if not v:
        return
    m = statistics.median(v)
    goal = "" if target is None else "  (target >= %.1fx)%s" % (
        target, "" if m >= target else "  MISSED")
    print("  %-11s / %-12s = %4.2fx  [%s]%s" % (a, b, m, " ".join("%.2f" % x for x in v), goal))
print("ratios, median of the per-run ratios [each run]; the proxy records every message:")
ratio("proxy", "nginx-nd", 0.9)
ratio("proxy-tls", "nginx-nd-tls", 0.9)
ratio("proxy-tls", "dovecot-tls", 0.8)
ratio("proxy", "dovecot-tls", 0.8)
print("diagnostics:")
ratio("stream-plain", "nginx-nd")
ratio("stream-tls", "nginx-nd")
ratio("proxy", "stream-tls")
ratio("proxy-relay", "stream-tls")
ratio("proxy-relay", "nginx-nd")
ratio("base-proxy", "nginx-nd")
ratio("base-proxy-tls", "dovecot-tls")
ratio("base-proxy-relay", "nginx-nd")
ratio("proxy", "base-proxy")
ratio("proxy-tls", "base-proxy-tls")
ratio("proxy-relay", "base-proxy-relay")
ratio("proxy-relay", "dovecot-tls")
ratio("proxy", "store-c1")
v = [1 / (1 / r["proxy-relay"] + 1 / r["store-c1"]) / r["proxy"]
     for r in runs.values() if "proxy-relay" in r and "store-c1" in r and "proxy" in r]
if v:
    print("  proxy / (relay and store-c1 in series) = %4.2fx" % statistics.median(v))
print("sessions that failed, left messages upstream or recorded fewer than %d: %d" % (n, bad))
PY
