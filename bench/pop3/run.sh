#!/usr/bin/env bash
# bench/pop3/run.sh [RUNS=3] [N=1000] -- POP3 retrieve-and-delete, mailgate
# next to Dovecot, interleaved in one run on loopback. Uses the peer harness
# in ../shared/bench (copied to a temporary folder): Dovecot serving the
# messages from Maildir on 127.0.0.1:1110 (plain) and :1995 (implicit TLS),
# the harness's C client bin/pop3bench and its message template (N messages
# of 4 KiB and of 64 KiB), driven by bench/pop3/drive.py.
#
# mailgate runs from the non-sanitized build (./quickstart run builds it
# into build/ and var/install/) with its own data folder: SMTP on
# 127.0.0.1:2600 (plain, to fill its mailbox outside the timing), POP3 on
# 2610 (plain, allow_plaintext_auth: a loopback bench listener) and 2611
# (implicit TLS). Run as root (the harness installs and configures the
# peers). Prints medians, the ratios to Dovecot, login against Argon2id
# and the QUIT times. STORE='drop_written_pages = false;' sets mailgate's
# store group (default: empty, the defaults).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
. "$top/bench/lib.sh"
RUNS=${1:-3}
N=${2:-1000}
PREFIX=${PREFIX:-$top/var/install}
STORE=${STORE:-}
# ../shared/bench beside the checkout (or beside the worktrees' folder)
if [ -z "${PEERS:-}" ]; then
    PEERS=$top/../shared/bench
    [ -d "$PEERS" ] || PEERS=$top/../../shared/bench
fi
WORK=$(mktemp -d /var/tmp/mailgate-pop3-bench.XXXXXX)
SMTP_PORT=2600
POP3_PORT=2610
POP3S_PORT=2611
[ -x "$PREFIX/sbin/mailgated" ] || { echo "no $PREFIX/sbin/mailgated: run ./quickstart run first" >&2; exit 1; }
bench_require_fresh "$PREFIX"
[ -f "$PREFIX/lib/mailgate/pop3.so" ] || { echo "no pop3 module in $PREFIX" >&2; exit 1; }
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
scripts/servers.sh start dovecot >/dev/null

bench_data_dir "$WORK/data"
cat >"$WORK/mailgate.conf" <<CONF
data_dir = "$WORK/data";
email_domain = "bench.localdomain";
log_level = "warning";
max_connections_per_ip = 1000;
tls = { cert = "cert.pem"; key = "key.pem"; };
store = { $STORE };
modules = (
  { name = "smtp"; listen = ( { address = "127.0.0.1"; port = $SMTP_PORT; tls = "none"; } ); },
  { name = "pop3";
    listen = ( { address = "127.0.0.1"; port = $POP3_PORT; tls = "none"; allow_plaintext_auth = true; },
               { address = "127.0.0.1"; port = $POP3S_PORT; tls = "implicit"; } ); }
);
CONF
CTL=("$PREFIX/sbin/mailgatectl" -c "$WORK/mailgate.conf")
(umask 077 && "${CTL[@]}" --json mailbox create --name bench >"$WORK/mailbox.json")
"$PREFIX/sbin/mailgated" -c "$WORK/mailgate.conf" --foreground 2>"$WORK/mailgated.log" &
GW=$!
trap 'kill $GW 2>/dev/null; scripts/servers.sh stop dovecot >/dev/null 2>&1; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do
    ss -ltn | grep -q "127.0.0.1:$POP3S_PORT " && break
    sleep 0.1
done

RAW=$WORK/pop3.raw
/usr/bin/python3 "$top/bench/pop3/drive.py" --peers "$WORK/peers" --runs "$RUNS" --n "$N" \
    --targets "dovecot,dovecot-tls,gw=$POP3_PORT,gw-tls=$POP3S_PORT:tls" \
    --gw-smtp "$SMTP_PORT" --mailbox "$WORK/mailbox.json" \
    --ctl "$PREFIX/sbin/mailgatectl" --conf "$WORK/mailgate.conf" --out "$RAW" >&2
RSS=$(awk '/VmHWM/{print $2}' "/proc/$GW/status")
/usr/bin/python3 scripts/med.py <"$RAW"
echo "mailgated peak RSS: ${RSS} kB"
/usr/bin/python3 - "$RAW" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t = line.split()
    if not t or "FAILED" in t:
        continue
    f = dict(x.split("=", 1) for x in t[1:] if "=" in x)
    rows.setdefault((t[0], f.get("target"), f.get("size")), []).append(f)
def med(kind, target, size, field):
    v = [float(r[field]) for r in rows.get((kind, target, size), [])]
    return statistics.median(v) if v else float("nan")
argon = med("argon2id", None, None, "ms")
left = sum(int(r["left"]) for k, rs in rows.items() for r in rs if "left" in r)
print(f"Argon2id (INTERACTIVE) median: {argon:.0f} ms; messages left after all sessions: {left}")
print("retrieval excluding login (STAT..QUIT), medians, gw / dovecot:")
for size in ("4096", "65536"):
    for gw, dc in (("gw", "dovecot"), ("gw-tls", "dovecot-tls")):
        g = med("pop3", gw, size, "retr_msgs/s")
        d = med("pop3", dc, size, "retr_msgs/s")
        gt = med("pop3", gw, size, "seconds")
        dt = med("pop3", dc, size, "seconds")
        print(f"  {size:>6} {gw:>6}: {g:7.0f}/s vs {d:7.0f}/s = {g/d:4.2f}x"
              f"   (with login: {gt:.3f} s vs {dt:.3f} s)")
print("login (connect, TLS, USER/PASS), medians; target <= Argon2id + 50 ms:")
for t in ("gw", "gw-tls", "dovecot", "dovecot-tls"):
    v = [float(r["login_ms"]) for k, rs in rows.items() if k[0] == "pop3" and k[1] == t
         for r in rs]
    m = statistics.median(v)
    verdict = "" if t.startswith("dovecot") else (
        "  ok" if m <= argon + 50 else f"  MISSED by {m - argon - 50:.0f} ms")
    print(f"  {t:>11}: {m:6.1f} ms{verdict}")
print("QUIT with all messages marked (deletion commit), medians; target <= 50 ms:")
for size in ("4096", "65536"):
    for t in ("gw", "gw-tls", "dovecot", "dovecot-tls"):
        m = med("quit", t, size, "quit_ms")
        verdict = "" if t.startswith("dovecot") else (
            "  ok" if m <= 50 else f"  MISSED by {m - 50:.1f} ms")
        print(f"  {size:>6} {t:>11}: {m:6.1f} ms{verdict}")
PY
