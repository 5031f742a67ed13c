"""SMTP module: input hardening against SMTP smuggling and STARTTLS
command injection, over raw sockets (issue 4; reliability catalog 13-15).

Smuggling: the body contains a non-standard end-of-data sequence followed
by a whole second transaction. The gateway must never end the data there
(bare CR/LF lines are normalised to CRLF, as Postfix's
smtpd_forbid_bare_newline = normalize): exactly one 250, exactly one
message stored, the smuggled commands are content of that message, and
the session is still in sync.
"""

import re

import pytest

from conftest import mailbox_create, mg_dump, split_trace, tls_client_ctx
from smtp_helpers import addr, connect, session

VARIANTS = [
    b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n",
    b"\r.\r\n", b"\r\n.\r", b"\r\n\x00.\r\n",
]


def normalise(data):
    """Bare CR and bare LF line ends become CRLF (the one exception to
    byte-for-byte storage)."""
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i:i + 2] == b"\r\n":
            out += b"\r\n"
            i += 2
        elif data[i:i + 1] in (b"\r", b"\n"):
            out += b"\r\n"
            i += 1
        else:
            out += data[i:i + 1]
            i += 1
    return bytes(out)


def unstuff(data):
    """RFC 5321 4.5.2: the first dot of a line that starts with one is
    removed (a bare "." line that does not end the data becomes empty)."""
    return re.sub(rb"(?m)^\.", b"", data)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: repr(v)[2:-1])
def test_smuggling_variant_is_content(make_smtp, certs, variant):
    d = make_smtp()
    mb = mailbox_create(d)
    evil = mailbox_create(d, "Evil target")
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.expect("DATA", 354)
    smuggled = (b"MAIL FROM:<evil@x>\r\nRCPT TO:<" + addr(evil).encode()
                + b">\r\nDATA\r\nsmuggled\r\n")
    body = b"Subject: smuggle\r\n\r\nbefore" + variant + smuggled
    c.send(body + b".\r\n" + b"NOOP\r\n")
    # exactly two replies: the end of data's 250 and the NOOP's; nothing
    # of the smuggled transaction was taken as commands (no replies for
    # its MAIL, RCPT, DATA and second end of data)
    got = c.replies()
    assert [r[0] for r in got] == [250, 250], got
    assert got[0][1][-1].startswith("2.0.0"), got
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)

    assert mg_dump(d, evil) == [], "the smuggled message was delivered"
    got = mg_dump(d, mb)
    assert len(got) == 1, got
    _, rest = split_trace(got[0]["body"])
    assert b"smuggled\r\n" in rest and b"MAIL FROM:<evil@x>\r\n" in rest, rest
    if b"\x00" not in variant:
        # bare CR/LF normalised to CRLF; whether the lone dot of the
        # variant is then unstuffed is the engine's choice
        assert rest in (normalise(body), unstuff(normalise(body))), \
            (rest, normalise(body))
    else:
        # NUL is content; only the line structure around it matters
        assert rest.startswith(b"Subject: smuggle\r\n\r\nbefore\r\n"), rest
        assert rest.endswith(smuggled), rest


def test_bare_lf_command_not_a_terminator(make_smtp, certs):
    """A bare LF in a command (catalog 14): whether `NOOP\\n` is read as a
    line (normalised, as Postfix's smtpd_forbid_bare_newline = normalize)
    or not, no reply is lost or doubled: the session stays in sync."""
    d = make_smtp()
    c = session(d.smtp_port, certs)
    c.send(b"NOOP\nNOOP\r\n")
    got = c.replies()
    assert len(got) in (1, 2) and all(r[0] in (250, 500, 501) for r in got), got
    c.send(b"NOOP\r\n")
    assert [r[0] for r in c.replies()] == [250]


def test_starttls_injection(make_smtp, certs):
    """Commands sent in the clear behind STARTTLS are discarded: the first
    reply after the handshake answers the client's next command."""
    d = make_smtp()
    c = connect(d.smtp_port)
    c.ehlo()
    c.send(b"STARTTLS\r\nRSET\r\n")
    code, text = c.reply()
    assert code == 220, (code, text)
    c.sock = tls_client_ctx(certs).wrap_socket(c.sock, server_hostname="localhost")
    c.buf = b""
    # EHLO's reply first: had the injected RSET been kept, a 250 for it
    # would come before the EHLO reply (single line 250 2.0.0)
    c.send(b"EHLO client.test\r\n")
    code, lines = c.reply()
    assert code == 250 and len(lines) > 1, (code, lines)
    assert "STARTTLS" not in [l.split()[0].upper() for l in lines[1:] if l]
    c.send(b"NOOP\r\n")
    assert [r[0] for r in c.replies()] == [250]


def test_starttls_injection_implicit_port_unaffected(make_smtp, certs):
    """Over implicit TLS a pipelined segment is ordinary pipelining."""
    d = make_smtp()
    c = connect(d.smtps_port, tls="implicit", certs=certs)
    c.send(b"EHLO client.test\r\nNOOP\r\nRSET\r\n")
    assert [r[0] for r in c.replies()] == [250, 250, 250]
