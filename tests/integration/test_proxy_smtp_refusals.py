"""Logins the SMTP proxy refuses, and what it never lets through: an
upstream without STARTTLS or with an untrusted certificate (credentials
never cross a plaintext or unverified link), a target the policy
refuses, malformed names, unknown or suspended mailboxes, a wrong
upstream password, lines a client injects after STARTTLS, SMTPUTF8 for
an upstream without it."""

import base64
import smtplib
import socket
import ssl

from conftest import mailbox_status, tls_client_ctx
from proxy_smtp_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_smtp_helpers import (UP_PASS, UP_USER, client, login_name,
                                mailbox_create, proxy_client, try_login)


def test_upstream_without_starttls_is_refused(gateway, upstream, certs):
    up = upstream(mode="plain")
    d = gateway()
    mb = mailbox_create(d)
    code, text = try_login(d, certs, login_name(up.port, mb))
    assert code == 454, (code, text)
    assert b"does not offer STARTTLS" in text, text
    assert up.logins == []


def test_untrusted_upstream_certificate_is_refused(gateway, upstream, certs):
    up = upstream()
    d = gateway(ca=False)
    mb = mailbox_create(d)
    code, text = try_login(d, certs, login_name(up.port, mb))
    assert code == 454, (code, text)
    assert b"TLS handshake" in text, text
    assert up.logins == []


def test_policy_refuses_loopback_without_allow_targets(gateway, upstream,
                                                       certs):
    up = upstream()
    d = gateway(allow=None)
    mb = mailbox_create(d)
    code, text = try_login(d, certs, login_name(up.port, mb))
    assert code == 535, (code, text)
    assert b"Proxy target refused" in text and b"loopback" in text, text
    assert up.logins == []


def test_malformed_logins_and_mailboxes(gateway, upstream, certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    for name in ("%%127.0.0.1:%d%%%s" % (up.port, mb["id"]),
                 "%s%%%%%s" % (UP_USER, mb["id"]),
                 "%s%%127.0.0.1:99999%%%s" % (UP_USER, mb["id"]),
                 "%s%%127.0.0.1:%d%%BAD-ID" % (UP_USER, up.port)):
        code, text = try_login(d, certs, name)
        assert code == 535 and b"Malformed proxy login" in text, (name, code,
                                                                  text)
    code, text = try_login(d, certs, login_name(up.port, {"id": "nosuchbox1"}))
    assert (code, b"no such mailbox" in text) == (535, True), text
    mailbox_status(d, mb["id"], "suspended")
    code, text = try_login(d, certs, login_name(up.port, mb))
    assert (code, b"suspended" in text) == (454, True), text
    # a name without two '%' is not a proxy login (nobody else takes it)
    code, text = try_login(d, certs, "plainuser")
    assert code == 535, (code, text)
    assert up.logins == []


def test_wrong_upstream_password_gets_the_upstream_refusal(gateway, upstream,
                                                           certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    code, text = try_login(d, certs, login_name(up.port, mb),
                           password="wrong")
    assert code == 535 and b"Upstream: 535" in text, (code, text)
    assert up.logins == [("PLAIN", UP_USER, "wrong", True)]


def test_auth_offered_only_over_tls_and_with_the_proxy(gateway, make_smtp,
                                                       certs):
    d = gateway()
    s = smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=10)
    s.ehlo("client.test")
    assert "auth" not in s.esmtp_features
    assert s.docmd("AUTH", "PLAIN AGFiAGM=")[0] == 530
    s.starttls(context=tls_client_ctx(certs))
    s.ehlo("client.test")
    assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    assert "binarymime" not in s.esmtp_features
    s.quit()
    plain = make_smtp()
    s = client(plain, certs)
    assert "auth" not in s.esmtp_features
    s.quit()


def test_lines_injected_after_starttls_are_dropped(gateway, upstream, certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    raw = b"\0" + login_name(up.port, mb).encode() + b"\0" + UP_PASS.encode()
    sock = socket.create_connection(("127.0.0.1", d.smtp_port), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    sock.sendall(b"EHLO client.test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    sock.sendall(b"STARTTLS\r\nAUTH PLAIN " + base64.b64encode(raw) +
                 b"\r\nMAIL FROM:<evil@example.org>\r\n")
    assert f.readline().startswith(b"220")
    tls = tls_client_ctx(certs).wrap_socket(sock, server_hostname="localhost")
    tf = tls.makefile("rb")
    tls.sendall(b"NOOP\r\n")
    # the injected AUTH and MAIL were never taken: NOOP is the first answer
    assert tf.readline().startswith(b"250"), "injected lines were answered"
    tls.sendall(b"QUIT\r\n")
    tls.close()
    assert up.logins == []


def test_smtputf8_to_an_upstream_without_it(gateway, upstream, certs):
    up = upstream(smtputf8=False)
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(up.port, mb))
    s.command_encoding = "utf-8"
    code, text = s.docmd("MAIL", "FROM:<al\u00efce@upstream.test> SMTPUTF8")
    assert (code, text[:5]) == (553, b"5.6.7"), (code, text)
    s.quit()
    assert up.messages == []
