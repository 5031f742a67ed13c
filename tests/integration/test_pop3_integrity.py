"""POP3 module (issue 5): nothing unauthenticated reaches the client.

A bit of a stored chunk is flipped with the test tool mg-corrupt while the
daemon is stopped. RETR of a message whose first body chunk fails
authentication is an -ERR (the session goes on); one whose later chunk
fails ends the connection without the terminating dot, after sending only
the authenticated chunks before it. Other messages stay readable."""

import subprocess

from conftest import build_tool, daemon_env, mg_dump, tail
from pop3_helpers import (deliver, login, mailbox_create, make_pop3, raw,
                          strip_trace)

assert make_pop3  # a fixture, used by name


def big(tag, size):
    """A message of about `size` bytes: several store chunks."""
    head = b"Subject: %s\r\nMessage-ID: <%s@t>\r\n\r\n" % (tag, tag)
    line = b"%s-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmn\r\n" % tag
    return head + line * (size // len(line))


def corrupt(d, mailbox, msg_id, chunk):
    r = subprocess.run([build_tool("mg-corrupt"), d.data_dir, mailbox["id"],
                        str(msg_id), str(chunk)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=60, env=daemon_env())
    assert r.returncode == 0, r.stderr


def test_corrupt_chunks_are_never_sent(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    msgs = [big(b"first", 300_000), big(b"later", 300_000),
            big(b"intact", 300_000)]
    deliver(d, mb, msgs, certs)
    ids = [m["id"] for m in sorted(mg_dump(d, mb), key=lambda m: m["id"])]
    assert len(ids) == 3
    d.stop()
    corrupt(d, mb, ids[0], 1)  # the first body chunk
    corrupt(d, mb, ids[1], 3)  # a later one
    d.proc = None
    d.stopped = None
    d.start()

    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")
    r = c.cmd("RETR 1")
    assert r.startswith("-ERR"), r
    # the session goes on: the intact message is served whole
    assert c.cmd("RETR 3").startswith("+OK")
    got = c.multi()
    assert strip_trace([l.encode() for l in got]) == msgs[2]
    # a later chunk fails: no terminating dot, the connection ends, and
    # what came before is a prefix of the message
    assert c.cmd("RETR 2").startswith("+OK")
    rest = c.expect_closed(timeout=10)
    assert b"\r\n.\r\n" not in rest[-5:]
    assert len(rest) < len(msgs[1])
    assert b"later-0123" in rest
    for line in rest.split(b"\r\n")[:-1]:
        assert line == b"" or line.startswith(b"later-") or b":" in line, line
    log = d.log()
    assert "fails authentication" in log, tail(log)

    # nothing was deleted; a new session still reads the intact one
    p = login(d, mb, certs)
    assert p.stat()[0] == 3
    assert strip_trace(p.retr(3)[1]) == msgs[2]
    p.quit()
