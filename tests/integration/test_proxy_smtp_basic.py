"""The recording SMTP proxy against a real upstream (aiosmtpd with
STARTTLS or implicit TLS and AUTH): logins user%server%mailbox through
AUTH PLAIN and LOGIN, every message relayed with its envelope and
recorded once in the mailbox."""

import smtplib
import subprocess

from proxy_smtp_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_smtp_helpers import (UP_PASS, UP_USER, copies, copy_body,
                                login_name, mailbox_create, message,
                                proxy_client, try_login)


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


def test_auth_login_on_implicit_tls_and_several_messages(gateway, upstream,
                                                         certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(up.port, mb), implicit=True,
                     mechanism="LOGIN")
    msgs = [message("multi-%d" % i, size=2000 + 5000 * i) for i in range(3)]
    for i, m in enumerate(msgs):
        assert s.sendmail("a%d@upstream.test" % i, ["r%d@example.org" % i],
                          m) == {}
    s.quit()
    assert [m["content"] for m in up.messages] == msgs
    assert [m["sender"] for m in up.messages] == [
        "a0@upstream.test", "a1@upstream.test", "a2@upstream.test"]
    assert [m["rcpts"] for m in up.messages] == [
        ["r0@example.org"], ["r1@example.org"], ["r2@example.org"]]
    # the upstream saw one login, over TLS
    assert len(up.logins) == 1 and up.logins[0][1:] == (UP_USER, UP_PASS,
                                                        True)
    recs = copies(d, mb)
    assert sorted(copy_body(r) for r in recs) == sorted(msgs)
    assert sorted(r["sender"] for r in recs) == [
        "a0@upstream.test", "a1@upstream.test", "a2@upstream.test"]


def test_refused_recipient_and_message_get_the_upstream_answer(
        gateway, upstream, certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(up.port, mb))
    # one recipient refused: its answer is the upstream's, the other gets it
    refused = s.sendmail("alice@upstream.test",
                         ["bob@example.org", "reject-me@example.org"],
                         message("partly"))
    assert refused == {"reject-me@example.org": (
        550, b"5.1.1 <reject-me@example.org>: no such user here")}
    # every recipient refused
    try:
        s.sendmail("alice@upstream.test", ["reject-2@example.org"],
                   message("none"))
        raise AssertionError("accepted")
    except smtplib.SMTPRecipientsRefused as e:
        assert e.recipients["reject-2@example.org"][0] == 550
    # the message refused at its end, permanently and temporarily
    for marker, code, text in ((b"REJECT-ME", 554, b"5.7.1 upstream: "
                                b"content refused"),
                               (b"TEMPFAIL-ME", 451, b"4.3.0 upstream: try "
                                b"later")):
        try:
            s.sendmail("alice@upstream.test", ["bob@example.org"],
                       message("refused", extra=marker + b"\r\n"))
            raise AssertionError("accepted")
        except smtplib.SMTPDataError as e:
            assert (e.smtp_code, e.smtp_error) == (code, text)
    # and the session goes on
    last = message("after")
    assert s.sendmail("alice@upstream.test", ["dave@example.org"], last) == {}
    s.quit()
    assert [m["rcpts"] for m in up.messages] == [["bob@example.org"],
                                                 ["dave@example.org"]]
    assert len(up.refused) == 2
    recs = copies(d, mb)
    assert len(recs) == 2
    assert sorted(r["rcpts"][0] for r in recs) == ["bob@example.org",
                                                   "dave@example.org"]
    assert all(b"REJECT-ME" not in r["body"] and b"TEMPFAIL-ME" not in
               r["body"] for r in recs)
    assert copy_body([r for r in recs if r["rcpts"] == ["dave@example.org"]]
                     [0]) == last


def test_bdat_to_an_upstream_without_chunking_arrives_intact(
        gateway, upstream, certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(up.port, mb))
    assert "chunking" in s.esmtp_features
    assert s.docmd("MAIL", "FROM:<alice@upstream.test>")[0] == 250
    assert s.docmd("RCPT", "TO:<bob@example.org>")[0] == 250
    msg = message("bdat", size=150000)
    # chunks cut anywhere: inside a line, between CR and LF, before a dot
    cuts = [0, 7, msg.index(b"\r\n.a line") + 1, msg.index(b"\r\n.a line") + 2,
            70000, 140001, len(msg)]
    for i in range(len(cuts) - 1):
        chunk = msg[cuts[i]:cuts[i + 1]]
        last = i == len(cuts) - 2
        s.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"")
               + chunk)
        code, text = s.getreply()
        assert code == 250, (code, text)
    assert b"upstream: queued as U1" in text
    s.quit()
    assert len(up.messages) == 1
    assert up.messages[0]["content"] == msg
    recs = copies(d, mb)
    assert len(recs) == 1 and copy_body(recs[0]) == msg


