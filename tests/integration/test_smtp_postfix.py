"""SMTP module with a real Postfix journaling to it (issue 4, Tests).

A private Postfix (postfix_helpers.Postfix, which describes its setup)
journals every message it accepts to the gateway over verified STARTTLS.
"""

import re
import time

import pytest

from conftest import mailbox_create, mailbox_status, mg_dump, split_trace
from postfix_helpers import Postfix
from smtp_helpers import addr, sample_message


def poll_dump(d, mb, n, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        got = mg_dump(d, mb)
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


# Starting Postfix (postfix-script checks and creates the fresh queue
# directory: about 2 s), two deliveries and a deferred retry take about
# 4.5 s here; the 15 s default is too tight for a loaded CI machine, and
# every wait inside has its own bound (10 s), so a stall still fails.
@pytest.mark.watchdog(45)
def test_postfix_journals_over_verified_tls(make_smtp, certs):
    d = make_smtp()
    mb = mailbox_create(d)
    pf = Postfix(d.smtp_port, certs["cert"], addr(mb))
    try:
        pf.start()
        msg1 = sample_message("via-postfix-1")
        pf.submit("alice@sender.test", ["user@remote.test"], msg1)
        got = poll_dump(d, mb, 1)
        assert len(got) == 1, "journal copy not delivered; Postfix log:\n" + pf.log()[-4000:]
        trace, rest = split_trace(got[0]["body"])
        assert trace["Return-Path"] == "<alice@sender.test>"
        assert re.search(r"TLSv1\.[23]", trace["Received"]), trace
        # Postfix added its own trace field; the submitted message follows
        assert rest.endswith(msg1.split(b"\r\n\r\n", 1)[1]), rest[-500:]
        assert b"Subject: test via-postfix-1\r\n" in rest
        pf.wait_log(r"Verified TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:%d"
                    % d.smtp_port)
        pf.wait_log(r"to=<%s>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*status=sent"
                    % (re.escape(addr(mb)), d.smtp_port))

        # suspended: the gateway answers 450, Postfix keeps the copy queued
        mailbox_status(d, mb["id"], "suspended")
        msg2 = sample_message("via-postfix-2")
        pf.submit("alice@sender.test", ["user@remote.test"], msg2)
        pf.wait_log(r"to=<%s>.*status=deferred.*450 4\.2\.1" % re.escape(addr(mb)))
        assert len(mg_dump(d, mb)) == 1

        # re-activated: a forced retry delivers it
        mailbox_status(d, mb["id"], "active")
        pf.flush()
        got = poll_dump(d, mb, 2)
        assert len(got) == 2, "retry not delivered; Postfix log:\n" + pf.log()[-4000:]
        bodies = [split_trace(m["body"])[1] for m in got]
        assert sum(b"Subject: test via-postfix-2\r\n" in b for b in bodies) == 1
        assert sum(b"Subject: test via-postfix-1\r\n" in b for b in bodies) == 1
    finally:
        pf.cleanup()
