"""SMTP module: recipient rules, listener and module settings, and input
hardening (issue 4; reliability catalog items 16, 17, 19, 21-23).
"""

import subprocess
import time

import pytest

from conftest import (SMTP_DOMAIN, daemon_env, free_port, listener,
                      mailbox_create, mailbox_status, mg_dump, sbin,
                      smtp_module_text, split_trace, tls_client_ctx)
from smtp_helpers import Closed, Smtp, addr, connect, sample_message, session


# ------------------------------------------------------------ recipients


def test_suspended_450_then_active_stores(make_smtp, certs):
    d = make_smtp()
    mb = mailbox_create(d)
    mailbox_status(d, mb["id"], "suspended")
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 450, "4.2.1")
    c.expect("RSET", 250)
    mailbox_status(d, mb["id"], "active")
    # the retry (same session: the status is read per RCPT) is stored
    msg = sample_message("retry")
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.data(msg)
    got = mg_dump(d, mb)
    assert len(got) == 1 and split_trace(got[0]["body"])[1] == msg


def test_other_domain_and_unknown(make_smtp, certs):
    d = make_smtp()
    mb = mailbox_create(d)
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    # never an open relay: the mailbox id at another domain, or anyone
    c.expect("RCPT TO:<%s@remote.test>" % mb["id"], 550, "5.7.1")
    c.expect("RCPT TO:<bob@remote.test>", 550, "5.7.1")
    c.expect("RCPT TO:<%s@sub.%s>" % (mb["id"], SMTP_DOMAIN), 550, "5.7.1")
    c.expect("RCPT TO:<nosuchmailbox123@%s>" % SMTP_DOMAIN, 550, "5.1.1")
    assert c.code("DATA")[0] in (503, 554)  # no valid recipient
    c.expect("RSET", 250)
    assert mg_dump(d, mb) == []


def test_recipient_limit_452(make_smtp, certs):
    d = make_smtp(smtp={"max_recipients": 100})
    mb = mailbox_create(d)
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    # 100 recipients (the same mailbox over and over, any answer but 452),
    # pipelined in one segment; the 101st gets 452 4.5.3
    rcpts = "".join("RCPT TO:<%s>\r\n" % addr(mb) for _ in range(100))
    c.send(rcpts + "RCPT TO:<%s>\r\n" % addr(mb))
    codes = [c.reply() for _ in range(101)]
    assert all(code != 452 for code, _ in codes[:100]), codes[:100]
    assert codes[100][0] == 452 and codes[100][1][-1].startswith("4.5.3"), codes[100]
    c.expect("NOOP", 250)


def test_recipient_limit_setting_minimum(daemon_files):
    """max_recipients below 100 (RFC 5321 4.5.3.1.8) is a config error."""
    d = daemon_files
    d.write_config(top={"email_domain": SMTP_DOMAIN},
                   extra_modules=[smtp_module_text(
                       [listener(free_port(), "starttls")],
                       {"max_recipients": 99})])
    p = subprocess.run([sbin("mailgated"), "-c", d.conf, "--check-config"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=30, env=daemon_env())
    assert p.returncode != 0, p.stdout
    assert "max_recipients" in p.stdout, p.stdout


def test_local_delivery_false(make_smtp, certs):
    d = make_smtp(smtp={"local_delivery": False})
    mb = mailbox_create(d)
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 550, "5.7.1")
    assert mg_dump(d, mb) == []


def test_require_tls_listener(make_smtp, certs):
    p = free_port()
    d = make_smtp(listen=[listener(p, "starttls", require_tls=True),
                          listener(free_port(), "implicit")])
    mb = mailbox_create(d)
    c = connect(p)
    c.ehlo()
    c.expect("MAIL FROM:<alice@sender.test>", 530, "5.7.0")
    c.starttls(tls_client_ctx(certs))
    c.ehlo()
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.data(sample_message("req"))
    assert len(mg_dump(d, mb)) == 1


# ------------------------------------------------------------ hardening


def test_early_talker(make_smtp):
    d = make_smtp(smtp={"greet_delay": 500})
    c = Smtp(d.smtp_port)
    c.send(b"EHLO early.test\r\n")
    t0 = time.monotonic()
    data = c.recv_all_until_close()
    assert data.startswith(b"554"), data
    assert b"220" not in data.split(b"\r\n")[0], data
    assert time.monotonic() - t0 < 5
    # a patient client gets the greeting after the delay
    c = Smtp(d.smtp_port)
    t0 = time.monotonic()
    code, _ = c.reply()
    assert code == 220 and time.monotonic() - t0 >= 0.4


