"""The proxy's implicit-TLS upstream: a login naming no port means 995,
where TLS starts at once (no STLS), verified for the IP literal with no
SNI. Port 995 cannot be a free port, so the upstream Dovecot listens on
127.0.0.2:995 (all of 127.0.0.0/8 is loopback on Linux; nobody else uses
that address), with a test-CA certificate for IP 127.0.0.2. The tests run
as root (binding 995); a port already taken is a failure, never a skip."""

import errno
import socket
import ssl

import pytest

from proxy_pop3_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_pop3_helpers import (DOVECOT_USER, crlf, dovecot_tls_logins,
                                mailbox_create, proxy_login, recorded, retr,
                                sample_messages, strip_received)
from dovecot_helpers import OneShotServer, ca_server_cert

ADDR = "127.0.0.2"


def port_995_free():
    """Fail clearly when something holds 127.0.0.2:995 (or 0.0.0.0:995).
    SO_REUSEADDR, as Dovecot binds: a connection of the previous test in
    TIME_WAIT on that port (the side that closes first keeps it) is no
    obstacle, a listener is."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ADDR, 995))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            pytest.fail("port 995 on %s is in use: the implicit-TLS upstream "
                        "test needs it (stop whatever listens there)" % ADDR,
                        pytrace=False)
        pytest.fail("cannot bind %s:995 (%s): run the tests as root"
                    % (ADDR, e), pytrace=False)
    finally:
        s.close()


@pytest.fixture
def upstream995(dovecot, test_ca, tmp_path):
    """Factory: a Dovecot with implicit TLS on 127.0.0.2:995 presenting a
    test-CA certificate with the given subjectAltName."""

    def make(san="IP:" + ADDR):
        port_995_free()
        c = ca_server_cert(test_ca, str(tmp_path), "upstream995", san)
        return dovecot(cert=c["cert"], key=c["key"], address=ADDR, port=995,
                       implicit=True)

    return make


def name995(mailbox, user=DOVECOT_USER):
    return "%s%%%s%%%s" % (user, ADDR, mailbox["id"])


def test_implicit_tls_on_995_records(gateway, upstream995, certs):
    dv = upstream995()
    msgs = sample_messages(3, size=2500, tag="i")
    dv.add(msgs)
    d = gateway(allow=[ADDR])
    mb = mailbox_create(d)
    p = proxy_login(d, certs, name995(mb))
    assert p.stat()[0] == 3
    got = [retr(p, i) for i in range(1, 4)]
    assert sorted(got) == sorted(crlf(m) for m in msgs)
    assert p.dele(1).startswith(b"+OK")
    assert p.quit().startswith(b"+OK")
    copies = recorded(d, mb)
    assert len(copies) == 3
    assert sorted(strip_received(c["body"]) for c in copies) == sorted(got)
    # the trace names the IP literal; the upstream is 127.0.0.2:995
    assert all(c["body"].startswith(b"Received: from %s (%s)"
                                    % (ADDR.encode(), ADDR.encode()))
               for c in copies)
    d.wait_log(r"proxy session to %s:995 for mailbox %s ended \(QUIT\): "
               r"3 retrieved, 3 recorded, 1 already stored, 1 deleted"
               % (ADDR.replace(".", r"\."), mb["id"]))
    assert dv.messages_left() == 2
    # implicit TLS, no STLS: Dovecot saw one login, over TLS, and no STLS
    logins = dovecot_tls_logins(dv)
    assert len(logins) == 1 and logins[0][1], logins


def test_implicit_tls_on_995_verifies_the_address(gateway, upstream995,
                                                  certs):
    # a certificate from the trusted CA, but for 127.0.0.1 and localhost
    # only: the IP literal 127.0.0.2 must not match it
    dv = upstream995(san="DNS:localhost,IP:127.0.0.1")
    dv.add(sample_messages(1, tag="v"))
    d = gateway(allow=[ADDR])
    mb = mailbox_create(d)
    with pytest.raises(Exception) as e:
        proxy_login(d, certs, name995(mb))
    assert "[SYS/TEMP]" in str(e.value), e.value
    assert "certificate verification failed" in str(e.value), e.value
    assert dovecot_tls_logins(dv) == []
    assert "s3cret-upstream" not in d.log()


def test_995_needs_allow_targets(gateway, upstream995, certs):
    dv = upstream995()
    d = gateway(allow=["127.0.0.1"])
    mb = mailbox_create(d)
    with pytest.raises(Exception) as e:
        proxy_login(d, certs, name995(mb))
    assert "refused" in str(e.value) and "loopback" in str(e.value), e.value
    assert dovecot_tls_logins(dv) == []


class Tls12GreetingUpstream(OneShotServer):
    """A minimal implicit-TLS POP3 upstream on 127.0.0.2:995 that speaks
    TLS 1.2 and sends its greeting in the same TCP segment as its last
    handshake flight (TCP_CORK around both): a client that reads ahead
    gets the greeting inside OpenSSL while it completes the handshake,
    where no socket event will ever announce it."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.load_cert_chain(cert, key)
        self.seen = []
        super().__init__(ADDR, 995)

    def session(self, raw):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        with self.ctx.wrap_socket(raw, server_side=True,
                                  do_handshake_on_connect=False) as s:
            s.do_handshake()
            s.sendall(b"+OK fake ready\r\n")
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
            for line in s.makefile("rb"):
                cmd = line.split(b" ", 1)[0].strip().upper()
                self.seen.append(cmd)
                if cmd == b"CAPA":
                    s.sendall(b"+OK\r\nUSER\r\nUIDL\r\n.\r\n")
                elif cmd in (b"UIDL", b"LIST"):
                    s.sendall(b"+OK\r\n.\r\n")
                elif cmd == b"STAT":
                    s.sendall(b"+OK 0 0\r\n")
                elif cmd == b"QUIT":
                    s.sendall(b"+OK bye\r\n")
                    return
                else:
                    s.sendall(b"+OK\r\n")


def test_greeting_read_ahead_with_the_handshake(gateway, test_ca, tmp_path,
                                                certs):
    """TLS 1.2 upstream whose greeting arrives with its Finished: the
    proxy must still see the greeting (OpenSSL holds it after the
    handshake; the socket has nothing more to announce)."""
    port_995_free()
    c = ca_server_cert(test_ca, str(tmp_path), "tls12", "IP:" + ADDR)
    up = Tls12GreetingUpstream(c["cert"], c["key"])
    try:
        d = gateway(allow=[ADDR])
        mb = mailbox_create(d)
        p = proxy_login(d, certs, name995(mb))
        assert p.stat() == (0, 0)
        p.quit()
        assert b"USER" in up.seen or b"AUTH" in up.seen, up.seen
    finally:
        up.close()
