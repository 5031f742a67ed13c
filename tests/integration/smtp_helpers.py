"""A raw SMTP client and message helpers for the test_smtp_*.py tests
(the fixtures are in conftest.py: make_smtp, mailbox_create, mg_dump)."""

import hashlib
import os
import re
import smtplib
import socket
import ssl
import time

from conftest import SMTP_DOMAIN, Client, Closed, tls_client_ctx


class Smtp(Client):
    """Client.reply() parses SMTP replies already; this adds the verbs."""

    def code(self, line):
        """Send one command, return (code, last line's text)."""
        self.send(line + "\r\n")
        code, lines = self.reply()
        return code, lines[-1]

    def expect(self, line, code, text=None):
        c, t = self.code(line)
        assert c == code, "%r: expected %d, got %d %s" % (line, code, c, t)
        if text is not None:
            assert t.startswith(text), "%r: expected %d %s, got %d %s" % (
                line, code, text, c, t)
        return t

    def greet(self):
        code, lines = self.reply()
        assert code == 220, (code, lines)
        return lines

    def ehlo(self, name="client.test"):
        self.send("EHLO %s\r\n" % name)
        code, lines = self.reply()
        assert code == 250, (code, lines)
        return [l.upper() for l in lines[1:]]

    def starttls(self, ctx, server_hostname="localhost"):
        self.expect("STARTTLS", 220)
        assert self.buf == b"", "data after the STARTTLS reply: %r" % self.buf
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def replies(self, quiet=0.5):
        """Every reply until the server stays silent for `quiet` s:
        a list of (code, lines)."""
        out = []
        while True:
            while b"\n" not in self.buf or not _complete(self.buf):
                self.sock.settimeout(quiet)
                try:
                    chunk = self.sock.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    chunk = None
                finally:
                    self.sock.settimeout(self.timeout)
                if chunk is None:
                    assert self.buf == b"", "partial reply %r" % self.buf
                    return out
                if chunk == b"":
                    raise Closed("closed after %r (buffered %r)" % (out, self.buf))
                self.buf += chunk
            out.append(self.reply())

    def data(self, message, expect=250):
        """DATA with the message dot-stuffed, then <CRLF>.<CRLF>; the reply
        to the end of data as (code, text)."""
        self.expect("DATA", 354)
        self.send(dot_stuff(message) + b".\r\n")
        code, lines = self.reply()
        if expect is not None:
            assert code == expect, (code, lines)
        return code, lines[-1]


def _complete(buf):
    """Whether buf holds at least one whole reply."""
    for line in buf.split(b"\r\n")[:-1]:
        if len(line) == 3 or line[3:4] == b" ":
            return True
    return False


def dot_stuff(message):
    """The DATA form of a message ending in CRLF."""
    assert message.endswith(b"\r\n")
    out = re.sub(rb"(?m)^\.", b"..", message)
    return out


def addr(mailbox):
    return mailbox["id"] + "@" + SMTP_DOMAIN


def connect(port, tls=None, certs=None, timeout=10.0):
    """A raw session after the greeting (implicit TLS with tls="implicit")."""
    ctx = tls_client_ctx(certs) if tls == "implicit" else None
    c = Smtp(port, ssl_context=ctx, timeout=timeout)
    c.greet()
    return c


def session(port, certs, ehlo=True, tls=True, timeout=10.0):
    """Greeting, EHLO, STARTTLS and EHLO again: ready for MAIL."""
    c = connect(port, timeout=timeout)
    if ehlo:
        c.ehlo()
        if tls:
            c.starttls(tls_client_ctx(certs))
            c.ehlo()
    return c


def sample_message(marker="", extra=b""):
    """A small message in canonical form with a unique Message-ID."""
    tok = os.urandom(8).hex()
    return (b"From: Alice <alice@sender.test>\r\n"
            b"To: Bob <bob@remote.test>\r\n"
            b"Subject: test " + marker.encode() + b"\r\n"
            b"Message-ID: <" + tok.encode() + b"@sender.test>\r\n"
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            b"\r\n"
            b"Hello " + tok.encode() + b"\r\n"
            b".leading dot line\r\n"
            b"\xc3\xa4 8-bit line\r\n" + extra)


def body_of(message):
    return message.split(b"\r\n\r\n", 1)[1]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def wait_until(predicate, timeout, what, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s"
                                 % (timeout, what))
        time.sleep(step)


def smtplib_starttls(port, certs, timeout=10):
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test",
                     timeout=timeout)
    s.ehlo()
    s.starttls(context=tls_client_ctx(certs))
    s.ehlo()
    return s


def smtplib_implicit(port, certs, timeout=10):
    return smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test",
                            context=tls_client_ctx(certs), timeout=timeout)


__all__ = ["Smtp", "Closed", "addr", "connect", "session", "sample_message",
           "body_of", "sha256", "wait_until", "smtplib_starttls",
           "smtplib_implicit", "dot_stuff", "socket", "ssl"]
