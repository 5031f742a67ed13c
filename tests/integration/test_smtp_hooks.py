"""SMTP module: the hooks of doc/hooks.md work for real (issue 4).

The test-only module tests/modules/hooktest.c (built out of tree against
the installed headers, like testline) registers handlers chosen by its
settings and logs what it sees ("hooktest: ..."); these tests drive the
smtp engine with a raw client and check the replies, the daemon log and
the store (mg-dump):

- AUTH is advertised only after TLS and only when smtp.auth has a handler;
- smtp.auth takeover (PLAIN with an initial response, LOGIN): the handler's
  235, then the new owner answers, pipelined input included; keep_engine;
  a refusal;
- smtp.mail refusal with a multi-line reply, passed on unchanged;
- smtp.rcpt MG_ACCEPT (a recipient without local delivery) alone, with a
  local one, and answered in smtp.data.end; smtp.rcpt suspended and
  resumed from a timer, pipelined commands answered in order;
- smtp.data.tee sees exactly the bytes the engine stored; message.stored
  once per copy with the mailbox and message id.
"""

import base64
import re
import socket
import time

import pytest

from conftest import (Closed, RawCfg, cfg_value, mailbox_create, mg_dump,
                      split_trace, tls_client_ctx)
from smtp_helpers import Smtp, addr, connect, dot_stuff, sample_message

SENDER = "alice@sender.test"
TEMPFAIL_SENDER = "grey@sender.test"
ACCEPT_DOMAIN = "upstream.test"
REMOTE = "bob@" + ACCEPT_DOMAIN


def hooktest_text(so, settings):
    parts = ['name = "hooktest";', "path = %s;" % cfg_value(so)]
    for k, v in settings.items():
        parts.append("%s = %s;" % (k, cfg_value(v)))
    return "{ " + " ".join(parts) + " }"


@pytest.fixture
def make_hooks(make_smtp, hooktest_so):
    """make_hooks(**settings): a daemon with the smtp module and the
    hooktest module with these settings (none: loaded, no handlers)."""

    def make(smtp=None, **settings):
        d = make_smtp(smtp=smtp,
                      modules=[hooktest_text(hooktest_so, settings)])
        d.wait_log(r"hooktest: started")
        return d

    return make


def b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def plain(user, password, authzid=""):
    return b64("%s\0%s\0%s" % (authzid, user, password))


def names(ext):
    return {e.split()[0] for e in ext}


def tls_session(d, certs):
    """Greeting, EHLO, STARTTLS, EHLO: (client, capabilities after TLS)."""
    c = connect(d.smtp_port)
    c.ehlo()
    c.starttls(tls_client_ctx(certs))
    return c, c.ehlo()


def fnv64(data):
    """What hooktest.c computes over the tee'd bytes (FNV-1a 64)."""
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def log_from(d):
    return len(d.log())


# ------------------------------------------------------------ AUTH offer


def test_auth_not_offered_without_handler(make_hooks, certs):
    """hooktest loaded, but no smtp.auth handler: no AUTH anywhere."""
    d = make_hooks(tee=True)
    c = connect(d.smtp_port)
    assert "AUTH" not in names(c.ehlo())
    c.starttls(tls_client_ctx(certs))
    assert "AUTH" not in names(c.ehlo())
    c.expect("AUTH PLAIN " + plain("keep", "secret"), 502)
    c.expect("QUIT", 221)


def test_auth_offered_only_after_tls(make_hooks, certs):
    d = make_hooks(auth=True)
    c = connect(d.smtp_port)
    ext = c.ehlo()
    assert "AUTH" not in names(ext) and "STARTTLS" in names(ext), ext
    # not before TLS, whatever the client tries
    c.expect("AUTH PLAIN " + plain("keep", "secret"), 530, "5.7.0")
    c.expect("AUTH LOGIN", 530)
    c.starttls(tls_client_ctx(certs))
    ext = c.ehlo()
    assert "AUTH PLAIN LOGIN" in ext, ext
    c.expect("QUIT", 221)
    # implicit TLS: offered at once
    c = connect(d.smtps_port, tls="implicit", certs=certs)
    assert "AUTH PLAIN LOGIN" in c.ehlo()
    c.expect("QUIT", 221)


