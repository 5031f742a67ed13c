"""POP3 module (issue 5): logins. USER/PASS and AUTH PLAIN (initial
response and continuation), the login name as id or full address, equal
answers for a wrong password and an unknown mailbox, throttling per
address and per (address, mailbox) with an exempt list, the IN-USE lock,
and suspended mailboxes, which can still be emptied."""

import base64
import poplib
import subprocess
import time

import pytest

from conftest import free_port, listener, mailbox_status, sbin
from pop3_helpers import (SMTP_DOMAIN, deliver, login, mailbox_create,
                          mailbox_messages, make_pop3, pop3_module_text,
                          pop3s, raw, sample_message)

assert make_pop3  # a fixture, used by name


def plain(user, password, authzid=""):
    return base64.b64encode(
        ("%s\0%s\0%s" % (authzid, user, password)).encode()).decode()


def test_user_pass_full_address_any_case(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    p = pop3s(d, certs)
    p.user(("%s@%s" % (mb["id"], SMTP_DOMAIN)).upper())
    assert p.pass_(mb["password"]).startswith(b"+OK")
    assert p.stat() == (0, 0)
    p.quit()


def test_auth_plain_initial_response_and_continuation(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    c = raw(d.pop3s_port, certs, tls=True)
    r = c.cmd("AUTH PLAIN " + plain(mb["id"], mb["password"]))
    assert r.startswith("+OK"), r
    assert c.cmd("STAT") == "+OK 0 0"
    assert c.cmd("QUIT").startswith("+OK")

    # the continuation form, with the authzid equal to the user
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("AUTH PLAIN") == "+ "
    r = c.cmd(plain(mb["id"], mb["password"], authzid=mb["id"]))
    assert r.startswith("+OK"), r
    assert c.cmd("QUIT").startswith("+OK")

    # `*` cancels; bad base64 and "=" are refused; AUTH lists PLAIN
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("AUTH PLAIN") == "+ "
    assert c.cmd("*").startswith("-ERR")
    assert c.cmd("AUTH PLAIN !!!!").startswith("-ERR")
    assert c.cmd("AUTH PLAIN =").startswith("-ERR")
    assert c.cmd("AUTH CRAM-MD5").startswith("-ERR")
    c.send("AUTH\r\n")
    assert c.line().startswith("+OK")
    assert c.multi() == ["PLAIN"]
    assert c.cmd("STAT").startswith("-ERR")  # not logged in
    assert c.cmd("QUIT").startswith("+OK")

    # poplib's own AUTH-less path still works after a cancelled AUTH
    p = pop3s(d, certs)
    p.user(mb["id"])
    p.pass_(mb["password"])
    p.quit()


def test_bad_password_and_unknown_mailbox_are_equal(make_pop3, certs):
    d = make_pop3(pop3={"auth_failure_delay": 300})
    mb = mailbox_create(d)
    answers, times = [], []
    for user in (mb["id"], "zzzzzzzz00000000", "not a mailbox", mb["id"]):
        c = raw(d.pop3s_port, certs, tls=True)
        # USER answers the same whatever the name
        assert c.cmd("USER " + user) == "+OK Send your password"
        t0 = time.monotonic()
        answers.append(c.cmd("PASS wrong-password"))
        times.append(time.monotonic() - t0)
        c.close()
    assert len(set(answers)) == 1, answers
    assert answers[0].startswith("-ERR [AUTH] "), answers
    # the same work (one derivation) and the same delay every time
    assert min(times) >= 0.3, times
    assert max(times) - min(times) < 0.5, times
    # AUTH PLAIN gives the same answer
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("AUTH PLAIN " + plain("zzzzzzzz00000000", "x")) == answers[0]


def test_throttle_per_address_and_mailbox(make_pop3, certs):
    d = make_pop3(pop3={"auth_throttle_mailbox": 2,
                        "auth_throttle_address": 4, "auth_failure_delay": 0})
    mb = mailbox_create(d)
    other = mailbox_create(d, name="Other")
    c = raw(d.pop3s_port, certs, tls=True)

    def attempt(user, password):
        assert c.cmd("USER " + user).startswith("+OK")
        return c.cmd("PASS " + password)

    assert attempt(mb["id"], "bad").startswith("-ERR [AUTH]")
    assert attempt(mb["id"], "bad").startswith("-ERR [AUTH]")
    # (address, mailbox) is throttled now, even with the right password
    r = attempt(mb["id"], mb["password"])
    assert r.startswith("-ERR [SYS/TEMP]"), r
    # another mailbox from the same address still works ...
    c2 = raw(d.pop3s_port, certs, tls=True)
    assert c2.cmd("USER " + other["id"]).startswith("+OK")
    assert c2.cmd("PASS " + other["password"]).startswith("+OK")
    assert c2.cmd("QUIT").startswith("+OK")
    # ... until the address has used up its own budget
    c = raw(d.pop3s_port, certs, tls=True)
    assert attempt("unknown0unknown0", "bad").startswith("-ERR [AUTH]")
    assert attempt("unknown1unknown1", "bad").startswith("-ERR [AUTH]")
    r = attempt(other["id"], other["password"])
    assert r.startswith("-ERR [SYS/TEMP]"), r


def test_throttle_exempt_network(make_pop3, certs):
    d = make_pop3(pop3={"auth_throttle_mailbox": 1,
                        "auth_throttle_address": 1, "auth_failure_delay": 0,
                        "auth_throttle_exempt": ["10.0.0.0/8", "127.0.0.0/8"]})
    mb = mailbox_create(d)
    c = raw(d.pop3s_port, certs, tls=True)
    for _ in range(3):
        assert c.cmd("USER " + mb["id"]).startswith("+OK")
        assert c.cmd("PASS bad").startswith("-ERR [AUTH]")
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")


def test_throttle_exempt_checked(daemon_files):
    d = daemon_files
    d.write_config(listen=[listener(free_port())],
                   extra_modules=[pop3_module_text(
                       [listener(free_port(), "implicit")],
                       {"auth_throttle_exempt": ["10.0.0.0/33"]})])
    r = subprocess.run([sbin("mailgated"), "-c", d.conf, "--check-config"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "auth_throttle_exempt" in r.stderr and "10.0.0.0/33" in r.stderr


def test_in_use(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    p = login(d, mb, certs)
    q = pop3s(d, certs)
    q.user(mb["id"])
    with pytest.raises(poplib.error_proto) as e:
        q.pass_(mb["password"])
    assert e.value.args[0].startswith(b"-ERR [IN-USE]"), e.value
    # the lock goes with the first session
    p.quit()
    q.user(mb["id"])
    assert q.pass_(mb["password"]).startswith(b"+OK")
    q.quit()


def test_in_use_released_when_the_connection_drops(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    p = login(d, mb, certs)
    p.close()  # no QUIT
    deadline = time.monotonic() + 5
    while True:
        q = pop3s(d, certs)
        q.user(mb["id"])
        try:
            q.pass_(mb["password"])
            break
        except poplib.error_proto:
            assert time.monotonic() < deadline, "IN-USE not released"
            time.sleep(0.1)
    q.quit()


def test_suspended_mailbox_can_be_emptied(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    deliver(d, mb, [sample_message("s1"), sample_message("s2")], certs)
    mailbox_status(d, mb["id"], "suspended")
    p = login(d, mb, certs)
    assert p.stat()[0] == 2
    p.dele(1)
    p.dele(2)
    p.quit()
    assert mailbox_messages(d, mb) == 0


def test_pass_without_user_and_state_errors(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    c = raw(d.pop3s_port, certs, tls=True)
    assert c.cmd("PASS x").startswith("-ERR")
    assert c.cmd("RETR 1").startswith("-ERR")
    assert c.cmd("USER").startswith("-ERR")
    assert c.cmd("APOP a b").startswith("-ERR")
    assert c.cmd("USER " + mb["id"]).startswith("+OK")
    assert c.cmd("PASS " + mb["password"]).startswith("+OK")
    # AUTHORIZATION commands are over
    assert c.cmd("USER x").startswith("-ERR")
    assert c.cmd("STLS").startswith("-ERR")
    assert c.cmd("QUIT").startswith("+OK")
