#!/usr/bin/env bash
# bench/store/run.sh [RUNS=3] [DIR] -- the store benchmark: stored messages
# per second at 4 KiB, 64 KiB and 1 MiB with 1, 8 and 32 writers, next to
# raw LMDB with the same batching and one fsync per message, all in one
# run (configurations interleaved, medians of RUNS). Prints the medians and
# the ratios the store issue sets as targets. Needs a build: set BIN to the
# mg-store-bench program (default: build/bench/store/mg-store-bench).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${1:-3}
DIR=${2:-${TMPDIR:-/var/tmp}/mailgate-store-bench}
BIN=${BIN:-$top/build/bench/store/mg-store-bench}
[ -x "$BIN" ] || { echo "no $BIN: run ./quickstart run (or make) first" >&2; exit 1; }
OUT=$(mktemp)
trap 'rm -f "$OUT"; rm -rf "$DIR"' EXIT

count() { # size writers -> message count for a run of about a second
    local size=$1 w=$2
    case $size in 4096) echo $(( w == 1 ? 600 : w == 8 ? 4000 : 16000 )) ;;
                  65536) echo $(( w == 1 ? 400 : w == 8 ? 2000 : 6000 )) ;;
                  *) echo $(( w == 1 ? 100 : w == 8 ? 300 : 600 )) ;; esac
}
churn() { # size -> messages stored and deleted before a steady-state run
    case $1 in 4096) echo 16000 ;; 65536) echo 4000 ;; *) echo 400 ;; esac
}

for r in $(seq "$RUNS"); do
    echo "# run $r/$RUNS" >&2
    for size in 4096 65536 1048576; do
        for w in 1 8 32; do
            for mode in store raw fsync; do
                [ $mode = fsync ] && [ $w -ne 1 ] && [ $w -ne 32 ] && continue
                "$BIN" "$DIR" $mode $size $w "$(count $size $w)" >>"$OUT"
            done
        done
        for mode in store raw; do   # steady state: freed pages reused
            "$BIN" "$DIR" $mode $size 32 "$(count $size 32)" "$(churn $size)" >>"$OUT"
        done
    done
    for size in 4096 65536 1048576; do
        "$BIN" "$DIR" stream $size 1 $(( 200000000 / size )) >>"$OUT"
        "$BIN" "$DIR" vault $size 1 $(( 200000000 / size )) >>"$OUT"
    done
    "$BIN" "$DIR" seal 0 1 20000 >>"$OUT"
done

/usr/bin/python3 - "$OUT" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    key = (f["mode"], int(f["size"]), int(f["writers"]), "steady" in f)
    rows.setdefault(key, []).append(float(f["msgs/s"]))
med = {k: statistics.median(v) for k, v in rows.items()}
def m(mode, size, w, steady=False):
    return med.get((mode, size, w, steady))
print("%-8s %8s %7s %12s %12s %12s %9s %9s" % ("size", "writers", "", "store/s", "raw/s", "fsync/s", "st/raw", "st/fsync"))
for size in (4096, 65536, 1048576):
    for w in (1, 8, 32):
        s, r, f = m("store", size, w), m("raw", size, w), m("fsync", size, w)
        print("%-8d %8d %7s %12.1f %12.1f %12s %9.2f %9s" % (size, w, "", s, r,
              "%.1f" % f if f else "-", s / r, "%.2f" % (s / f) if f else "-"))
seal = m("seal", 0, 1)
print("steady state (after many messages were stored and deleted), 32 writers:")
for size in (4096, 65536, 1048576):
    s, r = m("store", size, 32, True), m("raw", size, 32, True)
    print("  %7d B: store %.1f/s raw %.1f/s -> %.2f" % (size, s, r, s / r))
# the vault's path per message is one crypto_box_seal (the message key)
# plus the chunks; "chunks" leaves out the seal, timed alone in this run
print("encryption path (vault, one thread) against bare secretstream:")
for size in (4096, 65536, 1048576):
    v, st = m("vault", size, 1), m("stream", size, 1)
    chunks = 1 / (1 / v - 1 / seal)
    print("  %7d B: vault %.1f MB/s, secretstream %.1f MB/s -> %.2f; "
          "chunks alone (seal taken out) %.1f MB/s -> %.2f"
          % (size, v * size / 1e6, st * size / 1e6, v / st,
             chunks * size / 1e6, chunks / st))
print("crypto_box_seal: %.0f/s" % seal)
print("targets (32 writers):")
for size in (65536, 1048576):
    for steady in (False, True):
        s, r = m("store", size, 32, steady), m("raw", size, 32, steady)
        f = m("fsync", size, 32)
        print("  %7d B%s: store/raw %.2f (>= 0.8), store/fsync %.2f (>= 5)"
              % (size, " steady" if steady else "       ", s / r, s / f))
for steady in (False, True):
    s, r = m("store", 4096, 32, steady), m("raw", 4096, 32, steady)
    print("     4096 B%s: store / min(raw, 2 x seal) = %.2f (>= 0.8)"
          % (" steady" if steady else "       ", s / min(r, 2 * seal)))
v, st = m("vault", 1048576, 1), m("stream", 1048576, 1)
print("  encryption path at 1 MiB: vault/secretstream %.2f (>= 0.9)" % (v / st))
PY
