"""SMTP module: delivery into mailboxes with real clients (issue 4, Tests).

smtplib over STARTTLS and implicit TLS (verifying the test CA), several
recipients in one transaction, swaks with PIPELINING, and CHUNKING (BDAT)
over a raw socket (this swaks has no BDAT). Every message is read back
from the store with the test tool mg-dump and compared byte for byte
after the trace fields the gateway prepends.
"""

import re
import subprocess

import pytest

from conftest import (SMTP_DOMAIN, daemon_env, mailbox_create, mg_dump,
                      split_trace, tls_client_ctx)
from smtp_helpers import (addr, connect, sample_message, session,
                          smtplib_implicit, smtplib_starttls)

SENDER = "alice@sender.test"


def check_stored(stored, sender, rcpt, message, tls=None):
    """One stored copy: Return-Path, Received (TLS details, "for <rcpt>"
    when given), then the message exactly as sent."""
    trace, rest = split_trace(stored["body"])
    assert trace["Return-Path"] == "<%s>" % sender, trace
    received = trace["Received"]
    if rcpt is not None:
        assert ("for <%s>" % rcpt).lower() in received.lower(), received
    if tls is not None:
        version, cipher = tls
        assert re.search(r"TLSv1\.[23]", received), received
        assert version in received, (version, received)
        assert cipher in received, (cipher, received)
    assert rest == message, "stored %r\nsent   %r" % (rest[:400], message[:400])
    assert stored["sender"] == sender
    return trace


# ------------------------------------------------------------ EHLO


def test_ehlo_extensions(make_smtp, certs):
    d = make_smtp()
    c = connect(d.smtp_port)
    ext = c.ehlo()
    names = {e.split()[0] for e in ext}
    for want in ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                 "CHUNKING", "STARTTLS", "SIZE"):
        assert want in names, ext
    assert "SIZE 209715200" in ext, ext
    assert "DSN" not in names and "AUTH" not in names, ext
    c.starttls(tls_client_ctx(certs))
    ext = c.ehlo()
    names = {e.split()[0] for e in ext}
    assert "STARTTLS" not in names and "AUTH" not in names, ext
    assert "CHUNKING" in names and "PIPELINING" in names
    c.expect("QUIT", 221)
    # implicit TLS: no STARTTLS either
    c = connect(d.smtps_port, tls="implicit", certs=certs)
    names = {e.split()[0] for e in c.ehlo()}
    assert "STARTTLS" not in names and "SIZE" in names


# ------------------------------------------------------------ smtplib


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_smtplib_tls_delivery(make_smtp, certs, mode):
    d = make_smtp()
    mb = mailbox_create(d)
    msg = sample_message(mode)
    if mode == "starttls":
        s = smtplib_starttls(d.smtp_port, certs)
    else:
        s = smtplib_implicit(d.smtps_port, certs)
    refused = s.sendmail(SENDER, [addr(mb)], msg)
    assert refused == {}
    tls = (s.sock.version(), s.sock.cipher()[0])
    # the one message is stored before the 250 (no polling needed)
    got = mg_dump(d, mb)
    s.quit()
    assert len(got) == 1, got
    check_stored(got[0], SENDER, addr(mb), msg, tls=tls)
    assert [r.lower() for r in got[0]["rcpts"]] == [addr(mb).lower()]


def test_null_sender_and_dsn_params_ignored(make_smtp, certs):
    d = make_smtp()
    mb = mailbox_create(d)
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<> RET=HDRS ENVID=abc", 250)
    c.expect("RCPT TO:<%s> NOTIFY=NEVER" % addr(mb), 250)
    msg = sample_message("null")
    c.data(msg)
    c.expect("QUIT", 221)
    got = mg_dump(d, mb)
    assert len(got) == 1
    check_stored(got[0], "", addr(mb), msg)


# ------------------------------------------------------ several recipients


def test_several_recipients_one_transaction(make_smtp, certs):
    d = make_smtp()
    a = mailbox_create(d, "A")
    b = mailbox_create(d, "B")
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(a), 250)
    c.expect("RCPT TO:<zzzzzzzzzzzzzzzz@%s>" % SMTP_DOMAIN, 550, "5.1.1")
    # case-insensitive id and domain
    c.expect("RCPT TO:<%s>" % addr(b).upper(), 250)
    msg = sample_message("multi")
    # exactly one reply to the end of data
    c.expect("DATA", 354)
    c.send(msg.replace(b"\r\n.", b"\r\n..") + b".\r\nNOOP\r\n")
    code, text = c.reply()
    assert code == 250 and text[-1].startswith("2.0.0"), (code, text)
    code, text = c.reply()
    assert code == 250, "NOOP after the message: %s %s" % (code, text)
    c.expect("QUIT", 221)
    ga, gb = mg_dump(d, a), mg_dump(d, b)
    assert len(ga) == 1 and len(gb) == 1, (ga, gb)
    ta, ra = split_trace(ga[0]["body"])
    tb, rb = split_trace(gb[0]["body"])
    assert ra == msg and rb == msg
    for t, mb in ((ta, a), (tb, b)):
        keys = {k.lower(): v for k, v in t.items()}
        assert "x-mailgate-recipients" in keys, t
        assert mb["id"] in keys["x-mailgate-recipients"].lower(), t
        assert "zzzzzzzzzzzzzzzz" not in str(t).lower()


# ------------------------------------------------------------ swaks


def swaks(*args, timeout=20):
    r = subprocess.run(["swaks", *args], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout, env=daemon_env())
    return r


