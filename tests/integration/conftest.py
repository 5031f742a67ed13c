"""Fixtures and helpers for the mailgated integration tests.

Run with Debian's pytest (tests/run-all.sh does this):

    MG_SBINDIR=<prefix>/sbin MG_PREFIX=<prefix> [MG_SANITIZE=1] \
        /usr/bin/python3 -m pytest -q tests/integration

MG_SBINDIR holds mailgated and mailgatectl; MG_PREFIX is the installed
prefix whose include/ and lib/pkgconfig/mailgate.pc build the test-only
module tests/modules/testline.c out of tree (the way a third party would).
"""

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES_SRC = os.path.normpath(os.path.join(HERE, "..", "modules"))

# Every test is bounded; this is the safety net for one that hangs anyway.
TEST_WATCHDOG_S = 15
# Socket operations never wait longer than this.
SOCK_TIMEOUT_S = 5.0
# A daemon must be listening on all its ports within this.
START_TIMEOUT_S = 10.0

SANITIZER_PATTERNS = ("AddressSanitizer", "runtime error:", "LeakSanitizer")


def env_required(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            "%s is not set: run the suite through tests/run-all.sh or set "
            "MG_SBINDIR and MG_PREFIX" % name,
            pytrace=False,
        )
    return value


def sanitized():
    return os.environ.get("MG_SANITIZE", "") not in ("", "0", "no")


def sbin(program):
    path = os.path.join(env_required("MG_SBINDIR"), program)
    if not os.access(path, os.X_OK):
        pytest.fail("%s is missing or not executable" % path, pytrace=False)
    return path


def daemon_env():
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


def sanitizer_lines(text):
    return [l for l in text.splitlines() if any(p in l for p in SANITIZER_PATTERNS)]


def tail(text, n=60):
    return "\n".join(text.splitlines()[-n:])


# ---------------------------------------------------------------- watchdog


class WatchdogTimeout(Exception):
    pass


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "watchdog(seconds): a longer watchdog for one test")


@pytest.fixture(autouse=True)
def _watchdog(request):
    """Abort a test (and its fixtures) that runs away. A test that needs
    longer says so with @pytest.mark.watchdog(seconds) and why."""
    mark = request.node.get_closest_marker("watchdog")
    limit = mark.args[0] if mark else TEST_WATCHDOG_S

    def fire(signum, frame):
        raise WatchdogTimeout("test exceeded %d s" % limit)

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------ build, certs


