"""TLS session resumption towards a POP3 upstream (Dovecot with STLS);
the SMTP half's cases are in test_proxy_tls_resume.py."""

from proxy_pop3_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_pop3_helpers import (DOVECOT_PASS, dovecot_tls_logins,
                                login_name, mailbox_create, proxy_login,
                                sample_messages)


def test_pop3_dovecot_upstream_resumes(gateway, dovecot, certs):
    """POP3 with STLS to Dovecot: resumed from the second session on, and
    Dovecot logs a TLS login each time. (Dovecot's default starts a login
    process per connection, with ticket keys of its own: no resumption;
    its high-performance mode keeps one.)"""
    dv = dovecot(reuse_login=True)
    dv.add(sample_messages(2, size=1000))
    d = gateway()
    mb = mailbox_create(d)
    for i in range(3):
        log0 = len(d.log())
        p = proxy_login(d, certs, login_name(dv.port, mb))
        assert p.stat()[0] == 2
        assert p.quit().startswith(b"+OK")
        # both legs are logged; only the upstream's can resume (the
        # client's poplib offers no session)
        assert d.log()[log0:].count("TLS established") == 2
        assert d.log()[log0:].count("(resumed)") == (1 if i else 0)
    logins = dovecot_tls_logins(dv)
    assert len(logins) == 3 and all(tls for _, tls in logins)
    assert DOVECOT_PASS not in d.log()
