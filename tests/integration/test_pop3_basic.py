"""POP3 module (issue 5): the archiver's session with Python poplib over
implicit TLS and STLS, against mailboxes filled over the real smtp module.
Every message read back equals what was sent, apart from the trace fields
the gateway prepends."""

import poplib

from conftest import tls_client_ctx
from pop3_helpers import (deliver, login, mailbox_create, mailbox_messages,
                          make_pop3, pop3_stls, pop3s, raw, sample_message,
                          strip_trace)

assert make_pop3  # a fixture, used by name


def test_capa_before_and_after_tls(make_pop3, certs):
    d = make_pop3()
    p = poplib.POP3("127.0.0.1", d.pop3_port, timeout=10)
    caps = p.capa()
    assert "STLS" in caps, caps
    for want in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                 "IMPLEMENTATION"):
        assert want in caps, caps
    # no credentials before TLS: neither USER nor SASL is offered
    assert "USER" not in caps and "SASL" not in caps, caps
    p.stls(context=tls_client_ctx(certs))
    caps = p.capa()
    assert "STLS" not in caps, caps
    assert "USER" in caps and caps["SASL"] == ["PLAIN"], caps
    p.quit()
    # implicit TLS: the same, never STLS
    p = pop3s(d, certs)
    caps = p.capa()
    assert "STLS" not in caps and "USER" in caps, caps
    assert caps["IMPLEMENTATION"] == ["mailgate"], caps
    p.quit()


def test_retrieve_and_delete(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    msgs = [sample_message("m%d" % i) for i in range(3)]
    deliver(d, mb, msgs, certs)
    assert mailbox_messages(d, mb) == 3

    p = login(d, mb, certs)
    count, size = p.stat()
    assert count == 3 and size > sum(len(m) for m in msgs)
    resp, listing, _ = p.list()
    sizes = [int(l.split()[1]) for l in listing]
    assert [int(l.split()[0]) for l in listing] == [1, 2, 3]
    assert sum(sizes) == size
    resp, uidls, _ = p.uidl()
    uids = [l.split()[1] for l in uidls]
    assert len(set(uids)) == 3
    for i, m in enumerate(msgs, 1):
        resp, lines, octets = p.retr(i)
        assert resp.startswith(b"+OK")
        assert strip_trace(lines) == m
        assert p.list(i).split()[2] == str(sizes[i - 1]).encode()
        # RETR sends what LIST announced, plus at most a final CRLF
        assert octets - 2 * len(lines) - len(resp) - 2 <= sizes[i - 1] + 2
        assert p.uidl(i).split()[2] == uids[i - 1]
        p.dele(i)
    assert p.stat() == (0, 0)
    assert p.quit().startswith(b"+OK")
    assert mailbox_messages(d, mb) == 0


def test_stls_session(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    msg = sample_message("stls")
    deliver(d, mb, [msg], certs)
    p = pop3_stls(d, certs)
    p.user(mb["id"])
    p.pass_(mb["password"])
    assert p.stat()[0] == 1
    assert strip_trace(p.retr(1)[1]) == msg
    p.quit()
    # nothing was deleted
    assert mailbox_messages(d, mb) == 1


def test_plaintext_auth_refused(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    c = raw(d.pop3_port)
    for line in ("USER " + mb["id"], "PASS " + mb["password"],
                 "AUTH PLAIN AGFiYwBkZWY="):
        r = c.cmd(line)
        assert r.startswith("-ERR") and "STLS" in r and "995" in r, (line, r)
    assert c.cmd("QUIT").startswith("+OK")
    # a listener with allow_plaintext_auth takes them
    c = raw(d.pop3_plain_port)
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")
    assert c.cmd("QUIT").startswith("+OK")


def test_stls_discards_pipelined_plaintext(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    c = raw(d.pop3_port)
    # commands injected behind STLS before the handshake must be dropped
    c.send("STLS\r\nUSER %s\r\nPASS %s\r\n" % (mb["id"], mb["password"]))
    assert c.line().startswith("+OK")
    assert c.buf == b""
    c.sock = tls_client_ctx(certs).wrap_socket(c.sock,
                                               server_hostname="localhost")
    # still in AUTHORIZATION with no USER given: PASS is refused
    assert c.cmd("PASS " + mb["password"]).startswith("-ERR")
    assert c.cmd("STLS").startswith("-ERR")  # TLS is already active
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")
    assert c.cmd("QUIT").startswith("+OK")


def test_stls_not_on_implicit_or_plain(make_pop3, certs):
    d = make_pop3()
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("STLS").startswith("-ERR")
    c = raw(d.pop3_plain_port)
    assert c.cmd("STLS").startswith("-ERR")
    c.send("CAPA\r\n")
    assert c.line().startswith("+OK")
    caps = c.multi()
    assert "STLS" not in caps and "USER" in caps, caps