# ------------------------------------------------------------ takeover


def test_auth_plain_takeover_with_pipelined_input(make_hooks, certs):
    d = make_hooks(auth=True)
    c, ext = tls_session(d, certs)
    start = log_from(d)
    # the AUTH command and two more lines in one write: the lines after
    # AUTH are the new owner's pending input
    c.send("AUTH PLAIN %s\r\nHELLO there\r\nMAIL FROM:<%s>\r\n"
           % (plain("takeover", "secret"), SENDER))
    assert c.reply_line() == "235 2.7.0 taken over"
    assert c.reply_line() == "250 echo HELLO there"
    assert c.reply_line() == "250 echo MAIL FROM:<%s>" % SENDER
    # the engine is gone: its commands are just lines now
    assert c.cmd("EHLO client.test") == "250 echo EHLO client.test"
    assert c.cmd("RSET") == "250 echo RSET"
    assert c.cmd("QUIT") == "221 2.0.0 hooktest bye"
    c.expect_closed()
    m = d.wait_log(r"hooktest: auth conn (\d+) mech=PLAIN user=takeover "
                   r"authzid= tls=1 caps=([^\n]*)", start=start)
    caps = m.group(2).split(",")
    assert "AUTH PLAIN LOGIN" in caps and "PIPELINING" in caps, caps
    assert "CHUNKING" in caps and "STARTTLS" not in caps, caps
    d.wait_log(r"hooktest: takeover of conn %s ends after 5 lines"
               % m.group(1), start=start)
    assert "secret" not in d.log()


def test_auth_login_takeover(make_hooks, certs):
    d = make_hooks(auth=True)
    c, _ = tls_session(d, certs)
    assert c.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert c.cmd(b64("takeover")) == "334 UGFzc3dvcmQ6"
    c.send(b64("secret") + "\r\nPING\r\n")
    assert c.reply_line() == "235 2.7.0 taken over"
    assert c.reply_line() == "250 echo PING"
    assert c.cmd("QUIT") == "221 2.0.0 hooktest bye"
    d.wait_log(r"hooktest: auth conn \d+ mech=LOGIN user=takeover ")
    # LOGIN with the user name as initial response
    c, _ = tls_session(d, certs)
    assert c.cmd("AUTH LOGIN " + b64("takeover")) == "334 UGFzc3dvcmQ6"
    assert c.cmd(b64("secret")) == "235 2.7.0 taken over"
    assert c.cmd("NOOP") == "250 echo NOOP"


def test_auth_takeover_pipelined_quit(make_hooks, certs):
    """The new owner closes the conn while the engine's handler is still
    on the stack (QUIT was pipelined after AUTH)."""
    d = make_hooks(auth=True)
    c, _ = tls_session(d, certs)
    c.send("AUTH PLAIN %s\r\nQUIT\r\n" % plain("takeover", "secret"))
    assert c.reply_line() == "235 2.7.0 taken over"
    assert c.reply_line() == "221 2.0.0 hooktest bye"
    c.expect_closed()
    d.wait_log(r"hooktest: takeover of conn \d+ ends after 1 lines")


