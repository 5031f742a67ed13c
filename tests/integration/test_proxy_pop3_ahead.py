"""Record-ahead in the recording POP3 proxy (prefetch_max_size) against a
real Dovecot: while the client reads message n the proxy retrieves and
records n + 1, answers the client's RETR n + 1 from memory and sends its
dot only once that copy is durable. Whatever the client does instead
(TOP, LIST, RSET, DELE, QUIT) works as without it; a message over the
limit is relayed as usual; an upstream lost in the middle of a message
read ahead or a store that fails leaves nothing half-recorded and never a
dot without a copy. Data lines of any length pass and are recorded."""

import os
import poplib
import socket
import ssl

import pytest

from conftest import failsync_env
from dovecot_helpers import OneShotServer
from proxy_pop3_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_pop3_helpers import (crlf, login_name, mailbox_create, proxy_login,
                                recorded, retr, retr_dele_all, sample_messages,
                                strip_received)

AHEAD = {"prefetch_max_size": 1048576}
OFF = {"prefetch_max_size": 0}


def bodies(d, mb):
    return sorted(strip_received(c["body"]) for c in recorded(d, mb))


@pytest.mark.watchdog(60)
@pytest.mark.parametrize("ahead", [True, False])
def test_retr_dele_sequence(gateway, dovecot, certs, ahead):
    """RETR n, DELE n, RETR n + 1 … (the bench's and most clients'
    order): byte-identical messages and copies, all but the first
    recorded ahead."""
    dv = dovecot()
    msgs = sample_messages(12, size=40000, tag="s")
    dv.add(msgs)
    d = gateway(proxy=AHEAD if ahead else OFF)
    mb = mailbox_create(d)
    p = proxy_login(d, certs, login_name(dv.port, mb))
    got = retr_dele_all(p, 12)
    assert p.quit().startswith(b"+OK")
    assert sorted(got) == sorted(crlf(m) for m in msgs)
    assert bodies(d, mb) == sorted(got)
    assert dv.messages_left() == 0
    d.wait_log(r"ended \(QUIT\): 12 retrieved, 12 recorded, 12 already "
               r"stored, 12 deleted, 0 failures; %d recorded ahead"
               % (11 if ahead else 0))


@pytest.mark.watchdog(60)
@pytest.mark.parametrize("then", ["top", "list", "rset", "dele", "quit",
                                  "stat"])
def test_commands_while_reading_ahead(gateway, dovecot, certs, then):
    """After RETR 1 the proxy is reading a large message 2 ahead when the
    client's next command arrives: it waits for the upstream and is
    answered as it would be without record-ahead."""
    dv = dovecot()
    msgs = sample_messages(3, size=900000, tag="w")
    dv.add(msgs)
    expected = sorted(crlf(m) for m in msgs)
    d = gateway(proxy=AHEAD)
    mb = mailbox_create(d)
    p = proxy_login(d, certs, login_name(dv.port, mb))
    first = retr(p, 1)
    assert first in expected
    if then == "top":
        resp, lines, _ = p.top(2, 0)
        head = b"".join(l + b"\r\n" for l in lines)
        second = retr(p, 2)
        assert second.startswith(head) and head.endswith(b"\r\n\r\n")
    elif then == "list":
        resp, lines, _ = p.list()
        assert len(lines) == 3
        second = retr(p, 2)
        assert abs(int(lines[1].split()[1]) - len(second)) < 100
    elif then == "stat":
        assert p.stat()[0] == 3
        second = retr(p, 2)
    elif then == "rset":
        assert p.dele(1).startswith(b"+OK")
        assert p.rset().startswith(b"+OK")
        second = retr(p, 2)
    elif then == "dele":
        # 2 was recorded ahead: the DELE finds the copy and is forwarded
        assert p.dele(2).startswith(b"+OK")
        second = None
    if then != "quit":
        assert second is None or (second in expected and second != first)
    assert p.quit().startswith(b"+OK")
    # messages read ahead are recorded even when the client never asks
    # for them: 2 always (read ahead at the end of RETR 1), 3 unless the
    # client's command came first (then reading ahead waits for it)
    copies = bodies(d, mb)
    assert len(copies) in (2, 3) and all(c in expected for c in copies)
    assert first in copies
    assert dv.messages_left() == (2 if then == "dele" else 3)
    d.wait_log(r"ended \(QUIT\): .* 0 failures; %d recorded ahead"
               % (len(copies) - 1))


