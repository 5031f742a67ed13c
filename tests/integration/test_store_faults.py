"""Store faults from below: fsync failing with EIO (a dying disk).

The shim tests/tools/failsync.so (LD_PRELOAD) makes fsync, fdatasync and
msync fail while a flag file exists. A commit whose fsync failed must be
reported as a temporary failure, never acknowledged; the store recovers
(the environment is reopened) and later messages are stored and intact.
"""

import os
import subprocess

from conftest import daemon_env, shim_so
from test_store_crash import init, run, tool


def test_fsync_eio_is_a_temporary_failure_then_recovers(tmp_path):
    crashtest = tool("mg-crashtest")
    data = str(tmp_path / "data")
    mailbox, password = init(crashtest, data)
    flag = str(tmp_path / "fail-now")
    open(flag, "w").close()
    env = daemon_env()
    env["LD_PRELOAD"] = shim_so("failsync")
    env["MG_FAILSYNC_FLAG"] = flag
    # libasan must come first unless told not to check (sanitized builds)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    r = subprocess.run([crashtest, data, "store", "marker", "a@example.org"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=60, env=env)
    # nothing acknowledged while the disk fails, and the error says why
    assert r.returncode != 0, r.stdout + r.stderr
    assert "ACK " not in r.stdout
    assert "I/O error" in r.stderr or "Input/output error" in r.stderr, r.stderr

    # the disk is back: nothing unacknowledged is visible, nothing is
    # corrupt, and new messages are stored and decrypt
    os.unlink(flag)
    empty = str(tmp_path / "no-acks")
    open(empty, "w").close()
    out = run([crashtest, data, "verify", empty], timeout=60).stdout
    assert "ok" in out and "0 visible" in out, out
    r = run([crashtest, data, "store", "marker", "a@example.org"], timeout=60)
    assert r.stdout.count("ACK ") == 3
    dump = tool("mg-dump")
    pw = str(tmp_path / "pw")
    with open(pw, "w") as f:
        f.write(password + "\n")
    out = run([dump, data, mailbox, "--password-file", pw], timeout=60).stdout
    assert out.count("id=") == 3, out
