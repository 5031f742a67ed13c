"""SIGHUP reloads (listeners added and removed, broken configs) and
mailgatectl."""

import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import Client, free_port, line_of, listener, sbin


def test_sighup_adds_and_removes_listeners(make_daemon, clients):
    a, b, c_port = free_port(), free_port(), free_port()
    d = make_daemon(listen=[listener(a), listener(b)])
    old = clients(a)
    assert old.greeting() == "220 testline ready"
    d.write_config(listen=[listener(b), listener(c_port)],
                   settings={"greeting": "generation two"})
    d.signal(signal.SIGHUP)
    d.wait_listening([c_port])
    d.wait_not_listening([a])
    # the open session on the removed listener goes on, on its old settings
    assert old.cmd("PING") == "250 PONG"
    assert old.cmd("ECHO still here") == "250 still here"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", a), timeout=2).close()
    new = clients(c_port)
    assert new.greeting() == "220 generation two"
    # B was kept (inherited, never closed) and serves the new generation
    kept = clients(b)
    assert kept.greeting() == "220 generation two"
    assert old.cmd("QUIT") == "221 bye"


def test_sighup_keeps_listener_socket(make_daemon, clients):
    a = free_port()
    d = make_daemon(listen=[listener(a)])
    log0 = len(d.log())
    d.write_config(listen=[listener(a)], settings={"greeting": "reloaded"})
    d.signal(signal.SIGHUP)
    d.wait_log(r"(?i)reload", start=log0)
    # the port never stops accepting during and after the reload
    deadline = time.monotonic() + 5
    seen = None
    while time.monotonic() < deadline:
        with Client(a) as c:
            seen = c.greeting()
        if seen == "220 reloaded":
            break
        assert seen == "220 testline ready"
        time.sleep(0.05)
    assert seen == "220 reloaded"


def test_sighup_broken_config_keeps_running(make_daemon, clients):
    a, c_port = free_port(), free_port()
    d = make_daemon(listen=[listener(a)])
    good = d.config_text(listen=[listener(a)])
    broken = good + "this line is broken\n"
    bad_line = line_of(broken, "this line is broken")
    log0 = len(d.log())
    d.write_config(text=broken)
    d.signal(signal.SIGHUP)
    d.wait_log(re.escape(d.conf) + r":%d\b" % bad_line, start=log0)
    assert d.alive()
    with Client(a) as c:
        assert c.greeting() == "220 testline ready"
        assert c.cmd("PING") == "250 PONG"
    # a fixed file reloads fine afterwards
    d.write_config(listen=[listener(a), listener(c_port)],
                   settings={"greeting": "fixed"})
    d.signal(signal.SIGHUP)
    d.wait_listening([c_port])
    with Client(c_port) as c:
        assert c.greeting() == "220 fixed"


def test_sighup_bad_module_setting_keeps_running(make_daemon):
    a, b = free_port(), free_port()
    d = make_daemon(listen=[listener(a)])
    text = d.config_text(listen=[listener(a), listener(b)],
                         settings={"line_max": 5})  # below 16
    log0 = len(d.log())
    d.write_config(text=text)
    d.signal(signal.SIGHUP)
    d.wait_log(re.escape(d.conf) + r":%d\b" % line_of(text, "line_max"),
               start=log0)
    # nothing of the failed generation was opened
    time.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", b), timeout=2).close()
    with Client(a) as c:
        assert c.greeting() == "220 testline ready"


def test_mailgatectl_status_reload(make_daemon):
    a, b = free_port(), free_port()
    d = make_daemon(listen=[listener(a)])
    r = d.ctl("status")
    assert r.returncode == 0, r.stderr
    assert re.search(r"\b%d\b" % d.pid, r.stdout), r.stdout
    log0 = len(d.log())
    d.write_config(listen=[listener(a), listener(b)])
    r = d.ctl("reload")
    assert r.returncode == 0, r.stderr
    d.wait_log(r"(?i)reload", start=log0)
    d.wait_listening([b])
    rc, _ = d.stop()
    assert rc == 0
    r = d.ctl("status")
    assert r.returncode != 0


def test_mailgatectl_help():
    r = subprocess.run([sbin("mailgatectl"), "--help"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=10)
    assert r.returncode == 0
    assert "status" in (r.stdout + r.stderr)
    assert "reload" in (r.stdout + r.stderr)
    r = subprocess.run([sbin("mailgated"), "--help"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=10)
    assert r.returncode == 0
    assert "--check-config" in (r.stdout + r.stderr)


def test_mailgatectl_status_not_running(daemon_files):
    d = daemon_files
    d.write_config(listen=[listener(free_port())])
    r = d.ctl("status")
    assert r.returncode != 0
    assert r.stderr.strip() or r.stdout.strip()
