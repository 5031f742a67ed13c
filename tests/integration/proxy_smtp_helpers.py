"""Helpers for test_proxy_smtp_*.py: a gateway (smtp + the proxy module)
whose proxy trusts the test CA, an upstream SMTP server on loopback
(Python's aiosmtpd from Debian: STARTTLS or implicit TLS with the test
CA's certificate, AUTH PLAIN/LOGIN only over TLS), and a small fake
upstream for what a real server would never do (hostile replies, bytes
injected after STARTTLS)."""

import asyncio
import re
import smtplib
import socket
import ssl
import subprocess
import threading

import pytest

from conftest import (SOCK_TIMEOUT_S, build_tool, daemon_env, free_port,
                      mailbox_create, mg_dump, sanitizer_lines, tls_client_ctx,
                      wait_for)
from dovecot_helpers import test_ca
from proxy_pop3_helpers import proxy_module_text

UP_USER = "alice@upstream.test"
UP_PASS = "s3cret-upstream"


def server_ctx(test_ca, cert=None):
    """A server TLS context with the test CA's localhost certificate, or
    `cert` ({"cert": path, "key": path}, see ca_server_cert())."""
    cert = cert or test_ca
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert["cert"], cert["key"])
    return ctx


class Upstream:
    """aiosmtpd in a thread of its own. Records every login (user,
    password, over TLS?) and every message (sender, recipients, mail
    options, content bytes). Recipients starting with "reject" get 550;
    a message containing REJECT-ME gets 554 at the end of the data,
    TEMPFAIL-ME 451."""

    def __init__(self, test_ca, mode="starttls", smtputf8=False,
                 address="127.0.0.1", port=None, cert=None, tls_max=None):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.address = address
        self.port = port or free_port()
        self.logins = []
        self.messages = []
        self.refused = []
        up = self

        def over_tls(server, session):
            # STARTTLS sets session.ssl; implicit TLS only the transport's
            return (session.ssl is not None or
                    server.transport.get_extra_info("ssl_object") is not None)

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address,
                                  rcpt_options):
                if address.startswith("reject"):
                    return "550 5.1.1 <%s>: no such user here" % address
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 OK"

            async def handle_DATA(self, server, session, envelope):
                content = envelope.original_content or envelope.content
                if b"REJECT-ME" in content:
                    up.refused.append(content)
                    return "554 5.7.1 upstream: content refused"
                if b"TEMPFAIL-ME" in content:
                    up.refused.append(content)
                    return "451 4.3.0 upstream: try later"
                up.messages.append({
                    "sender": envelope.mail_from,
                    "rcpts": list(envelope.rcpt_tos),
                    "options": list(envelope.mail_options),
                    "content": content,
                    "tls": over_tls(server, session),
                })
                return "250 2.0.0 upstream: queued as U%d" % len(up.messages)

        def authenticator(server, session, envelope, mechanism, auth_data):
            login = auth_data.login.decode()
            password = auth_data.password.decode()
            up.logins.append((mechanism, login, password,
                              over_tls(server, session)))
            # handled=False: aiosmtpd answers 535 itself
            return AuthResult(success=(login == UP_USER and
                                       password == UP_PASS), handled=False)

        kw = dict(hostname=address, port=self.port,
                  server_hostname="upstream.test", auth_required=True,
                  auth_require_tls=True, authenticator=authenticator,
                  enable_SMTPUTF8=smtputf8, data_size_limit=10 * 1024 * 1024)
        ctx = server_ctx(test_ca, cert)
        if tls_max is not None:
            ctx.maximum_version = tls_max  # e.g. TLS 1.2 session ids
        if mode == "implicit":
            # aiosmtpd counts only STARTTLS as TLS for AUTH: the listener
            # here speaks nothing but TLS, so AUTH is offered from the start
            kw["ssl_context"] = ctx
            kw["auth_require_tls"] = False
        elif mode == "starttls":
            kw["tls_context"] = ctx
            kw["require_starttls"] = True
        else:  # "plain": no TLS at all
            kw["auth_require_tls"] = False
        self.controller = Controller(Handler(), **kw)
        self.controller.start()

    def stop(self):
        self.controller.stop()


@pytest.fixture
def upstream(test_ca):
    """Factory: upstream(mode="starttls"|"implicit"|"plain", address=,
    port=, cert=, tls_max=) -- a free port on 127.0.0.1 unless told."""
    made = []

    def make(**kw):
        u = Upstream(test_ca, **kw)
        made.append(u)
        return u

    yield make
    for u in made:
        u.stop()


@pytest.fixture
def gateway(make_smtp, test_ca):
    """Factory: a gateway (smtp STARTTLS d.smtp_port, implicit d.smtps_port)
    with the proxy module trusting the test CA and allowed to loopback."""

    def make(allow=("127.0.0.1",), ca=True, proxy=None, **kw):
        settings = {}
        if ca:
            settings["ca_file"] = test_ca["ca"]
        if allow is not None:
            settings["allow_targets"] = list(allow)
        settings.update(proxy or {})
        return make_smtp(modules=[proxy_module_text(settings)], **kw)

    return make


def login_name(port, mailbox, host="127.0.0.1", user=UP_USER):
    return "%s%%%s:%d%%%s" % (user, host, port, mailbox["id"])


