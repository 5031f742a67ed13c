"""End to end (issue 5, Tests): a real Postfix journals N messages to the
gateway (always_bcc over verified STARTTLS, see postfix_helpers), and
fetchmail retrieves them over implicit TLS with certificate checking and
deletes them. Every message fetchmail delivered equals what Postfix
delivered to the gateway apart from the trace fields the gateway prepends
(what Postfix delivered is the submitted message under the one Received
field Postfix adds); none is missing and none duplicated (by Message-ID);
the mailbox is empty afterwards.

The messages vary in size (a few hundred bytes to 256 KiB), carry lines
that start with a dot (one a lone "."), 8-bit text and, some of them, a
long header block (about 60 KiB of fields)."""

import os
import random
import re
import smtplib
import time

import pytest

from conftest import split_trace
from fetchmail_helpers import Fetchmail
from pop3_helpers import mailbox_create, mailbox_messages, make_pop3
from postfix_helpers import Postfix
from smtp_helpers import addr

assert make_pop3  # a fixture, used by name

N = 50
SENDER = "alice@sender.test"


def message(i, rng):
    mid = "<e2e-%d-%s@sender.test>" % (i, os.urandom(6).hex())
    head = [b"From: Alice <alice@sender.test>",
            b"To: Bob <user@remote.test>",
            b"Subject: e2e %d \xc3\xa4" % i,
            b"Message-ID: " + mid.encode(),
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000",
            b"MIME-Version: 1.0",
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Transfer-Encoding: 8bit"]
    if i % 5 == 0:
        # a long header block: 300 fields, some folded
        for k in range(300):
            head.append(b"X-Long-%03d: %s" % (k, b"h" * 150))
            if k % 3 == 0:
                head.append(b"\t" + b"f" * 60)
    body = [b".", b"..", b".leading dot", b"\xc3\xa4\xc3\xb6\xc3\xbc 8-bit",
            b"From the start of a line", b""]
    size = rng.choice([200, 2000, 20000, 100000, 262144])
    line = bytes(rng.choice(b"abcdefghij .,") for _ in range(76))
    while sum(len(l) + 2 for l in body) < size:
        body.append((b"." if rng.random() < 0.1 else b"") + line)
    return mid, b"\r\n".join(head) + b"\r\n\r\n" + b"\r\n".join(body) + b"\r\n"


POSTFIX_RECEIVED = re.compile(
    rb"^Received: from client\.test \(localhost \[127\.0\.0\.1\]\)\r\n"
    rb"\tby postfix\.test \(Postfix\) with E?SMTPS? id \w+\r\n"
    rb"\tfor <user@remote\.test>; [^\r\n]+\r\n")


def message_id(data):
    m = re.search(rb"(?mi)^Message-ID: (<[^>\r\n]+>)\r$", data)
    assert m, data[:500]
    return m.group(1).decode()


# Postfix's start (about 2 s), 50 relayed copies and one fetchmail poll of
# about 4 MB under the sanitizers take about 10 s here; each wait inside
# has its own bound.
@pytest.mark.watchdog(60)
def test_postfix_to_fetchmail(make_pop3, certs, tmp_path):
    d = make_pop3()
    mb = mailbox_create(d)
    rng = random.Random(5)
    sent = dict(message(i, rng) for i in range(N))
    pf = Postfix(d.smtp_port, certs["cert"], addr(mb))
    try:
        pf.start()
        s = smtplib.SMTP("127.0.0.1", pf.port, local_hostname="client.test",
                         timeout=10)
        try:
            for msg in sent.values():
                assert s.sendmail(SENDER, ["user@remote.test"], msg) == {}
        finally:
            s.quit()
        deadline = time.monotonic() + 30
        while mailbox_messages(d, mb) < N and time.monotonic() < deadline:
            time.sleep(0.2)
        assert mailbox_messages(d, mb) == N, pf.log()[-4000:]
    finally:
        pf.cleanup()

    fm = Fetchmail(str(tmp_path), mb, certs["cert"])
    r = fm.run(d.pop3s_port, "implicit", timeout=40)
    assert r.returncode == 0, r.stdout[-4000:]
    got = fm.delivered()
    ids = [message_id(g) for g in got]
    assert len(ids) == len(set(ids)), "duplicated: %r" % sorted(
        i for i in ids if ids.count(i) > 1)
    assert set(ids) == set(sent), "missing %r, unknown %r" % (
        set(sent) - set(ids), set(ids) - set(sent))
    for mid, data in zip(ids, got):
        trace, rest = split_trace(data)
        assert trace["Return-Path"] == "<%s>" % SENDER, trace
        m = POSTFIX_RECEIVED.match(rest)
        assert m, rest[:600]
        assert rest[m.end():] == sent[mid], mid
    assert mailbox_messages(d, mb) == 0
