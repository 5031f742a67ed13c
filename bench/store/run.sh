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

count() { # size writers mode -> message count for a run of a few seconds
    local size=$1 w=$2 mode=$3
    case $mode in
    fsync) echo $(( size >= 1048576 ? 100 : 400 )) ;;
    *) case $size in 4096) echo $(( w == 1 ? 600 : 4000 )) ;;
                     65536) echo $(( w == 1 ? 400 : 2000 )) ;;
                     *) echo $(( w == 1 ? 100 : 300 )) ;; esac ;;
    esac
}

for r in $(seq "$RUNS"); do
    echo "# run $r/$RUNS" >&2
    for size in 4096 65536 1048576; do
        for w in 1 8 32; do
            for mode in store raw fsync; do
                [ $mode = fsync ] && [ $w -ne 1 ] && [ $w -ne 32 ] && continue
                "$BIN" "$DIR" $mode $size $w "$(count $size $w $mode)" >>"$OUT"
            done
        done
    done
    "$BIN" "$DIR" store 65536 32 2000 4000 >>"$OUT"   # steady state
    "$BIN" "$DIR" raw 65536 32 2000 4000 >>"$OUT"
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
print("steady state (after 4000 stored+deleted) 64 KiB x32: store %.1f/s raw %.1f/s -> %.2f"
      % (m("store", 65536, 32, True), m("raw", 65536, 32, True),
         m("store", 65536, 32, True) / m("raw", 65536, 32, True)))
for size in (4096, 65536, 1048576):
    print("encryption path %7d B: vault %.1f MB/s, bare secretstream %.1f MB/s -> %.2f"
          % (size, m("vault", size, 1) * size / 1e6, m("stream", size, 1) * size / 1e6,
             m("vault", size, 1) / m("stream", size, 1)))
print("crypto_box_seal: %.0f/s" % seal)
print("targets (32 writers):")
for size in (65536, 1048576):
    s, r, f = m("store", size, 32), m("raw", size, 32), m("fsync", size, 32)
    print("  %7d B: store/raw %.2f (>= 0.8), store/fsync %.2f (>= 5)" % (size, s / r, s / f))
s, r = m("store", 4096, 32), m("raw", 4096, 32)
print("     4096 B: store / min(raw, 2 x seal) = %.2f (>= 0.8)" % (s / min(r, 2 * seal)))
PY
