"""The store under SIGKILL, and what reaches the disk.

Drives the test-only tools tests/tools/mg-crashtest and mg-dump from the
build tree: MG_BUILD_DIR (tests/run-all.sh sets it to its BUILD_DIR).

- Durability: a writer with 4 threads is killed with SIGKILL at a random
  moment, many rounds over one data directory; after each, `verify` reopens
  the store and checks that every acknowledged message is present, visible
  and decrypts to its hash, that no pending data is left and that every
  visible message is intact.
- Confidentiality at rest: after storing messages with a unique marker and
  envelope address, no file under the data directory contains the marker,
  the address or the password (and mg-dump proves they were stored).
"""

import os
import random
import secrets
import signal
import subprocess
import time

import pytest

from conftest import daemon_env, sanitizer_lines, tail

# The conftest watchdog allows 15 s per test: the rounds are split into
# batches that each stay well inside it (about 60 s of rounds in all).
BATCHES = 6
ROUNDS_PER_BATCH = 5
BATCH_BUDGET_S = 9.0
MIN_ROUNDS = 3


def tool(name):
    build = os.environ.get("MG_BUILD_DIR")
    if not build:
        pytest.fail("MG_BUILD_DIR is not set (tests/run-all.sh sets it)")
    path = os.path.join(build, "tests", "tools", name)
    if not os.access(path, os.X_OK):
        pytest.fail(
            "%s is missing: build it with `make check` (or make %s)"
            % (path, os.path.join("tests", "tools", name)),
            pytrace=False,
        )
    return path


def run(args, timeout=10, check=True):
    r = subprocess.run(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env=daemon_env(),
    )
    san = sanitizer_lines(r.stderr)
    assert not san, "sanitizer report from %s:\n%s" % (args, tail(r.stderr))
    if check and r.returncode != 0:
        pytest.fail(
            "%s exited %d:\n%s\n%s"
            % (" ".join(args), r.returncode, tail(r.stdout), tail(r.stderr)),
            pytrace=False,
        )
    return r


def init(crashtest, datadir):
    out = run([crashtest, datadir, "init"]).stdout
    fields = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    return fields["MAILBOX"], fields["PASSWORD"]


@pytest.mark.parametrize("batch", range(BATCHES))
def test_sigkill_rounds(tmp_path, batch):
    crashtest = tool("mg-crashtest")
    datadir = str(tmp_path / "data")
    ackfile = str(tmp_path / "acks")
    init(crashtest, datadir)
    rng = random.Random()
    start = time.monotonic()
    rounds = 0
    while rounds < ROUNDS_PER_BATCH and (
        rounds < MIN_ROUNDS or time.monotonic() - start < BATCH_BUDGET_S
    ):
        with open(ackfile, "a") as acks:
            p = subprocess.Popen(
                [crashtest, datadir, "write", "4"],
                stdout=acks,
                stderr=subprocess.PIPE,
                env=daemon_env(),
            )
            time.sleep(rng.uniform(0.05, 0.5))
            p.send_signal(signal.SIGKILL)
            _, err = p.communicate(timeout=10)
        assert p.returncode == -signal.SIGKILL, err.decode(errors="replace")
        err = err.decode(errors="replace")
        assert not sanitizer_lines(err), tail(err)
        r = run([crashtest, datadir, "verify", ackfile])
        assert "ok" in r.stdout, r.stdout + r.stderr
        rounds += 1
    with open(ackfile) as f:
        acked = sum(1 for line in f if line.startswith("ACK "))
    # early kills may land before the first commit; over a batch some land
    assert acked > 0, "no message was acknowledged in %d rounds" % rounds


def test_nothing_readable_at_rest(tmp_path):
    crashtest = tool("mg-crashtest")
    dump = tool("mg-dump")
    datadir = str(tmp_path / "data")
    mailbox, password = init(crashtest, datadir)
    marker = "MGMARKER-" + secrets.token_hex(12)
    address = "secret-%s@example.org" % secrets.token_hex(6)
    r = run([crashtest, datadir, "store", marker, address])
    assert r.stdout.count("ACK ") == 3

    needles = [n.encode() for n in (marker, address, password)]
    # the password file lives outside the data directory
    pwfile = str(tmp_path / "password")
    with open(pwfile, "w") as f:
        f.write(password + "\n")
    found = []
    for root, _, files in os.walk(datadir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read()
            found += [(path, n) for n in needles if n in data]
    assert not found, "plaintext on disk: %r" % found

    # they were stored: mg-dump decrypts them
    out = str(tmp_path / "out")
    os.mkdir(out)
    r = run([dump, datadir, mailbox, "--password-file", pwfile, "--write", out])
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    for line in lines:
        assert ("sender=<%s>" % address) in line
        assert ("rcpts=<%s>" % address) in line
    bodies = os.listdir(out)
    assert len(bodies) == 3
    for name in bodies:
        with open(os.path.join(out, name), "rb") as f:
            assert marker.encode() in f.read()

    r = run([dump, datadir, mailbox, "--password", "not-" + password], check=False)
    assert r.returncode == 1
    assert "wrong password" in r.stderr
