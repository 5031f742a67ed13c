#!/usr/bin/env python3
"""Submission through the recording SMTP proxy next to the same submission
sent directly to its upstream, interleaved in one run (bench/proxy_smtp/
run.sh starts everything and calls this).

Per run, per size and concurrency, the targets take turns (their order
alternates between runs): `direct` (smtpload to Postfix: STARTTLS, AUTH,
N messages), `proxy` (the same through mailgate, which relays to that
Postfix and records every message), `base` (the same through a second
mailgated, another build: a before/after comparison in one run), `sink`
(smtpload to smtp-sink, plain SMTP without AUTH: the generator's and
protocol loop's ceiling) and `stream` (nginx's stream module relaying the
generator's plain SMTP with AUTH over verified TLS to the same Postfix's
implicit-TLS port: a relay that parses and records nothing and spares
the generator its TLS, the bound of what any relay to that Postfix can
reach here). Each mailgated's CPU (utime+stime of all its
threads, /proc/PID/stat) is read around its own turns.

Raw lines (key=value) go to --out; the summary (medians, ratios, CPU per
message against the issue's budget) to stdout.
"""
import argparse
import os
import statistics
import subprocess
import sys


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        t = f.read().rsplit(")", 1)[1].split()
    return (int(t[11]) + int(t[12])) / os.sysconf("SC_CLK_TCK")


def switches(pid):
    """context switches (voluntary + not) of all of pid's threads"""
    n = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, t)) as f:
                for line in f:
                    if "ctxt_switches:" in line:
                        n += int(line.split()[1])
        except OSError:
            pass  # a thread that ended
    return n


def load(a, port, size, conc, n, user=None, tls=True):
    cmd = [a.load, "-p", str(port), "-c", str(conc), "-n", str(n),
           "-m", str(a.m), "-s", str(size)]
    if user is None:
        cmd += ["-A", "none"]
    else:
        cmd += ["-u", user, "-w", a.password]
    if not tls:
        cmd += ["-T", "none"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    f = dict(x.split("=", 1) for x in r.stdout.split() if "=" in x)
    if r.returncode != 0 or not f:
        sys.stderr.write("smtpload failed (%d): %s%s" % (r.returncode,
                                                          r.stdout, r.stderr))
        return None
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", required=True, help="the smtpload binary")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--m", type=int, default=10, help="messages per session")
    ap.add_argument("--sizes", default="4096,65536")
    ap.add_argument("--conc", default="1,8")
    ap.add_argument("--direct", type=int, required=True)
    ap.add_argument("--proxy", type=int, required=True)
    ap.add_argument("--sink", type=int)
    ap.add_argument("--stream", type=int, help="the nginx stream relay's port")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--proxy-user", required=True)
    ap.add_argument("--gw-pid", type=int, required=True)
    ap.add_argument("--base", type=int, help="a second mailgated's port")
    ap.add_argument("--base-user")
    ap.add_argument("--base-pid", type=int)
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default="direct,proxy,base,sink,stream",
                    help="a subset of direct,proxy,base,sink,stream")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    concs = [int(x) for x in a.conc.split(",")]
    targets = {"direct": (a.direct, a.user, True, None),
               "proxy": (a.proxy, a.proxy_user, True, a.gw_pid)}
    if a.base:
        targets["base"] = (a.base, a.base_user, True, a.base_pid)
    if a.sink:
        targets["sink"] = (a.sink, None, False, None)
    if a.stream:
        targets["stream"] = (a.stream, a.user, False, None)
    targets = {t: v for t, v in targets.items() if t in a.targets.split(",")}

    # warm-up: TLS, page cache, Postfix's and mailgate's processes
    for t, (port, user, tls, _) in targets.items():
        load(a, port, 4096, 2, 40, user, tls)

    rows = []
    out = open(a.out, "a")
    for run in range(1, a.runs + 1):
        for size in sizes:
            for conc in concs:
                order = list(targets)
                if run % 2 == 0:
                    order.reverse()
                for t in order:
                    port, user, tls, pid = targets[t]
                    c0 = cpu_seconds(pid or a.gw_pid)
                    s0 = switches(pid or a.gw_pid)
                    f = load(a, port, size, conc, a.n, user, tls)
                    gw = cpu_seconds(pid or a.gw_pid) - c0
                    sw = switches(pid or a.gw_pid) - s0
                    if f is None:
                        line = "smtpproxy run=%d target=%s size=%d conc=%d FAILED" % (
                            run, t, size, conc)
                    else:
                        f["gw_cpu_ms/msg"] = "%.3f" % (gw * 1e3 / a.n)
                        f["gw_csw/msg"] = "%.1f" % (sw / a.n)
                        line = "smtpproxy run=%d target=%s size=%d conc=%d m=%d %s" % (
                            run, t, size, conc, a.m,
                            " ".join("%s=%s" % kv for kv in f.items()))
                        rows.append((run, t, size, conc, f))
                    print(line, file=out, flush=True)
                    print(line, file=sys.stderr, flush=True)
    summary(rows, sizes, concs, a)


