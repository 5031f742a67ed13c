"""fetchmail (Debian's) as the archiver (issue 5, Tests): it retrieves a
mailbox over implicit TLS and over STLS, checking the gateway's
certificate against the test CA (--sslcertck --sslcertfile), hands every
message to an MDA and deletes it (no --keep); then the mailbox is empty
and every delivered message equals what was sent apart from the trace
fields the gateway prepends. A gateway whose certificate does not verify
(unknown issuer, or another name) is refused before any credential is
sent, and nothing is retrieved or deleted."""

import os
import re
import subprocess

import pytest

from conftest import split_trace
from fetchmail_helpers import Fetchmail
from pop3_helpers import (deliver, mailbox_create, mailbox_messages,
                          make_pop3, sample_message)

assert make_pop3  # a fixture, used by name


def messages(marker, n):
    # a long header block, 8-bit text, lines that start with dots (one is
    # the lone "." that would end the response unstuffed)
    fold = b"".join(b"X-Long-%02d: %s\r\n\t%s\r\n" % (i, b"v" * 70, b"w" * 60)
                    for i in range(40))
    return [sample_message("%s-%d" % (marker, i),
                           extra=b".\r\n..two dots\r\n" + b"x" * (i * 997) + b"\r\n")
            .replace(b"\r\n\r\n", b"\r\n" + fold + b"\r\n", 1)
            for i in range(n)]


def check_delivered(fm, sent):
    got = fm.delivered()
    assert len(got) == len(sent), "%d delivered, %d sent" % (len(got), len(sent))
    bodies = []
    for data in got:
        trace, rest = split_trace(data)
        assert trace["Return-Path"] == "<alice@sender.test>", trace
        bodies.append(rest)
    assert sorted(bodies) == sorted(sent)


@pytest.mark.parametrize("tls", ["implicit", "stls"])
def test_fetchmail_retrieves_and_deletes(make_pop3, certs, tmp_path, tls):
    d = make_pop3()
    mb = mailbox_create(d)
    sent = messages(tls, 5)
    deliver(d, mb, sent, certs)
    assert mailbox_messages(d, mb) == 5

    fm = Fetchmail(str(tmp_path), mb, certs["cert"])
    port = d.pop3s_port if tls == "implicit" else d.pop3_port
    r = fm.run(port, tls)
    assert r.returncode == 0, r.stdout
    if tls == "stls":
        assert "POP3> STLS" in r.stdout, r.stdout
    assert re.search(r"SSL/TLS: using protocol TLSv1\.[23]", r.stdout), r.stdout
    assert r.stdout.count("POP3> DELE") == 5, r.stdout
    check_delivered(fm, sent)
    assert mailbox_messages(d, mb) == 0

    # a second poll finds nothing (status 1: no mail) and delivers nothing
    fm.clear()
    r = fm.run(port, tls)
    assert r.returncode == 1 and "No mail" in r.stdout, r.stdout
    assert fm.delivered() == []


def other_ca(tmp_path):
    """A self-signed certificate for localhost that the gateway does not
    use: as the trust anchor, the gateway's certificate has no issuer."""
    d = str(tmp_path / "otherca")
    os.makedirs(d)
    cert = os.path.join(d, "cert.pem")
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec",
         "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", os.path.join(d, "key.pem"), "-out", cert, "-days", "2",
         "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=30)
    assert r.returncode == 0, r.stdout
    return cert


@pytest.mark.parametrize("case", ["untrusted-implicit", "untrusted-stls",
                                  "wrong-name-implicit"])
def test_fetchmail_refuses_unverified_gateway(make_pop3, certs, tmp_path, case):
    d = make_pop3()
    mb = mailbox_create(d)
    deliver(d, mb, messages(case, 2), certs)
    tls = "stls" if case.endswith("stls") else "implicit"
    ca = other_ca(tmp_path) if case.startswith("untrusted") else certs["cert"]
    extra = ["--sslcommonname", "other.test"] if case.startswith("wrong-name") else []
    fm = Fetchmail(str(tmp_path), mb, ca)
    port = d.pop3s_port if tls == "implicit" else d.pop3_port
    r = fm.run(port, tls, extra=extra)
    assert r.returncode == 2, r.stdout
    if case.startswith("untrusted"):
        assert "certificate verify failed" in r.stdout, r.stdout
    else:
        assert "verification error: hostname mismatch" in r.stdout, r.stdout
    assert "Query status=2 (SOCKET)" in r.stdout, r.stdout
    # no credential went out, nothing was retrieved or deleted
    assert "POP3> USER" not in r.stdout and "POP3> PASS" not in r.stdout, r.stdout
    assert "logged in" not in d.log()
    assert fm.delivered() == []
    assert mailbox_messages(d, mb) == 2
