"""What a disk-only attacker finds (reliability catalog item 43): canaries
in the envelope sender, the Subject, the body and an attachment's file
name, delivered over SMTP, retrieved over POP3 with the mailbox password,
under `log_level = "debug"`. Afterwards no file under the data directory
and no line of the log holds a canary or the password, in plain text,
base64 (every alignment), UTF-16 or hex.
"""

import base64
import os
import secrets

from conftest import mailbox_create
from pop3_helpers import make_pop3, pop3s, strip_trace  # noqa: F401
from smtp_helpers import addr, session


def _forms(secret):
    """The byte strings a careless program could write the secret as."""
    raw = secret.encode()
    forms = {"plain": raw, "utf-16le": secret.encode("utf-16-le"),
             "utf-16be": secret.encode("utf-16-be"),
             "hex": raw.hex().encode()}
    for shift in range(3):
        # base64 of the secret at each offset within a 3-byte group: the
        # part that does not depend on the neighbouring bytes
        enc = base64.b64encode(b"\0" * shift + raw)
        forms["base64+%d" % shift] = enc[4:-4] if len(enc) > 8 else enc
    return forms


def _files(root):
    for dirpath, _, names in os.walk(root):
        for name in names:
            yield os.path.join(dirpath, name)


def test_no_canary_at_rest(make_pop3, certs):
    d = make_pop3()  # the test configuration logs at "debug"
    box = mailbox_create(d)
    tok = secrets.token_hex(8)
    canaries = {
        "sender": "canary-from-%s@secret.test" % tok,
        "subject": "CanarySubject%s" % tok,
        "body": "CanaryBody%s" % tok,
        "filename": "canary-file-%s.pdf" % tok,
    }
    message = (
        "From: <%(sender)s>\r\nSubject: %(subject)s\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        "Content-Type: text/plain\r\n\r\n%(body)s\r\n--b\r\n"
        "Content-Type: application/pdf\r\n"
        "Content-Disposition: attachment; filename=\"%(filename)s\"\r\n\r\n"
        "JVBERi0xLjQK\r\n--b--\r\n" % canaries).encode()
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<%s>" % canaries["sender"], 250)
    c.expect("RCPT TO:<%s>" % addr(box), 250)
    c.data(message)
    c.expect("QUIT", 221)

    # the archiver logs in with the password and reads the message: it
    # was stored, and the password went through the daemon
    p = pop3s(d, certs)
    p.user(box["id"])
    p.pass_(box["password"])
    assert strip_trace(p.retr(1)[1]) == message
    p.quit()
    d.stop()

    secrets_ = dict(canaries, password=box["password"])
    found = []
    places = list(_files(d.data_dir)) + [d.logfile]
    assert any(p.endswith("data.mdb") for p in places)
    for path in places:
        with open(path, "rb") as f:
            data = f.read()
        for what, secret in secrets_.items():
            for form, needle in _forms(secret).items():
                if needle in data:
                    found.append((path, what, form))
    assert not found, "found at rest: %r" % found
