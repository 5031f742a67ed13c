#!/usr/bin/env bash
# bench/proxy_smtp/run.sh [RUNS=3] [N=500] -- SMTP submission through
# mailgate's recording proxy next to the same submission sent directly to
# the upstream, interleaved in one run on loopback: messages/s at 4 KiB and
# 64 KiB, 1 and 8 sessions, N messages per configuration, sessions of M
# messages (M=10: a mail client sending a batch; the login's cost is in the
# figures, shared by M messages), medians of RUNS.
#
# Upstream: a private Postfix (its own configuration folder, `postfix -c`)
# on 127.0.0.1:$UP_PORT with mandatory STARTTLS (an EC P-256 certificate
# from a CA made here, for localhost and 127.0.0.1) and AUTH PLAIN/LOGIN
# through Dovecot SASL (a private auth-only Dovecot, passwd-file). Postfix
# hands every message to its discard transport: the 250 it gives after the
# data is still durable (cleanup fsyncs the queue file first), but no
# delivery competes for the disk; direct and proxied runs are treated the
# same.
#
# Load: bench/proxy_smtp/smtpload.c (C threads + OpenSSL, STARTTLS, AUTH
# PLAIN, lock-step commands; it prints its own CPU per message), built
# here. Its ceiling on this machine shows against Postfix's smtp-sink
# (plain SMTP, no TLS, no AUTH: the protocol loop alone).
#
# mailgate runs from var/install (./quickstart run builds it) with its own
# data folder: smtp on 127.0.0.1:$GW_PORT (STARTTLS), the proxy module
# trusting the CA made here and allowing 127.0.0.1; the login is
# benchuser%localhost:$UP_PORT%MAILBOX (not 465: STARTTLS upstream,
# verified for "localhost"). Its CPU per configuration is read from
# /proc/PID/stat (utime+stime), as the machine's is shared.
#
# A fifth target, stream, bounds what any relay can reach: nginx's stream
# module (Debian's libnginx-mod-stream, installed when missing) on
# 127.0.0.1:$STREAM_PORT relays the generator's plain SMTP and AUTH over
# verified TLS to the same Postfix's implicit-TLS port $UP_TLS_PORT. It
# parses and records nothing and the generator saves its own TLS there,
# so a proxy doing its job is below it. STREAM=0 leaves it out.
#
# SIZES=4096 CONC=1 TARGETS=proxy narrow the grid (default: 4096,65536 /
# 1,8 / direct,proxy,sink,stream). BASE=DIR (the install prefix of another build,
# e.g. the branch point's) adds a second mailgated ("base", 127.0.0.1:2643,
# its own data folder and mailbox) as a fourth target taking its turn in
# every configuration: a before/after comparison in one run. PERF=FILE
# records a CPU profile of mailgated over the whole drive (perf record
# -g); STRACE=FILE its system calls (strace -f -c); KEEP=1 keeps the work
# folder (logs, raw figures).
# Run as root.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
. "$top/bench/lib.sh"
RUNS=${1:-3}
N=${2:-500}
M=${M:-10}
SIZES=${SIZES:-4096,65536}
CONC=${CONC:-1,8}
PREFIX=${PREFIX:-$top/var/install}
UP_PORT=2640
GW_PORT=2641
SINK_PORT=2642
BASE=${BASE:-}
BASE_PORT=2643
STREAM_PORT=2644
UP_TLS_PORT=2645
STREAM=${STREAM:-1}
[ -z "$BASE" ] || [ -x "$BASE/sbin/mailgated" ] || { echo "no $BASE/sbin/mailgated" >&2; exit 1; }
[ -x "$PREFIX/sbin/mailgated" ] || { echo "no $PREFIX/sbin/mailgated: run ./quickstart run first" >&2; exit 1; }
bench_require_fresh "$PREFIX"
[ -f "$PREFIX/lib/mailgate/proxy.so" ] || { echo "no proxy module in $PREFIX" >&2; exit 1; }
for p in $UP_PORT $GW_PORT $SINK_PORT $BASE_PORT $STREAM_PORT $UP_TLS_PORT; do
    if ss -ltn | grep -q "127.0.0.1:$p "; then
        echo "port $p is in use" >&2
        exit 1
    fi
