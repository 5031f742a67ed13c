#!/usr/bin/env python3
"""POP3 retrieve-and-delete, mailgate next to Dovecot, interleaved in one
run (bench/pop3/run.sh starts everything and calls this).

For every run, size and target in turn: the target's mailbox is filled
with the same N messages (the peer harness's template: Dovecot's Maildir
is filled by the harness's own fill(), mailgate's mailbox over SMTP from
the same files, both outside the timing), then:

1. the harness's C client bin/pop3bench times one archiver session
   (USER/PASS, STAT, LIST, UIDL, RETR+DELE of every message, QUIT):
   total seconds and login_ms (connect + TLS + USER/PASS); the retrieval
   time excluding login is seconds - login_ms;
2. the mailbox is filled again and a second session marks every message
   (DELE, pipelined) and times QUIT alone: the commit of N deletions.

Argon2id (crypto_pwhash, the INTERACTIVE limits mailgate derives mailbox
keys with) is timed with the harness's bin/sodium_bench in every run, for
the login target (login <= Argon2id + 50 ms).

Output lines (key=value, scripts/med.py form), appended to --out:
  pop3 target=T size=S msgs= seconds= login_ms= retr_seconds= retr_msgs/s=
       retr_MB/s= left=
  quit target=T size=S quit_ms= login_ms=
  argon2id ms=
"""
import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import smtplib


def harness(peers):
    sys.path.insert(0, os.path.join(peers, "scripts"))
    import pop3  # the peer harness's driver: template(), fill(), TARGETS

    return pop3


class Gateway:
    def __init__(self, a):
        self.smtp_port = a.gw_smtp
        self.ctl = [a.ctl, "-c", a.conf]
        box = json.load(open(a.mailbox))
        self.user, self.password = box["id"], box["password"]
        self.rcpt = "%s@%s" % (box["id"], a.domain)

    def count(self):
        r = subprocess.run(self.ctl + ["--json", "mailbox", "show", self.user],
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout)["messages"]

    def fill(self, files, clients=8):
        """Send every file (LF -> CRLF) over SMTP, `clients` sessions."""
        assert self.count() == 0, "mailgate's mailbox is not empty"
        chunks = [files[i::clients] for i in range(clients)]
        errors = []

        def send(part):
            try:
                s = smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=60)
                for path in part:
                    with open(path, "rb") as f:
                        msg = f.read().replace(b"\n", b"\r\n")
                    s.sendmail("sender@bench.localdomain", [self.rcpt], msg)
                s.quit()
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=send, args=(c,)) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        n = self.count()
        assert n == len(files), "mailgate holds %d of %d messages" % (n, len(files))


def lines(sock, n):
    """Read n CRLF-terminated lines from sock (status lines only)."""
    buf = b""
    out = []
    while len(out) < n:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed after %r" % out[-3:])
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        out.append(line)
    return out


def time_quit(port, mode, user, password, n):
    """Login, DELE 1..n (pipelined), then the time from QUIT to its +OK."""
    t0 = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)
    assert lines(sock, 1)[0].startswith(b"+OK")
    sock.sendall(b"USER %s\r\n" % user.encode())
    assert lines(sock, 1)[0].startswith(b"+OK")
    sock.sendall(b"PASS %s\r\n" % password.encode())
    r = lines(sock, 1)[0]
    assert r.startswith(b"+OK"), r
    login_ms = (time.monotonic() - t0) * 1e3
    sock.sendall(b"".join(b"DELE %d\r\n" % i for i in range(1, n + 1)))
    replies = lines(sock, n)
    assert all(r.startswith(b"+OK") for r in replies), replies[:3]
    t1 = time.monotonic()
    sock.sendall(b"QUIT\r\n")
    r = lines(sock, 1)[0]
    quit_ms = (time.monotonic() - t1) * 1e3
    assert r.startswith(b"+OK"), r
    sock.close()
    return login_ms, quit_ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", required=True, help="copy of the peer harness")
    ap.add_argument("--targets", default="dovecot,dovecot-tls")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sizes", default="4096,65536")
    ap.add_argument("--gw-smtp", type=int, help="mailgate's SMTP port (fill)")
    ap.add_argument("--mailbox", help="JSON of mailgatectl mailbox create")
    ap.add_argument("--ctl", help="mailgatectl")
    ap.add_argument("--conf", help="mailgate.conf")
    ap.add_argument("--domain", default="bench.localdomain")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    h = harness(a.peers)
    gw = Gateway(a) if a.mailbox else None
    targets = []
    for t in a.targets.split(","):
        if "=" in t:
            name, spec = t.split("=", 1)
            port, _, mode = spec.partition(":")
            targets.append((name, int(port), mode or "plain", True))
        else:
            targets.append((t, *h.TARGETS[t], False))
    bench = os.path.join(a.peers, "bin", "pop3bench")
    sodium = os.path.join(a.peers, "bin", "sodium_bench")

    def fill(size, is_gw):
        """Fill the target's mailbox; returns a function counting what is
        left in it."""
        if is_gw:
            d = os.path.join(h.template(size, a.n), "new")
            gw.fill([os.path.join(d, f) for f in sorted(os.listdir(d))])
            return gw.count
        md = h.fill(size, a.n)
        return lambda: len(os.listdir(md + "/new")) + len(os.listdir(md + "/cur"))

    with open(a.out, "a") as out:
        def emit(line):
            print(line, flush=True)
            out.write(line + "\n")

        for r in range(a.runs):
            print("# run %d" % (r + 1), file=sys.stderr, flush=True)
            p = subprocess.run([sodium, "pwhash", "interactive", "3"],
                               capture_output=True, text=True, check=True)
            for l in p.stdout.splitlines():
                emit("argon2id " + l.split("ms=")[0].split(None, 1)[1] +
                     "ms=" + l.split("ms=")[1])
            for size in map(int, a.sizes.split(",")):
                for name, port, mode, is_gw in targets:
                    user, pw = (gw.user, gw.password) if is_gw else ("popbench", "secret")
                    left = fill(size, is_gw)
                    p = subprocess.run([bench, "127.0.0.1", str(port), user, pw, mode],
                                       capture_output=True, text=True, timeout=600)
                    res = p.stdout.strip()
                    if not res:
                        emit("pop3 target=%s size=%d FAILED %r" % (name, size, p.stderr[:200]))
                        continue
                    f = dict(x.split("=", 1) for x in res.split() if "=" in x)
                    retr = float(f["seconds"]) - float(f["login_ms"]) / 1e3
                    emit("pop3 target=%s size=%d msgs=%s seconds=%s login_ms=%s "
                         "retr_seconds=%.3f retr_msgs/s=%.0f retr_MB/s=%.1f left=%d"
                         % (name, size, f["msgs"], f["seconds"], f["login_ms"],
                            retr, int(f["msgs"]) / retr,
                            int(f["bytes"]) / retr / 1e6, left()))
                    left = fill(size, is_gw)
                    login_ms, quit_ms = time_quit(port, mode, user, pw, a.n)
                    emit("quit target=%s size=%d quit_ms=%.1f login_ms=%.1f left=%d"
                         % (name, size, quit_ms, login_ms, left()))


if __name__ == "__main__":
    main()
