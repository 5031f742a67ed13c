"""TLS session resumption towards proxy upstreams: a later session to the
same upstream, under the same name and trust configuration, resumes the
TLS session (no certificate decoding and verification again); another
verify name, a reload that changed ca_file, or the setting turned off
never resume; an upstream whose certificate is now untrusted is refused
(its new ticket keys refuse the old session, and the full handshake
verifies). The upstream is aiosmtpd, one process whose ticket keys live
as long as it does. Resumption is seen through the gateway's debug line
"TLS established: ... (resumed)", which comes from SSL_session_reused()
of the upstream connection."""

import os
import shutil
import signal

from proxy_smtp_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_smtp_helpers import (UP_PASS, Upstream, copies, login_name, mailbox_create,
                                message, proxy_client, try_login)

RESUMED = "(resumed)"


def send_one(d, certs, name, tag):
    s = proxy_client(d, certs, name)
    assert s.sendmail("alice@upstream.test", ["bob@example.org"],
                      message(tag)) == {}
    s.quit()


def resumed_since(d, start):
    return d.log()[start:].count(RESUMED)


def established_since(d, start):
    return d.log()[start:].count("TLS established")


def reload(d):
    """SIGHUP, wait until the new generation runs; the log's length then."""
    start = len(d.log())
    d.signal(signal.SIGHUP)
    d.wait_log(r"reload: configuration generation \d+ running", start=start)
    return len(d.log())


def test_second_session_resumes(gateway, upstream, certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    name = login_name(up.port, mb)
    log0 = len(d.log())
    send_one(d, certs, name, "first")
    assert resumed_since(d, log0) == 0
    for i in range(3):
        log1 = len(d.log())
        send_one(d, certs, name, "again-%d" % i)
        # the upstream leg resumed; credentials still went over it
        d.wait_log(r"TLS established: TLSv1\.3 \S+ \(resumed\)", start=log1)
    assert len(up.messages) == 4
    assert all(m["tls"] for m in up.messages)
    assert len(up.logins) == 4 and all(l[3] for l in up.logins)
    assert len(copies(d, mb)) == 4
    assert UP_PASS not in d.log()


def test_tls12_upstream_resumes(gateway, upstream, certs):
    """TLS 1.2: the session id (or ticket) of the full handshake is offered
    again, and kept for later sessions."""
    import ssl
    up = upstream(tls_max=ssl.TLSVersion.TLSv1_2)
    d = gateway()
    mb = mailbox_create(d)
    name = login_name(up.port, mb)
    send_one(d, certs, name, "first")
    for i in range(2):
        log1 = len(d.log())
        send_one(d, certs, name, "again-%d" % i)
        d.wait_log(r"TLS established: TLSv1\.2 \S+ \(resumed\)", start=log1)
    assert len(up.messages) == 3 and len(up.logins) == 3
    assert UP_PASS not in d.log()


def test_other_verify_name_does_not_resume(gateway, upstream, certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    send_one(d, certs, login_name(up.port, mb), "by-address")
    # same upstream, same port, but verified for the name "localhost"
    log1 = len(d.log())
    send_one(d, certs, login_name(up.port, mb, host="localhost"), "by-name")
    assert established_since(d, log1) >= 1
    assert resumed_since(d, log1) == 0
    # ... which then has a session of its own
    log2 = len(d.log())
    send_one(d, certs, login_name(up.port, mb, host="localhost"), "by-name2")
    d.wait_log(r"TLS established: \S+ \S+ \(resumed\)", start=log2)
    assert len(up.messages) == 3


def test_reload_that_changes_ca_file_does_not_resume(gateway, upstream, certs,
                                                     test_ca, tmp_path):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    name = login_name(up.port, mb)
    send_one(d, certs, name, "before")
    log1 = len(d.log())
    send_one(d, certs, name, "resumes")
    d.wait_log(r"\(resumed\)", start=log1)

    other_ca = str(tmp_path / "other-ca.pem")
    shutil.copyfile(test_ca["ca"], other_ca)
    with open(d.conf) as f:
        text = f.read()
    assert test_ca["ca"] in text
    d.write_config(text=text.replace(test_ca["ca"], other_ca))
    log3 = reload(d)
    send_one(d, certs, name, "after-reload")
    assert established_since(d, log3) >= 1
    assert resumed_since(d, log3) == 0
    assert len(up.messages) == 3


def test_reload_with_same_ca_path_drops_sessions(gateway, upstream, certs):
    """The CA file is read again at a reload: no session outlives it."""
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    name = login_name(up.port, mb)
    send_one(d, certs, name, "before")
    log2 = reload(d)
    send_one(d, certs, name, "after")
    assert established_since(d, log2) >= 1
    assert resumed_since(d, log2) == 0


def test_upstream_now_untrusted_is_refused(gateway, upstream, certs,
                                          test_ca):
    up = Upstream(test_ca)  # stopped here, not by the fixture
    port = up.port
    d = gateway()
    mb = mailbox_create(d)
    name = login_name(port, mb)
    send_one(d, certs, name, "trusted")
    log1 = len(d.log())
    send_one(d, certs, name, "trusted-resumed")
    d.wait_log(r"\(resumed\)", start=log1)
    # the same address now serves a certificate the gateway does not
    # trust, with new ticket keys: the session is refused, the full
    # handshake verifies, and nothing is sent
    up.stop()
    bad = upstream(port=port, cert={"cert": certs["cert"],
                                    "key": certs["key"]})
    log2 = len(d.log())
    code, text = try_login(d, certs, name)
    assert code == 454, (code, text)
    assert b"TLS handshake" in text, text
    assert bad.logins == [] and bad.messages == []
    d.wait_log(r"certificate verification failed|certificate verify failed",
               start=log2)
    assert resumed_since(d, log2) == 0
    assert UP_PASS not in d.log()


def test_setting_off_never_resumes(gateway, upstream, certs):
    up = upstream()
    d = gateway(proxy={"tls_session_cache": False})
    mb = mailbox_create(d)
    name = login_name(up.port, mb)
    log0 = len(d.log())
    for i in range(3):
        send_one(d, certs, name, "off-%d" % i)
    assert established_since(d, log0) >= 3
    assert resumed_since(d, log0) == 0
    assert len(up.messages) == 3