BAD_COMMANDS = [
    # (command, acceptable codes): paths (catalog 16)
    ("MAIL FROM:<;sleep 10;>", (501, 553)),
    ("MAIL FROM:<a\x00@b.test>", (500, 501, 553)),
    ("MAIL FROM:alice@sender.test", (501,)),
    # a local part of 900 octets (the limit is 64; the line stays < 1000)
    ("MAIL FROM:<" + "a" * 900 + "@b.test>", (501, 553)),
    # ESMTP parameters (catalog 17)
    ("MAIL FROM:<a@b.test> SIZE=99999999999999999999", (501, 552)),
    ("MAIL FROM:<a@b.test> SIZE=-1", (501, 555)),
    ("MAIL FROM:<a@b.test> BODY=8BITMIME BODY=7BIT", (501, 555)),
    ('MAIL FROM:<a@b.test> X="', (501, 555)),
    ("MAIL FROM:<a@b.test> SIZE=", (501, 555)),
]


@pytest.mark.parametrize("cmd,codes", BAD_COMMANDS, ids=range(len(BAD_COMMANDS)))
def test_bad_mail_commands(make_smtp, certs, cmd, codes):
    d = make_smtp()
    c = session(d.smtp_port, certs)
    t0 = time.monotonic()
    code, text = c.code(cmd)
    assert code in codes, (cmd, code, text)
    assert time.monotonic() - t0 < 2
    # still in sync, and a correct MAIL works afterwards
    c.expect("NOOP", 250)
    c.expect("MAIL FROM:<alice@sender.test>", 250)


def test_state_machine(make_smtp, certs):
    d = make_smtp()
    c = connect(d.smtp_port)
    c.ehlo()
    c.expect("RCPT TO:<x@%s>" % SMTP_DOMAIN, 503)
    c.expect("DATA", 503)
    c.expect("BDAT 0 LAST", 503)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("MAIL FROM:<alice@sender.test>", 503)  # nested MAIL
    assert c.code("DATA")[0] in (503, 554)  # no recipient
    c.expect("RSET", 250)
    c.starttls(tls_client_ctx(certs))
    c.ehlo()
    c.expect("STARTTLS", 503)  # double STARTTLS
    c.expect("AUTH PLAIN AGI=", 502)  # no module handles AUTH
    c.expect("NOOP", 250)


def test_too_many_errors_421(make_smtp, certs):
    d = make_smtp(smtp={"max_errors": 3})
    c = session(d.smtp_port, certs)
    for _ in range(3):
        assert c.code("FOO bar")[0] == 500
    c.send(b"FOO bar\r\n")
    data = c.recv_all_until_close()
    assert data.startswith(b"421"), data


def test_long_command_line(make_smtp, certs):
    """A command line over 1000 octets + CRLF: 500 5.5.2 and disconnect
    (the rest of the line would be read as commands otherwise)."""
    d = make_smtp()
    c = session(d.smtp_port, certs)
    c.expect("NOOP", 250)
    c.send("NOOP " + "x" * 1100 + "\r\nNOOP\r\n")
    data = c.recv_all_until_close()
    assert data == b"500 5.5.2 Line too long\r\n", data


def test_overlong_command_500_at_once(make_smtp, certs):
    """The 500 comes as soon as the limit is passed, not when the line
    ends (it may never end): catalog 19. Here the line never ends, and
    the idle timeout is far away."""
    d = make_smtp(smtp={"idle_timeout": 30})
    c = session(d.smtp_port, certs, timeout=5)
    t0 = time.monotonic()
    c.send(b"NOOP " + b"x" * 2000)
    data = c.recv_all_until_close()
    assert data == b"500 5.5.2 Line too long\r\n", data
    assert time.monotonic() - t0 < 2
    d.wait_log(r"command line too long; closing")


def test_huge_command_line(make_smtp, certs):
    """1 MB in one command line without CRLF: 500 5.5.2 and disconnect
    once the limit is passed, the daemon's buffers capped (catalog 19)."""
    d = make_smtp(smtp={"idle_timeout": 30})
    c = session(d.smtp_port, certs, tls=False, timeout=5)
    t0 = time.monotonic()
    chunk = b"x" * 65536
    try:
        c.send(b"NOOP ")
        for _ in range(16):
            c.send(chunk)
    except OSError:
        pass  # the server closed while we were still sending: expected
    data = c.recv_all_until_close()
    assert data.startswith(b"500 5.5.2 Line too long\r\n"), data
    assert time.monotonic() - t0 < 3
    assert d.alive()
    c2 = session(d.smtp_port, certs, tls=False)
    c2.expect("NOOP", 250)