@pytest.mark.watchdog(60)
def test_messages_over_the_limit_are_relayed(gateway, dovecot, certs):
    dv = dovecot()
    msgs = (sample_messages(3, size=60000, tag="big") +
            sample_messages(3, size=4000, tag="small"))
    dv.add(msgs)
    limit = 20000
    d = gateway(proxy={"prefetch_max_size": limit})
    mb = mailbox_create(d)
    p = proxy_login(d, certs, login_name(dv.port, mb))
    sizes = [int(l.split()[1]) for l in p.list()[1]]
    ahead = sum(1 for s in sizes[1:] if s <= limit)
    assert 0 < ahead < 5
    got = [retr(p, i) for i in range(1, 7)]
    assert p.quit().startswith(b"+OK")
    assert sorted(got) == sorted(crlf(m) for m in msgs)
    assert bodies(d, mb) == sorted(got)
    d.wait_log(r"ended \(QUIT\): 6 retrieved, 6 recorded, 0 already stored, "
               r"0 deleted, 0 failures; %d recorded ahead" % ahead)


@pytest.mark.watchdog(60)
@pytest.mark.parametrize("ahead", [True, False])
def test_lines_of_any_length(gateway, dovecot, certs, monkeypatch, ahead):
    """Lines of 200 KB (Exchange's header blocks, a long body line) pass
    RETR, RETR read ahead and the DELE that records first, byte-identical,
    and are stored whole."""
    monkeypatch.setattr(poplib, "_MAXLINE", 1 << 20)
    dv = dovecot()
    msgs = []
    for i in range(3):
        # a 200 KB line, lines around the 64 KiB piece size, one that
        # starts with dots (stuffed) and spans pieces
        msgs.append(b"From: a@example.org\nTo: b@example.org\nX-Long-%d: %s\n"
                    b"Subject: long lines %d\n\n.%s\nshort\n%s\n%s\n%s\n"
                    b"%s\n.\nend\n" % (
                        i, b"h" * 150000, i, b"x" * 200000, b"a" * 65535,
                        b"b" * 65536, b"c" * 65537,
                        b"." * 70000 + b"y" * 131071))
    dv.add(msgs)
    expected = sorted(crlf(m) for m in msgs)
    d = gateway(proxy=AHEAD if ahead else OFF)
    mb = mailbox_create(d)
    p = proxy_login(d, certs, login_name(dv.port, mb))
    got = [retr(p, 1), retr(p, 2)]
    assert p.dele(3).startswith(b"+OK")  # records it first
    assert p.quit().startswith(b"+OK")
    assert all(g in expected for g in got) and got[0] != got[1]
    assert bodies(d, mb) == expected
    # ahead: 2 and 3 were read ahead, DELE 3 found its copy
    d.wait_log(r"ended \(QUIT\): 2 retrieved, 3 recorded, .* 0 failures; "
               r"%d recorded ahead" % (2 if ahead else 0))


