"""Helpers for the test_pop3_*.py tests: a daemon with the smtp and pop3
modules, mailboxes filled over real SMTP, poplib clients over STLS and
implicit TLS (verifying the test certificate), and a raw line client.

Import the fixture into a test module with
`from pop3_helpers import make_pop3` (pytest finds it there)."""

import json
import os
import poplib
import re

import pytest

from conftest import (SMTP_DOMAIN, Client, cfg_value, env_required,
                      free_port, listener, mailbox_create, smtp_module_text,
                      tls_client_ctx)
from smtp_helpers import addr, sample_message, session

SENDER = "alice@sender.test"


def pop3_so():
    path = os.path.join(env_required("MG_PREFIX"), "lib", "mailgate", "pop3.so")
    if not os.path.exists(path):
        pytest.fail("%s is missing (make install)" % path, pytrace=False)
    return path


def pop3_module_text(listen, settings=None):
    parts = ['name = "pop3";', "path = %s;" % cfg_value(pop3_so())]
    for k, v in (settings or {}).items():
        parts.append("%s = %s;" % (k, cfg_value(v)))
    entries = ", ".join(
        "{ " + " ".join("%s = %s;" % (k, cfg_value(v)) for k, v in e.items()) + " }"
        for e in listen)
    parts.append("listen = ( %s );" % entries)
    return "{ " + " ".join(parts) + " }"


# the defaults wait 1 s after a failed login; tests that do not measure
# it make it short
FAST = {"auth_failure_delay": 50}


@pytest.fixture
def make_pop3(make_smtp):
    """Factory: a daemon with smtp (d.smtp_port STARTTLS) and pop3 with an
    STLS listener (d.pop3_port), an implicit-TLS one (d.pop3s_port) and a
    plaintext one with allow_plaintext_auth (d.pop3_plain_port).
    make_pop3(pop3={settings}, top={...}, start=True)."""

    def make(pop3=None, top=None, start=True, listen=None, modules=(), **kw):
        """`modules`: further module groups after pop3."""
        if listen is None:
            listen = [listener(free_port(), "starttls"),
                      listener(free_port(), "implicit"),
                      listener(free_port(), "none",
                               allow_plaintext_auth=True)]
        settings = dict(FAST)
        settings.update(pop3 or {})
        d = make_smtp(top=top, start=False,
                      modules=[pop3_module_text(listen, settings), *modules],
                      **kw)
        d.ports = d.ports + [e["port"] for e in listen]
        d.pop3_listen = listen
        d.pop3_port = d.pop3s_port = d.pop3_plain_port = None
        for e in listen:
            if e.get("tls") == "starttls" and d.pop3_port is None:
                d.pop3_port = e["port"]
            elif e.get("tls") == "implicit" and d.pop3s_port is None:
                d.pop3s_port = e["port"]
            elif e.get("tls", "none") == "none" and d.pop3_plain_port is None:
                d.pop3_plain_port = e["port"]
        if start:
            d.start()
        return d

    return make


def deliver(d, mailbox, messages, certs):
    """Send each message to the mailbox over SMTP with STARTTLS; every one
    must get 250."""
    c = session(d.smtp_port, certs)
    try:
        for m in messages:
            c.expect("MAIL FROM:<%s>" % SENDER, 250)
            c.expect("RCPT TO:<%s>" % addr(mailbox), 250)
            c.data(m)
        c.expect("QUIT", 221)
    finally:
        c.close()


def pop3s(d, certs, timeout=10):
    """poplib over implicit TLS, verifying the test certificate."""
    return poplib.POP3_SSL("127.0.0.1", d.pop3s_port,
                           context=tls_client_ctx(certs), timeout=timeout)


def pop3_stls(d, certs, timeout=10):
    """poplib on the STLS port, upgraded."""
    p = poplib.POP3("127.0.0.1", d.pop3_port, timeout=timeout)
    p.stls(context=tls_client_ctx(certs))
    return p


def login(d, mailbox, certs, how="user"):
    p = pop3s(d, certs)
    if how == "user":
        p.user(mailbox["id"])
        p.pass_(mailbox["password"])
    return p


def mailbox_messages(d, mailbox):
    """The message count of the mailbox (mailgatectl mailbox show --json)."""
    r = d.ctl("--json", "mailbox", "show", mailbox["id"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["messages"]


def strip_trace(lines):
    """poplib's RETR lines (unstuffed, without CRLF) joined as bytes and the
    trace fields the gateway prepended removed."""
    from conftest import split_trace

    data = b"".join(l + b"\r\n" for l in lines)
    return split_trace(data)[1]


class Raw(Client):
    """A raw POP3 line client."""

    def line(self):
        return self.readline()

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.readline()

    def multi(self):
        """The lines of a multi-line response up to '.', unstuffed."""
        out = []
        while True:
            l = self.readline()
            if l == ".":
                return out
            out.append(l[1:] if l.startswith(".") else l)


def raw(port, certs=None, tls=False):
    c = Raw(port, ssl_context=tls_client_ctx(certs) if tls else None,
            timeout=10)
    g = c.line()
    assert g.startswith("+OK"), g
    return c


__all__ = ["make_pop3", "pop3_module_text", "deliver", "pop3s", "pop3_stls", "login",
           "mailbox_messages", "strip_trace", "raw", "Raw", "SENDER",
           "sample_message", "mailbox_create", "SMTP_DOMAIN", "addr",
           "poplib", "re"]
