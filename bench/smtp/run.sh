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
#
# mailgate runs from the non-sanitized build (./quickstart run builds it
# into build/ and var/install/) on 127.0.0.1:2600 with its own data folder;
# every 250 it gives is durable by design, so its ingest rate is its e2e
# rate. Run as root (the harness installs and configures the peers).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${1:-3}
SIZES=${SIZES:-4096,65536,1048576}
CONC=${CONC:-1,8,32}
EOD_COUNT=${EOD_COUNT:-500}
PREFIX=${PREFIX:-$top/var/install}
PEERS=${PEERS:-$top/../shared/bench}
WORK=$(mktemp -d /var/tmp/mailgate-smtp-bench.XXXXXX)
PORT=2600
[ -x "$PREFIX/sbin/mailgated" ] || { echo "no $PREFIX/sbin/mailgated: run ./quickstart run first" >&2; exit 1; }
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
scripts/servers.sh start postfix >/dev/null

mkdir -p "$WORK/data"
chmod 0700 "$WORK/data"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$WORK/data/key.pem" -out "$WORK/data/cert.pem" -days 2 \
    -subj /CN=localhost >/dev/null 2>&1
cat >"$WORK/mailgate.conf" <<CONF
data_dir = "$WORK/data";
email_domain = "bench.localdomain";
log_level = "warning";
max_connections_per_ip = 1000;
modules = ( { name = "smtp"; max_message_size = 209715200;
              listen = ( { address = "127.0.0.1"; port = $PORT; tls = "starttls"; } ); } );
CONF
ID=$("$PREFIX/sbin/mailgatectl" -c "$WORK/mailgate.conf" --json mailbox create --name bench |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$PREFIX/sbin/mailgated" -c "$WORK/mailgate.conf" --foreground 2>"$WORK/mailgated.log" &
GW=$!
trap 'kill $GW 2>/dev/null; scripts/servers.sh stop postfix >/dev/null 2>&1; rm -rf "$WORK"' EXIT
sleep 1

RAW=$WORK/smtp.raw
/usr/bin/python3 scripts/smtp.py --runs "$RUNS" --targets "postfix,gw=$PORT" \
    --sizes "$SIZES" --conc "$CONC" --rcpt "$ID@bench.localdomain" --out "$RAW" >&2
# end of data -> 250 at c=1: one session each, interleaved rounds
EOD=$(/usr/bin/python3 "$top/bench/smtp/eod_latency.py" --count "$EOD_COUNT" \
    --target postfix=2525 --target "gw=$PORT/$ID@bench.localdomain")
RSS=$(awk '/VmHWM/{print $2}' "/proc/$GW/status")
/usr/bin/python3 scripts/med.py <"$RAW"
echo "mailgated peak RSS: ${RSS} kB"
/usr/bin/python3 - "$RAW" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t = line.split()
    if not t or t[0] != "smtp":
        continue
    f = dict(x.split("=", 1) for x in t[1:] if "=" in x)
    rows.setdefault((f["target"], f["size"], f["conc"]), []).append(f)
def med(name, size, conc, field):
    v = [float(r[field]) for r in rows.get((name, size, conc), []) if field in r]
    return statistics.median(v) if v else None
# Postfix: delivered into Maildir (e2e); mailgate: every 250 is durable
print("gw / postfix, medians (postfix e2e = delivered to Maildir):")
for size in sorted({k[1] for k in rows}, key=int):
    for conc in sorted({k[2] for k in rows}, key=int):
        g = med("gw", size, conc, "ingest_msgs/s")
        p = med("postfix", size, conc, "e2e_msgs/s")
        gc = med("gw", size, conc, "cpu_ms_per_msg")
        pc = med("postfix", size, conc, "cpu_ms_per_msg")
        if g and p:
            print(f"  {size:>8} c={conc:>2}: {g:8.1f}/s vs {p:8.1f}/s = {g/p:5.2f}x"
                  f"   cpu/msg {gc:.3f} vs {pc:.3f} ms = {gc/pc:4.2f}x")
PY
echo "end of data -> 250 at c=1 (4 KiB, one session each):"
echo "$EOD" | sed 's/^/  /'