def test_bdat_bare_line_ends_become_crlf_upstream(gateway, upstream, certs):
    """A BDAT message is opaque octets for the client; going out as DATA,
    a bare LF or CR must never reach the upstream (smuggling): it becomes
    CRLF, and a dot after it is stuffed."""
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(up.port, mb))
    assert s.docmd("MAIL", "FROM:<alice@upstream.test>")[0] == 250
    assert s.docmd("RCPT", "TO:<bob@example.org>")[0] == 250
    raw = (b"Subject: bare\r\n\r\nline one\n.\nMAIL FROM:<evil@x>\r"
           b".\r\nend without newline")
    s.send(b"BDAT %d LAST\r\n" % len(raw) + raw)
    code, text = s.getreply()
    assert code == 250, (code, text)
    s.quit()
    want = (b"Subject: bare\r\n\r\nline one\r\n.\r\nMAIL FROM:<evil@x>\r\n"
            b".\r\nend without newline\r\n")
    assert [m["content"] for m in up.messages] == [want]
    assert [copy_body(r) for r in copies(d, mb)] == [want]


def test_swaks_through_the_gateway(gateway, upstream, certs, tmp_path):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    body = tmp_path / "msg.eml"
    msg = message("swaks", size=5000)
    body.write_bytes(msg)
    r = subprocess.run(
        ["swaks", "--server", "127.0.0.1:%d" % d.smtp_port, "--tls",
         "--auth", "PLAIN", "--auth-user", login_name(up.port, mb),
         "--auth-password", UP_PASS, "--from", "alice@upstream.test",
         "--to", "bob@example.org,carol@example.org", "--data", str(body),
         "--ehlo", "swaks.test"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=60)
    assert r.returncode == 0, r.stdout
    assert "250 2.0.0 upstream: queued as U1" in r.stdout
    assert len(up.messages) == 1
    assert up.messages[0]["rcpts"] == ["bob@example.org", "carol@example.org"]
    # swaks ends the data with a CRLF of its own
    assert up.messages[0]["content"] in (msg, msg + b"\r\n")
    recs = copies(d, mb)
    assert len(recs) == 1 and copy_body(recs[0]) == up.messages[0]["content"]
    assert recs[0]["rcpts"] == ["bob@example.org", "carol@example.org"]


def test_default_upstream_ports(gateway, certs):
    """Without a port the upstream is 587, or 465 for a client on the
    implicit-TLS listener (nothing listens there: the error names it)."""
    d = gateway()
    mb = mailbox_create(d)
    code, text = try_login(d, certs, "%s%%127.0.0.1%%%s" % (UP_USER, mb["id"]))
    assert code == 454 and b"127.0.0.1:587" in text, (code, text)
    code, text = try_login(d, certs, "%s%%127.0.0.1%%%s" % (UP_USER, mb["id"]),
                           implicit=True)
    assert code == 454 and b"127.0.0.1:465" in text, (code, text)



def established_to(port):
    """TCP connections in state ESTABLISHED whose local port is `port`
    (the server's side of each connection to a loopback listener)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            t = line.split()
            if int(t[1].split(":")[1], 16) == port and t[3] == "01":
                n += 1
    return n


def test_upstream_connection_ends_soon_after_the_client(gateway, upstream,
                                                        certs):
    """The upstream connection ends soon after the client's QUIT, not at a
    slow poll: providers limit connections per client (Postfix to 50), and
    a client sending session after session must not pile them up."""
    import time
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    for i in range(4):
        s = proxy_client(d, certs, login_name(up.port, mb))
        assert s.sendmail("alice@upstream.test", ["bob@example.org"],
                          message("quit-%d" % i)) == {}
        assert established_to(up.port) == 1
        s.quit()
        t0 = time.monotonic()
        while established_to(up.port) > 0 and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        took = time.monotonic() - t0
        assert took < 0.5, "the upstream connection ended %.2f s after " \
            "the client's QUIT" % took
    assert len(copies(d, mb)) == 4