def test_auth_suspended_then_takeover(make_hooks, certs):
    """smtp.auth suspended (as the proxy does while it logs in upstream),
    resumed, then taken over: the input that arrived meanwhile is the new
    owner's."""
    d = make_hooks(auth=True, suspend_hooks=["smtp.auth"], suspend_ms=300)
    c, _ = tls_session(d, certs)
    t0 = time.monotonic()
    c.send("AUTH PLAIN %s\r\nFIRST\r\n" % plain("takeover", "secret"))
    time.sleep(0.1)
    c.send("SECOND\r\n")
    assert c.reply_line() == "235 2.7.0 taken over"
    assert time.monotonic() - t0 >= 0.29
    assert c.reply_line() == "250 echo FIRST"
    assert c.reply_line() == "250 echo SECOND"
    assert c.cmd("QUIT") == "221 2.0.0 hooktest bye"
    # keep_engine after a suspended run
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    c.send("AUTH PLAIN %s\r\nMAIL FROM:<%s>\r\nRCPT TO:<%s>\r\n"
           % (plain("keep", "secret"), SENDER, addr(mb)))
    assert c.reply_line() == "235 2.7.0 Authentication successful"
    assert c.reply_line() == "250 2.1.0 Sender OK"
    assert c.reply_line() == "250 2.1.5 Recipient OK"
    c.data(sample_message("keep after suspend"))
    c.expect("QUIT", 221)


def test_takeover_gets_sigterm(make_hooks, certs):
    """After a takeover only SIGTERM is forwarded: the handler's
    on_shutdown answers, and the daemon exits cleanly."""
    d = make_hooks(auth=True)
    c, _ = tls_session(d, certs)
    assert c.cmd("AUTH PLAIN " + plain("takeover", "secret")) == \
        "235 2.7.0 taken over"
    assert c.cmd("x") == "250 echo x"
    rc, _ = d.stop()
    assert rc == 0
    assert c.readline() == "421 4.3.2 hooktest shutting down"
    c.expect_closed()
    assert re.search(r"hooktest: takeover of conn \d+ shut down", d.log())


def test_auth_keep_engine(make_hooks, certs):
    d = make_hooks(auth=True, tee=True)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    c.expect("AUTH PLAIN " + plain("keep", "secret"), 235, "2.7.0")
    # authenticated: no second AUTH, not offered any more
    assert "AUTH" not in names(c.ehlo())
    c.expect("AUTH PLAIN " + plain("keep", "secret"), 503)
    msg = sample_message("keep")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.data(msg)
    c.expect("QUIT", 221)
    stored = mg_dump(d, mb)
    assert len(stored) == 1
    trace, rest = split_trace(stored[0]["body"])
    assert rest == msg
    assert "with ESMTPSA" in trace["Received"], trace
    # the hooks see who authenticated
    assert re.search(r"hooktest: data.end conn \d+ status=ok .* txn=1 "
                     r"auth_user=keep sender=%s" % SENDER, d.log())


def test_auth_refused(make_hooks, certs):
    d = make_hooks(auth=True)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    assert c.cmd("AUTH PLAIN " + plain("takeover", "wrong")) == \
        "535 5.7.8 hooktest: bad credentials"
    assert c.cmd("AUTH PLAIN " + plain("nobody", "secret")) == \
        "535 5.7.8 hooktest: bad credentials"
    assert c.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert c.cmd(b64("keep")) == "334 UGFzc3dvcmQ6"
    assert c.cmd(b64("nope")) == "535 5.7.8 hooktest: bad credentials"
    # still the engine's, unauthenticated, AUTH still offered
    assert "AUTH PLAIN LOGIN" in c.ehlo()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.data(sample_message("after 535"))
    trace, _ = split_trace(mg_dump(d, mb)[0]["body"])
    assert "with ESMTPS " in trace["Received"] + " ", trace
    assert "wrong" not in d.log() and "nope" not in d.log()


def test_auth_other_verdicts(make_hooks, certs):
    """A takeover without a conn handler (a handler bug), MG_TEMPFAIL
    without a reply, and a reply that does not fit the verdict."""
    d = make_hooks(auth=True)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    assert c.cmd("AUTH PLAIN " + plain("nohandler", "x")) == \
        "454 4.7.0 Temporary authentication failure"
    d.wait_log(r"error: .*smtp.auth: a handler took the session over "
               r"without a conn handler", start=start)
    assert c.cmd("AUTH PLAIN " + plain("later", "x")) == \
        "454 4.7.0 Temporary authentication failure"
    # MG_ACCEPT with a 535 reply: the engine's default 235, a warning
    assert c.cmd("AUTH PLAIN " + plain("misfit", "x")) == \
        "235 2.7.0 Authentication successful"
    d.wait_log(r"warning: .*hook smtp.auth: the handler's reply 535 does "
               r"not fit its verdict", start=start)
    c.expect("AUTH PLAIN " + plain("keep", "secret"), 503)
    c.expect("QUIT", 221)


