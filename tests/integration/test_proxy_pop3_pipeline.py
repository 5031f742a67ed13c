"""Pipelining toward the upstream in the recording POP3 proxy: at an
upstream that announces PIPELINING the proxy keeps a second RETR read
ahead queued behind the one being sent (and the client's DELE of a durable
copy behind both), so the upstream never waits for a proxy round trip; an
upstream without PIPELINING gets one command at a time. An upstream that
dies with two RETRs and a DELE outstanding loses nothing: no copy of a
message it did not send whole, the client's DELE ends in -ERR [SYS/TEMP],
and the copies recorded are complete."""

import poplib
import select
import ssl
import time
from collections import deque

import pytest

from dovecot_helpers import OneShotServer
from proxy_pop3_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_pop3_helpers import (crlf, login_name, mailbox_create, proxy_login,
                                recorded, retr, retr_dele_all, sample_messages,
                                strip_received)

AHEAD = {"prefetch_max_size": 1048576}
HOLD_S = 0.3  # how long the upstream holds a RETR after its status line


class PipeUpstream(OneShotServer):
    """A POP3 upstream with STLS (the test CA's certificate) holding
    `msgs`. For each RETR it sends the status line, waits HOLD_S and takes
    in whatever commands came meanwhile, then sends the message: `depth`
    is the most commands it ever held unanswered (the current one
    included), `commands` all of them in the order they came. With
    die_at=(n, k) it breaks off in the middle of RETR n once k commands
    are unanswered (or after 5 s)."""

    def __init__(self, test_ca, msgs, pipelining, die_at=None):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(test_ca["cert"], test_ca["key"])
        self.msgs = [crlf(m) for m in msgs]
        self.pipelining = pipelining
        self.die_at = die_at
        self.commands = []
        self.depth = 0
        self.buf = b""
        self.pending = deque()
        super().__init__(timeout=15)

    def _take(self, c, block):
        """Read what has come into self.pending (blocking for one line
        when `block`); False when the peer has gone."""
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                cmd = line.strip().upper()
                self.commands.append(cmd)
                self.pending.append(cmd)
                block = False
            if not block and not (isinstance(c, ssl.SSLSocket) and
                                  c.pending()):
                if not select.select([c], [], [], 0)[0]:
                    return True
            try:
                data = c.recv(65536)
            except ssl.SSLWantReadError:
                continue
            if not data:
                return False
            self.buf += data

    def _retr(self, c, n):
        msg = self.msgs[n - 1]
        stuffed = b"".join(b"." + l if l.startswith(b".") else l
                           for l in msg.splitlines(True))
        c.sendall(b"+OK %d octets\r\n" % len(msg))
        deadline = time.time() + (5 if self.die_at else HOLD_S)
        while time.time() < deadline:
            if not self._take(c, False):
                return False
            self.depth = max(self.depth, len(self.pending))
            if self.die_at and self.die_at[0] == n and \
                    len(self.pending) >= self.die_at[1]:
                break
            time.sleep(0.01)
        if self.die_at and self.die_at[0] == n:
            c.sendall(stuffed[:len(stuffed) // 2])
            c.shutdown(2)
            return False
        c.sendall(stuffed + b".\r\n")
        return True

    def session(self, c):
        c.sendall(b"+OK fake ready\r\n")
        while True:
            if not self.pending and not self._take(c, True):
                return
            self.depth = max(self.depth, len(self.pending))
            cmd = self.pending[0]
            if cmd == b"CAPA":
                c.sendall(b"+OK\r\nUSER\r\nSTLS\r\nUIDL\r\nTOP\r\n" +
                          (b"PIPELINING\r\n" if self.pipelining else b"") +
                          b".\r\n")
            elif cmd == b"STLS":
                c.sendall(b"+OK go\r\n")
                self.pending.popleft()
                c = self.ctx.wrap_socket(c, server_side=True)
                continue
            elif cmd.startswith(b"USER") or cmd.startswith(b"PASS"):
                c.sendall(b"+OK\r\n")
            elif cmd == b"UIDL":
                c.sendall(b"+OK\r\n" + b"".join(
                    b"%d pipe-%d\r\n" % (i, i)
                    for i in range(1, len(self.msgs) + 1)) + b".\r\n")
            elif cmd == b"LIST":
                c.sendall(b"+OK\r\n" + b"".join(
                    b"%d %d\r\n" % (i, len(m))
                    for i, m in enumerate(self.msgs, 1)) + b".\r\n")
            elif cmd.startswith(b"RETR "):
                if not self._retr(c, int(cmd[5:])):
                    return
            elif cmd.startswith(b"DELE "):
                c.sendall(b"+OK deleted\r\n")
            elif cmd == b"QUIT":
                c.sendall(b"+OK bye\r\n")
                return
            else:
                c.sendall(b"-ERR not here\r\n")
            self.pending.popleft()


def relay_commands(up):
    """The commands after the login (from the first RETR on)."""
    first = next(i for i, c in enumerate(up.commands)
                 if c.startswith(b"RETR"))
    return up.commands[first:]


@pytest.mark.watchdog(60)
@pytest.mark.parametrize("pipelining", [True, False])
def test_pipelining_only_when_announced(gateway, certs, test_ca, pipelining):
    """RETR n, DELE n for five messages: at a PIPELINING upstream the
    proxy has two RETRs read ahead outstanding at once and the client's
    DELE queued behind them (three commands unanswered); without
    PIPELINING it never sends a command before the last is answered.
    Either way the client gets every message byte-identical, the copies
    are complete, every DELE reaches the upstream after its RETR."""
    msgs = sample_messages(5, size=20000, tag="pl")
    up = PipeUpstream(test_ca, msgs, pipelining)
    try:
        d = gateway(proxy=AHEAD)
        mb = mailbox_create(d)
        p = proxy_login(d, certs, login_name(up.port, mb))
        got = retr_dele_all(p, 5)
        assert p.quit().startswith(b"+OK")
    finally:
        up.close()
    assert got == [crlf(m) for m in msgs]
    assert sorted(strip_received(c["body"]) for c in recorded(d, mb)) == \
        sorted(got)
    cmds = relay_commands(up)
    assert sorted(c for c in cmds if c.startswith(b"RETR")) == \
        [b"RETR %d" % i for i in range(1, 6)]
    for i in range(1, 6):
        assert cmds.index(b"DELE %d" % i) > cmds.index(b"RETR %d" % i)
    assert cmds[-1] == b"QUIT"
    assert up.depth == (3 if pipelining else 1), cmds
    if pipelining:
        # RETR 3 went upstream while RETR 2 was being sent
        assert cmds[:3] == [b"RETR 1", b"RETR 2", b"RETR 3"], cmds
    d.wait_log(r"ended \(QUIT\): 5 retrieved, 5 recorded, 5 already "
               r"stored, 5 deleted, 0 failures; 4 recorded ahead")


@pytest.mark.watchdog(60)
def test_upstream_dies_with_two_retrs_and_a_dele_outstanding(
        gateway, certs, test_ca):
    """The upstream breaks off in the middle of message 2 while RETR 2,
    RETR 3 (both read ahead) and the client's DELE 1 are outstanding: the
    DELE ends in -ERR [SYS/TEMP], neither message read ahead is recorded,
    message 1's copy is, whole."""
    msgs = sample_messages(4, size=20000, tag="pd")
    up = PipeUpstream(test_ca, msgs, True, die_at=(2, 3))
    try:
        d = gateway(proxy=AHEAD)
        mb = mailbox_create(d)
        p = proxy_login(d, certs, login_name(up.port, mb))
        assert retr(p, 1) == crlf(msgs[0])
        with pytest.raises(poplib.error_proto) as e:
            p.dele(1)
        assert e.value.args[0].startswith(b"-ERR [SYS/TEMP]"), e.value.args
        p.close()
    finally:
        up.close()
    assert relay_commands(up) == [b"RETR 1", b"RETR 2", b"RETR 3", b"DELE 1"]
    d.wait_log(r"while message 2 was read ahead \(not recorded\)")
    d.wait_log(r"while message 3 was read ahead \(not recorded\)")
    d.wait_log(r"ended \(upstream closed\): 1 retrieved, 1 recorded, "
               r"1 already stored, 0 deleted")
    assert [strip_received(c["body"]) for c in recorded(d, mb)] == \
        [crlf(msgs[0])]
