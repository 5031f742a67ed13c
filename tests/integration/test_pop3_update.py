"""POP3 module (issue 5): the UPDATE state and shutdown. Deletions commit
only after QUIT, durably, before +OK; a failing commit is -ERR [SYS/TEMP]
with nothing deleted; SIGTERM closes idle sessions without UPDATE."""

import os
import time

from conftest import shim_so, tail
from smtp_helpers import session
from pop3_helpers import (SENDER, addr, deliver, login, mailbox_create,
                          mailbox_messages, make_pop3, raw, sample_message,
                          strip_trace)

assert make_pop3  # a fixture, used by name


def test_delete_commit_failure_is_temporary(make_pop3, certs, tmp_path):
    d = make_pop3(start=False)
    flag = str(tmp_path / "fail-now")
    d.extra_env["LD_PRELOAD"] = shim_so("failsync")
    d.extra_env["MG_FAILSYNC_FLAG"] = flag
    d.extra_env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                                   ":verify_asan_link_order=0").lstrip(":")
    d.start()
    mb = mailbox_create(d)
    msgs = [sample_message("f1"), sample_message("f2")]
    deliver(d, mb, msgs, certs)
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")
    assert c.cmd("DELE 1").startswith("+OK")
    assert c.cmd("DELE 2").startswith("+OK")
    open(flag, "w").close()
    try:
        r = c.cmd("QUIT")
    finally:
        os.unlink(flag)
    assert r.startswith("-ERR [SYS/TEMP]"), r
    c.expect_closed()
    # nothing was deleted, and the messages are intact
    assert mailbox_messages(d, mb) == 2
    p = login(d, mb, certs)
    assert [strip_trace(p.retr(i)[1]) for i in (1, 2)] == msgs
    p.dele(1)
    p.dele(2)
    assert p.quit().startswith(b"+OK")
    assert mailbox_messages(d, mb) == 0


def test_sigterm_closes_sessions_without_update(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    deliver(d, mb, [sample_message("t1")], certs)
    idle = raw(d.pop3s_port, certs, tls=True)
    busy = raw(d.pop3s_port, certs, tls=True)
    assert busy.cmd("USER " + mb["id"]).startswith("+OK")
    assert busy.cmd("PASS " + mb["password"]).startswith("+OK")
    assert busy.cmd("DELE 1").startswith("+OK")
    rc, elapsed = d.stop()
    assert rc == 0, tail(d.log())
    assert elapsed < 2.0
    for c in (idle, busy):
        assert c.line().startswith("-ERR [SYS/TEMP]")
        c.expect_closed()
    # the marked message is still there (mailgatectl works without daemon)
    assert mailbox_messages(d, mb) == 1


def test_quit_deletes_durably(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    deliver(d, mb, [sample_message("q%d" % i) for i in range(20)], certs)
    p = login(d, mb, certs)
    for i in range(1, 21):
        p.dele(i)
    assert p.quit().startswith(b"+OK")
    # +OK came after the commit: a kill now loses nothing of it
    d.proc.kill()
    d.proc.wait()
    d.stopped = (d.expect_exit, 0)
    assert mailbox_messages(d, mb) == 0


def test_quit_in_flight_finishes_during_sigterm(make_pop3, certs, tmp_path):
    """A QUIT whose deletions are being committed when SIGTERM arrives is
    answered +OK within drain_timeout, and the deletions are durable.
    The disk is made slow (fsync sleeps 1.5 s) so that the commit is
    surely in flight when the signal comes."""
    d = make_pop3(start=False)
    slow = str(tmp_path / "slow-now")
    d.extra_env["LD_PRELOAD"] = shim_so("failsync")
    d.extra_env["MG_SLOWSYNC_FLAG"] = slow
    d.extra_env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                                   ":verify_asan_link_order=0").lstrip(":")
    d.start()
    mb = mailbox_create(d)
    deliver(d, mb, [sample_message("s%d" % i) for i in range(3)], certs)
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")
    for i in (1, 2, 3):
        assert c.cmd("DELE %d" % i).startswith("+OK")
    with open(slow, "w") as f:
        f.write("1500")
    c.send("QUIT\r\n")
    time.sleep(0.3)  # the commit has started and sleeps in fsync
    rc, elapsed = d.stop()
    os.unlink(slow)
    assert rc == 0, tail(d.log())
    assert 1.0 < elapsed < 5 + 2, elapsed  # waited for it, within drain
    r = c.line()
    assert r.startswith("+OK"), r
    c.expect_closed()
    assert mailbox_messages(d, mb) == 0


def test_deletions_commit_when_the_store_is_full(make_pop3, certs):
    """With the store filled until SMTP gets 452, the archiver can still
    empty the mailbox (deletions use the reserve), and new mail is then
    accepted again."""
    d = make_pop3(top={"store": {"map_size": 16777216, "reserve": 1048576}})
    mb = mailbox_create(d)
    body = b"".join(b"%076d\r\n" % i for i in range(400 * 1024 // 78))
    c = session(d.smtp_port, certs)
    stored, refused = 0, None
    for i in range(80):
        msg = b"Subject: fill %d\r\n\r\n" % i + body
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        code, text = c.code("RCPT TO:<%s>" % addr(mb))
        if code == 250:
            code, text = c.data(msg, expect=None)
        if code != 250:
            refused = (code, text)
            c.expect("RSET", 250)
            break
        stored += 1
    assert refused is not None and refused[0] in (451, 452), refused
    assert stored >= 5, stored
    assert mailbox_messages(d, mb) == stored

    p = login(d, mb, certs)
    assert p.stat()[0] == stored
    for i in range(1, stored + 1):
        p.dele(i)
    assert p.quit().startswith(b"+OK")
    assert mailbox_messages(d, mb) == 0

    # the space is free again: a new message is accepted
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.data(b"Subject: after\r\n\r\nagain\r\n")
    c.expect("QUIT", 221)
    assert mailbox_messages(d, mb) == 1
