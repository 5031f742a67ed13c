"""Acknowledgement order seen from the kernel (reliability catalog item 3).

strace follows the running daemon (every thread) while a client delivers a
message over SMTP and while an archiver deletes over POP3. The trace must
show, after the client's last input and before the success reply leaves:
an fdatasync of the LMDB data file that returned 0, then the write of the
meta page that makes the commit visible (LMDB writes it through a second
descriptor opened O_DSYNC). A reply sent before the data is on disk would
appear before those lines and fail the test.
"""

import os
import re
import signal
import subprocess
import time

from conftest import free_port, listener, mailbox_create, mg_dump
from pop3_helpers import make_pop3, raw  # noqa: F401 (fixture)
from smtp_helpers import addr, connect, sample_message

SENDER = "alice@sender.test"
TRACED = "read,recvfrom,write,writev,sendto,sendmsg,pwrite64,pwritev,fdatasync,fsync"

# "1234 syscall(args) = ret", "1234 syscall(args <unfinished ...>",
# "1234 <... syscall resumed>...) = ret"
LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$")


class Strace:
    """strace -f on a running process; the parsed events after stop()."""

    def __init__(self, pid, path):
        self.path = path
        self.proc = subprocess.Popen(
            ["strace", "-f", "-y", "-qq", "-s", "4096", "-e",
             "trace=" + TRACED, "-o", path, "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # every thread of the process is attached once the task list
        # shows up as traced
        deadline = time.monotonic() + 10
        tasks = os.listdir("/proc/%d/task" % pid)
        while time.monotonic() < deadline:
            if all(_tracer(pid, t) != 0 for t in tasks):
                return
            time.sleep(0.05)
        raise AssertionError("strace did not attach to %s" % tasks)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        events = []
        with open(self.path, encoding="latin-1") as f:
            for raw_line in f:
                m = LINE.match(raw_line.rstrip("\n"))
                if m is None:
                    continue
                tid, resumed, name, rest = m.groups()
                events.append({"tid": int(tid), "name": resumed or name,
                               "resumed": resumed is not None,
                               "unfinished": rest.endswith("<unfinished ...>"),
                               "text": rest})
        return events


def _tracer(pid, tid):
    with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def _esc(data):
    """A string as strace prints it (CR and LF escaped as \\r, \\n)."""
    return data.decode().replace("\r", "\\r").replace("\n", "\\n")


def _ret_ok(ev):
    return not ev["unfinished"] and re.search(r"\)\s+= 0$", ev["text"])


def _ends_with_commit(events, start, stop):
    """Between events[start] and events[stop]: an fdatasync of data.mdb
    that returned 0, and after it a pwrite64 to data.mdb (the meta
    page). Returns the indices or fails."""
    sync = None
    for i in range(start, stop):
        ev = events[i]
        if ev["name"] in ("fdatasync", "fsync") and _ret_ok(ev):
            # the resumed line has no arguments: find its start line
            text = ev["text"] if not ev["resumed"] else _started(events, i)
            if "data.mdb" in text:
                sync = i
    assert sync is not None, "no successful fdatasync of data.mdb before the reply"
    meta = [i for i in range(sync + 1, stop)
            if events[i]["name"] == "pwrite64" and not events[i]["resumed"]
            and "data.mdb" in events[i]["text"]]
    assert meta, "no meta page write after the fdatasync, before the reply"
    return sync, meta[0]


def _started(events, i):
    """The text of the unfinished start line of resumed event i."""
    tid, name = events[i]["tid"], events[i]["name"]
    for j in range(i - 1, -1, -1):
        ev = events[j]
        if ev["tid"] == tid and ev["name"] == name and ev["unfinished"]:
            return ev["text"]
    return ""


def _first(events, start, names, needle):
    for i in range(start, len(events)):
        ev = events[i]
        if ev["name"] in names and needle in ev["text"]:
            return i
    raise AssertionError("no %s with %s in the trace" % (names, needle))


READS = ("read", "recvfrom")
WRITES = ("write", "writev", "sendto", "sendmsg")


def test_smtp_250_after_the_commit_is_on_disk(make_smtp, tmp_path):
    port = free_port()
    d = make_smtp(listen=[listener(port, "none")])
    box = mailbox_create(d)
    message = sample_message("ack-order")
    c = connect(port)
    c.ehlo()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(box), 250)
    c.expect("DATA", 354)
    tracer = Strace(d.pid, str(tmp_path / "smtp.strace"))
    try:
        c.send(message + b".\r\n")
        code, lines = c.reply()
    finally:
        events = tracer.stop()
    assert code == 250, (code, lines)
    assert len({ev["tid"] for ev in events}) >= 2, "only one thread traced"

    dot = _first(events, 0, READS, _esc(b"\r\n.\r\n"))
    reply = _first(events, dot, WRITES, _esc(b"250 "))
    sync, meta = _ends_with_commit(events, dot, reply)
    assert dot < sync < meta < reply
    assert len(mg_dump(d, box)) == 1


def test_pop3_quit_ok_after_the_deletion_is_on_disk(make_pop3, certs, tmp_path):
    from pop3_helpers import deliver

    d = make_pop3()
    box = mailbox_create(d)
    deliver(d, box, [sample_message("one"), sample_message("two")], certs)
    c = raw(d.pop3_plain_port)
    assert c.cmd("USER %s" % box["id"]).startswith("+OK")
    assert c.cmd("PASS %s" % box["password"]).startswith("+OK")
    assert c.cmd("DELE 1").startswith("+OK")
    tracer = Strace(d.pid, str(tmp_path / "pop3.strace"))
    try:
        reply = c.cmd("QUIT")
    finally:
        events = tracer.stop()
    assert reply.startswith("+OK"), reply

    quit_read = _first(events, 0, READS, _esc(b"QUIT\r\n"))
    ok = _first(events, quit_read, WRITES, _esc(b"+OK"))
    sync, meta = _ends_with_commit(events, quit_read, ok)
    assert quit_read < sync < meta < ok
    assert len(mg_dump(d, box)) == 1
