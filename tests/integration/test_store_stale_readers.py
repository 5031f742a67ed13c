"""Stale LMDB reader slots (issue 3, reliability catalog item 7): a process
killed while it holds a read transaction (a mailgatectl, a backup) leaves
its slot in lock.mdb. While the daemon runs on, that slot pins every page
freed after its snapshot, so the store would grow for ever. (When the last
process closes the store LMDB resets the table by itself, so only the
running daemon can notice.) The daemon's writer clears such slots before
its next commit.

The crashed reader is real: a child process opens the store with LMDB
itself (the system liblmdb through ctypes), begins a read transaction and
is killed with SIGKILL while holding it.
"""

import ctypes
import os
import subprocess
import sys
import time

from conftest import mailbox_create, mg_dump
from smtp_helpers import addr, sample_message, session

MDB_RDONLY = 0x20000

READER = r"""
import ctypes, os, signal, sys
lmdb = ctypes.CDLL("liblmdb.so.0")
env = ctypes.c_void_p()
assert lmdb.mdb_env_create(ctypes.byref(env)) == 0
lmdb.mdb_env_set_maxdbs(env, 64)
rc = lmdb.mdb_env_open(env, sys.argv[1].encode(), %d, 0o600)
assert rc == 0, rc
txn = ctypes.c_void_p()
assert lmdb.mdb_txn_begin(env, None, %d, ctypes.byref(txn)) == 0
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
""" % (MDB_RDONLY, MDB_RDONLY)


def _readers(store_dir):
    """The reader table as mdb_reader_list prints it (pid, thread, txnid),
    without touching it."""
    lmdb = ctypes.CDLL("liblmdb.so.0")
    env = ctypes.c_void_p()
    assert lmdb.mdb_env_create(ctypes.byref(env)) == 0
    lmdb.mdb_env_set_maxdbs(env, 64)
    assert lmdb.mdb_env_open(env, store_dir.encode(), MDB_RDONLY, 0o600) == 0
    lines = []
    MSG = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

    def collect(text, ctx):
        lines.append(text.decode())
        return 0

    cb = MSG(collect)
    lmdb.mdb_reader_list(env, cb, None)
    lmdb.mdb_env_close(env)
    return "".join(lines)


def _deliver(d, box, certs, marker):
    c = session(d.smtp_port, certs)
    c.expect("MAIL FROM:<alice@sender.test>", 250)
    c.expect("RCPT TO:<%s>" % addr(box), 250)
    c.data(sample_message(marker))
    c.expect("QUIT", 221)


def test_slot_of_a_killed_reader_is_cleared_while_running(make_smtp, certs):
    d = make_smtp()
    box = mailbox_create(d)
    _deliver(d, box, certs, "before-the-crash")
    store_dir = os.path.join(d.data_dir, "store")

    r = subprocess.run([sys.executable, "-c", READER, store_dir],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "holding", r.stderr
    assert r.returncode == -9
    # the dead process's slot is there beside the daemon's
    table = _readers(store_dir)
    pids = [l.split()[0] for l in table.splitlines()[1:] if l.strip()]
    dead = [p for p in pids if not os.path.exists("/proc/" + p)]
    assert len(dead) == 1, "no stale reader slot:\n" + table

    log0 = len(d.log())
    time.sleep(1.1)  # the writer looks at most once a second
    _deliver(d, box, certs, "after-the-crash")
    d.wait_log(r"store: cleared 1 stale reader slot", start=log0)
    assert dead[0] not in _readers(store_dir).split()
    assert len(mg_dump(d, box)) == 2
