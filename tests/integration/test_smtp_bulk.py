"""SMTP module: message data sent in one go over plaintext, where the
core's socket reads grow from 16 KiB to 128 KiB while each fills the room
it was given. Dot-stuffed lines, bare line ends and the end of data fall
on every side of the read and piece boundaries, the next command is
pipelined right behind the final dot, and the stored copy is compared
byte for byte (issue 4: CPU per 1 MiB message).
"""

import os

from conftest import mailbox_create, mg_dump, split_trace
from smtp_helpers import addr, session


def bulk_message(nbytes, seed):
    """Lines of every length from 0 to 300 (and a few of 70 KiB), some
    with a leading dot, some ended by a bare LF: as sent (dot-stuffed,
    without the final dot) and as it must be stored."""
    rnd = int.from_bytes(seed, "big")
    sent, stored = [b"Subject: bulk\r\n\r\n"], [b"Subject: bulk\r\n\r\n"]
    size = 0
    k = 0
    while size < nbytes:
        rnd = (rnd * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        n = (rnd >> 33) % 301
        if k % 97 == 0:
            n = 70 * 1024
        text = bytes(0x21 + (k + i) % 90 for i in range(n))
        if (rnd >> 20) % 11 == 0:
            text = b"." + text  # a leading dot: stuffed when sent
        bare = (rnd >> 24) % 13 == 0
        sent.append((b"." + text if text.startswith(b".") else text)
                    + (b"\n" if bare else b"\r\n"))
        stored.append(text + b"\r\n")  # bare LF stored as CRLF
        size += n + 2
        k += 1
    # the last line ends in CRLF: after a bare LF, ".<CR><LF>" would not
    # end the data (smuggling defence) and the server would rightly wait
    if not sent[-1].endswith(b"\r\n"):
        sent[-1] = sent[-1][:-1] + b"\r\n"
    return b"".join(sent), b"".join(stored)


def test_bulk_data_in_one_write_then_pipelined_noop(make_smtp, certs):
    d = make_smtp()
    mb = mailbox_create(d)
    messages = [bulk_message(3 * 1024 * 1024 + i * 7919, os.urandom(8))
                for i in range(2)]
    c = session(d.smtp_port, certs, tls=False, timeout=30)
    for sent, _ in messages:
        c.expect("MAIL FROM:<bulk@sender.test>", 250)
        c.expect("RCPT TO:<%s>" % addr(mb), 250)
        c.expect("DATA", 354)
        # the whole message, its end and the next command in one write
        c.send(sent + b".\r\nNOOP\r\n")
        code, text = c.reply()
        assert code == 250, (code, text)
        code, text = c.reply()
        assert code == 250, (code, text)
    got = sorted(mg_dump(d, mb), key=lambda m: m["id"])
    assert len(got) == len(messages)
    for m, (_, stored) in zip(got, messages):
        rest = split_trace(m["body"])[1]
        assert len(rest) == len(stored)
        assert rest == stored