def test_swaks_pipelining_tls(make_smtp, certs, tmp_path):
    d = make_smtp()
    mb = mailbox_create(d)
    msg = sample_message("swaks")
    f = tmp_path / "msg.eml"
    f.write_bytes(msg)
    r = swaks("--server", "127.0.0.1", "--port", str(d.smtp_port),
              "--ehlo", "client.test", "--from", SENDER, "--to", addr(mb),
              "--pipeline", "--tls", "--tls-verify", "--tls-ca-path",
              certs["cert"], "--tls-sni", "localhost", "--data", "@" + str(f))
    assert r.returncode == 0, r.stdout
    # swaks really pipelined: MAIL, RCPT and DATA went out together
    # (swaks marks lines sent/received under TLS with ~> and <~)
    assert re.search(r"(?m)^ [~-]> MAIL FROM:.*\n [~-]> RCPT TO:.*\n [~-]> DATA",
                     r.stdout), r.stdout
    assert re.search(r"(?m)^<[~-] +250 2\.0\.0", r.stdout), r.stdout
    got = mg_dump(d, mb)
    assert len(got) == 1
    trace, rest = split_trace(got[0]["body"])
    assert trace["Return-Path"] == "<%s>" % SENDER
    assert re.search(r"TLSv1\.[23]", trace["Received"]), trace
    # swaks ends the data with CRLF CRLF . CRLF (one more empty line)
    assert rest in (msg, msg + b"\r\n"), rest


def test_swaks_pipelining_many_recipients(make_smtp, certs):
    d = make_smtp()
    a = mailbox_create(d, "A")
    b = mailbox_create(d, "B")
    unknown = "qqqqqqqqqqqqqqqq@" + SMTP_DOMAIN
    r = swaks("--server", "127.0.0.1", "--port", str(d.smtp_port),
              "--ehlo", "client.test", "--from", SENDER,
              "--to", ",".join([addr(a), unknown, addr(b)]),
              "--pipeline", "--tls", "--tls-verify", "--tls-ca-path",
              certs["cert"], "--tls-sni", "localhost",
              "--header", "Subject: pipelined", "--body", "pipelined body")
    assert r.returncode in (0, 24, 25), r.stdout  # one recipient refused
    assert re.search(r"550 5\.1\.1", r.stdout), r.stdout
    assert len(mg_dump(d, a)) == 1 and len(mg_dump(d, b)) == 1


# ------------------------------------------------------------ BDAT


def bdat_session(d, certs, mb, sender=SENDER):
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<%s>" % sender, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    return c


def test_bdat_multichunk_exact_bytes(make_smtp, certs):
    d = make_smtp()
    mb = mailbox_create(d)
    # BDAT stores the octets exactly: no dot handling, a lone dot line,
    # bare LF inside, a line of 5000 bytes
    msg = (b"Subject: bdat\r\n\r\nfirst\r\n.\r\nbare\nlf\r\n..two dots\r\n"
           + b"x" * 5000 + b"\r\n.\r\nend\r\n")
    chunks = [msg[:7], msg[7:40], msg[40:41], msg[41:]]
    c = bdat_session(d, certs, mb)
    for ch in chunks[:-1]:
        c.send(b"BDAT %d\r\n" % len(ch) + ch)
        code, text = c.reply()
        assert code == 250, (code, text)
    c.send(b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1])
    code, text = c.reply()
    assert code == 250 and text[-1].startswith("2.0.0"), (code, text)
    c.expect("NOOP", 250)
    got = mg_dump(d, mb)
    assert len(got) == 1
    _, rest = split_trace(got[0]["body"])
    assert rest == msg


def test_bdat_pipelined_and_zero_last(make_smtp, certs):
    d = make_smtp()
    mb = mailbox_create(d)
    msg1 = b"Subject: one\r\n\r\nbody one\r\n"
    msg2 = b"Subject: two\r\n\r\nbody\ntwo\r\n.\r\n"
    c = session(d.smtp_port, certs, timeout=4)
    # everything in one segment: MAIL, RCPT, BDAT, BDAT 0 LAST, then a
    # second transaction with a single BDAT LAST, then NOOP
    c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<" + addr(mb).encode()
           + b">\r\nBDAT %d\r\n" % len(msg1) + msg1 + b"BDAT 0 LAST\r\n"
           + b"MAIL FROM:<b@sender.test>\r\nRCPT TO:<" + addr(mb).encode()
           + b">\r\nBDAT %d LAST\r\n" % len(msg2) + msg2 + b"NOOP\r\n")
    codes = [c.reply()[0] for _ in range(8)]
    assert codes == [250] * 8, codes
    got = sorted(mg_dump(d, mb), key=lambda m: m["id"])
    assert len(got) == 2
    assert split_trace(got[0]["body"])[1] == msg1
    assert split_trace(got[1]["body"])[1] == msg2
    assert got[0]["sender"] == "a@sender.test"
    assert got[1]["sender"] == "b@sender.test"


def test_bdat_without_recipient_554_after_chunk(make_smtp, certs):
    d = make_smtp()
    mb = mailbox_create(d)
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<nobodynobody1234@%s>" % SMTP_DOMAIN, 550)
    chunk = b"Subject: x\r\n\r\nRSET\r\nQUIT\r\n"
    # the chunk's octets are consumed, not read as commands
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    code, text = c.reply()
    assert code == 554, (code, text)
    code, text = c.reply()
    assert code == 250, "NOOP after the refused chunk: %d %s" % (code, text)
    c.expect("RSET", 250)
    assert mg_dump(d, mb) == []