class TlsUpstream(OneShotServer):
    """A POP3 upstream with STLS (the test CA's certificate) and
    PIPELINING that holds two messages and breaks off in the middle of RETR 2 -- or, with hold,
    stops in the middle of it until the next command has come (a client
    pipelining behind it), then sends the rest and answers that."""

    def __init__(self, test_ca, msg1, hold=False):
        self.hold = hold
        self.held = None  # the command that came while RETR 2 was held
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(test_ca["cert"], test_ca["key"])
        self.msg1 = crlf(msg1)
        self.commands = []
        super().__init__(timeout=15)

    def session(self, c):
        c.sendall(b"+OK fake ready\r\n")
        f = c.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                return
            cmd = line.strip().upper()
            self.commands.append(cmd)
            if cmd == b"CAPA":
                c.sendall(b"+OK\r\nUSER\r\nSTLS\r\nUIDL\r\nTOP\r\n"
                          b"PIPELINING\r\n.\r\n")
            elif cmd == b"STLS":
                c.sendall(b"+OK go\r\n")
                c = self.ctx.wrap_socket(c, server_side=True)
                f = c.makefile("rb")
            elif cmd.startswith(b"USER") or cmd.startswith(b"PASS"):
                c.sendall(b"+OK\r\n")
            elif cmd == b"UIDL":
                c.sendall(b"+OK\r\n1 fake-1\r\n2 fake-2\r\n.\r\n")
            elif cmd == b"LIST":
                c.sendall(b"+OK\r\n1 %d\r\n2 50000\r\n.\r\n" % len(self.msg1))
            elif cmd == b"RETR 1":
                stuffed = b"".join(b"." + l if l.startswith(b".") else l
                                   for l in self.msg1.splitlines(True))
                c.sendall(b"+OK\r\n" + stuffed + b".\r\n")
            elif cmd == b"RETR 2":
                c.sendall(b"+OK\r\nFrom: x@example.org\r\nSubject: cut\r\n\r\n"
                          + b"a line of the body\r\n" * 500)
                if not self.hold:
                    c.shutdown(socket.SHUT_RDWR)
                    return
                self.held = f.readline().strip().upper()
                self.commands.append(self.held)
                c.sendall(b"the end\r\n.\r\n" + (
                    b"+OK deleted\r\n" if self.held == b"DELE 1"
                    else b"-ERR not pipelined\r\n"))
            elif cmd == b"QUIT":
                c.sendall(b"+OK bye\r\n")
                return
            else:
                c.sendall(b"-ERR not here\r\n")


@pytest.mark.watchdog(60)
def test_dele_goes_upstream_behind_a_message_read_ahead(gateway, certs,
                                                        test_ca):
    """DELE 1 (its copy durable) while message 2 is being read ahead goes
    upstream at once, behind the RETR 2 in flight, not after its end: the
    upstream here finishes message 2 only once the next command came."""
    msg1 = sample_messages(1, size=8000, tag="h")[0]
    up = TlsUpstream(test_ca, msg1, hold=True)
    try:
        d = gateway(proxy=AHEAD)
        mb = mailbox_create(d)
        p = proxy_login(d, certs, login_name(up.port, mb))
        assert retr(p, 1) == crlf(msg1)
        assert p.dele(1).startswith(b"+OK")
        second = retr(p, 2)
        assert second.endswith(b"a line of the body\r\nthe end\r\n")
        assert p.quit().startswith(b"+OK")
    finally:
        up.close()
    assert up.held == b"DELE 1"
    assert up.commands[-3:] == [b"RETR 2", b"DELE 1", b"QUIT"]
    assert len(recorded(d, mb)) == 2
    d.wait_log(r"ended \(QUIT\): 2 retrieved, 2 recorded, 1 already "
               r"stored, 1 deleted, 0 failures; 1 recorded ahead")


@pytest.mark.watchdog(60)
def test_upstream_lost_while_reading_ahead(gateway, certs, test_ca):
    msg1 = sample_messages(1, size=8000, tag="u")[0]
    up = TlsUpstream(test_ca, msg1)
    try:
        d = gateway(proxy=AHEAD)
        mb = mailbox_create(d)
        p = proxy_login(d, certs, login_name(up.port, mb))
        assert retr(p, 1) == crlf(msg1)
        with pytest.raises(poplib.error_proto) as e:
            p.retr(2)
        assert e.value.args[0].startswith(b"-ERR [SYS/TEMP]"), e.value.args
        p.close()
    finally:
        up.close()
    assert b"RETR 2" in up.commands  # it was being read ahead
    d.wait_log(r"while message 2 was read ahead \(not recorded\)")
    d.wait_log(r"ended \(upstream closed\): 1 retrieved, 1 recorded")
    # nothing half-recorded: only message 1
    assert bodies(d, mb) == [crlf(msg1)]


