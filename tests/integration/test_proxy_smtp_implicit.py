"""The SMTP proxy's implicit-TLS upstream on its real port: a login naming
no port from the implicit-TLS listener means 465, and an explicit :465
from the STARTTLS listener too; TLS starts at once (no STARTTLS),
verified for the IP literal. Port 465 cannot be a free port, so the
upstream aiosmtpd listens on 127.0.0.2:465 (all of 127.0.0.0/8 is
loopback on Linux; nobody else uses that address) with a test-CA
certificate for IP 127.0.0.2. The tests run as root (binding 465); a
port already taken is a failure, never a skip."""

import errno
import re
import socket

import pytest

from proxy_smtp_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_smtp_helpers import (UP_PASS, UP_USER, copies, copy_body,
                                mailbox_create, message, proxy_client,
                                try_login)
from dovecot_helpers import ca_server_cert

ADDR = "127.0.0.2"

# aiosmtpd warns about AUTH without STARTTLS: here TLS is implicit
pytestmark = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS")


def port_465_free():
    """Fail clearly when something holds 127.0.0.2:465 (or 0.0.0.0:465)."""
    s = socket.socket()
    # a listener holds it, not the TIME_WAIT of an earlier test's sessions
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ADDR, 465))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            pytest.fail("port 465 on %s is in use: the implicit-TLS upstream "
                        "test needs it (stop whatever listens there)" % ADDR,
                        pytrace=False)
        pytest.fail("cannot bind %s:465 (%s): run the tests as root"
                    % (ADDR, e), pytrace=False)
    finally:
        s.close()


@pytest.fixture
def upstream465(upstream, test_ca, tmp_path):
    """Factory: an aiosmtpd with implicit TLS and AUTH on 127.0.0.2:465
    presenting a test-CA certificate with the given subjectAltName."""

    def make(san="IP:" + ADDR):
        port_465_free()
        c = ca_server_cert(test_ca, str(tmp_path), "upstream465", san)
        return upstream(mode="implicit", address=ADDR, port=465, cert=c)

    return make


def name465(mailbox, port=""):
    return "%s%%%s%s%%%s" % (UP_USER, ADDR, port, mailbox["id"])


def check_sent_and_recorded(d, up, mb, msgs):
    assert [m["content"] for m in up.messages] == msgs
    assert all(m["tls"] for m in up.messages)
    assert [m["rcpts"] for m in up.messages] == [["bob@example.org"]] * len(
        msgs)
    # one login, over TLS from its first byte
    assert up.logins == [("PLAIN", UP_USER, UP_PASS, True)]
    recs = copies(d, mb)
    assert sorted(copy_body(r) for r in recs) == sorted(msgs)
    assert all(r["rcpts"] == ["bob@example.org"] for r in recs)


def test_implicit_listener_defaults_to_465(gateway, upstream465, certs):
    up = upstream465()
    d = gateway(allow=[ADDR])
    mb = mailbox_create(d)
    s = proxy_client(d, certs, name465(mb), implicit=True)
    msgs = [message("i465-%d" % i, size=3000 + 20000 * i) for i in range(2)]
    for m in msgs:
        assert s.sendmail("alice@upstream.test", ["bob@example.org"], m) == {}
    s.quit()
    check_sent_and_recorded(d, up, mb, msgs)
    d.wait_log(r"proxy session to %s:465 for mailbox %s ended \(the client left\): "
               r"2 sent and recorded, 0 failed"
               % (re.escape(ADDR), mb["id"]))


def test_starttls_listener_with_explicit_465(gateway, upstream465, certs):
    up = upstream465()
    d = gateway(allow=[ADDR])
    mb = mailbox_create(d)
    s = proxy_client(d, certs, name465(mb, ":465"))
    msg = message("s465", size=70000)
    assert s.sendmail("alice@upstream.test", ["bob@example.org"], msg) == {}
    s.quit()
    check_sent_and_recorded(d, up, mb, [msg])


def test_465_verifies_the_address(gateway, upstream465, certs):
    # a certificate from the trusted CA, but for 127.0.0.1 and localhost
    # only: the IP literal 127.0.0.2 must not match it
    up = upstream465(san="DNS:localhost,IP:127.0.0.1")
    d = gateway(allow=[ADDR])
    mb = mailbox_create(d)
    code, text = try_login(d, certs, name465(mb), implicit=True)
    assert code == 454 and b"certificate verification failed" in text, (
        code, text)
    assert up.logins == []
    assert UP_PASS not in d.log()


def test_implicit_tls_upstream_resumes(gateway, upstream465, certs):
    """The second session's handshake on 465 resumes the first one's TLS
    session (doc/security.md, "TLS session resumption")."""
    up = upstream465()
    d = gateway(allow=[ADDR])
    mb = mailbox_create(d)
    for i in range(3):
        log0 = len(d.log())
        s = proxy_client(d, certs, name465(mb), implicit=True)
        assert s.sendmail("alice@upstream.test", ["bob@example.org"],
                          message("r465-%d" % i)) == {}
        s.quit()
        # the upstream leg's line (the client's leg is conn 127.0.0.1)
        established = d.wait_log(r"%s: TLS established: [^\n]*"
                                 % re.escape(ADDR), start=log0)
        assert ("(resumed)" in established.group(0)) == (i > 0)
    assert len(up.messages) == 3 and all(m["tls"] for m in up.messages)
    assert UP_PASS not in d.log()
