"""POP3 module (issue 5): the TRANSACTION commands and their error paths
with poplib and a raw client: TOP, RSET, NOOP, DELE, odd arguments, NUL
bytes, overlong lines, lines starting with a dot, the session snapshot,
dropped connections, idle timeout, and UIDLs across a restart."""

import time

from conftest import Closed, split_trace
from pop3_helpers import (deliver, login, mailbox_create, mailbox_messages,
                          make_pop3, raw, sample_message, strip_trace)

assert make_pop3  # a fixture, used by name


def logged_in(d, mb, certs):
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")
    return c


def test_dot_lines_round_trip(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    msg = (b"From: a@sender.test\r\nSubject: dots\r\n\r\n"
           b".\r\n..\r\n. \r\n.leading\r\n...three\r\nmiddle . dot\r\n"
           b"\r\n.\r\nend\r\n")
    deliver(d, mb, [msg], certs)
    p = login(d, mb, certs)
    assert strip_trace(p.retr(1)[1]) == msg
    p.quit()
    # on the wire: every line that starts with '.' has one more
    c = logged_in(d, mb, certs)
    c.send("RETR 1\r\n")
    assert c.line().startswith("+OK")
    wire = []
    while True:
        line = c.line()
        if line == ".":
            break
        wire.append(line)
    body = wire[wire.index("") + 1:]
    assert body == ["..", "...", ".. ", "..leading", "....three",
                    "middle . dot", "", "..", "end"], body


def test_top(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    msg = (b"From: a@sender.test\r\nSubject: top\r\n\r\n"
           b"line 1\r\n.line 2\r\nline 3\r\n")
    deliver(d, mb, [msg], certs)
    p = login(d, mb, certs)
    full = strip_trace(p.retr(1)[1])
    head = full.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert strip_trace(p.top(1, 0)[1]) == head
    assert strip_trace(p.top(1, 2)[1]) == head + b"line 1\r\n.line 2\r\n"
    assert strip_trace(p.top(1, 99)[1]) == full
    assert strip_trace(p.top(1, 99999999999999999999999)[1]) == full
    p.quit()


def test_odd_arguments(make_pop3, certs):
    d = make_pop3(pop3={"max_errors": 100})
    mb = mailbox_create(d)
    deliver(d, mb, [sample_message("odd")], certs)
    c = logged_in(d, mb, certs)
    for line in ("RETR 0", "RETR 2", "RETR 4294967295", "RETR 4294967296",
                 "RETR 4294967297", "RETR -1", "RETR +1", "RETR 1x",
                 "RETR", "RETR 1 2", "TOP 1 -5", "TOP 1", "TOP 0 1",
                 "TOP 1 x", "LIST 0", "LIST 4294967297", "UIDL 2", "DELE 0",
                 "DELE 99", "STAT 1", "NOOP x", "RSET x", "XTND", "retr\t1",
                 " RETR 1", "RETR\x001", "\x00", "USER x"):
        r = c.cmd(line)
        assert r.startswith("-ERR"), (line, r)
    # the session is still in sync and the message intact
    assert c.cmd("NOOP") == "+OK Nothing done"
    assert c.cmd("LIST 1").startswith("+OK 1 ")
    assert c.cmd("DELE 1").startswith("+OK")
    assert c.cmd("DELE 1").startswith("-ERR")
    assert c.cmd("RETR 1").startswith("-ERR")
    assert c.cmd("LIST 1").startswith("-ERR")
    assert c.cmd("STAT") == "+OK 0 0"
    assert c.cmd("RSET").startswith("+OK")
    assert c.cmd("STAT").startswith("+OK 1 ")
    assert c.cmd("QUIT").startswith("+OK")
    assert mailbox_messages(d, mb) == 1


def test_nul_and_overlong_lines(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    c = logged_in(d, mb, certs)
    assert c.cmd("NO\x00OP").startswith("-ERR")
    assert c.cmd("NOOP") == "+OK Nothing done"
    c.send("NOOP " + "x" * 5000 + "\r\n")
    assert c.line().startswith("-ERR")
    c.expect_closed()


def test_max_errors(make_pop3, certs):
    d = make_pop3(pop3={"max_errors": 3})
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("BOGUS").startswith("-ERR")
    assert c.cmd("BOGUS").startswith("-ERR")
    assert c.cmd("BOGUS").startswith("-ERR")
    assert c.line().startswith("-ERR")  # too many errors
    c.expect_closed()


def test_snapshot_is_stable(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    first = [sample_message("a"), sample_message("b")]
    deliver(d, mb, first, certs)
    p = login(d, mb, certs)
    before = p.uidl()[1]
    # new mail arrives during the session: it does not renumber it
    late = sample_message("late")
    deliver(d, mb, [late], certs)
    assert p.stat()[0] == 2
    assert p.uidl()[1] == before
    assert strip_trace(p.retr(2)[1]) == first[1]
    p.dele(1)
    p.dele(2)
    p.quit()
    # the late message was neither deleted nor lost
    assert mailbox_messages(d, mb) == 1
    p = login(d, mb, certs)
    assert p.stat()[0] == 1
    assert strip_trace(p.retr(1)[1]) == late
    p.quit()


def test_dropped_connection_deletes_nothing(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    deliver(d, mb, [sample_message("x"), sample_message("y")], certs)
    c = logged_in(d, mb, certs)
    assert c.cmd("DELE 1").startswith("+OK")
    assert c.cmd("DELE 2").startswith("+OK")
    c.close()
    d.wait_log(r"conn \d+ .*closed")
    time.sleep(0.2)
    assert mailbox_messages(d, mb) == 2
    # RSET then QUIT deletes nothing either
    p = login(d, mb, certs)
    p.dele(1)
    p.rset()
    p.quit()
    assert mailbox_messages(d, mb) == 2


def test_idle_timeout(make_pop3, certs):
    d = make_pop3(pop3={"idle_timeout": 1})
    mb = mailbox_create(d)
    deliver(d, mb, [sample_message("idle")], certs)
    c = logged_in(d, mb, certs)
    assert c.cmd("DELE 1").startswith("+OK")
    c.sock.settimeout(5)
    assert c.line().startswith("-ERR")  # autologout
    c.expect_closed()
    # autologout never enters UPDATE
    assert mailbox_messages(d, mb) == 1


def test_trickled_command_is_cut(make_pop3, certs):
    d = make_pop3(pop3={"idle_timeout": 1})
    c = raw(d.pop3_plain_port)
    t0 = time.monotonic()
    try:
        for ch in "NOOOOOOOOOOOOOOOOOOOOOP":
            c.send(ch)
            time.sleep(0.3)
    except OSError:
        pass
    assert c.line().startswith("-ERR")
    c.expect_closed()
    assert time.monotonic() - t0 < 4


def test_uidl_stable_across_restart(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    deliver(d, mb, [sample_message("u1"), sample_message("u2")], certs)
    p = login(d, mb, certs)
    before = p.uidl()[1]
    p.quit()
    d.stop()
    d.stopped = None
    d.proc = None
    d.start()
    p = login(d, mb, certs)
    assert p.uidl()[1] == before
    p.dele(1)
    p.quit()
    # a new message never reuses a UIDL
    deliver(d, mb, [sample_message("u3")], certs)
    p = login(d, mb, certs)
    after = [l.split()[1] for l in p.uidl()[1]]
    old = [l.split()[1] for l in before]
    assert after[0] == old[1] and after[1] not in old
    p.quit()


def test_retr_equals_stored(make_pop3, certs):
    """What RETR sends equals what the store holds, trace fields included."""
    from conftest import mg_dump

    d = make_pop3()
    mb = mailbox_create(d)
    msg = sample_message("dump", extra=b"no final CRLF follows")
    deliver(d, mb, [msg + b"\r\n"], certs)
    stored = mg_dump(d, mb)[0]["body"]
    p = login(d, mb, certs)
    got = b"".join(l + b"\r\n" for l in p.retr(1)[1])
    assert got == stored
    assert split_trace(got)[1] == msg + b"\r\n"
    p.quit()


def test_quit_in_authorization(make_pop3, certs):
    d = make_pop3()
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("NOOP").startswith("-ERR")
    assert c.cmd("QUIT").startswith("+OK")
    try:
        c.expect_closed()
    except Closed:
        pass
