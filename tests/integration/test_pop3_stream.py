"""POP3 module (issue 5): a multi-megabyte message is streamed to the
client chunk by chunk. While the client does not read, the daemon's memory
stays flat (the response is never buffered whole); what arrives equals
what was sent."""

import hashlib
import os
import time

import pytest

from pop3_helpers import (deliver, mailbox_create, make_pop3, raw,
                          strip_trace)

assert make_pop3  # a fixture, used by name

SIZE_MB = 24


def rss_kb(pid):
    """Anonymous resident memory: the store's map is file-backed, and the
    pages a reader touched count in VmRSS without being the daemon's."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def big_message():
    """Header, then SIZE_MB of 76-column lines, some starting with a dot."""
    head = b"From: a@sender.test\r\nSubject: big\r\n\r\n"
    line = os.urandom(38).hex().encode()
    lines = []
    n = SIZE_MB * 1024 * 1024 // 78
    for i in range(n):
        lines.append(b"." + line[1:] if i % 97 == 0 else line)
    return head + b"\r\n".join(lines) + b"\r\n"


@pytest.mark.watchdog(120)
def test_big_message_flat_memory(make_pop3, certs):
    d = make_pop3(start=False)
    # AddressSanitizer keeps freed memory in quarantine, which would count
    # every chunk ever decrypted; without it RSS is what is live
    d.extra_env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                                   ":quarantine_size_mb=0").lstrip(":")
    d.start()
    mb = mailbox_create(d)
    msg = big_message()
    deliver(d, mb, [msg], certs)
    c = raw(d.pop3s_port, certs, tls=True)
    c.timeout = 30
    c.sock.settimeout(30)
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")
    time.sleep(0.3)
    base = rss_kb(d.pid)
    c.send("RETR 1\r\n")
    assert c.line().startswith("+OK")
    # the client stops reading: the daemon must stop producing
    time.sleep(1.5)
    stalled = rss_kb(d.pid)
    grown_mb = (stalled - base) / 1024.0
    assert grown_mb < SIZE_MB / 3, (base, stalled)
    # then everything arrives, dot-stuffed, ending with the dot line
    h = hashlib.sha256()
    lines = []
    while True:
        while b"\r\n" not in c.buf:
            c._fill()
        raw_line, c.buf = c.buf.split(b"\r\n", 1)
        if raw_line == b".":
            break
        lines.append(raw_line[1:] if raw_line.startswith(b".") else raw_line)
    got = strip_trace(lines)
    h.update(got)
    assert len(got) == len(msg)
    assert h.hexdigest() == hashlib.sha256(msg).hexdigest()
    peak = rss_kb(d.pid)
    assert (peak - base) / 1024.0 < SIZE_MB / 3, (base, peak)
    assert c.cmd("QUIT").startswith("+OK")