@pytest.mark.watchdog(60)
@pytest.mark.parametrize("at_once", [False, True])
def test_store_failure_while_recording_ahead(gateway, dovecot, certs,
                                             tmp_path, at_once):
    """The copy read ahead cannot be stored: the client's RETR of that
    message is relayed with a fresh attempt, which breaks off without the
    dot while the store still fails; once it is back, all is recorded.
    at_once: the client asks for it at once, while it may still be read
    or committed (answered from memory: the dot never comes)."""
    dv = dovecot()
    dv.add(sample_messages(2, size=20000, tag="fs"))
    d = gateway(start=False, proxy=AHEAD)
    flag = str(tmp_path / "fail-now")
    d.extra_env = failsync_env(flag)
    d.start()
    mb = mailbox_create(d)
    # message 1 recorded beforehand (DELE records it; RSET keeps it)
    p = proxy_login(d, certs, login_name(dv.port, mb))
    assert p.dele(1).startswith(b"+OK")
    assert p.rset().startswith(b"+OK")
    assert p.quit().startswith(b"+OK")
    assert len(recorded(d, mb)) == 1
    open(flag, "w").close()
    p = proxy_login(d, certs, login_name(dv.port, mb))
    retr(p, 1)  # already stored: relayed; 2 is read ahead and fails
    if not at_once:
        d.wait_log(r"message 2 read ahead could not be recorded")
    with pytest.raises((poplib.error_proto, OSError)):
        p.retr(2)  # never a dot without a copy
    p.close()
    d.wait_log(r"message 2 (read ahead )?could not be recorded")
    os.unlink(flag)
    assert len(recorded(d, mb)) == 1
    assert dv.messages_left() == 2
    p = proxy_login(d, certs, login_name(dv.port, mb))
    retr(p, 2)
    assert p.quit().startswith(b"+OK")
    assert len(recorded(d, mb)) == 2


def _read_multi(f):
    """One multi-line response from a raw file: (status, unstuffed data)."""
    status = f.readline()
    if not status.startswith(b"+OK"):
        return status, None
    out = []
    while True:
        line = f.readline()
        assert line, "connection closed inside a response"
        if line == b".\r\n":
            return status, b"".join(out)
        out.append(line[1:] if line.startswith(b".") else line)


@pytest.mark.watchdog(60)
def test_pipelined_client(gateway, dovecot, certs):
    """A client that pipelines (the gateway offers PIPELINING) sends RETR
    n, DELE n for every message at once: the answers come in order, the
    messages byte-identical, while the proxy reads and records ahead."""
    dv = dovecot()
    msgs = sample_messages(10, size=30000, tag="p")
    dv.add(msgs)
    d = gateway(proxy=AHEAD)
    mb = mailbox_create(d)
    p = proxy_login(d, certs, login_name(dv.port, mb))
    sock, f = p.sock, p.file
    sock.sendall(b"".join(b"RETR %d\r\nDELE %d\r\n" % (i, i)
                          for i in range(1, 11)) + b"QUIT\r\n")
    got = []
    for i in range(1, 11):
        status, data = _read_multi(f)
        assert status.startswith(b"+OK"), status
        got.append(data)
        assert f.readline().startswith(b"+OK"), "DELE %d" % i
    assert f.readline().startswith(b"+OK")  # QUIT
    p.close()
    assert sorted(got) == sorted(crlf(m) for m in msgs)
    assert bodies(d, mb) == sorted(got)
    assert dv.messages_left() == 0
    d.wait_log(r"ended \(QUIT\): 10 retrieved, 10 recorded, 10 already "
               r"stored, 10 deleted, 0 failures; 9 recorded ahead")
