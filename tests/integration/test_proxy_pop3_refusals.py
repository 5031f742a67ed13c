"""What the recording proxy refuses, and that it refuses before any
credential leaves the gateway: upstreams without STLS, with an untrusted
certificate, or injecting bytes after STLS; targets the policy forbids;
malformed login names; mailboxes that do not take proxy sessions."""

import poplib

import pytest

from proxy_pop3_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_pop3_helpers import (DOVECOT_USER, FakeUpstream, client,
                                dovecot_tls_logins, login_name,
                                mailbox_create, proxy_login, recorded,
                                sample_messages)


def refused(d, certs, name, password="pw"):
    """The -ERR line a proxy login gets (as text)."""
    p = client(d, certs)
    try:
        p.user(name)
        with pytest.raises(poplib.error_proto) as e:
            p.pass_(password)
        return e.value.args[0].decode()
    finally:
        p.close()


def test_upstream_without_stls(gateway, dovecot, certs):
    dv = dovecot(ssl="no")
    d = gateway()
    mb = mailbox_create(d)
    err = refused(d, certs, login_name(dv.port, mb))
    assert err.startswith("-ERR [SYS/TEMP]") and "STLS" in err, err
    assert dovecot_tls_logins(dv) == []
    assert "Login:" not in dv.log_text()


def test_untrusted_certificate(gateway, dovecot, certs):
    # a self-signed certificate the test CA did not sign
    dv = dovecot(cert=certs["cert"], key=certs["key"])
    d = gateway()
    mb = mailbox_create(d)
    err = refused(d, certs, login_name(dv.port, mb))
    assert err.startswith("-ERR [SYS/TEMP]") and "TLS" in err, err
    assert "Login:" not in dv.log_text()


def test_certificate_for_another_name(gateway, dovecot, certs, test_ca):
    # the certificate names localhost and 127.0.0.1, not 127.0.0.2
    dv = dovecot()
    d = gateway(allow=["127.0.0.0/8"])
    mb = mailbox_create(d)
    name = "%s%%127.0.0.2:%d%%%s" % (DOVECOT_USER, dv.port, mb["id"])
    err = refused(d, certs, name)
    assert err.startswith("-ERR [SYS/TEMP]"), err
    # by host name it verifies
    p = proxy_login(d, certs, login_name(dv.port, mb, host="localhost"))
    assert p.stat()[0] == 0
    p.quit()


def test_loopback_refused_without_allow_targets(gateway, dovecot, certs):
    dv = dovecot()
    d = gateway(allow=None)
    mb = mailbox_create(d)
    for host in ("127.0.0.1", "localhost"):
        err = refused(d, certs, login_name(dv.port, mb, host=host))
        assert err.startswith("-ERR") and "SYS/TEMP" not in err, err
        assert "loopback" in err, err
    assert "Login:" not in dv.log_text()


def test_link_local_and_private_refused(gateway, certs):
    d = gateway(allow=["127.0.0.1"])
    mb = mailbox_create(d)
    for host in ("169.254.169.254", "10.0.0.1", "192.168.1.1", "[::1]",
                 "[fe80::1]:110", "0.0.0.0"):
        err = refused(d, certs, "u%%%s%%%s" % (host, mb["id"]))
        assert err.startswith("-ERR") and "refused" in err, (host, err)


def test_target_outside_the_mailbox_list(gateway, dovecot, certs):
    dv = dovecot()
    dv.add(sample_messages(1, tag="t"))
    d = gateway()
    mb = mailbox_create(d)
    r = d.ctl("mailbox", "edit", mb["id"], "--proxy-targets",
              "127.0.0.1:%d" % (dv.port + 1))
    assert r.returncode == 0, r.stderr
    err = refused(d, certs, login_name(dv.port, mb))
    assert "not among this mailbox's proxy targets" in err, err
    err = refused(d, certs, login_name(dv.port, mb, host="localhost"))
    assert "not among this mailbox's proxy targets" in err, err
    assert "Login:" not in dv.log_text()
    # the mailbox's own target works
    r = d.ctl("mailbox", "edit", mb["id"], "--proxy-targets",
              "pop.example.test, 127.0.0.1:%d" % dv.port)
    assert r.returncode == 0, r.stderr
    p = proxy_login(d, certs, login_name(dv.port, mb))
    assert p.stat()[0] == 1
    p.quit()


@pytest.mark.parametrize("name", [
    "%127.0.0.1:110%MBOX",
    "user%%MBOX",
    "user%127.0.0.1:110%",
    "user%127.0.0.1:0%MBOX",
    "user%127.0.0.1:70000%MBOX",
    "user%bad_host!%MBOX",
    "user%[::1%MBOX",
    "user%127.0.0.1:110%short",
    "user%" + "a" * 70 + ".example:110%MBOX",  # a 70-character label
])
def test_malformed_login_names(gateway, certs, name):
    fake = FakeUpstream(b"+OK\r\n")
    try:
        d = gateway()
        mb = mailbox_create(d)
        name = name.replace("MBOX", mb["id"]).replace(
            ":110", ":%d" % fake.port)
        err = refused(d, certs, name)
        assert err.startswith("-ERR [AUTH] Malformed proxy login"), err
    finally:
        fake.close()
    assert fake.received == []  # no connection was even made


def test_injection_after_stls(gateway, certs):
    fake = FakeUpstream(b"+OK Begin TLS negotiation\r\n+OK injected\r\n")
    try:
        d = gateway()
        mb = mailbox_create(d)
        err = refused(d, certs, login_name(fake.port, mb), "topsecret")
    finally:
        fake.close()
    assert err.startswith("-ERR [SYS/TEMP]") and "STLS" in err, err
    sent = b"".join(fake.received)
    assert b"topsecret" not in sent and b"USER" not in sent, sent


def test_mailbox_that_takes_no_proxy_sessions(gateway, dovecot, certs):
    dv = dovecot()
    d = gateway()
    mb = mailbox_create(d)
    assert d.ctl("mailbox", "edit", mb["id"], "--accept-proxy",
                 "no").returncode == 0
    err = refused(d, certs, login_name(dv.port, mb))
    assert err.startswith("-ERR [AUTH]") and "proxy" in err, err
    assert d.ctl("mailbox", "edit", mb["id"], "--accept-proxy", "yes",
                 "--status", "suspended").returncode == 0
    err = refused(d, certs, login_name(dv.port, mb))
    assert err.startswith("-ERR [SYS/TEMP]") and "suspended" in err, err
    err = refused(d, certs, login_name(dv.port, {"id": "nosuchmailbox1"}))
    assert err.startswith("-ERR [AUTH]"), err
    assert "Login:" not in dv.log_text()


def test_wrong_upstream_password(gateway, dovecot, certs):
    dv = dovecot()
    d = gateway()
    mb = mailbox_create(d)
    err = refused(d, certs, login_name(dv.port, mb), "wrong-password")
    assert err.startswith("-ERR [AUTH]"), err
    assert "wrong-password" not in d.log()
    assert recorded(d, mb) == []
