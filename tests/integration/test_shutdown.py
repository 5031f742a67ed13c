"""SIGTERM drain, and the data directory lock."""

import os
import re
import signal
import subprocess
import time

from conftest import (daemon_env, free_port, listener, listening_ports,
                      sanitizer_lines, sbin, tail)


def test_sigterm_closes_idle_sessions(make_daemon, clients):
    port = free_port()
    d = make_daemon(listen=[listener(port)])
    cs = [clients(port), clients(port)]
    for c in cs:
        assert c.greeting() == "220 testline ready"
        assert c.cmd("PING") == "250 PONG"
    rc, elapsed = d.stop()
    assert rc == 0, tail(d.log())
    assert elapsed < 2.0
    for c in cs:
        assert c.reply_line() == "421 shutting down"
        assert c.expect_closed() == b""


def test_sigterm_lets_busy_session_finish(make_daemon, clients):
    port = free_port()
    d = make_daemon(listen=[listener(port)])
    idle = clients(port)
    busy = clients(port)
    idle.greeting()
    busy.greeting()
    busy.send("SLEEP 1500\r\n")
    time.sleep(0.2)  # the SLEEP is pending
    t0 = time.monotonic()
    rc, elapsed = d.stop()
    assert rc == 0, tail(d.log())
    assert elapsed < 5 + 2  # drain_timeout (default 5 s) + 2 s
    assert elapsed > 1.0  # it waited for the pending reply
    assert idle.reply_line() == "421 shutting down"
    assert busy.reply_line() == "250 slept 1500"
    assert busy.reply_line() == "421 shutting down"
    assert busy.expect_closed() == b""
    assert time.monotonic() - t0 < 8


def test_sigterm_drain_timeout(make_daemon, clients):
    port = free_port()
    d = make_daemon(listen=[listener(port)], top={"drain_timeout": 1})
    c = clients(port)
    c.greeting()
    c.send("SLEEP 60000\r\n")
    time.sleep(0.2)
    rc, elapsed = d.stop()
    assert rc == 0, tail(d.log())
    assert elapsed < 3.5
    rest = c.recv_all_until_close()
    assert b"250 slept" not in rest


def test_sigterm_refuses_new_connections(make_daemon, clients):
    port = free_port()
    d = make_daemon(listen=[listener(port)])
    c = clients(port)
    c.greeting()
    c.send("SLEEP 1000\r\n")
    time.sleep(0.2)
    d.signal(signal.SIGTERM)
    d.wait_not_listening([port], timeout=2)
    assert c.reply_line() == "250 slept 1000"
    rc, _ = d.stop()
    assert rc == 0


def test_second_instance_same_data_dir(make_daemon):
    a, b = free_port(), free_port()
    first = make_daemon(listen=[listener(a)], name="first")
    second = make_daemon(listen=[listener(b)], name="second", start=False,
                         data_dir=first.data_dir)
    r = subprocess.run(
        [sbin("mailgated"), "-c", second.conf, "--foreground"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, timeout=10, env=daemon_env(),
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert re.search(r"(?i)another instance", out), out
    assert re.search(r"\b%d\b" % first.pid, out), out
    assert not sanitizer_lines(out), out
    # the first one is untouched
    assert first.alive()
    assert b not in listening_ports()
    with open(os.path.join(first.data_dir, "mailgated.pid")) as f:
        assert f.read().split()[0] == str(first.pid)