done

WORK=$(mktemp -d /var/tmp/mailgate-smtpproxy-bench.XXXXXX)
chmod 0755 "$WORK" # Postfix's and Dovecot's daemons drop privileges
GW= BGW= SINK= DOVECOT= NGINX=
cleanup() {
    [ -z "$NGINX" ] || kill "$NGINX" 2>/dev/null || true
    [ -z "$GW" ] || kill "$GW" 2>/dev/null || true
    [ -z "$BGW" ] || kill "$BGW" 2>/dev/null || true
    [ -z "$SINK" ] || kill "$SINK" 2>/dev/null || true
    postfix -c "$WORK/postfix/conf" stop >/dev/null 2>&1 || true
    [ -z "$DOVECOT" ] || kill "$DOVECOT" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

cc -std=c17 -O2 -Wall -Wextra -o "$WORK/smtpload" "$top/bench/proxy_smtp/smtpload.c" \
    -lssl -lcrypto -lpthread

# a CA and the upstream's certificate (localhost, 127.0.0.1)
T=$WORK/tls
mkdir -p "$T"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$T/ca.key" -out "$T/ca.pem" -days 2 \
    -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign >/dev/null 2>&1
openssl req -new "${ec[@]}" -keyout "$T/up.key" -out "$T/up.csr" -subj /CN=localhost >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$T/ext.cnf"
openssl x509 -req -in "$T/up.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial \
    -out "$T/up.pem" -days 2 -extfile "$T/ext.cnf" >/dev/null 2>&1
chmod 0644 "$T"/*

# Dovecot, auth only: the SASL back end of Postfix's smtpd
D=$WORK/dovecot
mkdir -p "$D"
echo 'benchuser:{PLAIN}benchpass::::::' >"$D/passwd"
cat >"$D/dovecot.conf" <<EOF
base_dir = $D/run
state_dir = $D/state
log_path = $D/dovecot.log
protocols = none
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $D/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}
service auth {
  unix_listener $WORK/postfix-auth {
    mode = 0666
  }
}
service stats {
  unix_listener stats-reader {
    mode = 0600
  }
  unix_listener stats-writer {
    mode = 0600
  }
}
EOF
dovecot -F -c "$D/dovecot.conf" >"$D/stdout" 2>&1 &
DOVECOT=$!

# Postfix: STARTTLS required, AUTH through Dovecot, everything discarded
P=$WORK/postfix
mkdir -p "$P/conf" "$P/queue" "$P/data"
chown postfix:postfix "$P/data"
cat >"$P/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $P/queue
data_directory = $P/data
mail_owner = postfix
setgid_group = postdrop
myhostname = upstream.bench
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks =
maillog_file = $P/maillog
maillog_file_prefixes = $P
default_transport = discard:
relay_transport = discard:
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_tls_cert_file = $T/up.pem
smtpd_tls_key_file = $T/up.key
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $WORK/postfix-auth
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
message_size_limit = 104857600
biff = no
EOF
cat >"$P/conf/master.cf" <<EOF
127.0.0.1:$UP_PORT inet n - n - - smtpd
127.0.0.1:$UP_TLS_PORT inet n - n - - smtpd -o smtpd_tls_wrappermode=yes
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
postfix -c "$P/conf" start >/dev/null 2>&1 || { cat "$P/maillog" 2>/dev/null; exit 1; }

smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 256 >/dev/null &
SINK=$!

# the stream relay: plain on STREAM_PORT, verified TLS to UP_TLS_PORT
if [ "$STREAM" = 1 ]; then
    bench_nginx_stream "$WORK/stream" "$T/ca.pem" "$STREAM_PORT:$UP_TLS_PORT:tls"
    NGINX=$STREAM_PID
fi

# mailgate: smtp (STARTTLS) and the proxy module trusting the CA made here
# start_gw PREFIX NAME PORT: a mailgated with its own data folder; sets
# GW_PID and GW_ID
start_gw() {
    local prefix=$1 dir=$WORK/$2 port=$3
    bench_data_dir "$dir/data"
    cat >"$dir/mailgate.conf" <<CONF
data_dir = "$dir/data";
email_domain = "bench.localdomain";
log_level = "warning";
max_connections_per_ip = 1000;
tls = { cert = "cert.pem"; key = "key.pem"; };
modules = (
  { name = "smtp"; max_message_size = 104857600;
    listen = ( { address = "127.0.0.1"; port = $port; tls = "starttls"; } ); },
  { name = "proxy"; ca_file = "$T/ca.pem"; allow_targets = [ "127.0.0.1" ]; }
);
CONF
    GW_ID=$("$prefix/sbin/mailgatectl" -c "$dir/mailgate.conf" --json mailbox create --name bench |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    "$prefix/sbin/mailgated" -c "$dir/mailgate.conf" --foreground 2>"$dir/mailgated.log" &
    GW_PID=$!
}
start_gw "$PREFIX" gw "$GW_PORT"
GW=$GW_PID ID=$GW_ID
PORTS="$UP_PORT $GW_PORT $SINK_PORT $UP_TLS_PORT${NGINX:+ $STREAM_PORT}"
if [ -n "$BASE" ]; then
    start_gw "$BASE" base "$BASE_PORT"
    BGW=$GW_PID BID=$GW_ID
    PORTS="$PORTS $BASE_PORT"
fi
for p in $PORTS; do
    for _ in $(seq 100); do
        ss -ltn | grep -q "127.0.0.1:$p " && break
        sleep 0.1
    done
    ss -ltn | grep -q "127.0.0.1:$p " || { echo "nothing listens on $p" >&2; exit 1; }
done
[ -S "$WORK/postfix-auth" ] || sleep 1

if [ -n "${PERF:-}" ]; then
    perf record ${PERF_ARGS:--g} -o "$PERF" -p "$GW" >/dev/null 2>&1 &
    PERFPID=$!
fi
if [ -n "${STRACE:-}" ]; then
    strace -f ${STRACE_ARGS:--c} -o "$STRACE" -p "$GW" 2>/dev/null &
    STRACEPID=$!
fi
RAW=${RAW:-$WORK/proxy_smtp.raw}
/usr/bin/python3 "$top/bench/proxy_smtp/drive.py" --load "$WORK/smtpload" \
    --runs "$RUNS" --n "$N" --m "$M" --sizes "$SIZES" --conc "$CONC" \
    --direct "$UP_PORT" --proxy "$GW_PORT" --sink "$SINK_PORT" \
    ${NGINX:+--stream "$STREAM_PORT"} \
    --user benchuser --password benchpass \
    --proxy-user "benchuser%localhost:$UP_PORT%$ID" \
    --gw-pid "$GW" --out "$RAW" ${TARGETS:+--targets "$TARGETS"} \
    ${BASE:+--base "$BASE_PORT" --base-user "benchuser%localhost:$UP_PORT%$BID" --base-pid "$BGW"}
if [ -n "${PERF:-}" ]; then
    kill -INT "$PERFPID"
    wait "$PERFPID" || true
fi
if [ -n "${STRACE:-}" ]; then
    kill -INT "$STRACEPID"
    wait "$STRACEPID" || true
fi
# every proxied message reached the upstream and is in the mailbox (the
# proxy publishes lazily: the last copies are listed up to 100 ms later)
sleep 0.3
stored() {
    "$1/sbin/mailgatectl" -c "$WORK/$2/mailgate.conf" --json mailbox show "$3" |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])'
}
echo "mailbox holds: $(stored "$PREFIX" gw "$ID") messages${BASE:+ (base: $(stored "$BASE" base "$BID"))};" \
    "Postfix accepted: $(grep -c 'status=sent ' "$P/maillog" || true)"
echo "mailgated peak RSS: $(awk '/VmHWM/{print $2}' "/proc/$GW/status") kB"
for g in gw ${BASE:+base}; do
    if grep -qi "error\|warn" "$WORK/$g/mailgated.log"; then
        echo "mailgated ($g) log:"
        tail -20 "$WORK/$g/mailgated.log"
    fi
done
