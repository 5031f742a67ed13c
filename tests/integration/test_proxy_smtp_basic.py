"""The recording SMTP proxy against a real upstream (aiosmtpd with
STARTTLS or implicit TLS and AUTH): logins user%server%mailbox through
AUTH PLAIN and LOGIN, every message relayed with its envelope and
recorded once in the mailbox."""

from proxy_smtp_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_smtp_helpers import (UP_PASS, UP_USER, copies, copy_body,
                                login_name, mailbox_create, message,
                                proxy_client)


def test_smtplib_sends_through_starttls_upstream(gateway, upstream, certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(up.port, mb))
    msg = message("basic-1")
    refused = s.sendmail("alice@upstream.test",
                         ["bob@example.org", "carol@example.org"], msg)
    assert refused == {}
    s.quit()
    assert len(up.messages) == 1
    m = up.messages[0]
    assert m["sender"] == "alice@upstream.test"
    assert m["rcpts"] == ["bob@example.org", "carol@example.org"]
    assert m["content"] == msg
    assert m["tls"]
    assert up.logins == [("PLAIN", UP_USER, UP_PASS, True)]
    recs = copies(d, mb)
    assert len(recs) == 1
    assert recs[0]["sender"] == "alice@upstream.test"
    assert recs[0]["rcpts"] == ["bob@example.org", "carol@example.org"]
    assert copy_body(recs[0]) == msg
