"""SIGHUP under load (reliability catalog item 12): a storm of reloads while
SMTP clients deliver small messages and one client streams a large message
must not drop a session, lose an acknowledged message or acknowledge one
that was not stored; sessions finish on the settings they started with.
"""

import signal
import threading
import time

import pytest

from conftest import mailbox_create, mg_dump, split_trace
from smtp_helpers import addr, sample_message, session
from test_smtp_size import b64_lines

SENDER = "alice@sender.test"
# 40 reloads a second for the storm; each one re-reads the configuration
# and loads a new generation of every module
HUP_INTERVAL_S = 0.025
STORM_S = 4.0


@pytest.mark.watchdog(60)
def test_sighup_storm_during_deliveries(make_smtp, certs):
    d = make_smtp()
    box = mailbox_create(d)
    stop = threading.Event()
    acked = []
    errors = []
    lock = threading.Lock()

    def small_sender(n):
        try:
            c = session(d.smtp_port, certs)
            i = 0
            while not stop.is_set():
                m = sample_message("storm-%d-%d" % (n, i))
                c.expect("MAIL FROM:<%s>" % SENDER, 250)
                c.expect("RCPT TO:<%s>" % addr(box), 250)
                c.data(m)
                with lock:
                    acked.append(m)
                i += 1
            c.expect("QUIT", 221)
        except Exception as e:  # reported below with the test's assertion
            errors.append("sender %d: %r" % (n, e))

    big = b"Subject: big during the storm\r\n\r\n" + b64_lines(24 << 20)

    def big_sender():
        try:
            c = session(d.smtp_port, certs, timeout=30)
            c.expect("MAIL FROM:<%s>" % SENDER, 250)
            c.expect("RCPT TO:<%s>" % addr(box), 250)
            c.expect("DATA", 354)
            # trickle it over the whole storm so that reloads land mid-DATA
            step = len(big) // 40
            for off in range(0, len(big), step):
                c.send(big[off:off + step])
                time.sleep(STORM_S / 50)
            c.send(b".\r\n")
            code, lines = c.reply()
            assert code == 250, (code, lines)
            with lock:
                acked.append(big)
            c.expect("QUIT", 221)
        except Exception as e:
            errors.append("big sender: %r" % e)

    threads = [threading.Thread(target=small_sender, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=big_sender))
    for t in threads:
        t.start()
    log0 = len(d.log())
    hups = 0
    end = time.monotonic() + STORM_S
    while time.monotonic() < end:
        d.signal(signal.SIGHUP)
        hups += 1
        time.sleep(HUP_INTERVAL_S)
    stop.set()
    for t in threads:
        t.join(45)
    assert not any(t.is_alive() for t in threads), "a sender hung"
    assert not errors, errors
    assert d.alive()
    # the daemon did reload (signals may coalesce, but not into nothing)
    reloads = d.log()[log0:].count("reload: configuration generation")
    assert reloads >= 10, "only %d reloads logged for %d SIGHUPs" % (reloads, hups)

    stored = [split_trace(m["body"])[1] for m in mg_dump(d, box)]
    assert big in acked
    assert len(stored) == len(acked), (len(stored), len(acked))
    assert sorted(stored) == sorted(acked)
    assert len(acked) > 10, "too little load to mean anything"
