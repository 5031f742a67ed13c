"""A hostile or broken upstream (a small fake server: a real one would
never do this): bytes after its STARTTLS reply, an overlong reply line, a
continuation without end, a code that changes within a reply, a reply
nobody asked for. Each ends the upstream connection and the client gets
a 4xx; nothing of it reaches the client as a reply of its own. Also: the
proxy never pipelines, and refuses 8BITMIME for an upstream without it."""

import smtplib
import time

import pytest

from proxy_smtp_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_smtp_helpers import (FakeUpstream, copies, login_name,
                                mailbox_create, message, proxy_client,
                                store_stat, try_login)

CAPS = [b"PIPELINING", b"SIZE 1000000", b"8BITMIME", b"ENHANCEDSTATUSCODES"]


def fake(test_ca, at=None, bad=b"", caps=CAPS, after_starttls=b"", delay=0):
    """A fake upstream: STARTTLS, AUTH PLAIN, MAIL/RCPT/DATA. At command
    `at` ("ehlo", "mail", "rcpt", "data", "dot") it sends `bad` instead of
    its answer (after `delay` seconds). It notes every command line, and
    whether one ever arrived before the answer to the one before it
    (pipelining)."""

    def script(fu, conn):
        conn.sendall(b"220 fake.test ESMTP\r\n")
        tls = False
        while True:
            line = fu.readline(conn)
            if not line:
                return
            fu.seen.append(line)
            if hasattr(conn, "pending") and conn.pending() > 0:
                fu.seen.append(("pipelined", line))
            verb = line[:4].upper()
            if verb == b"EHLO":
                if at == "ehlo" and tls:
                    conn.sendall(bad)
                    continue
                lines = [b"fake.test"] + list(caps)
                lines += [b"AUTH PLAIN LOGIN"] if tls else [b"STARTTLS"]
                out = b"".join(b"250-" + l + b"\r\n" for l in lines[:-1])
                conn.sendall(out + b"250 " + lines[-1] + b"\r\n")
            elif verb == b"STAR":
                conn.sendall(b"220 2.0.0 go ahead\r\n" + after_starttls)
                conn = fu.ctx.wrap_socket(conn, server_side=True)
                tls = True
            elif verb == b"AUTH":
                conn.sendall(b"235 2.7.0 ok\r\n")
            elif verb == b"MAIL":
                conn.sendall(bad if at == "mail" else b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                conn.sendall(bad if at == "rcpt" else b"250 2.1.5 ok\r\n")
            elif verb == b"DATA" and at == "data":
                time.sleep(delay)
                conn.sendall(bad)
            elif verb == b"DATA":
                conn.sendall(b"354 go\r\n")
                while True:
                    l = fu.readline(conn)
                    if not l or l == b".\r\n":
                        break
                # noted before the reply: the client may look at once
                fu.seen.append(b"<message>")
                conn.sendall(bad if at == "dot" else b"250 2.0.0 fake: ok\r\n")
            elif verb == b"RSET" or verb == b"NOOP":
                conn.sendall(b"250 2.0.0 ok\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 bye\r\n")
                return
            else:
                conn.sendall(b"502 5.5.1 no\r\n")

    return FakeUpstream(script, test_ca)


@pytest.fixture
def fakes(test_ca):
    made = []

    def make(**kw):
        f = fake(test_ca, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


def test_fake_upstream_works_and_is_never_pipelined(gateway, fakes, certs):
    f = fakes()
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(f.port, mb))
    # the client pipelines (the gateway offers PIPELINING) ...
    assert s.sendmail("a@upstream.test", ["b@example.org", "c@example.org",
                                          "d@example.org"],
                      message("fake")) == {}
    s.quit()
    assert b"<message>" in f.seen
    # ... the upstream never got a command before its previous answer
    assert not [x for x in f.seen if isinstance(x, tuple)], f.seen


@pytest.mark.parametrize("name,bad,why", [
    ("overlong", b"250-fake.test\r\n250 " + b"x" * 3000 + b"\r\n",
     b"overlong"),
    ("endless", b"".join(b"250-line %d\r\n" % i for i in range(200)),
     b"too many lines"),
    ("mismatch", b"250-fake.test\r\n251-PIPELINING\r\n250 AUTH PLAIN\r\n",
     b"changed the reply code"),
    ("garbage", b"hello there\r\n", b"invalid reply line"),
    ("extra", b"250 fake.test\r\n250 AUTH PLAIN\r\n", b"more than"),
])
def test_hostile_ehlo_replies_refuse_the_login(gateway, fakes, certs, name,
                                                bad, why):
    f = fakes(at="ehlo", bad=bad)
    d = gateway()
    mb = mailbox_create(d)
    code, text = try_login(d, certs, login_name(f.port, mb))
    assert code == 454 and why in text, (code, text)
    assert not [x for x in f.seen if x[:4] == b"AUTH"], f.seen


def test_bytes_after_the_starttls_reply_are_refused(gateway, fakes, certs):
    f = fakes(after_starttls=b"250-injected\r\n")
    d = gateway()
    mb = mailbox_create(d)
    code, text = try_login(d, certs, login_name(f.port, mb))
    assert code == 454 and b"between its STARTTLS reply" in text, (code, text)
    assert not [x for x in f.seen if x[:4] == b"AUTH"], f.seen


@pytest.mark.parametrize("at", ["mail", "rcpt", "dot"])
def test_hostile_replies_in_the_session(gateway, fakes, certs, at):
    f = fakes(at=at, bad=b"250-ok\r\n354 mismatch\r\n")
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(f.port, mb))
    with pytest.raises(smtplib.SMTPException) as e:
        s.sendmail("a@upstream.test", ["b@example.org"], message("h"))
    text = repr(e.value)
    assert "451" in text and "4.4.2" in text, text
    assert "mismatch" not in text
    # the upstream is gone: the next transaction says so
    code, text = s.docmd("MAIL", "FROM:<a@upstream.test>")
    assert code == 451 and b"log in again" in text, (code, text)
    s.quit()