def summary(rows, sizes, concs, a):
    def med(t, size, conc, key):
        v = [float(f[key]) for _, tt, s, c, f in rows
             if (tt, s, c) == (t, size, conc)]
        return statistics.median(v) if v else None, v

    print("messages/s, median of %d runs (each run); sessions of %d messages;"
          " mailgated CPU ms/msg (median); generator CPU ms/msg (median);"
          " mailgated's context switches per message (all threads, median)"
          % (a.runs, a.m))
    print("%-6s %3s  %-8s %8s  %-22s %9s %9s %7s" % (
        "size", "c", "target", "msgs/s", "runs", "gw_cpu", "gen_cpu",
        "gw_csw"))
    for size in sizes:
        for conc in concs:
            for t in ("direct", "proxy", "base", "sink", "stream"):
                m, v = med(t, size, conc, "msgs/s")
                if m is None:
                    continue
                g, _ = med(t, size, conc, "gw_cpu_ms/msg")
                c, _ = med(t, size, conc, "cpu_ms_per_msg")
                w, _ = med(t, size, conc, "gw_csw/msg")
                gw = t in ("proxy", "base")
                print("%-6d %3d  %-8s %8.0f  %-22s %9s %9.3f %7s" % (
                    size, conc, t, m, " ".join("%.0f" % x for x in v),
                    "%.3f" % g if gw else "-", c,
                    "%.1f" % w if gw else "-"))
    for m in ("proxy", "base"):
        if not any(r[1] == m for r in rows):
            continue
        print("%s / direct, median of the per-run ratios [each run] (target >= 0.9x);"
              " mailgated CPU per message against 0.3 ms + 3 ms/MiB:" % m)
        for size in sizes:
            budget = 0.3 + 3.0 * size / (1 << 20)
            for conc in concs:
                rs = ratios(rows, m, "direct", size, conc)
                if not rs:
                    continue
                r = statistics.median(rs)
                g, _ = med(m, size, conc, "gw_cpu_ms/msg")
                print("  %6d B c=%d: %4.2fx [%s]%s   cpu %.3f ms/msg (budget %.3f)%s"
                      % (size, conc, r, " ".join("%.2f" % x for x in rs),
                         "" if r >= 0.9 else " MISSED", g, budget,
                         "" if g <= budget else " MISSED"))
    for num, den, what in (
            ("proxy", "base", ""),
            ("stream", "direct", " (a relay that records nothing)"),
            ("proxy", "stream", "")):
        if not any(r[1] == num for r in rows) or not any(r[1] == den for r in rows):
            continue
        print("%s / %s, median of the per-run ratios [each run]%s:" % (num, den, what))
        for size in sizes:
            for conc in concs:
                rs = ratios(rows, num, den, size, conc)
                if rs:
                    print("  %6d B c=%d: %4.2fx [%s]" % (
                        size, conc, statistics.median(rs),
                        " ".join("%.2f" % x for x in rs)))


def ratios(rows, num, den, size, conc):
    """num's msgs/s over den's, one ratio per run that has both"""
    rs = []
    for run in sorted({r[0] for r in rows}):
        n = [f for r, t, s, c, f in rows if (r, t, s, c) == (run, num, size, conc)]
        d = [f for r, t, s, c, f in rows if (r, t, s, c) == (run, den, size, conc)]
        if n and d:
            rs.append(float(n[0]["msgs/s"]) / float(d[0]["msgs/s"]))
    return rs

if __name__ == "__main__":
    main()
