"""Slowloris (reliability catalog item 57): hundreds of connections from
many addresses trickle a byte at a time. The per-address and global caps
hold them, the journal sender in `limit_exempt` is still greeted at once,
and the command deadline cuts the tricklers so that ordinary clients are
admitted again.
"""

import socket
import threading
import time

import pytest

from conftest import mailbox_create, mg_dump, split_trace
from smtp_helpers import Smtp, addr, sample_message

ATTACKERS = ["127.0.0.%d" % i for i in range(2, 10)]  # 8 addresses
PER_ADDRESS = 60
SENDER = "alice@sender.test"


def _dial(port, source, timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


@pytest.mark.watchdog(60)
def test_tricklers_do_not_lock_out_the_journal_sender(make_smtp, certs):
    d = make_smtp(smtp={"idle_timeout": 3},
                  top={"max_connections": 300, "max_connections_per_ip": 50,
                       "limit_exempt": ["127.0.0.1/32"]})
    box = mailbox_create(d)
    admitted, refused = [], 0
    for source in ATTACKERS:
        for _ in range(PER_ADDRESS):
            s = _dial(d.smtp_port, source)
            first = s.recv(512)
            if first.startswith(b"220"):
                admitted.append(s)
            else:
                assert first.startswith(b"421"), first
                refused += 1
                s.close()
    # 50 per address, and no more than 300 in all
    assert len(admitted) == 300, len(admitted)
    assert refused == len(ATTACKERS) * PER_ADDRESS - 300

    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for s in list(admitted):
                try:
                    s.send(b"E")
                except OSError:
                    admitted.remove(s)
            stop.wait(0.5)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        # an ordinary client is refused while the caps are full ...
        s = _dial(d.smtp_port, "127.0.0.20")
        assert s.recv(512).startswith(b"421")
        s.close()
        # ... the exempt journal sender is greeted at once and delivers
        t0 = time.monotonic()
        c = Smtp(0, sock=socket.create_connection(("127.0.0.1", d.smtp_port), 5))
        c.greet()
        assert time.monotonic() - t0 < 2.0
        c.ehlo()
        m = sample_message("past-the-tricklers")
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        c.expect("RCPT TO:<%s>" % addr(box), 250)
        c.data(m)
        c.expect("QUIT", 221)

        # the tricklers never finish a command: idle_timeout after their
        # first byte they are cut off
        deadline = time.monotonic() + 15
        while admitted and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not admitted, "%d tricklers still connected" % len(admitted)
    finally:
        stop.set()
        t.join(10)
        for s in admitted:
            s.close()

    # and ordinary clients are admitted again
    s = _dial(d.smtp_port, "127.0.0.20")
    assert s.recv(512).startswith(b"220")
    s.close()
    assert [split_trace(x["body"])[1] for x in mg_dump(d, box)] == [m]