def test_idle_timeout_421(make_smtp, certs):
    d = make_smtp(smtp={"idle_timeout": 1})
    c = session(d.smtp_port, certs)
    t0 = time.monotonic()
    data = c.recv_all_until_close()
    assert data.startswith(b"421"), data
    assert 0.8 <= time.monotonic() - t0 < 5


def test_command_deadline_for_tricklers(make_smtp, certs):
    """A client that trickles a command one byte at a time restarts the
    idle timer with every byte; the command must still be complete within
    idle_timeout of its first byte (slowloris)."""
    d = make_smtp(smtp={"idle_timeout": 2})
    c = session(d.smtp_port, certs)
    t0 = time.monotonic()
    closed = False
    for ch in b"NOOP and a very slow rest of the line":
        try:
            c.send(bytes([ch]))
        except OSError:
            closed = True
            break
        time.sleep(0.25)
        if time.monotonic() - t0 > 6:
            break
    data = c.recv_all_until_close()
    assert closed or data.startswith(b"421"), data
    assert b"421 4.4.2" in data, data
    assert time.monotonic() - t0 < 4.5


def test_data_timeout_421(make_smtp, certs):
    d = make_smtp(smtp={"data_timeout": 1, "idle_timeout": 30})
    mb = mailbox_create(d)
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.expect("DATA", 354)
    c.send(b"Subject: slow\r\n\r\npart")
    t0 = time.monotonic()
    data = c.recv_all_until_close()
    assert data.startswith(b"421"), data
    assert time.monotonic() - t0 < 5
    assert mg_dump(d, mb) == []


def _drip(c, data, every, until):
    """Send data one byte every `every` s until the peer closes or `until`
    s pass; the bytes received by then."""
    t0 = time.monotonic()
    for ch in data:
        try:
            c.send(bytes([ch]))
        except OSError:
            break
        time.sleep(every)
        if time.monotonic() - t0 > until:
            break
    try:
        return c.recv_all_until_close()
    except (OSError, Closed):
        return b""


def test_data_total_timeout_slow_drip(make_smtp, certs):
    """A client that sends one byte just before data_timeout expires keeps
    the data phase alive byte by byte; data_total_timeout ends it anyway:
    421 4.4.2 and disconnect, and nothing is stored."""
    d = make_smtp(smtp={"data_timeout": 1, "data_total_timeout": 2,
                        "idle_timeout": 30})
    mb = mailbox_create(d)
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.expect("DATA", 354)
    t0 = time.monotonic()
    data = _drip(c, b"Subject: slow\r\n\r\n" + b"x" * 200, 0.4, 8)
    assert data.startswith(b"421 4.4.2"), data
    assert 1.8 <= time.monotonic() - t0 < 4
    d.wait_log(r"message data not complete within data_total_timeout")
    assert mg_dump(d, mb) == []


def test_data_total_timeout_bdat(make_smtp, certs):
    """BDAT: the deadline covers the whole transaction, the chunks and the
    pauses between them (each pause is within idle_timeout)."""
    d = make_smtp(smtp={"data_timeout": 1, "data_total_timeout": 2,
                        "idle_timeout": 30})
    mb = mailbox_create(d)
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    t0 = time.monotonic()
    data = b""
    for i in range(20):
        try:
            c.send(b"BDAT 6\r\nchunk%d" % (i % 10))
            code, _ = c.reply()
        except (OSError, Closed):
            break
        if code != 250:
            data = b"%d" % code
            break
        time.sleep(0.5)
    if not data:
        try:
            data = c.buf + c.recv_all_until_close()
        except (OSError, Closed):
            data = c.buf
    assert data.startswith(b"421"), data
    assert time.monotonic() - t0 < 4
    assert mg_dump(d, mb) == []


def test_data_total_timeout_fast_client_unaffected(make_smtp, certs):
    """A message sent at once is delivered well inside the deadline, and
    the deadline does not carry over into the next transaction."""
    d = make_smtp(smtp={"data_total_timeout": 2})
    mb = mailbox_create(d)
    c = session(d.smtp_port, certs)
    for i in range(2):
        c.expect("MAIL FROM:<alice@sender.test>", 250)
        c.expect("RCPT TO:<%s>" % addr(mb), 250)
        c.data(sample_message("fast %d" % i))
        time.sleep(1.5)
    c.expect("NOOP", 250)
    assert len(mg_dump(d, mb)) == 2


