"""store.drop_written_pages: once a commit is durable, the page-cache pages
of the message chunks it wrote are dropped (POSIX_FADV_DONTNEED), and
nothing else is.

Messages of 1 MiB are delivered over SMTP and the daemon is stopped (its
last drop runs before it exits); then mincore() over a mapping of the
store's file says which of its pages are in the page cache (mapping faults
nothing in). The pages are classified by their LMDB page headers, read
after that snapshot (reading caches them): with the setting on (the
default) the pages of whole chunks (overflow runs of 16 pages) leave the
cache, but for those that share a large folio with a page that stays
(the kernel drops whole folios only); every branch, leaf and meta page
stays, and so do the messages' last, partial chunks (small messages stay
cached for the archiver); the cached part of the file is well under the
bytes delivered. With the setting off the chunks' pages stay cached. Either way the messages read back
byte-identical over POP3 after a restart (from the disk when dropped).
"""

import base64
import ctypes
import ctypes.util
import mmap
import os
import struct

import pytest

from pop3_helpers import deliver, login, mailbox_create, make_pop3, strip_trace

assert make_pop3  # a fixture, used by name

MESSAGES = 6
BODY = 1 << 20

# LMDB's page flags and header (mdb.c: MDB_page): pgno (8 bytes), pad (2),
# flags (2), then lower/upper (2 + 2) or, for overflow, the page count (4)
P_BRANCH, P_LEAF, P_OVERFLOW, P_META = 0x01, 0x02, 0x04, 0x08
LMDB_PAGE = 4096
CHUNK_PAGES = 16  # a whole chunk: 64 KiB - 33 bytes of text, MAC, header

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                         ctypes.POINTER(ctypes.c_ubyte)]


def resident_pages(path):
    """One bool per 4 KiB page of the file: in the page cache."""
    assert mmap.PAGESIZE == LMDB_PAGE, "the test assumes 4 KiB pages"
    size = os.path.getsize(path)
    n = (size + LMDB_PAGE - 1) // LMDB_PAGE
    vec = (ctypes.c_ubyte * n)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), "mmap failed"
        try:
            rc = libc.mincore(addr, size, vec)
            assert rc == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return [bool(b & 1) for b in vec]


def page_kinds(path, npages):
    """Per page: "meta", "tree" (branch or leaf), "chunk" (an overflow run
    of 16 pages: a whole chunk), "part" (a shorter overflow run: the last
    chunk of a message, or its envelope) or None (unused, free). Walks
    overflow runs whole: only their first page has a header."""
    kinds = [None] * npages
    with open(path, "rb") as f:
        data = f.read()
    p = 0
    while p < npages:
        flags, count = struct.unpack_from("<HI", data, p * LMDB_PAGE + 10)
        if p < 2 or flags & P_META:
            kinds[p] = "meta"
        elif flags & (P_BRANCH | P_LEAF):
            kinds[p] = "tree"
        elif flags & P_OVERFLOW and 1 <= count <= npages - p:
            kind = "chunk" if count == CHUNK_PAGES else "part"
            for q in range(p, p + count):
                kinds[q] = kind
            p += count
            continue
        p += 1
    return kinds


def big_message(i):
    """About 1 MiB: headers and base64-like lines of random text."""
    head = (b"From: Alice <alice@sender.test>\r\n"
            b"To: Bob <bob@remote.test>\r\n"
            b"Subject: page drop %d\r\n"
            b"Message-ID: <%s@sender.test>\r\n\r\n" % (i, os.urandom(8).hex().encode()))
    line = 76
    raw = os.urandom(BODY * 3 // 4)
    text = base64.b64encode(raw)
    body = b"".join(text[j:j + line] + b"\r\n" for j in range(0, len(text), line))
    return head + body


def deliver_and_snapshot(make_pop3, certs, store):
    d = make_pop3(top={"store": store} if store is not None else None)
    mb = mailbox_create(d)
    msgs = [big_message(i) for i in range(MESSAGES)]
    deliver(d, mb, msgs, certs)
    rc, _ = d.stop()  # the writer finishes its last batch, drop included
    assert rc == 0
    path = os.path.join(d.data_dir, "store", "data.mdb")
    resident = resident_pages(path)
    kinds = page_kinds(path, len(resident))
    count = {}
    for k, r in zip(kinds, resident):
        c = count.setdefault(k, [0, 0])
        c[0] += 1
        c[1] += r
    return d, mb, msgs, count, sum(resident) * LMDB_PAGE


def read_back(d, mb, msgs, certs):
    d.restart()
    p = login(d, mb, certs)
    count, _ = p.stat()
    got = [strip_trace(p.retr(i)[1]) for i in range(1, count + 1)]
    p.quit()
    assert got == msgs


@pytest.mark.parametrize("store", [None, {"drop_written_pages": True}],
                         ids=["default", "on"])
def test_written_chunks_leave_the_cache(make_pop3, certs, store):
    d, mb, msgs, count, cached = deliver_and_snapshot(make_pop3, certs, store)
    delivered = sum(len(m) for m in msgs)
    chunks, chunks_cached = count.get("chunk", [0, 0])
    # a message's whole chunks hold nearly all of it
    assert chunks * LMDB_PAGE >= delivered * 9 // 10, count
    # the kernel drops whole folios only: chunk pages that share a large
    # folio with a page that stays stay too (about 10 % here)
    assert chunks_cached <= chunks // 4, count
    # the tree and the meta pages stay: every lookup needs them
    for kind in ("meta", "tree", "part"):
        total, res = count[kind]
        assert res == total, (kind, count)
    assert cached < delivered // 4, (cached, delivered, count)
    read_back(d, mb, msgs, certs)


def test_off_keeps_written_chunks_cached(make_pop3, certs):
    d, mb, msgs, count, cached = deliver_and_snapshot(
        make_pop3, certs, {"drop_written_pages": False})
    delivered = sum(len(m) for m in msgs)
    chunks, chunks_cached = count.get("chunk", [0, 0])
    assert chunks * LMDB_PAGE >= delivered * 9 // 10, count
    assert chunks_cached >= chunks * 9 // 10, count
    assert cached >= delivered * 9 // 10, (cached, delivered, count)
    read_back(d, mb, msgs, certs)