def client(d, certs, implicit=False, timeout=20):
    """smtplib to the gateway over TLS (STARTTLS or implicit), after EHLO."""
    ctx = tls_client_ctx(certs)
    if implicit:
        s = smtplib.SMTP_SSL("127.0.0.1", d.smtps_port, context=ctx,
                             timeout=timeout)
    else:
        s = smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=timeout)
        s.starttls(context=ctx)
    s.ehlo("client.test")
    return s


def proxy_client(d, certs, name, password=UP_PASS, implicit=False,
                 mechanism="PLAIN"):
    s = client(d, certs, implicit=implicit)
    code, text = s.docmd("AUTH", auth_arg(mechanism, name, password))
    if mechanism == "LOGIN":
        import base64
        assert code == 334, (code, text)
        code, text = s.docmd(base64.b64encode(name.encode()).decode())
        assert code == 334, (code, text)
        code, text = s.docmd(base64.b64encode(password.encode()).decode())
    assert code == 235, (code, text)
    return s


def auth_arg(mechanism, name, password):
    import base64
    if mechanism == "PLAIN":
        raw = b"\0" + name.encode() + b"\0" + password.encode()
        return "PLAIN " + base64.b64encode(raw).decode()
    return "LOGIN"


def try_login(d, certs, name, password=UP_PASS, implicit=False):
    """(code, text) of AUTH PLAIN through the gateway."""
    s = client(d, certs, implicit=implicit)
    try:
        return s.docmd("AUTH", auth_arg("PLAIN", name, password))
    finally:
        try:
            s.quit()
        except Exception:
            pass


def message(marker, size=3000, extra=b""):
    lines = [b"From: Alice <alice@upstream.test>",
             b"To: Bob <bob@example.org>",
             b"Subject: proxy smtp test " + marker.encode(),
             b"Message-ID: <" + marker.encode() + b"@upstream.test>",
             b"", b"marker " + marker.encode(),
             b".a line with a leading dot", b"..two", b"."]
    body = b"\r\n".join(lines) + b"\r\n" + extra
    k = 0
    while len(body) < size:
        body += b"line %d %s\r\n" % (k, b"x" * 60)
        k += 1
    return body


STAT_LINE = re.compile(r"^txnid=(\d+) writing=(\d+) held=(\d+) visible=(\d+) "
                       r"unconfirmed=(\d+)$")


def store_stat(d, mb):
    """The store's last txn id and the mailbox's messages by state, read
    with mg-dump --stat (read-only: works beside a running daemon, and
    on a dead one's data without the recovery a start would run)."""
    r = subprocess.run([build_tool("mg-dump"), d.data_dir, mb["id"], "--stat"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30,
                       env=daemon_env())
    assert not sanitizer_lines(r.stderr), r.stderr
    assert r.returncode == 0, "mg-dump --stat: exit %d\n%s" % (r.returncode,
                                                                r.stderr)
    m = STAT_LINE.match(r.stdout.strip())
    assert m, r.stdout
    keys = ("txnid", "writing", "held", "visible", "unconfirmed")
    return dict(zip(keys, (int(x) for x in m.groups())))


def settled(d, mb, timeout=5):
    """Wait until no copy of the mailbox is held: the proxy answers the
    client before the (lazy) publish or discard is on disk, which takes
    up to 100 ms more."""
    wait_for(lambda: store_stat(d, mb)["held"] == 0, timeout,
             "the held copies to be published or discarded")


def copies(d, mailbox, wait=True):
    """The published copies (after the last ones were settled)."""
    if wait and d.alive():
        settled(d, mailbox)
    out = mg_dump(d, mailbox)
    for r in out:
        assert r["source"] == "proxy-smtp", r
    return out


def copy_body(rec):
    """The recorded copy without the Return-Path and Received fields the
    proxy puts in front."""
    b = rec["body"]
    assert b.startswith(b"Return-Path: <"), b[:200]
    i = b.index(b"\r\nReceived: ")
    j = i + 2
    while True:
        k = b.index(b"\r\n", j)
        if b[k + 2:k + 3] not in (b" ", b"\t"):
            return b[k + 2:]
        j = k + 2


class FakeUpstream:
    """A socket server that speaks a script: `script(conn, tls_ctx)` runs
    per connection in a thread. Helpers for the common opening."""

    def __init__(self, script, test_ca):
        self.port = free_port()
        self.ctx = server_ctx(test_ca)
        self.script = script
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(8)
        self.seen = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stop_ev.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(SOCK_TIMEOUT_S)
            threading.Thread(target=self.serve, args=(conn,),
                             daemon=True).start()

    def serve(self, conn):
        try:
            self.script(self, conn)
        except Exception as e:  # the peer may hang up at any point
            self.seen.append(("error", repr(e)))
        finally:
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def readline(conn):
        buf = b""
        while not buf.endswith(b"\n"):
            ch = conn.recv(1)
            if not ch:
                break
            buf += ch
        return buf

    def stop(self):
        self.stop_ev.set()
        self.sock.close()
        self.thread.join(5)


__all__ = ["upstream", "gateway", "login_name", "client", "proxy_client",
           "try_login", "message", "copies", "copy_body", "FakeUpstream",
           "UP_USER", "UP_PASS", "mailbox_create", "test_ca"]