# ------------------------------------------------------------ MAIL


def test_mail_tempfail_multiline_reply(make_hooks, certs):
    d = make_hooks(mail_tempfail_sender=TEMPFAIL_SENDER)
    c, _ = tls_session(d, certs)
    c.send("MAIL FROM:<%s> SIZE=100\r\n" % TEMPFAIL_SENDER)
    # exactly the handler's reply, every line, code and enhanced code
    assert c.readline() == "451-4.7.1 hooktest: sender temporarily refused"
    assert c.readline() == "451 4.7.1 hooktest: try again later"
    # no transaction started
    c.expect("RCPT TO:<x@example.test>", 503)
    c.expect("MAIL FROM:<%s>" % SENDER, 250, "2.1.0")
    c.expect("QUIT", 221)
    d.wait_log(r"hooktest: mail tempfail conn \d+")


# ------------------------------------------------------------ RCPT accept


def test_rcpt_accepted_by_handler_nobody_answers(make_hooks, certs):
    """A recipient a handler accepted is not delivered locally; when no
    handler answers in smtp.data.end the engine has nobody to answer for
    it and says 451 4.3.0 (hooks.md: data.end MG_PASS without local
    copies)."""
    d = make_hooks(rcpt_accept_domain=ACCEPT_DOMAIN, tee=True)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    assert c.cmd("RCPT TO:<%s>" % REMOTE) == \
        "250 2.1.5 hooktest: recipient is mine"
    # other domains are still the engine's
    c.expect("RCPT TO:<carol@elsewhere.test>", 550, "5.7.1")
    code, text = c.data(sample_message("remote"), expect=None)
    assert (code, text) == (451, "4.3.0 Temporary failure, try again later")
    d.wait_log(r"no handler answered for the message", start=start)
    d.wait_log(r"hooktest: data.end conn \d+ status=ok size=\d+ "
               r"local=none remote=1", start=start)
    # the transaction is over
    c.expect("RCPT TO:<%s>" % REMOTE, 503)
    c.expect("QUIT", 221)


def test_rcpt_accepted_with_local_recipient(make_hooks, certs):
    d = make_hooks(rcpt_accept_domain=ACCEPT_DOMAIN, tee=True, stored=True)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    msg = sample_message("mixed")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % REMOTE, 250, "2.1.5 hooktest")
    c.expect("RCPT TO:<%s>" % addr(mb), 250, "2.1.5 Recipient OK")
    # every handler passes in data.end: nobody answers for the recipient
    # the handler took, so no 250 (it would lose that copy); the local copy
    # is stored, and the client's retry duplicates it: never a loss
    code, text = c.data(msg, expect=None)
    assert code == 451 and text.startswith("4.3.0"), (code, text)
    c.expect("QUIT", 221)
    stored = mg_dump(d, mb)
    assert len(stored) == 1
    assert stored[0]["rcpts"] == [addr(mb)]
    trace, rest = split_trace(stored[0]["body"])
    assert rest == msg
    assert "for <%s>" % addr(mb) in trace["Received"]
    assert REMOTE not in stored[0]["body"].decode("utf-8", "replace")
    d.wait_log(r"hooktest: data.end conn \d+ status=ok size=%d "
               r"local=stored remote=1" % len(msg), start=start)
    assert len(re.findall(r"hooktest: stored ", d.log())) == 1
    assert "no handler answered for the message" in d.log()


