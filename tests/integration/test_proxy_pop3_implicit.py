"""The proxy's implicit-TLS upstream: a login naming no port means 995,
where TLS starts at once (no STLS), verified for the IP literal with no
SNI. Port 995 cannot be a free port, so the upstream Dovecot listens on
127.0.0.2:995 (all of 127.0.0.0/8 is loopback on Linux; nobody else uses
that address), with a test-CA certificate for IP 127.0.0.2. The tests run
as root (binding 995); a port already taken is a failure, never a skip."""

import errno
import socket

import pytest

from proxy_pop3_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_pop3_helpers import (DOVECOT_USER, crlf, dovecot_tls_logins,
                                mailbox_create, proxy_login, recorded, retr,
                                sample_messages, strip_received)
from dovecot_helpers import ca_server_cert

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