@pytest.mark.parametrize("up_wait,client_wait", [(0.5, 0), (0, 0.5)])
def test_upstream_refusing_data_after_the_clients_354(gateway, fakes, certs,
                                                      up_wait, client_wait):
    """The client gets its 354 at once; an upstream that then refuses DATA
    (with the client's data waiting for its answer, or before the data)
    has its refusal given at the end of the data; nothing of the data goes
    upstream, no copy is kept, and the session goes on (RSET upstream
    first)."""
    f = fakes(at="data", bad=b"554 5.5.1 fake: no data today\r\n",
              delay=up_wait)
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(f.port, mb))
    assert s.mail("a@upstream.test")[0] == 250
    assert s.rcpt("b@example.org")[0] == 250
    assert s.docmd("DATA")[0] == 354
    time.sleep(client_wait)
    s.send(b"Subject: refused\r\n\r\n" + b"refused line\r\n" * 200 + b".\r\n")
    assert s.getreply() == (554, b"5.5.1 fake: no data today")
    assert s.docmd("MAIL", "FROM:<a@upstream.test>")[0] == 250
    s.quit()
    # after the refused DATA: nothing of the data (no line of the message
    # was taken for a command), then RSET and the next MAIL
    i = f.seen.index(b"DATA\r\n")
    assert f.seen[i + 1:i + 3] == [b"RSET\r\n",
                                   b"MAIL FROM:<a@upstream.test>\r\n"], f.seen
    assert f.seen[i + 3:] in ([], [b"QUIT\r\n"]), f.seen
    assert copies(d, mb) == []
    assert store_stat(d, mb)["held"] == 0


def test_8bitmime_to_an_upstream_without_it(gateway, fakes, certs):
    f = fakes(caps=[b"SIZE 1000000"])
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(f.port, mb))
    code, text = s.docmd("MAIL", "FROM:<a@upstream.test> BODY=8BITMIME")
    assert (code, text[:5]) == (554, b"5.6.3"), (code, text)
    # SIZE= goes upstream only when it advertises SIZE: here it does
    assert s.docmd("MAIL", "FROM:<a@upstream.test> SIZE=1234")[0] == 250
    s.quit()
    assert b"MAIL FROM:<a@upstream.test> SIZE=1234\r\n" in f.seen


def test_size_not_forwarded_without_the_extension(gateway, fakes, certs):
    f = fakes(caps=[b"8BITMIME"])
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(f.port, mb))
    assert s.docmd("MAIL", "FROM:<a@upstream.test> SIZE=1234 "
                   "BODY=8BITMIME")[0] == 250
    s.quit()
    assert b"MAIL FROM:<a@upstream.test> BODY=8BITMIME\r\n" in f.seen
