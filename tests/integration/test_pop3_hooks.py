"""POP3 module (issue 5): the hooks of doc/hooks.md fired for real.

tests/modules/pop3hook.c (built out of tree against the installed headers)
takes sessions over at pop3.login, refuses logins, and checks what
pop3.retr.tee hands it; tests/modules/hooktest.c suspends and refuses any
hook. The proxy module (a later issue) relies on exactly this."""

import base64
import re

import pytest

from conftest import (build_test_module, cfg_value, split_trace, tail,
                      tls_client_ctx)
from pop3_helpers import (Raw, deliver, login, mailbox_create,
                          mailbox_messages, make_pop3, raw, sample_message,
                          strip_trace)

assert make_pop3  # a fixture, used by name


@pytest.fixture(scope="session")
def pop3hook_so(tmp_path_factory):
    return build_test_module(tmp_path_factory, "pop3hook")


def module_text(name, so, settings):
    parts = ['name = "%s";' % name, "path = %s;" % cfg_value(so)]
    for k, v in settings.items():
        parts.append("%s = %s;" % (k, cfg_value(v)))
    return "{ " + " ".join(parts) + " }"


def fnv(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def test_login_takeover(make_pop3, certs, pop3hook_so):
    d = make_pop3(modules=[module_text("pop3hook", pop3hook_so,
                                       {"login": True})])
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("USER takeover").startswith("+OK")
    assert c.cmd("PASS secret") == "+OK taken over"
    assert c.cmd("NOOP") == "+OK echo NOOP"
    assert c.cmd("QUIT") == "+OK pop3hook bye"
    c.expect_closed()
    m = d.wait_log(r"pop3hook: login conn \d+ mech=USER user=takeover "
                   r"authzid= tls=1 secret=1 caps=([^\n]+)")
    caps = m.group(1).split(",")
    assert "USER" in caps and "SASL PLAIN" in caps and "STLS" not in caps

    # AUTH PLAIN, with a command pipelined behind it: the new owner gets it
    c = raw(d.pop3s_port, certs, tls=True)
    ir = base64.b64encode(b"admin\0takeover\0secret").decode()
    c.send("AUTH PLAIN %s\r\nHELLO\r\n" % ir)
    assert c.line() == "+OK taken over"
    assert c.line() == "+OK echo HELLO"
    d.wait_log(r"mech=PLAIN user=takeover authzid=admin tls=1 secret=1")
    # SIGTERM reaches the new owner
    rc, _ = d.stop()
    assert rc == 0, tail(d.log())
    assert c.line() == "-ERR pop3hook shutting down"


def test_login_refused_and_passed_on(make_pop3, certs, pop3hook_so):
    d = make_pop3(modules=[module_text("pop3hook", pop3hook_so,
                                       {"login": True})])
    mb = mailbox_create(d)
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("USER refuse").startswith("+OK")
    assert c.cmd("PASS x") == "-ERR [AUTH] pop3hook: no"
    assert c.cmd("USER later").startswith("+OK")
    assert c.cmd("PASS x").startswith("-ERR [SYS/TEMP]")
    # still in AUTHORIZATION; others go to the engine's own login
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")
    assert c.cmd("STAT") == "+OK 0 0"
    assert c.cmd("QUIT").startswith("+OK")
    # the password is never logged
    assert mb["password"] not in d.log()


def test_retr_tee_sees_what_the_client_gets(make_pop3, certs, pop3hook_so):
    d = make_pop3(modules=[module_text("pop3hook", pop3hook_so,
                                       {"tee": True})])
    mb = mailbox_create(d)
    msg = sample_message("tee", extra=(b"." * 1000 + b"\r\n") * 70 + b".x\r\n")
    deliver(d, mb, [msg], certs)
    p = login(d, mb, certs)
    p.top(1, 1)  # TOP is not tee'd
    got = b"".join(l + b"\r\n" for l in p.retr(1)[1])
    assert split_trace(got)[1] == msg
    m = d.wait_log(r"pop3hook: tee msg=1 bytes=(\d+) fnv=(\w+) pieces=(\d+) "
                   r"offsets=ok relayed=0 user=(\w+)")
    assert int(m.group(1)) == len(got)
    assert m.group(2) == fnv(got)
    assert int(m.group(3)) >= 3  # two chunks and the last (empty) piece
    assert m.group(4) == mb["id"]
    assert len(re.findall(r"pop3hook: tee msg=", d.log())) == 1
    p.quit()


def test_retr_tee_refusal_breaks_the_response(make_pop3, certs, pop3hook_so):
    d = make_pop3(modules=[module_text("pop3hook", pop3hook_so,
                                       {"tee_refuse": 100000})])
    mb = mailbox_create(d)
    msg = sample_message("big", extra=(b"x" * 1000 + b"\r\n") * 200)
    deliver(d, mb, [msg, sample_message("small")], certs)
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")
    assert c.cmd("DELE 2").startswith("+OK")
    c.send("RETR 1\r\n")
    rest = c.recv_all_until_close()
    assert rest.startswith(b"+OK")
    assert not rest.endswith(b"\r\n.\r\n")
    d.wait_log(r"pop3hook: tee refused at")
    # the connection broke before QUIT: nothing was deleted
    assert mailbox_messages(d, mb) == 2


def test_suspended_hooks(make_pop3, certs, hooktest_so):
    d = make_pop3(modules=[module_text(
        "hooktest", hooktest_so,
        {"suspend_hooks": ["pop3.connect", "pop3.login", "pop3.retr.tee"],
         "suspend_ms": 30})])
    mb = mailbox_create(d)
    msg = sample_message("slow", extra=(b"y" * 1000 + b"\r\n") * 150)
    deliver(d, mb, [msg], certs)
    p = login(d, mb, certs)
    assert strip_trace(p.retr(1)[1]) == msg
    p.quit()
    for hook in ("pop3.connect", "pop3.login", "pop3.retr.tee"):
        d.wait_log(r"hooktest: resumed %s conn \d+: ok" % re.escape(hook))


def test_connect_refused(make_pop3, certs, hooktest_so):
    d = make_pop3(modules=[module_text(
        "hooktest", hooktest_so, {"refuse_hooks": ["pop3.connect"]})])
    c = Raw(d.pop3s_port, ssl_context=tls_client_ctx(certs), timeout=10)
    line = c.line()
    assert line.startswith("-ERR") and "hooktest: refused" in line, line
    c.expect_closed()
