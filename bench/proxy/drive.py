#!/usr/bin/env python3
"""The recording POP3 proxy next to Dovecot (direct, TLS) and nginx's mail
proxy (TCP_NODELAY forced), interleaved in one run (bench/proxy/run.sh
starts everything and calls this).

For every run and target in turn, Dovecot's Maildir is filled with the
same N messages (the peer harness's template and fill(), outside the
timing) and the harness's C client bin/pop3bench times one archiver
session: USER/PASS, STAT, LIST, UIDL, RETR + DELE of every message, QUIT.
The retrieval time excludes the login (connect, TLS, USER/PASS; through a
proxy also its upstream connection and login).

Through mailgate every message is recorded on RETR (the DELE that follows
finds the copy and is forwarded). Each mailgate session logs in with a
mailbox of its own, so that no copy can be skipped as already recorded by
an earlier session (the de-duplication key names the mailbox), and the
script checks that the mailbox holds N messages afterwards. A mailgate
target named *-relay is a diagnostic: a first, untimed pass (RETR
without DELE) records every message, so the timed pass relays messages
that are all already stored (the relay's own cost, with no recording).

Targets NAME=PORT:MODE:peer are relays that are not mailgate (run.sh's
nginx stream relays, the bound of any relay that must speak TLS to
Dovecot): the client logs in as the harness's own user through them.

With --store-bench, every run also times the store alone (mg-store-bench
store mode, one writer, N messages, each waiting for its durable commit):
the ceiling of recording at one session, target store-c1.

Output lines (key=value, scripts/med.py form), appended to --out:
  proxy run=R target=T size=S msgs= seconds= login_ms= retr_seconds=
        retr_msgs/s= retr_MB/s= left= [gw_cpu_ms/msg= recorded=]
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import sys


def harness(peers):
    sys.path.insert(0, os.path.join(peers, "scripts"))
    import pop3  # the peer harness's driver: template(), fill(), TARGETS

    return pop3


class Gateway:
    def __init__(self, ctl, conf, pid):
        self.ctl = [ctl, "-c", conf]
        self.pid = pid

    def mailbox(self, name):
        r = subprocess.run(self.ctl + ["--json", "mailbox", "create", "--name", name],
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout)["id"]

    def count(self, box):
        r = subprocess.run(self.ctl + ["--json", "mailbox", "show", box],
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout)["messages"]


def cpu_seconds(pid):
    """utime + stime of a process, all its threads (the store's writer
    and the worker pool included)."""
    with open("/proc/%d/stat" % pid) as f:
        t = f.read().rsplit(")", 1)[1].split()
    return (int(t[11]) + int(t[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy():
    """(busy, all) CPU seconds of the whole machine so far (/proc/stat):
    all the processes of a session (client, proxy, Dovecot) and the
    kernel's work for them, and whatever else runs meanwhile."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = t[3] + t[4]  # idle, iowait
    return (sum(t[:8]) - idle) / hz, sum(t[:8]) / hz


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", required=True, help="copy of the peer harness")
    ap.add_argument("--targets", required=True,
                    help="harness targets, NAME=PORT[:tls] for mailgate, "
                    "NAME=PORT:MODE:peer for another relay")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=65536)
    ap.add_argument("--ctl", required=True, help="mailgatectl")
    ap.add_argument("--conf", required=True, help="mailgate.conf")
    ap.add_argument("--upstream", required=True,
                    help="the proxy login's target_server, e.g. localhost:1110")
    ap.add_argument("--gw-pid", type=int, help="mailgated (CPU time per message)")
    ap.add_argument("--base-ctl", help="a second mailgate (another build, "
                    "e.g. the branch point): its mailgatectl; its targets are "
                    "named base-*")
    ap.add_argument("--base-conf")
    ap.add_argument("--base-pid", type=int)
    ap.add_argument("--store-bench", help="mg-store-bench: the store alone, "
                    "one writer, N messages, once per run (the commit ceiling)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    h = harness(a.peers)
    gws = {False: Gateway(a.ctl, a.conf, a.gw_pid)}
    if a.base_ctl:
        gws[True] = Gateway(a.base_ctl, a.base_conf, a.base_pid)
    targets = []
    for t in a.targets.split(","):
        if "=" in t:
            # NAME=PORT[:MODE][:peer]: a mailgate, or with ":peer" another
            # relay that logs in as the harness's user (the stream relays)
            name, spec = t.split("=", 1)
            port, *rest = spec.split(":")
            mode = rest[0] if rest and rest[0] else "plain"
            targets.append((name, int(port), mode, "peer" not in rest[1:]))
        else:
            targets.append((t, *h.TARGETS[t], False))
    bench = os.path.join(a.peers, "bin", "pop3bench")

    with open(a.out, "a") as out:
        def emit(line):
            print(line, flush=True)
            out.write(line + "\n")

        for r in range(a.runs):
            print("# run %d" % (r + 1), file=sys.stderr, flush=True)
            if a.store_bench:
                d = tempfile.mkdtemp(dir="/var/tmp", prefix="mg-proxy-store-")
                p = subprocess.run([a.store_bench, d + "/s", "store", str(a.size), "1",
                                    str(a.n)], capture_output=True, text=True, check=True)
                shutil.rmtree(d)
                f = dict(x.split("=", 1) for x in p.stdout.split() if "=" in x)
                emit("proxy run=%d target=store-c1 size=%d msgs=%s retr_msgs/s=%s"
                     % (r + 1, a.size, f["msgs"], f["msgs/s"]))
            # with a base build, its targets and ours alternate in order
            order = targets if r % 2 == 0 else (
                [t for t in targets if t[0].startswith("base-")] +
                [t for t in targets if not t[0].startswith("base-")])
            for name, port, mode, is_gw in order:
                user, box = "popbench", None
                gw = gws.get(name.startswith("base-")) if is_gw else None
                if is_gw:
                    box = gw.mailbox("bench-%s-%d" % (name, r + 1))
                    user = "popbench%%%s%%%s" % (a.upstream, box)
                md = h.fill(a.size, a.n)
                if name.endswith("-relay"):
                    # relay alone: a first pass (RETR only, untimed)
                    # records every message, the timed one finds them all
                    subprocess.run([bench, "127.0.0.1", str(port), user, "secret",
                                    mode, "keep"], capture_output=True, check=True,
                                   timeout=600)
                cpu0 = cpu_seconds(gw.pid) if is_gw and gw.pid else None
                busy0, all0 = machine_busy()
                p = subprocess.run([bench, "127.0.0.1", str(port), user, "secret", mode],
                                   capture_output=True, text=True, timeout=600)
                busy1, all1 = machine_busy()
                cpu = cpu_seconds(gw.pid) - cpu0 if cpu0 is not None else None
                res = p.stdout.strip()
                left = len(os.listdir(md + "/new")) + len(os.listdir(md + "/cur"))
                if not res:
                    emit("proxy run=%d target=%s size=%d FAILED %r"
                         % (r + 1, name, a.size, p.stderr[:200]))
                    continue
                f = dict(x.split("=", 1) for x in res.split() if "=" in x)
                retr = float(f["seconds"]) - float(f["login_ms"]) / 1e3
                line = ("proxy run=%d target=%s size=%d msgs=%s seconds=%s login_ms=%s "
                        "retr_seconds=%.3f retr_msgs/s=%.0f retr_MB/s=%.1f left=%d"
                        % (r + 1, name, a.size, f["msgs"], f["seconds"], f["login_ms"],
                           retr, int(f["msgs"]) / retr,
                           int(f["bytes"]) / retr / 1e6, left))
                line += " machine_cpu_ms/msg=%.3f machine_busy=%.0f%%" % (
                    (busy1 - busy0) * 1e3 / int(f["msgs"]),
                    100 * (busy1 - busy0) / max(all1 - all0, 1e-9))
                if cpu is not None:
                    line += " gw_cpu_ms/msg=%.3f" % (cpu * 1e3 / int(f["msgs"]))
                if is_gw:
                    line += " recorded=%d" % gw.count(box)
                emit(line)


if __name__ == "__main__":
    main()