def test_rcpt_accepted_answered_in_data_end(make_hooks, certs):
    d = make_hooks(rcpt_accept_domain=ACCEPT_DOMAIN, data_end_accept=True)
    c, _ = tls_session(d, certs)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % REMOTE, 250)
    code, text = c.data(sample_message("answered"))
    assert text == "2.0.0 hooktest: accepted"
    # BDAT too
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % REMOTE, 250)
    c.send("BDAT 5 LAST\r\nhello")
    assert c.reply_line() == "250 2.0.0 hooktest: accepted"
    c.expect("QUIT", 221)


# ------------------------------------------------------------ RCPT suspend


def test_rcpt_suspended_then_resumed(make_hooks, certs):
    d = make_hooks(suspend_hooks=["smtp.rcpt"], suspend_ms=300,
                   rcpt_accept_domain=ACCEPT_DOMAIN)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    msg = sample_message("suspended")
    # one pipelined group: the engine reads no command while a run is
    # suspended, and answers all of them in order
    t0 = time.monotonic()
    c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nRCPT TO:<%s>\r\n"
           "NOOP\r\nDATA\r\n" % (SENDER, addr(mb), REMOTE))
    assert c.reply_line() == "250 2.1.0 Sender OK"
    t_mail = time.monotonic() - t0
    assert c.reply_line() == "250 2.1.5 Recipient OK"
    t_rcpt1 = time.monotonic() - t0
    # resumed with MG_PASS: the next handler (accept) decided
    assert c.reply_line() == "250 2.1.5 hooktest: recipient is mine"
    t_rcpt2 = time.monotonic() - t0
    assert c.reply_line() == "250 2.0.0 Ok"
    code, _ = c.reply()
    assert code == 354
    assert t_mail < 0.28, t_mail  # not held up by the suspend
    assert t_rcpt1 >= 0.29, t_rcpt1
    assert t_rcpt2 >= 0.58, t_rcpt2
    c.send(dot_stuff(msg) + b".\r\n")
    code, lines = c.reply()
    # nobody answered for the recipient the handler took: no 250 (the
    # local copy is stored; a retry would duplicate it, never lose it)
    assert code == 451, lines
    c.expect("QUIT", 221)
    resumed = re.findall(r"hooktest: resuming smtp.rcpt conn \d+ after (\d+) "
                         r"ms", d.log()[start:])
    assert len(resumed) == 2 and all(int(ms) >= 300 for ms in resumed), \
        resumed
    stored = mg_dump(d, mb)
    assert len(stored) == 1 and split_trace(stored[0]["body"])[1] == msg


def test_rcpt_suspended_client_gone(make_hooks, certs):
    """The client leaves while smtp.rcpt is suspended: the run is ended
    with the session, the late hook_resume is declined, nothing leaks
    (the sanitizers check at teardown)."""
    d = make_hooks(suspend_hooks=["smtp.rcpt"], suspend_ms=300)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    c.send("MAIL FROM:<%s>\r\nRCPT TO:<x@example.test>\r\n" % SENDER)
    assert c.reply_line().startswith("250 2.1.0")
    d.wait_log(r"hooktest: suspended smtp.rcpt", start=start)
    c.close()
    d.wait_log(r"hooktest: resumed smtp.rcpt conn \d+: declined", start=start)
    # the daemon is fine
    c, _ = tls_session(d, certs)
    c.expect("QUIT", 221)


# ------------------------------------------------------------ tee, stored


def tee_lines(d, start):
    return re.findall(r"hooktest: tee conn (\d+) total (\d+) fnv (\w+) "
                      r"pieces (\d+) bdat (\d) offsets (\w+)",
                      d.log()[start:])


def stored_lines(d, start):
    return re.findall(r"hooktest: stored (\w+) (\d+) (\d+) source=(\S+)",
                      d.log()[start:])