def test_greeting_and_hostname(make_smtp):
    d = make_smtp(smtp={"hostname": "mx.example.test",
                        "greeting": "journal gateway"})
    c = Smtp(d.smtp_port)
    code, lines = c.reply()
    assert code == 220 and "journal gateway" in " ".join(lines), lines
    c.send(b"EHLO client.test\r\n")
    code, lines = c.reply()
    assert code == 250 and lines[0].startswith("mx.example.test"), lines


def test_data_with_pipelined_bytes_before_354(make_smtp, certs):
    """DATA followed by message bytes before the 354 (PIPELINING forbids
    it: DATA must be the last command of a group) → 554 5.5.0 and close."""
    d = make_smtp()
    mb = mailbox_create(d)
    c = session(d.smtp_port, certs)
    c.send("MAIL FROM:<alice@sender.test>\r\nRCPT TO:<%s>\r\nDATA\r\n"
           "Subject: early\r\n\r\nbody\r\n.\r\n" % addr(mb))
    data = c.recv_all_until_close()
    lines = data.split(b"\r\n")
    assert lines[0].startswith(b"250") and lines[1].startswith(b"250"), data
    assert lines[2].startswith(b"554 5.5.0"), data
    assert mg_dump(d, mb) == []


def _edit(d, mb, *args):
    r = d.ctl("mailbox", "edit", mb["id"], *args)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mailbox_sender_networks(make_smtp, certs):
    """A mailbox limited to sender networks refuses other senders with
    550 5.7.1 at RCPT; the change reaches the running daemon at once."""
    d = make_smtp()
    mb = mailbox_create(d)
    _edit(d, mb, "--sender-networks", "10.0.0.0/8,2001:db8::/32")
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    code, text = c.code("RCPT TO:<%s>" % addr(mb))
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    # a network that holds the client (with host bits set: the network)
    _edit(d, mb, "--sender-networks", "10.0.0.0/8,127.1.2.3/8")
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.data(sample_message("net"))
    _edit(d, mb, "--sender-networks", "any")
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.data(sample_message("any"))
    assert len(mg_dump(d, mb)) == 2


def test_mailbox_require_tls(make_smtp, certs):
    """A mailbox that requires TLS refuses a plaintext sender with 550
    5.7.1 and accepts the same sender after STARTTLS."""
    d = make_smtp()
    mb = mailbox_create(d)
    _edit(d, mb, "--require-tls", "yes")
    c = connect(d.smtp_port)
    c.ehlo()
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    code, text = c.code("RCPT TO:<%s>" % addr(mb))
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    assert "TLS" in text, text
    c.expect("RSET", 250)
    c.starttls(tls_client_ctx(certs))
    c.ehlo()
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.data(sample_message("tls"))
    assert len(mg_dump(d, mb)) == 1


def test_refused_recipients_are_logged_with_the_reason(make_smtp, certs):
    """Every refused RCPT leaves a log line with the reply and the mailbox
    id, so that an administrator sees why a sender's copies bounce; the
    addresses themselves stay out of the log (log_addresses is off)."""
    d = make_smtp()
    mb = mailbox_create(d)
    _edit(d, mb, "--sender-networks", "10.0.0.0/8")
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 550, "5.7.1")
    d.wait_log(r"recipient refused \(mailbox %s\): 550 5\.7\.1 Sender "
               r"network not allowed" % mb["id"])
    c.expect("RCPT TO:<nosuchmailbox123@%s>" % SMTP_DOMAIN, 550, "5.1.1")
    d.wait_log(r"recipient refused \(an unknown mailbox\): 550 5\.1\.1")
    c.expect("RCPT TO:<bob@remote.test>", 550, "5.7.1")
    d.wait_log(r"recipient refused \(another domain\): 550 5\.7\.1 "
               r"Relaying denied")
    _edit(d, mb, "--sender-networks", "any")
    mailbox_status(d, mb["id"], "suspended")
    c.expect("RCPT TO:<%s>" % addr(mb), 450, "4.2.1")
    d.wait_log(r"recipient refused \(mailbox %s\): 450 4\.2\.1" % mb["id"])
    log = d.log()
    assert "remote.test" not in log and "sender.test" not in log
    assert "nosuchmailbox123" not in log
