#!/usr/bin/env python3
"""End-of-data -> 250 latency, one session per target (c=1), on loopback.

For each message: MAIL, RCPT, DATA, the message body, then the clock starts
as the final ".\\r\\n" is written and stops when the whole reply to it has
arrived. With a durable target this is the commit latency a journaling MTA
waits for per message (the issue's target: median <= 2 ms for mailgate).
Targets are interleaved in rounds so that both see the same machine noise.

Usage: eod_latency.py --target NAME=PORT[/RCPT] ... [--size 4096]
                      [--count 500] [--rounds 5] [--warmup 20]
Prints one "eod" line per target with median/p90/p99/max in ms.
"""
import argparse
import os
import socket
import statistics
import sys
import time


class Session:
    def __init__(self, port, rcpt):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        # the final ".\r\n" must not wait behind Nagle for the body's ACK
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.rcpt = rcpt
        self.expect(220)
        self.cmd(b"EHLO bench.localdomain", 250)

    def reply(self):
        """One whole reply (multi-line included): its code."""
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed; buffered %r" % self.buf)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            if len(line) < 4 or line[3:4] == b" ":
                return int(line[:3])

    def expect(self, code):
        got = self.reply()
        if got != code:
            raise RuntimeError("expected %d, got %d" % (code, got))

    def cmd(self, line, code):
        self.sock.sendall(line + b"\r\n")
        self.expect(code)

    def message(self, body):
        """One transaction; the end-of-data latency in seconds."""
        self.cmd(b"MAIL FROM:<sender@bench.localdomain>", 250)
        self.cmd(b"RCPT TO:<" + self.rcpt.encode() + b">", 250)
        self.cmd(b"DATA", 354)
        self.sock.sendall(body)
        t0 = time.perf_counter()
        self.sock.sendall(b".\r\n")
        self.expect(250)
        return time.perf_counter() - t0

    def close(self):
        try:
            self.cmd(b"QUIT", 221)
        finally:
            self.sock.close()


def make_body(size):
    """A message of about `size` bytes in lines of 76, ending in CRLF,
    no line starting with a dot."""
    head = (b"From: <sender@bench.localdomain>\r\n"
            b"To: <bench@bench.localdomain>\r\n"
            b"Subject: eod latency\r\n\r\n")
    line = b"x" * 76 + b"\r\n"
    n = max(1, (size - len(head)) // len(line))
    return head + line * n


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", required=True,
                    help="NAME=PORT[/RCPT] (default RCPT bench@bench.localdomain)")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--count", type=int, default=500, help="messages per target")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    body = make_body(a.size)
    targets = []
    for t in a.target:
        name, spec = t.split("=", 1)
        port, _, rcpt = spec.partition("/")
        targets.append((name, Session(int(port), rcpt or "bench@bench.localdomain")))
    for _, s in targets:
        for _ in range(a.warmup):
            s.message(body)
    lat = {name: [] for name, _ in targets}
    per_round = max(1, a.count // a.rounds)
    for _ in range(a.rounds):
        for name, s in targets:
            for _ in range(per_round):
                lat[name].append(s.message(body))
    for name, s in targets:
        s.close()
        v = [x * 1e3 for x in lat[name]]
        print("eod target=%s size=%d conc=1 msgs=%d median_ms=%.3f p90_ms=%.3f "
              "p99_ms=%.3f max_ms=%.3f" % (name, len(body), len(v),
                                          statistics.median(v), pct(v, 90),
                                          pct(v, 99), max(v)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