def test_tee_and_stored_data(make_hooks, certs):
    d = make_hooks(tee=True, stored=True)
    mb1 = mailbox_create(d, "One")
    mb2 = mailbox_create(d, "Two")
    c, _ = tls_session(d, certs)
    start = log_from(d)
    # a bare LF line end is normalised to CRLF, dot-stuffing undone: the
    # tee sees what is stored, not what was sent
    big = b"".join(b"line %05d of a longer body ......................\r\n"
                   % i for i in range(2000))
    msg = sample_message("tee", extra=b"bare LF line\n" + big)
    want = msg.replace(b"bare LF line\n", b"bare LF line\r\n")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb1), 250)
    c.expect("RCPT TO:<%s>" % addr(mb2), 250)
    c.data(msg)
    c.expect("QUIT", 221)
    d.wait_log(r"hooktest: stored .*\n(.|\n)*hooktest: stored ", start=start)

    (conn, total, fnv, pieces, bdat, offsets), = tee_lines(d, start)
    assert offsets == "ok" and bdat == "0" and int(pieces) >= 2
    copies = {mb1["id"]: mg_dump(d, mb1), mb2["id"]: mg_dump(d, mb2)}
    for mid, stored in copies.items():
        assert len(stored) == 1
        _, rest = split_trace(stored[0]["body"])
        assert rest == want
        assert int(total) == len(rest)
        assert fnv == fnv64(rest)
    # message.stored: once per copy, with the store's id and size
    seen = {m[0]: m for m in stored_lines(d, start)}
    assert sorted(seen) == sorted(copies), seen
    for mid, (_, msg_id, size, source) in seen.items():
        assert int(msg_id) == copies[mid][0]["id"]
        assert int(size) == copies[mid][0]["size"]
        assert source == "smtp"
    assert re.search(r"hooktest: data.end conn %s status=ok size=%d "
                     r"local=stored remote=0 tee=-" % (conn, len(want)),
                     d.log()[start:])


def test_tee_and_stored_bdat(make_hooks, certs):
    d = make_hooks(tee=True, stored=True)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    msg = sample_message("bdat")
    a, b = msg[:40], msg[40:]
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.send(b"BDAT %d\r\n" % len(a) + a)
    assert c.reply_line() == "250 2.0.0 %d octets received" % len(a)
    c.send(b"BDAT %d LAST\r\n" % len(b) + b)
    code, lines = c.reply()
    assert code == 250, lines
    c.expect("QUIT", 221)
    d.wait_log(r"hooktest: stored ", start=start)
    (_, total, fnv, _, bdat, offsets), = tee_lines(d, start)
    stored = mg_dump(d, mb)
    _, rest = split_trace(stored[0]["body"])
    assert rest == msg
    assert (int(total), fnv, bdat, offsets) == (len(msg), fnv64(msg), "1",
                                                "ok")
    (mid, msg_id, size, _), = stored_lines(d, start)
    assert (mid, int(msg_id), int(size)) == (mb["id"], stored[0]["id"],
                                             stored[0]["size"])


def test_tee_failed_transaction(make_hooks, certs):
    """A message over the size limit: the tee gets no `last` piece and
    smtp.data.end runs with status error, so the handler can let go."""
    d = make_hooks(smtp={"max_message_size": 1024}, tee=True, stored=True)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    code, _ = c.data(sample_message("big", extra=b"x" * 2000 + b"\r\n"),
                     expect=552)
    c.expect("QUIT", 221)
    d.wait_log(r"hooktest: data.end conn \d+ status=error", start=start)
    assert not tee_lines(d, start) and not stored_lines(d, start)
    assert mg_dump(d, mb) == []


