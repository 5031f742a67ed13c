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
            # store and raw take turns in one process (same load)
            "$BIN" "$DIR" pair $size $w "$(count $size $w)" >>"$OUT"
            [ $w -eq 8 ] && continue
            for mode in commit fsync; do
                "$BIN" "$DIR" $mode $size $w "$(count $size $w)" >>"$OUT"
            done
        done
        # steady state: freed pages reused
        "$BIN" "$DIR" pair $size 32 "$(count $size 32)" "$(churn $size)" >>"$OUT"
    done
    # a grown store: 1 GiB kept, no deletions
    "$BIN" "$DIR" pair 1048576 32 "$(count 1048576 32)" 1000 keep >>"$OUT"
    for size in 4096 65536 1048576; do   # stream, gcm, vault2, vault3, seal in turn
        n=$(( 200000000 / size )); [ $n -gt 10000 ] && n=10000
        "$BIN" "$DIR" cipher $size 1 $n >>"$OUT"
    done
done

/usr/bin/python3 - "$OUT" <<'PY'
import statistics, sys
# every configuration appears once per run, in the same order: the n-th
# line of two modes comes from the same run, minutes apart at most, so a
# ratio is taken within each run and the median of those is reported
rows = {}
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    state = True if "steady" in f else "grown" if "grown" in f else False
    key = (f["mode"], int(f["size"]), int(f["writers"]), state)
    rows.setdefault(key, []).append(float(f["msgs/s"]))
def m(mode, size, w, steady=False):
    v = rows.get((mode, size, w, steady))
    return statistics.median(v) if v else None
def ratio(a, b, f=lambda x, y: x / y):
    va, vb = rows.get(a), rows.get(b)
    if not va or not vb:
        return None
    return statistics.median(f(x, y) for x, y in zip(va, vb))
def fmt(v, spec="%.2f"):
    return spec % v if v is not None else "-"
print("medians of %d runs; ratios are medians of per-run ratios"
      % len(rows[("store", 4096, 32, False)]))
print("%-8s %7s %9s %9s %9s %9s %7s %9s %8s" % ("size", "writers", "store/s",
      "raw/s", "commit/s", "fsync/s", "st/raw", "st/commit", "st/fsync"))
for size in (4096, 65536, 1048576):
    for w in (1, 8, 32):
        k = lambda mode: (mode, size, w, False)
        print("%-8d %7d %9.1f %9.1f %9s %9s %7s %9s %8s" % (size, w,
              m("store", size, w), m("raw", size, w),
              fmt(m("commit", size, w), "%.1f"), fmt(m("fsync", size, w), "%.1f"),
              fmt(ratio(k("store"), k("raw"))), fmt(ratio(k("store"), k("commit"))),
              fmt(ratio(k("store"), k("fsync")))))
print("steady state (after many messages were stored and deleted), 32 writers:")
for size in (4096, 65536, 1048576):
    k = lambda mode: (mode, size, 32, True)
    print("  %7d B: store %.1f/s raw %.1f/s -> %s" % (size, m("store", size, 32, True),
          m("raw", size, 32, True), fmt(ratio(k("store"), k("raw")))))
k = lambda mode: (mode, 1048576, 32, "grown")
print("grown store (1 GiB kept, no deletions) 1 MiB x32: store %.1f/s raw %.1f/s -> %s"
      % (m("store", 1048576, 32, "grown"), m("raw", 1048576, 32, "grown"),
         fmt(ratio(k("store"), k("raw")))))
# the vault's path per message: the mailbox's cached stream key (a new
# sender key pair once a minute) and the chunks; scheme 2 against bare
# secretstream, scheme 3 against bare EVP AES-256-GCM, and 3 against 2
print("encryption path (vault, one thread) against its bare cipher, in turn:")
for size in (4096, 65536, 1048576):
    k = lambda mode: (mode, size, 1, False)
    print("  %7d B: scheme 2 %.1f MB/s (secretstream %.1f) -> %s; "
          "scheme 3 %.1f MB/s (EVP AES-256-GCM %.1f) -> %s; 3/2 %s" % (size,
          m("vault2", size, 1) * size / 1e6, m("stream", size, 1) * size / 1e6,
          fmt(ratio(k("vault2"), k("stream"))),
          m("vault3", size, 1) * size / 1e6, m("gcm", size, 1) * size / 1e6,
          fmt(ratio(k("vault3"), k("gcm"))),
          fmt(ratio(k("vault3"), k("vault2")))))
seal = m("seal", 0, 1)
print("crypto_box_seal: %.0f/s (one thread; what scheme 1 paid per message)"
      % seal)
print("targets (32 writers):")
for size in (65536, 1048576):
    for steady in (False, True):
        k = lambda mode: (mode, size, 32, steady)
        print("  %7d B%s: store/raw %s (>= 0.8), store/fsync %s (>= 5; "
              "one LMDB commit per message: %s)"
              % (size, " steady" if steady else "       ",
                 fmt(ratio(k("store"), k("raw"))),
                 fmt(ratio(k("store"), ("fsync", size, 32, False))),
                 fmt(ratio(k("store"), ("commit", size, 32, False)))))
sl = rows[("seal", 0, 1, False)]
for steady in (False, True):
    st, r = rows[("store", 4096, 32, steady)], rows[("raw", 4096, 32, steady)]
    # the seal rate of the same run (three cipher lines per run: the median)
    per_run = [statistics.median(sl[3 * i:3 * i + 3]) for i in range(len(st))]
    v = statistics.median(s / min(x, 2 * y) for s, x, y in zip(st, r, per_run))
    print("     4096 B%s: store / min(raw, 2 x seal) = %.2f (>= 0.8)"
          % (" steady" if steady else "       ", v))
for size in (4096, 65536, 1048576):
    print("  encryption path %7d B: scheme 2 vault/secretstream %s, scheme 3 "
          "vault/AES-256-GCM %s (>= 0.9)" % (size,
          fmt(ratio(("vault2", size, 1, False), ("stream", size, 1, False))),
          fmt(ratio(("vault3", size, 1, False), ("gcm", size, 1, False)))))
PY
