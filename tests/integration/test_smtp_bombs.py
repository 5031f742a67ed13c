"""Message shapes that hurt other servers (reliability catalog items 19 and
20): lines far longer than 1000 octets, header blocks over 64 KB (Exchange
sends them), half a million address headers, a million bare-LF lines and
deep MIME nesting. The gateway does not parse messages, so each must be
stored as sent (bare line ends normalised to CRLF) in linear time.
"""

import os
import poplib

import pytest

from conftest import mailbox_create, mg_dump, sanitized, split_trace
from pop3_helpers import make_pop3, pop3s, strip_trace  # noqa: F401
from smtp_helpers import addr, session

SENDER = "alice@sender.test"


def _cpu_s(pid):
    """utime + stime of the process in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Quadratic work on these inputs would take minutes; linear work takes well
# under a second (several times that under the sanitizers).
CPU_BOUND_S = 12.0 if sanitized() else 3.0


def _send(d, box, certs, message):
    c = session(d.smtp_port, certs, timeout=60)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(box), 250)
    cpu0 = _cpu_s(d.pid)
    c.data(message)
    cpu = _cpu_s(d.pid) - cpu0
    c.expect("QUIT", 221)
    return cpu


def _stored(d, box):
    return [split_trace(m["body"])[1] for m in mg_dump(d, box)]


def test_long_lines_and_huge_header_block(make_pop3, certs, monkeypatch):
    """A 300 KB line and a 200 KB header block are stored unchanged and
    retrieved byte-exact over POP3."""
    d = make_pop3()
    box = mailbox_create(d)
    header = b"".join(b"X-Exchange-Journal-%05d: %s\r\n" % (i, b"r" * 60)
                      for i in range(2500))
    assert len(header) > 200000
    message = (b"Subject: long lines\r\n" + header + b"\r\n" +
               b"a" * 300000 + b"\r\nshort\r\n" + b"b" * 70000 + b"\r\n")
    _send(d, box, certs, message)
    assert _stored(d, box) == [message]
    monkeypatch.setattr(poplib, "_MAXLINE", 1 << 20)  # poplib's own: 2048
    p = pop3s(d, certs, timeout=30)
    p.user(box["id"])
    p.pass_(box["password"])
    assert strip_trace(p.retr(1)[1]) == message
    p.quit()


@pytest.mark.watchdog(60)
def test_half_a_million_address_headers(make_pop3, certs):
    """Dovecot CVE-2024-23184 shape: 500 000 To: headers (6 MB)."""
    d = make_pop3()
    box = mailbox_create(d)
    message = (b"Subject: many addresses\r\n" +
               b"".join(b"To: u%d@x.test\r\n" % i for i in range(500000)) +
               b"\r\nbody\r\n")
    cpu = _send(d, box, certs, message)
    assert cpu < CPU_BOUND_S, "%.1f s CPU for 6 MB of headers" % cpu
    assert _stored(d, box) == [message]


@pytest.mark.watchdog(60)
def test_a_million_bare_lf_lines(make_pop3, certs):
    """One million lines ending in a bare LF: each is normalised to CRLF,
    in linear time."""
    d = make_pop3()
    box = mailbox_create(d)
    body = b"x\n" * 999999 + b"x\r\n"
    cpu = _send(d, box, certs, b"Subject: bare LF\r\n\r\n" + body)
    assert cpu < CPU_BOUND_S, "%.1f s CPU for a million bare LFs" % cpu
    assert _stored(d, box) == [b"Subject: bare LF\r\n\r\n" + b"x\r\n" * 1000000]


@pytest.mark.watchdog(60)
def test_deep_mime_nesting(make_pop3, certs):
    """CVE-2020-12100 shape: 10 000 nested multiparts are just bytes."""
    d = make_pop3()
    box = mailbox_create(d)
    depth = 10000
    parts = []
    for i in range(depth):
        parts.append(b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n"
                     b"--b%d\r\n" % (i, i))
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    message = (b"Subject: nested\r\nMIME-Version: 1.0\r\n" + b"".join(parts) +
               b"Content-Type: text/plain\r\n\r\ninner\r\n" + closing)
    cpu = _send(d, box, certs, message)
    assert cpu < CPU_BOUND_S, "%.1f s CPU for deep nesting" % cpu
    assert _stored(d, box) == [message]