def test_tee_and_data_end_suspended(make_hooks, certs):
    """smtp.data.tee suspended for every piece (back-pressure) and
    smtp.data.end suspended before the final reply: the client waits, the
    stored copy and the tee'd bytes are still exactly the message."""
    d = make_hooks(tee=True, stored=True, suspend_ms=100,
                   suspend_hooks=["smtp.data.tee", "smtp.data.end"])
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    msg = sample_message("slow")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    c.expect("DATA", 354)
    t0 = time.monotonic()
    c.send(dot_stuff(msg) + b".\r\n")
    code, lines = c.reply()
    waited = time.monotonic() - t0
    assert code == 250, lines
    c.expect("QUIT", 221)
    d.wait_log(r"hooktest: stored ", start=start)
    log = d.log()[start:]
    tees = len(re.findall(r"hooktest: suspended smtp.data.tee", log))
    assert tees >= 2  # at least one data piece and the final one
    assert len(re.findall(r"hooktest: suspended smtp.data.end", log)) == 1
    assert waited >= 0.1 * (tees + 1) - 0.02, (waited, tees)
    (_, total, fnv, _, _, offsets), = tee_lines(d, start)
    stored = mg_dump(d, mb)
    _, rest = split_trace(stored[0]["body"])
    assert rest == msg
    assert (int(total), fnv, offsets) == (len(msg), fnv64(msg), "ok")


def test_informational_hook_cannot_suspend(make_hooks, certs):
    """message.stored is informational: a handler that suspends has its
    run ended at once (logged), the delivery is not held up."""
    d = make_hooks(stored=True, suspend_hooks=["message.stored"],
                   suspend_ms=1000)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    t0 = time.monotonic()
    c.data(sample_message("informational"))
    assert time.monotonic() - t0 < 0.9
    c.expect("QUIT", 221)
    d.wait_log(r"hook message.stored: a handler suspended an informational "
               r"run; ended", start=start)
    d.wait_log(r"hooktest: resumed message.stored conn \d+: declined",
               start=start)
    # the run was ended: the handler after the suspending one never ran
    assert not stored_lines(d, start)
    assert len(mg_dump(d, mb)) == 1


@pytest.mark.parametrize("mode", ["data", "bdat"])
def test_client_gone_in_data_phase(make_hooks, certs, mode):
    """The client disconnects in the middle of the message: smtp.data.end
    runs with status error (the handler lets go of its unfinished tee),
    nothing is stored."""
    d = make_hooks(tee=True, stored=True)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    if mode == "data":
        c.expect("DATA", 354)
        c.send(b"Subject: half\r\n\r\nsome of the body\r\n")
    else:
        c.send(b"BDAT 1000 LAST\r\nSubject: half\r\n\r\nsome")
    time.sleep(0.2)
    c.close()
    m = d.wait_log(r"hooktest: data.end conn \d+ status=error size=(\d+) "
                   r"local=none remote=0 tee=unfinished", start=start)
    assert int(m.group(1)) > 0
    assert not tee_lines(d, start) and not stored_lines(d, start)
    assert mg_dump(d, mb) == []


# ------------------------------------------------------------ refusals

REFUSAL = ["554-5.7.1 hooktest: refused", "554 5.7.1 hooktest: by refuse_hooks"]


def read_refusal(c):
    return [c.readline(), c.readline()]


def test_refused_connect_and_ehlo(make_hooks, certs):
    d = make_hooks(refuse_hooks=["smtp.connect"])
    c = Smtp(d.smtp_port)
    assert read_refusal(c) == REFUSAL
    c.expect("EHLO client.test", 503)
    c.expect("QUIT", 221)
    d = make_hooks(refuse_hooks=["smtp.ehlo"])
    c = connect(d.smtp_port)
    c.send("EHLO client.test\r\n")
    assert read_refusal(c) == REFUSAL
    # the session state is unchanged: still no EHLO
    c.expect("MAIL FROM:<%s>" % SENDER, 503, "5.5.1 Send HELO/EHLO first")
    c.expect("QUIT", 221)