def build_test_module(tmp_path_factory, name):
    """Build tests/modules/<name>.c against the installed headers (the
    way a third party builds a module); the path of <name>.so."""
    prefix = env_required("MG_PREFIX")
    out = str(tmp_path_factory.mktemp(name))
    so = os.path.join(out, name + ".so")
    cmd = [
        "make",
        "-s",
        "-f",
        os.path.join(MODULES_SRC, "Makefile.ext"),
        "PKG_CONFIG_PATH=" + os.path.join(prefix, "lib", "pkgconfig"),
        "OUT=" + out,
    ]
    if sanitized():
        cmd.append("EXTRA_CFLAGS=-fsanitize=address,undefined -fno-omit-frame-pointer")
    cmd.append(so)
    r = subprocess.run(
        cmd,
        cwd=MODULES_SRC,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    if r.returncode != 0 or not os.path.exists(so):
        pytest.fail(
            "building %s.so failed (%s):\n%s" % (name, " ".join(cmd), r.stdout),
            pytrace=False,
        )
    return so


@pytest.fixture(scope="session")
def testline_so(tmp_path_factory):
    """Build tests/modules/testline.c against the installed headers."""
    return build_test_module(tmp_path_factory, "testline")


@pytest.fixture(scope="session")
def hooktest_so(tmp_path_factory):
    """Build tests/modules/hooktest.c (smtp hook handlers) likewise."""
    return build_test_module(tmp_path_factory, "hooktest")


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """ECDSA P-256 self-signed certificate for localhost and 127.0.0.1."""
    d = str(tmp_path_factory.mktemp("cert"))
    cert = os.path.join(d, "cert.pem")
    key = os.path.join(d, "key.pem")
    r = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        pytest.fail("openssl req failed:\n" + r.stdout, pytrace=False)
    os.chmod(key, 0o600)
    return {"cert": cert, "key": key}


# ------------------------------------------------------------------ ports


_ports_given = set()


def free_port():
    """A port nobody listens on right now (bind 127.0.0.1:0), and never
    one this run handed out before: the kernel may give a just-closed port
    again, and a test that asks for three ports must get three."""
    for _ in range(1000):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise AssertionError("no fresh loopback port")


def listening_ports():
    """Ports in LISTEN state, from the kernel's table: no connection is
    spent on probing (connection limits and PROXY listeners stay clean)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            if len(parts) > 3 and parts[3] == "0A":
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))


# ------------------------------------------------------------ config text


def cfg_value(v):
    """A Python value as libconfig text (use RawCfg for literal text)."""
    if isinstance(v, RawCfg):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[ " + ", ".join(cfg_value(x) for x in v) + " ]"
    if isinstance(v, dict):
        return "{ " + " ".join("%s = %s;" % (k, cfg_value(x))
                               for k, x in v.items()) + " }"
    raise TypeError("no libconfig form for %r" % (v,))


class RawCfg:
    """Literal libconfig text for a value (e.g. an out-of-range number)."""

    def __init__(self, text):
        self.text = text


def listener(port, tls="none", **extra):
    d = {"address": "127.0.0.1", "port": port, "tls": tls}
    d.update(extra)
    return d


def line_of(text, needle):
    """1-based line number of the first line containing needle."""
    for i, l in enumerate(text.splitlines(), 1):
        if needle in l:
            return i
    raise AssertionError("%r not in config text" % needle)


# ------------------------------------------------------------------ daemon


class Daemon:
    """One mailgated process with its own temp dir, config and data dir."""

    def __init__(self, workdir, testline_so, certs, data_dir=None):
        self.workdir = workdir
        self.so = testline_so
        self.certs = certs
        self.data_dir = data_dir or os.path.join(workdir, "data")
        self.module_dir = os.path.join(workdir, "modules")
        self.conf = os.path.join(workdir, "mailgate.conf")
        self.logfile = os.path.join(workdir, "mailgated.log")
        self.proc = None
        self.ports = []
        self.expect_exit = 0
        self.stopped = None  # (exit code, elapsed) once stopped
        self.extra_env = {}  # added to the daemon's environment
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.module_dir, exist_ok=True)
        for name in ("cert", "key"):
            dst = os.path.join(self.data_dir, name + ".pem")
            if not os.path.exists(dst):
                shutil.copyfile(certs[name], dst)
        os.chmod(os.path.join(self.data_dir, "key.pem"), 0o600)

    # ---- configuration

    def config_text(self, listen=None, settings=None, top=None,
                    extra_modules=None, module_extra_lines=None,
                    top_extra_lines=None):
        """The config file: top-level settings, then one testline module
        with `settings` and a `listen` list (one entry per line, so an
        error in an entry has a line of its own)."""
        listen = listen if listen is not None else []
        out = [
            "# mailgated integration test configuration",
            "data_dir = %s;" % cfg_value(self.data_dir),
            'log_level = "debug";',
            "module_dir = %s;" % cfg_value(self.module_dir),
            'tls = { cert = "cert.pem"; key = "key.pem"; };',
        ]
        for k, v in (top or {}).items():
            out.append("%s = %s;" % (k, cfg_value(v)))
        out.extend(top_extra_lines or [])
        out.append("modules = (")
        out.append("  {")
        out.append('    name = "testline";')
        out.append("    path = %s;" % cfg_value(self.so))
        for k, v in (settings or {}).items():
            out.append("    %s = %s;" % (k, cfg_value(v)))
        out.extend("    " + l for l in (module_extra_lines or []))
        if listen:
            out.append("    listen = (")
            for i, entry in enumerate(listen):
                body = " ".join(
                    "%s = %s;" % (k, cfg_value(v)) for k, v in entry.items()
                )
                sep = "," if i + 1 < len(listen) else ""
                out.append("      { %s }%s" % (body, sep))
            out.append("    );")
        out.append("  }" + ("," if extra_modules else ""))
        for i, m in enumerate(extra_modules or []):
            sep = "," if i + 1 < len(extra_modules) else ""
            out.append("  " + m + sep)
        out.append(");")
        return "\n".join(out) + "\n"

    def write_config(self, text=None, **kw):
        if text is None:
            text = self.config_text(**kw)
            self.ports = [e["port"] for e in kw.get("listen") or []
                          if isinstance(e.get("port"), int)]
        with open(self.conf, "w") as f:
            f.write(text)
        return text

    # ---- process

    def start(self, wait=True, args=()):
        assert self.proc is None, "daemon already started"
        self.log_fd = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            [sbin("mailgated"), "-c", self.conf, "--foreground", *args],
            stdin=subprocess.DEVNULL,
            stdout=self.log_fd,
            stderr=self.log_fd,
            env=dict(daemon_env(), **self.extra_env),
        )
        self.t_start = time.monotonic()
        if wait:
            self.wait_listening(self.ports)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid

    def wait_listening(self, ports, timeout=START_TIMEOUT_S):
        def ready():
            if not self.alive():
                raise AssertionError(
                    "mailgated exited (%s) before listening; log:\n%s"
                    % (self.proc.poll(), tail(self.log()))
                )
            return set(ports) <= listening_ports()

        wait_for(ready, timeout, "ports %s to listen" % sorted(ports))

    def wait_not_listening(self, ports, timeout=5.0):
        wait_for(lambda: not (set(ports) & listening_ports()), timeout,
                 "ports %s to close" % sorted(ports))

    def signal(self, sig):
        assert self.alive(), "mailgated is not running:\n" + tail(self.log())
        self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        """SIGTERM; returns (exit code, seconds until it exited). Killed
        (code None) if it does not exit within timeout."""
        if self.stopped is not None:
            return self.stopped
        if self.proc is None:
            return None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        elapsed = time.monotonic() - t0
        self.log_fd.close()
        self.stopped = (rc, elapsed)
        return self.stopped

    def kill9(self):
        """SIGKILL: a crash, with no drain and no cleanup."""
        self.proc.kill()
        self.proc.wait()
        self.log_fd.close()

    def restart(self):
        """Start again on the same configuration and data directory after
        stop() or kill9()."""
        self.proc = None
        self.stopped = None
        self.start()

    def log(self):
        try:
            with open(self.logfile, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=5.0, start=0):
        """Wait until the log (from offset `start`) matches the regex."""
        rx = re.compile(pattern)
        found = []

        def seen():
            m = rx.search(self.log()[start:])
            if m:
                found.append(m)
            return bool(m)

        try:
            wait_for(seen, timeout, "log line /%s/" % pattern)
        except AssertionError:
            raise AssertionError(
                "no log line /%s/ within %.1f s; log:\n%s"
                % (pattern, timeout, tail(self.log()))
            )
        return found[0]

    def ctl(self, *args, timeout=10):
        return subprocess.run(
            [sbin("mailgatectl"), "-c", self.conf, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            env=daemon_env(),
        )


def check_clean_exit(d):
    """Teardown check: exit 0 (or as expected) and no sanitizer report."""
    if d.proc is None:
        return
    rc, elapsed = d.stop()
    text = d.log()
    bad = sanitizer_lines(text)
    if bad:
        pytest.fail("sanitizer report in the mailgated log:\n" + tail(text, 120),
                    pytrace=False)
    if rc != d.expect_exit:
        pytest.fail(
            "mailgated exited with %s (expected %s) after %.1f s; log:\n%s"
            % (rc, d.expect_exit, elapsed, tail(text)),
            pytrace=False,
        )


@pytest.fixture
def make_daemon(tmp_path, testline_so, certs):
    """Factory: make_daemon(listen=[...], settings={...}, top={...}) writes
    the config and starts mailgated; teardown stops it and checks it."""
    daemons = []

    def make(start=True, data_dir=None, name=None, **kw):
        wd = str(tmp_path / (name or "d%d" % len(daemons)))
        os.makedirs(wd, exist_ok=True)
        d = Daemon(wd, testline_so, certs, data_dir=data_dir)
        daemons.append(d)
        d.write_config(**kw)
        if start:
            d.start()
        return d

    yield make
    errors = []
    for d in daemons:
        try:
            check_clean_exit(d)
        except BaseException as e:  # collect; report all daemons
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def daemon_files(tmp_path, testline_so, certs):
    """A Daemon object that is not started (config checks)."""
    wd = str(tmp_path / "cfg")
    os.makedirs(wd, exist_ok=True)
    return Daemon(wd, testline_so, certs)


# ------------------------------------------------------------ line client


class Closed(Exception):
    """The server closed the connection."""


class Client:
    """A line client: send commands, read replies."""

    def __init__(self, port, host="127.0.0.1", timeout=SOCK_TIMEOUT_S,
                 ssl_context=None, server_hostname="localhost", sock=None):
        self.timeout = timeout
        self.sock = sock or socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        if ssl_context is not None:
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            chunk = b""
        except socket.timeout:
            raise AssertionError(
                "no data from the server within %.1f s (buffered %r)"
                % (self.timeout, self.buf)
            )
        if not chunk:
            raise Closed("connection closed (buffered %r)" % self.buf)
        self.buf += chunk

    def readline(self):
        while b"\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\n", 1)
        assert line.endswith(b"\r"), "reply line without CRLF: %r" % line
        return line[:-1].decode("utf-8", "replace")

    def reply(self):
        """One reply: (code, [text of each line]); multi-line replies are
        `250-...` lines up to `250 ...`."""
        lines = []
        while True:
            line = self.readline()
            assert re.match(r"^\d{3}[ -]", line) or re.match(r"^\d{3}$", line), \
                "malformed reply line %r" % line
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return int(line[:3]), lines

    def reply_line(self):
        """A single-line reply as its full text, e.g. "250 PONG"."""
        code, lines = self.reply()
        return "%d %s" % (code, lines[-1]) if lines[-1] else str(code)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply_line()

    def greeting(self):
        return self.reply_line()

    def info(self):
        """INFO as a dict: {"addr": "...", "tls": "...", ...}."""
        self.send("INFO\r\n")
        code, lines = self.reply()
        assert code == 250, (code, lines)
        out = {}
        for l in lines:
            k, _, v = l.partition(" ")
            out[k] = v
        return out

    def starttls(self, ctx, server_hostname="localhost"):
        assert self.cmd("STARTTLS") == "220 ready to start TLS"
        assert self.buf == b"", "data after the STARTTLS reply: %r" % self.buf
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def expect_closed(self, timeout=None):
        """Assert the server closes the connection without sending more;
        returns what was still buffered."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            while True:
                self._fill()
        except Closed:
            return self.buf
        finally:
            self.sock.settimeout(self.timeout)

    def recv_all_until_close(self):
        """Everything the server sends until it closes."""
        try:
            while True:
                self._fill()
        except Closed:
            pass
        data, self.buf = self.buf, b""
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def clients():
    """Clients opened by a test are closed at its end."""
    opened = []

    def connect(port, **kw):
        c = Client(port, **kw)
        opened.append(c)
        return c

    yield connect
    for c in opened:
        c.close()


# ------------------------------------------------------------------- TLS


def tls_client_ctx(certs, minv=None, maxv=None, alpn=None, legacy=False):
    """A verifying client context that trusts the test certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs["cert"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if legacy:
            # let the client offer old versions: the server must refuse
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        if minv is not None:
            ctx.minimum_version = minv
        if maxv is not None:
            ctx.maximum_version = maxv
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls11_ctx(certs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        v = ssl.TLSVersion.TLSv1_1
        return tls_client_ctx(certs, minv=v, maxv=v, legacy=True)


@pytest.fixture(scope="session")
def tls11_client_works(certs):
    """Self-check: this client can speak TLS 1.1 to a server that allows
    it, so a refused TLS 1.1 handshake is the daemon's doing."""
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(certs["cert"], certs["key"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        srv.set_ciphers("DEFAULT:@SECLEVEL=0")
        srv.minimum_version = ssl.TLSVersion.TLSv1_1
        srv.maximum_version = ssl.TLSVersion.TLSv1_1
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(SOCK_TIMEOUT_S)

    def serve():
        try:
            c, _ = ls.accept()
            c.settimeout(SOCK_TIMEOUT_S)
            t = srv.wrap_socket(c, server_side=True)
            t.sendall(b"ok")
            t.close()
        except Exception:
            pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        with socket.create_connection(ls.getsockname(), timeout=SOCK_TIMEOUT_S) as s:
            t = tls11_ctx(certs).wrap_socket(s, server_hostname="localhost")
            assert t.version() == "TLSv1.1"
            assert t.recv(2) == b"ok"
            t.close()
    finally:
        th.join(SOCK_TIMEOUT_S)
        ls.close()
    return True


# -------------------------------------------------------------- PROXY v2

PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2_header(src, sport, dst, dport):
    """A PROXY v2 PROXY command for TCP over IPv4."""
    body = socket.inet_aton(src) + socket.inet_aton(dst) + \
        sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return PROXY_V2_SIG + bytes([0x21, 0x11]) + len(body).to_bytes(2, "big") + body


def proxy_v2_local():
    """A PROXY v2 LOCAL command (health check: keep the real peer)."""
    return PROXY_V2_SIG + bytes([0x20, 0x00]) + (0).to_bytes(2, "big")


def fnv_work(n):
    """What `WORK n` computes in testline.c (FNV-1a over i & 0xff)."""
    h = 0xCBF29CE484222325
    for i in range(n):
        h ^= i & 0xFF
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


# ------------------------------------------------------------ smtp module

SMTP_DOMAIN = "example.test"


def build_tool(name):
    """A test-only tool from the build tree (MG_BUILD_DIR/tests/tools)."""
    build = env_required("MG_BUILD_DIR")
    path = os.path.join(build, "tests", "tools", name)
    if not os.access(path, os.X_OK):
        pytest.fail("%s is missing: build it with `make check` (or make %s)"
                    % (path, os.path.join("tests", "tools", name)),
                    pytrace=False)
    return path


def shim_so(name):
    """A test-only LD_PRELOAD shim from the build tree (failsync,
    powerlog): MG_BUILD_DIR/tests/tools/.libs/NAME.so."""
    so = os.path.join(env_required("MG_BUILD_DIR"), "tests", "tools", ".libs",
                      name + ".so")
    if not os.path.exists(so):
        pytest.fail("%s is missing: make check builds it" % so, pytrace=False)
    return so


def failsync_env(flag):
    """Environment for a daemon under tests/tools/failsync.so: fsync and
    fdatasync fail with EIO while the file `flag` exists. (The shim comes
    before the sanitizer runtime, which ASan must be told to accept.)"""
    return {
        "LD_PRELOAD": shim_so("failsync"),
        "MG_FAILSYNC_FLAG": flag,
        "ASAN_OPTIONS": daemon_env().get("ASAN_OPTIONS", "") +
        ":verify_asan_link_order=0",
    }


def smtp_so():
    """The installed smtp module: MG_PREFIX/lib/mailgate/smtp.so."""
    path = os.path.join(env_required("MG_PREFIX"), "lib", "mailgate", "smtp.so")
    if not os.path.exists(path):
        pytest.fail("%s is missing (make install)" % path, pytrace=False)
    return path


def smtp_module_text(listen, settings=None):
    """The smtp module's group for Daemon.config_text(extra_modules=...)."""
    parts = ['name = "smtp";', "path = %s;" % cfg_value(smtp_so())]
    for k, v in (settings or {}).items():
        parts.append("%s = %s;" % (k, cfg_value(v)))
    entries = ", ".join(
        "{ " + " ".join("%s = %s;" % (k, cfg_value(v)) for k, v in e.items()) + " }"
        for e in listen)
    parts.append("listen = ( %s );" % entries)
    return "{ " + " ".join(parts) + " }"


@pytest.fixture
def make_smtp(make_daemon):
    """Factory: a daemon with the smtp module and email_domain
    example.test. make_smtp(listen=[...], smtp={settings}, top={...}).
    Without `listen`: one STARTTLS and one implicit-TLS listener, as
    d.smtp_port and d.smtps_port. The testline module of the base config
    gets a free port of its own (never its default)."""

    def make(listen=None, smtp=None, top=None, start=True, modules=(), **kw):
        """`modules`: further module groups after the smtp module."""
        if listen is None:
            listen = [listener(free_port(), "starttls"),
                      listener(free_port(), "implicit")]
        t = {"email_domain": SMTP_DOMAIN}
        t.update(top or {})
        d = make_daemon(start=False, listen=[listener(free_port())], top=t,
                        extra_modules=[smtp_module_text(listen, smtp),
                                       *modules], **kw)
        d.smtp_listen = listen
        d.ports = d.ports + [e["port"] for e in listen]
        by_mode = {}
        for e in listen:
            by_mode.setdefault(e.get("tls", "none"), e["port"])
        d.smtp_port = by_mode.get("starttls", by_mode.get("none"))
        d.smtps_port = by_mode.get("implicit")
        if start:
            d.start()
        return d

    return make


def mailbox_create(d, name="Journal"):
    """mailgatectl --json mailbox create: the record, with "id",
    "address" and (shown once) "password"."""
    r = d.ctl("--json", "mailbox", "create", "--name", name)
    assert r.returncode == 0, "mailbox create: exit %d\n%s%s" % (
        r.returncode, r.stdout, r.stderr)
    m = json.loads(r.stdout)
    assert m["id"] and m["password"], m
    return m


def mailbox_status(d, mailbox_id, status):
    """mailgatectl mailbox edit ID --status active|suspended."""
    r = d.ctl("mailbox", "edit", mailbox_id, "--status", status)
    assert r.returncode == 0, "mailbox edit: exit %d\n%s%s" % (
        r.returncode, r.stdout, r.stderr)


MG_DUMP_LINE = re.compile(
    r"^id=(\d+) uidl=(\S+) received=(\d+) size=(\d+) source=(\S*) "
    r"sender=<(.*?)> rcpts=(.*)$")


MG_DUMP_KEY_LINE = re.compile(
    r"^id=(\d+) alg=(\d+) sender_key=(\S+) cipher=(aes256gcm|xchacha20poly1305)$")


def mg_dump_keys(d, mailbox):
    """Each message's encryption from mg-dump --keys (which also decrypts
    every message): a list of (id, alg, sender key hex or "-", cipher)."""
    r = subprocess.run(
        [build_tool("mg-dump"), d.data_dir, mailbox["id"], "--password",
         mailbox["password"], "--keys"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, timeout=60, env=daemon_env())
    assert not sanitizer_lines(r.stderr.decode(errors="replace")), r.stderr
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = []
    for line in r.stdout.decode().splitlines():
        m = MG_DUMP_KEY_LINE.match(line)
        assert m, "unexpected mg-dump line %r" % line
        out.append((int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)))
    return out


def mg_dump(d, mailbox, outdir=None):
    """The mailbox's messages read back from the store with the test tool
    mg-dump (works beside a running daemon): a list of dicts with id,
    size, source, sender, rcpts (list) and body (bytes, as stored)."""
    import tempfile

    own = outdir is None
    outdir = outdir or tempfile.mkdtemp(prefix="mg-dump-")
    try:
        r = subprocess.run(
            [build_tool("mg-dump"), d.data_dir, mailbox["id"], "--password",
             mailbox["password"], "--write", outdir],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, timeout=60, env=daemon_env())
        assert not sanitizer_lines(r.stderr.decode(errors="replace")), r.stderr
        assert r.returncode == 0, "mg-dump: exit %d\n%s" % (
            r.returncode, r.stderr.decode(errors="replace"))
        out = []
        for line in r.stdout.decode().splitlines():
            m = MG_DUMP_LINE.match(line)
            assert m, "unexpected mg-dump line %r" % line
            rcpts = [x.strip("<>") for x in m.group(7).split(",") if x]
            with open(os.path.join(outdir, m.group(1) + ".eml"), "rb") as f:
                body = f.read()
            assert len(body) == int(m.group(4))
            out.append({"id": int(m.group(1)), "uidl": m.group(2),
                        "size": int(m.group(4)), "source": m.group(5),
                        "sender": m.group(6), "rcpts": rcpts, "body": body})
        return out
    finally:
        if own:
            shutil.rmtree(outdir, ignore_errors=True)


def header_fields(data):
    """Yield (name, raw field with its CRLF) from the start of data up to
    the first line that does not begin a field."""
    pos = 0
    while True:
        j = data.find(b"\r\n", pos)
        if j < 0:
            return
        end = j + 2
        while data[end:end + 1] in (b" ", b"\t"):
            end = data.index(b"\r\n", end) + 2
        line = data[pos:end]
        name, colon, _ = line.partition(b":")
        if not colon or not name or b" " in name:
            return
        yield name.decode(), line
        pos = end


def split_trace(body):
    """The trace fields the gateway prepends, and the message as sent:
    ({"Return-Path": str, "Received": str (unfolded),
      "X-Mailgate-...": str, ...}, rest). Exactly one Return-Path (first)
    and one Received; X-Mailgate-* fields may sit before or after it."""
    trace = {}
    pos = 0
    for name, raw in header_fields(body):
        if pos == 0:
            assert name == "Return-Path", body[:300]
        elif name == "Received" and "Received" not in trace:
            pass
        elif not name.lower().startswith("x-mailgate-"):
            break
        text = raw[len(name) + 1:].decode("utf-8", "replace")
        trace[name] = re.sub(r"\r\n[ \t]+", " ", text).strip()
        pos += len(raw)
    assert "Received" in trace, body[:300]
    return trace, body[pos:]
