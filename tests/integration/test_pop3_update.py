"""POP3 module (issue 5): the UPDATE state and shutdown. Deletions commit
only after QUIT, durably, before +OK; a failing commit is -ERR [SYS/TEMP]
with nothing deleted; SIGTERM closes idle sessions without UPDATE."""

import os

from conftest import tail
from pop3_helpers import (deliver, login, mailbox_create, mailbox_messages,
                          make_pop3, raw, sample_message, strip_trace)

assert make_pop3  # a fixture, used by name


def _failsync():
    so = os.path.join(os.environ["MG_BUILD_DIR"], "tests", "tools", ".libs",
                      "failsync.so")
    assert os.path.exists(so), "%s is missing: make check builds it" % so
    return so


def test_delete_commit_failure_is_temporary(make_pop3, certs, tmp_path):
    d = make_pop3(start=False)
    flag = str(tmp_path / "fail-now")
    d.extra_env["LD_PRELOAD"] = _failsync()
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
