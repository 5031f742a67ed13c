"""The recording POP3 proxy against a real Dovecot upstream: logins of
the form user%server%mailbox, STLS to the upstream verified with the test
CA, every retrieved message recorded once, byte for byte."""

from proxy_pop3_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_pop3_helpers import (DOVECOT_USER, client, crlf, dovecot_tls_logins,
                                login_name, mailbox_create, proxy_login,
                                recorded, retr, sample_messages,
                                strip_received)


def test_poplib_retrieves_and_records_once(gateway, dovecot, certs):
    dv = dovecot()
    msgs = sample_messages(5, size=3000)
    dv.add(msgs)
    d = gateway()
    mb = mailbox_create(d)
    p = proxy_login(d, certs, login_name(dv.port, mb))
    count, size = p.stat()
    assert count == 5
    uidls = p.uidl()[1]
    assert len(uidls) == 5
    got = [retr(p, i) for i in range(1, 6)]
    assert sorted(got) == sorted(crlf(m) for m in msgs)
    assert p.quit().startswith(b"+OK")
    copies = recorded(d, mb)
    assert len(copies) == 5
    assert sorted(strip_received(c["body"]) for c in copies) == sorted(got)
    assert all(c["body"].startswith(b"Received: from 127.0.0.1 (127.0.0.1)")
               for c in copies)

    # a second retrieval stores nothing new
    p = proxy_login(d, certs, login_name(dv.port, mb))
    again = [retr(p, i) for i in range(1, 6)]
    assert again == got
    p.quit()
    assert len(recorded(d, mb)) == 5
    # the gateway logged in upstream over TLS (Dovecot trusts loopback,
    # so its log is the proof)
    logins = dovecot_tls_logins(dv)
    assert len(logins) == 2 and all(tls for _, tls in logins), logins
    assert dv.messages_left() == 5
    d.wait_log(r"proxy session to 127\.0\.0\.1:%d for mailbox %s ended "
               r"\(QUIT\): 5 retrieved, 0 recorded, 5 already stored"
               % (dv.port, mb["id"]))
    assert "s3cret-upstream" not in d.log()