@pytest.mark.parametrize("hook", ["smtp.data", "smtp.data.tee", "smtp.bdat"])
def test_refused_data_phase(make_hooks, certs, hook):
    """A refusal in the data phase reaches the client with every line of
    the handler's reply (hooks.md, Replies: the proxy passes an upstream's
    multi-line refusal on unchanged), and nothing is stored. For
    smtp.data.tee and smtp.bdat the engine keeps the reply until the data
    is read; it used to keep only the last line."""
    d = make_hooks(refuse_hooks=[hook], tee=True)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    msg = sample_message("refused")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    if hook == "smtp.bdat":
        c.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
    elif hook == "smtp.data":
        c.send("DATA\r\n")
    else:
        c.expect("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")
    assert read_refusal(c) == REFUSAL
    if hook == "smtp.data":
        # no data phase; the transaction stays (the client may RSET)
        c.expect("RCPT TO:<%s>" % addr(mb), 250)
        c.expect("RSET", 250)
    else:
        # the data phase failed: the transaction is over
        c.expect("RCPT TO:<%s>" % addr(mb), 503)
    c.expect("QUIT", 221)
    assert mg_dump(d, mb) == []
    if hook != "smtp.data":
        d.wait_log(r"hooktest: data.end conn \d+ status=error", start=start)


def refusal_lines(n, width):
    out = []
    for i in range(n):
        t = "hooktest: refusal line %d of %d" % (i + 1, n)
        out.append(t + "." * (width - len(t)))
    return out


def send_refused_message(c, mb, hook):
    """MAIL, RCPT and the message (or just DATA for smtp.data)."""
    msg = sample_message("refused")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(mb), 250)
    if hook == "smtp.bdat":
        c.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
    elif hook == "smtp.data":
        c.send("DATA\r\n")
    else:
        c.expect("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")


@pytest.mark.parametrize("hook", ["smtp.data", "smtp.data.tee", "smtp.bdat"])
def test_refused_data_phase_long_reply(make_hooks, certs, hook):
    """A long multi-line refusal in the data phase (30 lines of 300 octets:
    far more than the 8 lines / 600 octets the engine used to keep for
    smtp.data.tee and smtp.bdat) reaches the client whole, as smtp.data
    (answered at once) always did."""
    d = make_hooks(refuse_hooks=[hook], refuse_lines=30, refuse_width=300,
                   tee=True)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    send_refused_message(c, mb, hook)
    code, lines = c.reply()
    assert code == 554, (code, lines)
    assert lines == ["5.7.1 " + l for l in refusal_lines(30, 300)], lines
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    assert mg_dump(d, mb) == []


@pytest.mark.parametrize("hook", ["smtp.data", "smtp.data.tee", "smtp.bdat"])
@pytest.mark.parametrize("nlines,width", [(101, 50), (2, 999)])
def test_refused_data_phase_reply_over_limit(make_hooks, certs, hook, nlines,
                                             width):
    """Past the documented limit (100 lines of 998 octets, doc/hooks.md)
    the engine logs a warning and answers with its default refusal, the
    same in every phase."""
    d = make_hooks(refuse_hooks=[hook], refuse_lines=nlines,
                   refuse_width=width)
    mb = mailbox_create(d)
    c, _ = tls_session(d, certs)
    start = log_from(d)
    send_refused_message(c, mb, hook)
    code, lines = c.reply()
    assert (code, lines) == (550, ["5.7.1 Message refused"]), (code, lines)
    d.wait_log(r"warning: .*hook %s: the handler's reply 554 does not fit"
               % re.escape(hook), start=start)
    c.expect("QUIT", 221)
    assert mg_dump(d, mb) == []


@pytest.mark.parametrize("text", ["bad\\r\\n250 2.0.0 injected",
                                  "bad\\x01control"])
def test_handler_reply_with_control_characters(make_hooks, certs, text):
    """A handler's reply text with CR/LF (which would inject a reply line)
    or another control character is never written: the engine logs a
    warning and gives its default refusal."""
    d = make_hooks(refuse_hooks=["smtp.mail"], refuse_text=RawCfg('"%s"' % text))
    c, _ = tls_session(d, certs)
    start = log_from(d)
    code, lines = c.code("MAIL FROM:<%s>" % SENDER)
    assert code >= 500 and "injected" not in lines and "control" not in lines, \
        (code, lines)
    d.wait_log(r"warning: .*hook smtp.mail: the handler's reply 554 does not "
               r"fit", start=start)
    # nothing extra is waiting: the next reply belongs to the next command
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
