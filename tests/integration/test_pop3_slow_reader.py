"""A stalled archiver (reliability catalog item 8): a RETR whose client
stops reading must not pin an LMDB read snapshot while the connection
waits. If it did, every page freed by later deletions would stay unusable
and the store file would grow with each round of delivery and deletion.
"""

import os
import socket
import time

import pytest

from conftest import tls_client_ctx
from pop3_helpers import (deliver, mailbox_create, make_pop3, pop3s,
                          strip_trace)
from test_pop3_stream import big_message

assert make_pop3  # a fixture, used by name

ROUNDS = 4
PER_ROUND = 120
SIZE = 64 * 1024


def _allocated_mb(d):
    st = os.stat(os.path.join(d.data_dir, "store", "data.mdb"))
    return st.st_blocks * 512 / (1 << 20)


def _churn_round(d, box, certs, tag):
    body = os.urandom(SIZE // 2).hex().encode()
    body = b"\r\n".join(body[i:i + 76] for i in range(0, len(body), 76))
    msgs = [b"Subject: churn %s %d\r\n\r\n" % (tag.encode(), i) + body + b"\r\n"
            for i in range(PER_ROUND)]
    deliver(d, box, msgs, certs)
    p = pop3s(d, certs, timeout=30)
    p.user(box["id"])
    p.pass_(box["password"])
    count, _ = p.stat()
    assert count == PER_ROUND
    for i in range(1, count + 1):
        p.dele(i)
    p.quit()


def _slow_tls_reader(d, box, certs, rcvbuf, timeout):
    """An archiver over implicit TLS with a small receive buffer, logged
    in to box: its socket and a reader of it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", d.pop3s_port))
    s = tls_client_ctx(certs).wrap_socket(s, server_hostname="localhost")
    f = s.makefile("rb")
    assert f.readline().startswith(b"+OK")
    s.sendall(b"USER %s\r\n" % box["id"].encode())
    assert f.readline().startswith(b"+OK")
    s.sendall(b"PASS %s\r\n" % box["password"].encode())
    assert f.readline().startswith(b"+OK")
    return s, f


@pytest.mark.watchdog(150)
def test_stalled_retr_pins_no_snapshot(make_pop3, certs):
    d = make_pop3()
    reader_box = mailbox_create(d, name="Stalled")
    churn_box = mailbox_create(d, name="Churn")
    msg = big_message()
    deliver(d, reader_box, [msg], certs)

    # the archiver: a small receive buffer, RETR, a few bytes read, then
    # it stops reading
    s, f = _slow_tls_reader(d, reader_box, certs, 4096, 30)
    s.sendall(b"RETR 1\r\n")
    assert f.readline().startswith(b"+OK")
    early = f.read(10000)

    # one round first, so that the free list has pages to offer
    _churn_round(d, churn_box, certs, "warm")
    before = _allocated_mb(d)
    for r in range(ROUNDS):
        _churn_round(d, churn_box, certs, "r%d" % r)
    grown = _allocated_mb(d) - before
    per_round = PER_ROUND * SIZE / (1 << 20)
    # without a pinned snapshot each round reuses the pages the previous
    # one freed; with one, the file grows by a round's worth every round
    assert grown < 1.5 * per_round, (
        "the store grew by %.1f MB over %d rounds of %.1f MB while a RETR "
        "was stalled" % (grown, ROUNDS, per_round))

    # the stalled archiver then gets its whole message
    rest = []
    while True:
        line = f.readline()
        assert line.endswith(b"\r\n"), line[-20:]
        if line == b".\r\n":
            break
        rest.append(line)
    data = early + b"".join(rest)
    lines = [l[1:] if l.startswith(b".") else l
             for l in data.split(b"\r\n")[:-1]]
    assert strip_trace(lines) == msg
    s.sendall(b"QUIT\r\n")
    assert f.readline().startswith(b"+OK")


def _message(size, tag):
    line = b"x" * 74 + b"\r\n"
    return (b"Subject: slow %s\r\n\r\n" % tag.encode() +
            line * (size // len(line)))


@pytest.mark.watchdog(150)
def test_slow_reader_gets_the_reply_after_each_message(make_pop3, certs):
    """A client that reads slowly, over TLS, with a command pipelined
    behind each RETR of messages larger than every buffer on the way (so
    they stay full): the command is answered once the message is out,
    wherever the message ends relative to the output marks. (The records
    TLS holds for the socket once counted as queued output: past the mark
    with no write ever refused, the session waited for a "drained" event
    that never came, and stopped reading for good.)"""
    d = make_pop3()
    box = mailbox_create(d, name="Slow")
    sizes = [5_000_000 + 23_000 * i for i in range(12)]
    deliver(d, box, [_message(n, str(i)) for i, n in enumerate(sizes)], certs)
    s, f = _slow_tls_reader(d, box, certs, 8192, 20)
    for i in range(1, len(sizes) + 1):
        s.sendall(b"RETR %d\r\nNOOP\r\n" % i)
        data = b""
        while b"\r\n.\r\n" not in data:
            chunk = f.read1(16384)
            assert chunk, (i, len(data))
            data += chunk
            time.sleep(0.001)  # slower than the server: its buffers fill
        end = data.index(b"\r\n.\r\n") + 5
        assert data.startswith(b"+OK") and end >= sizes[i - 1]
        rest = data[end:]
        while b"\r\n" not in rest:  # the NOOP's reply
            chunk = f.read1(16384)
            assert chunk, (i, rest)
            rest += chunk
        assert rest.startswith(b"+OK") and rest.endswith(b"\r\n"), (i, rest)
    s.sendall(b"QUIT\r\n")
    assert f.readline().startswith(b"+OK")
