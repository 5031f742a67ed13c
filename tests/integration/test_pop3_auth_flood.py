"""A flood of wrong POP3 passwords (reliability catalog item 49): each costs
an Argon2id derivation of 64 MiB, so the derivations must be capped
(`kdf_concurrency`), memory must stay bounded, and journal deliveries over
SMTP must go on at their usual pace meanwhile.
"""

import os
import threading
import time

import pytest

from conftest import mailbox_create, mg_dump, sanitized, split_trace
from pop3_helpers import make_pop3, raw  # noqa: F401 (fixture)
from smtp_helpers import addr, sample_message, session

FLOOD = 100
SENDER = "alice@sender.test"


def _status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s" % field)


@pytest.mark.watchdog(90)
def test_wrong_password_flood(make_pop3, certs, monkeypatch):
    # AddressSanitizer would otherwise keep each freed 64 MiB Argon2 area
    # in its quarantine, and VmHWM would measure that
    monkeypatch.setenv("ASAN_OPTIONS", os.environ.get(
        "ASAN_OPTIONS", "detect_leaks=1") + ":quarantine_size_mb=0")
    d = make_pop3(pop3={"auth_failure_delay": 0,
                        "auth_throttle_exempt": ["127.0.0.0/8"]},
                  top={"kdf_concurrency": 2, "worker_threads": 8,
                       "max_connections_per_ip": 200})
    box = mailbox_create(d)
    hwm0 = _status_kb(d.pid, "VmHWM")

    answers = []
    lock = threading.Lock()
    start = threading.Event()

    def guess(i):
        c = raw(d.pop3s_port, certs, tls=True)
        c.timeout = 60
        c.sock.settimeout(60)
        assert c.cmd("USER %s" % box["id"]).startswith("+OK")
        start.wait(10)
        r = c.cmd("PASS wrong-%d" % i)
        with lock:
            answers.append(r)
        c.close()

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(FLOOD)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    start.set()

    # journal deliveries while the derivations queue: each end of data is
    # answered about as fast as without the flood
    latencies = []
    sent = []
    c = session(d.smtp_port, certs)
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        m = sample_message("during-flood-%d" % len(sent))
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        c.expect("RCPT TO:<%s>" % addr(box), 250)
        t0 = time.monotonic()
        c.data(m)
        latencies.append(time.monotonic() - t0)
        sent.append(m)
    c.expect("QUIT", 221)
    flood_running = any(t.is_alive() for t in threads)

    for t in threads:
        t.join(80)
    assert not any(t.is_alive() for t in threads)
    assert len(answers) == FLOOD
    assert all(a.startswith("-ERR [AUTH]") for a in answers), set(answers)
    # two derivations at a time: 2 × 64 MiB (plus the daemon's own)
    grown = _status_kb(d.pid, "VmHWM") - hwm0
    assert grown < 3 * 65536 + 32768, "peak RSS grew by %d KiB" % grown
    # the flood was still being worked off while the mail went through, so
    # the latencies were measured under it
    assert flood_running, "the flood was over before the deliveries ended"
    latencies.sort()
    worst_ok = 1.5 if sanitized() else 0.5
    assert latencies[len(latencies) // 2] < worst_ok / 2, latencies
    assert latencies[-1] < worst_ok, latencies

    assert sorted(split_trace(x["body"])[1] for x in mg_dump(d, box)) == sorted(sent)
