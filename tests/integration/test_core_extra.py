"""Core behaviour beyond the line protocol: IPv6 listeners, certificate
reload for new connections, privilege drop, mailgatectl JSON, back-pressure
on slow readers."""

import hashlib
import json
import os
import pwd
import signal
import socket
import ssl
import subprocess
import threading
import time

from conftest import Client, free_port, listener, tls_client_ctx


def _make_cert(directory, cn):
    cert = os.path.join(directory, cn + "-cert.pem")
    key = os.path.join(directory, cn + "-key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec",
         "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=" + cn,
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=30)
    return cert, key


def _free_port6():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind(("::1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_ipv6_listener(make_daemon):
    port = _free_port6()
    make_daemon(listen=[{"address": "::1", "port": port, "tls": "none"}])
    s = socket.create_connection(("::1", port), timeout=5)
    c = Client(port, sock=s)
    assert c.greeting() == "220 testline ready"
    assert c.info()["addr"] == "::1"


def test_certificate_reload_for_new_connections(make_daemon, certs, tmp_path):
    port = free_port()
    d = make_daemon(listen=[listener(port, tls="implicit")])
    # a TLS session opened before the reload
    before = Client(port, ssl_context=tls_client_ctx(certs))
    assert before.greeting() == "220 testline ready (tls)"
    old_der = before.sock.getpeercert(binary_form=True)

    cert, key = _make_cert(str(tmp_path), "renewed")
    data = d.data_dir
    os.replace(cert, os.path.join(data, "cert.pem"))
    os.replace(key, os.path.join(data, "key.pem"))
    log0 = len(d.log())
    d.signal(signal.SIGHUP)
    d.wait_log(r"new certificate for new connections \(reload\): "
               r"subject CN=renewed", start=log0)

    ctx = ssl.create_default_context(cafile=os.path.join(data, "cert.pem"))
    after = Client(port, ssl_context=ctx)
    assert after.greeting() == "220 testline ready (tls)"
    new_der = after.sock.getpeercert(binary_form=True)
    assert hashlib.sha256(new_der).digest() != hashlib.sha256(old_der).digest()
    # the open session keeps its connection and its certificate
    assert before.cmd("PING") == "250 PONG"


def test_broken_certificate_on_reload_keeps_the_old_one(make_daemon, certs):
    port = free_port()
    d = make_daemon(listen=[listener(port, tls="implicit")])
    with open(os.path.join(d.data_dir, "key.pem"), "w") as f:
        f.write("not a key\n")
    log0 = len(d.log())
    d.signal(signal.SIGHUP)
    d.wait_log(r"reload failed, the running configuration stays: .*key\.pem",
               start=log0)
    c = Client(port, ssl_context=tls_client_ctx(certs))
    assert c.greeting() == "220 testline ready (tls)"


def test_privilege_drop(make_daemon):
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    d = make_daemon(listen=[listener(port)], top={"user": "nobody"})
    with Client(port) as c:
        assert c.greeting() == "220 testline ready"
    with open("/proc/%d/status" % d.pid) as f:
        ids = {line.split(":")[0]: line.split()[1:]
               for line in f if line.startswith(("Uid:", "Gid:"))}
    assert ids["Uid"] == [str(nobody.pw_uid)] * 4
    assert ids["Gid"] == [str(nobody.pw_gid)] * 4
    assert os.stat(d.data_dir).st_uid == nobody.pw_uid


def test_mailgatectl_status_json(make_daemon):
    d = make_daemon(listen=[listener(free_port())])
    r = d.ctl("--json", "status")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["running"] is True
    assert st["pid"] == d.pid
    d.stop()
    r = d.ctl("--json", "status")
    assert r.returncode == 3
    assert json.loads(r.stdout)["running"] is False


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def test_slow_reader_back_pressure(make_daemon):
    """A client that sends commands but never reads the replies: the
    daemon's write queue reaches its high-water mark, the module stops
    taking commands, the core stops reading, and memory stays flat; other
    clients are served meanwhile, and the slow one resumes when it reads."""
    port = free_port()
    d = make_daemon(listen=[listener(port)])
    slow = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert slow.recv(100).startswith(b"220")
    rss0 = _rss_kb(d.pid)
    line = b"ECHO " + b"x" * 900 + b"\r\n"
    block = line * 64
    slow.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        try:
            # go on where a partial send stopped: the stream stays whole
            sent += slow.send(block[sent % len(block):])
        except BlockingIOError:
            time.sleep(0.01)
    # without back-pressure the daemon would have queued every reply
    assert sent < 40 * 1024 * 1024, sent
    grown = _rss_kb(d.pid) - rss0
    assert grown < 32 * 1024, "RSS grew by %d kB" % grown
    with Client(port) as c:
        assert c.greeting() == "220 testline ready"
        assert c.cmd("PING") == "250 PONG"
    # reading resumes the slow session: every command gets its reply
    slow.setblocking(True)
    slow.settimeout(10)
    got = []

    def reader():
        data = b""
        while not data.endswith(b"250 PONG\r\n"):
            chunk = slow.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        got.append(data)

    t = threading.Thread(target=reader)
    t.start()
    rest = sent % len(line)
    if rest:
        slow.sendall(line[rest:])  # finish the line cut by the last send
    slow.sendall(b"PING\r\n")
    t.join(12)
    assert got and got[0].endswith(b"250 PONG\r\n"), "no PONG"
    assert got[0].count(b"\r\n250 ") >= (sent + len(line) - 1) // len(line)
    slow.close()


def test_session_time_limit(make_daemon, clients):
    """The total session limit ends a session that is never idle."""
    port = free_port()
    make_daemon(listen=[listener(port)],
                settings={"idle_timeout": 5000, "session_timeout": 1500})
    c = clients(port)
    t0 = time.monotonic()
    assert c.greeting() == "220 testline ready"
    closed = False
    while time.monotonic() - t0 < 4.0:
        try:
            c.send("NOOP\r\n")
            line = c.reply_line()
        except Exception:
            closed = True
            break
        if line.startswith("421"):
            closed = True
            break
        assert line == "250 ok"
        time.sleep(0.2)
    assert closed
    assert 1.2 < time.monotonic() - t0 < 3.0


def test_tls_handshake_deadline(make_daemon, certs):
    """A client that connects to an implicit-TLS port and sends nothing is
    closed after handshake_timeout (slowloris on the handshake)."""
    port = free_port()
    make_daemon(listen=[listener(port, tls="implicit")],
                top={"handshake_timeout": 1})
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.monotonic()
    assert s.recv(1) == b""
    assert 0.8 < time.monotonic() - t0 < 3.0
    # a real client still gets through
    c = Client(port, ssl_context=tls_client_ctx(certs))
    assert c.greeting() == "220 testline ready (tls)"


def test_out_of_file_descriptors_recovers(make_daemon):
    """EMFILE on accept pauses accepting instead of spinning, and the
    daemon accepts again once descriptors are free."""
    port = free_port()
    d = make_daemon(listen=[listener(port)],
                    top={"max_connections_per_ip": 1000})
    subprocess.run(["prlimit", "--pid", str(d.pid), "--nofile=48:48"],
                   check=True, timeout=10)
    socks = []
    try:
        for _ in range(80):
            socks.append(socket.create_connection(("127.0.0.1", port),
                                                  timeout=5))
        d.wait_log(r"accept: Too many open files; pausing new connections")
        assert d.alive()
    finally:
        for s in socks:
            s.close()
    # the backlog drains as descriptors come free: a new client is served
    deadline = time.monotonic() + 8
    while True:
        try:
            with Client(port, timeout=2) as c:
                if c.greeting() == "220 testline ready":
                    break
        except (OSError, AssertionError):
            pass
        assert time.monotonic() < deadline, "no greeting after EMFILE"
        time.sleep(0.2)
