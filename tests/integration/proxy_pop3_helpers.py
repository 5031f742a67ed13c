"""Helpers for test_proxy_pop3_*.py: a gateway (smtp + pop3 + the proxy
module) whose proxy trusts the test CA, logins of the form
user%server%mailbox, and the recorded copies read back with mg-dump."""

import os
import poplib
import re
import time

import pytest

from conftest import cfg_value, env_required, mailbox_create, mg_dump, tls_client_ctx
from dovecot_helpers import (DOVECOT_PASS, DOVECOT_USER, FakeUpstream, crlf,
                             dovecot, sample_messages, test_ca)
from pop3_helpers import make_pop3


def proxy_so():
    path = os.path.join(env_required("MG_PREFIX"), "lib", "mailgate", "proxy.so")
    if not os.path.exists(path):
        pytest.fail("%s is missing (make install)" % path, pytrace=False)
    return path


def proxy_module_text(settings):
    parts = ['name = "proxy";', "path = %s;" % cfg_value(proxy_so())]
    for k, v in settings.items():
        parts.append("%s = %s;" % (k, cfg_value(v)))
    return "{ " + " ".join(parts) + " }"


@pytest.fixture
def gateway(make_pop3, test_ca):
    """Factory: gateway(allow=["127.0.0.1"], ca=True, proxy={...})."""

    def make(allow=("127.0.0.1",), ca=True, proxy=None, **kw):
        settings = {}
        if ca:
            settings["ca_file"] = test_ca["ca"]
        if allow is not None:
            settings["allow_targets"] = list(allow)
        settings.update(proxy or {})
        return make_pop3(modules=[proxy_module_text(settings)], **kw)

    return make


def login_name(port, mailbox, host="127.0.0.1", user=DOVECOT_USER):
    return "%s%%%s:%d%%%s" % (user, host, port, mailbox["id"])


def client(d, certs, timeout=15):
    return poplib.POP3_SSL("127.0.0.1", d.pop3s_port,
                           context=tls_client_ctx(certs), timeout=timeout)


def proxy_login(d, certs, name, password=DOVECOT_PASS):
    p = client(d, certs)
    p.user(name)
    p.pass_(password)
    return p


def retr(p, n):
    resp, lines, octets = p.retr(n)
    return b"".join(l + b"\r\n" for l in lines)


def retr_dele_all(p, n, pause=0.0):
    """RETR i, DELE i for i = 1 .. n (the bench's and most clients'
    order), `pause` seconds after each; the messages as received."""
    got = []
    for i in range(1, n + 1):
        got.append(retr(p, i))
        assert p.dele(i).startswith(b"+OK")
        if pause:
            time.sleep(pause)
    return got


RECEIVED = re.compile(rb"^Received: [^\r]*\r\n(?:[ \t][^\r]*\r\n)*")


def strip_received(body):
    """The recorded copy without the Received field the proxy puts in
    front (the only difference to what the client received)."""
    m = RECEIVED.match(body)
    assert m, body[:200]
    return body[m.end():]


def recorded(d, mailbox):
    """The proxy-pop3 copies in the mailbox: list of mg-dump records."""
    out = mg_dump(d, mailbox)
    for r in out:
        assert r["source"] == "proxy-pop3", r
    return out


def dovecot_tls_logins(dv):
    """Dovecot's login lines for the test user, and whether each used TLS."""
    lines = [l for l in dv.log_text().splitlines()
             if "pop3-login: Info: Login: user=<%s>" % DOVECOT_USER in l]
    return [(l, "TLS" in l) for l in lines]


__all__ = ["gateway", "login_name", "client", "proxy_login", "retr",
           "strip_received", "recorded", "dovecot", "test_ca",
           "sample_messages", "crlf", "FakeUpstream", "DOVECOT_USER",
           "DOVECOT_PASS", "mailbox_create", "make_pop3",
           "dovecot_tls_logins"]
