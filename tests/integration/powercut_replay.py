"""Rebuild the data file a power cut would have left, from a powerlog.

tests/tools/powerlog.so (LD_PRELOAD) logs, in order, every write to
data.mdb, every fsync/fdatasync of it and every "ACK " line the program
printed. Starting from a copy of data.mdb taken before the program ran,
`image(cut, choose)` builds the file as the disk may hold it after a power
cut at position `cut` of the log (after the first `cut` records), as
dm-log-writes replay does for a block device, with more freedom:

- durable: a write logged before a sync of the file that began and then
  completed (returned 0) before the cut, or a write on an O_DSYNC
  descriptor (LMDB's meta page) that returned before the cut;
- not durable: any other write before the cut, and a write in flight at
  the cut (logged, not yet returned). The disk may hold it or not.

The unit is the 4 KiB page (LMDB's page size, the usual atomic unit of a
disk write): a page's writes before the cut give versions v0 (before the
log) .. vm; if vd is the newest version made by a durable write, the page
on disk may be any of vd .. vm (writeback wrote one of the page-cache
states, or none after vd). `choose(page, d, m)` picks one: "none" keeps
vd for every page (all non-durable writes lost), "all" keeps vm, a seeded
random one picks each page independently (torn multi-page writes, later
pages kept and earlier lost). Pages never written stay as they were;
pages past the old end of file that end up unwritten are zeros, or cut
off when no written page follows them (unless keep_size: then the file
keeps the size it had at the cut, as when the inode reached the disk but
the data did not).

Not modelled: a page torn inside itself (sectors of one 4 KiB page from
different versions), the lock file (LMDB rebuilds lock.mdb when the first
process opens the environment), directory entries (the files exist before
the log starts), ftruncate and msync (LMDB does neither on data.mdb
without MDB_WRITEMAP, which the store refuses: the replay refuses them).
"""

import random
import struct

PAGE = 4096
HEAD = struct.Struct("<B3xIQ")


class LogError(Exception):
    pass


def read_log(path):
    """The records of a powerlog: a list of (type, value, bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    out, i = [], 0
    while i + HEAD.size <= len(data):
        t, n, v = HEAD.unpack_from(data, i)
        i += HEAD.size
        if i + n > len(data):
            break  # cut by SIGKILL: the call it announces had not begun
        out.append((chr(t), v, data[i:i + n]))
        i += n
    return out


def _returned(log, i):
    """What write i returned (its 'R' follows it), None if in flight."""
    if i + 1 < len(log) and log[i + 1][0] == "R":
        r = log[i + 1][1]
        return r - (1 << 64) if r >= 1 << 63 else r
    return None


class Replay:
    def __init__(self, base_path, log_path):
        with open(base_path, "rb") as f:
            self.base = f.read()
        self.log = read_log(log_path)
        self.inflight = set()  # writes killed before they returned
        for i, (t, v, data) in enumerate(self.log):
            if t in "TM":
                raise LogError("the log has %r: not modelled" % t)
            if t in "WD":
                r = _returned(self.log, i)
                if r is None:
                    self.inflight.add(i)
                elif r < len(data):  # failed or short: only what it wrote
                    self.log[i] = (t, v, data[:max(r, 0)])
        self._durable_at()
        self._versions()

    def _durable_at(self):
        """durable[j]: the first cut at which write j is durable (absent:
        never, in this log)."""
        self.durable = {}
        pending = []  # plain writes no sync has begun to cover
        begun = []  # per sync begun and not ended: the writes it covers
        for i, (t, v, _) in enumerate(self.log):
            if i in self.inflight:
                continue  # may be on disk in part or not at all
            if t == "W":
                pending.append(i)
            elif t == "D":
                self.durable[i] = i + 2  # once its 'R' is logged
            elif t == "B":
                begun.append(pending)
                pending = []
            elif t == "E" and begun:
                # LMDB syncs under its write lock, one at a time; if two
                # overlapped, ending the oldest first is the cautious pairing
                covered = begun.pop(0)
                if v == 0:
                    for j in covered:
                        self.durable[j] = i + 1
                # a failed sync: its writes may be lost for good (Linux marks
                # the pages clean), so they never become durable

    def _versions(self):
        """For each page: [(record index, bytes of the page after it)]."""
        self.pages = {}
        cur = {}
        for i, (t, off, data) in enumerate(self.log):
            if t not in "WD":
                continue
            end = off + len(data)
            for p in range(off // PAGE, (end + PAGE - 1) // PAGE):
                if p not in cur:
                    old = self.base[p * PAGE:(p + 1) * PAGE]
                    cur[p] = bytearray(old)
                    self.pages[p] = []
                page = cur[p]
                lo, hi = max(off, p * PAGE), min(end, (p + 1) * PAGE)
                if len(page) < hi - p * PAGE:
                    page.extend(b"\0" * (hi - p * PAGE - len(page)))
                page[lo - p * PAGE:hi - p * PAGE] = data[lo - off:hi - off]
                self.pages[p].append((i, bytes(page)))

    def is_durable(self, j, cut):
        d = self.durable.get(j)
        return d is not None and d <= cut

    def acks(self, cut):
        """The ACK lines the program had printed before the cut."""
        lines = []
        for t, _, data in self.log[:cut]:
            if t == "A":
                lines += [l for l in data.decode().splitlines(True)
                          if l.startswith("ACK ") and l.endswith("\n")]
        return "".join(lines)

    def sync_points(self):
        """Cuts right after each completed sync and each durable write."""
        return sorted({i + 1 for i, (t, _, _) in enumerate(self.log)
                       if t == "E"} | {d for d in self.durable.values()
                                       if self.log[d - 2][0] == "D"})

    def torn_points(self):
        """Cuts with writes not yet durable: the disk may hold them or not."""
        n = len(self.log)
        delta = [0] * (n + 2)
        for j, (t, _, _) in enumerate(self.log):
            if t in "WD":
                # write j is before cuts j+1..n; durable from durable[j] on
                d = self.durable.get(j)
                delta[j + 1] += 1
                delta[min(d, n + 1) if d is not None else n + 1] -= 1
        out, open_writes = [], 0
        for cut in range(1, n + 1):
            open_writes += delta[cut]
            if open_writes > 0:
                out.append(cut)
        return out

    def size(self, cut):
        """The file's size after the writes before the cut."""
        size = len(self.base)
        for t, off, data in self.log[:cut]:
            if t in "WD":
                size = max(size, off + len(data))
        return size

    def explains(self, actual):
        """None if `actual` (the data file as the killed writer left it in
        the page cache) is what the log says, else the first offset that
        differs: every write applied, the one in flight in full or not."""
        last = {p: vs[-1][0] for p, vs in self.pages.items()}
        full = self.image(len(self.log), choose_all)
        less = self.image(len(self.log),
                          lambda p, d, m: m - 1 if last[p] in self.inflight
                          else m)
        for off in range(0, max(len(actual), len(full)), PAGE):
            page = actual[off:off + PAGE]
            if page not in (full[off:off + PAGE], less[off:off + PAGE]):
                return off
        return None

    def image(self, cut, choose, keep_size=False):
        """The data file after a power cut at `cut`; choose(page, d, m)
        returns the version index k, d <= k <= m, the disk holds. With
        keep_size the file keeps the size it had (the inode reached the
        disk, unwritten pages read as zeros); without, it ends after the
        last page the disk holds."""
        img = bytearray(self.base)
        for p, versions in sorted(self.pages.items()):
            vs = [(i, b) for i, b in versions if i < cut]
            if not vs:
                continue
            d = 0
            for k, (i, _) in enumerate(vs, 1):
                if self.is_durable(i, cut):
                    d = k
            k = choose(p, d, len(vs))
            if k == 0:
                data = self.base[p * PAGE:(p + 1) * PAGE]
                if not data:
                    continue  # never reached the disk: a hole, or past EOF
            else:
                data = vs[k - 1][1]
            start = p * PAGE
            if len(img) < start + len(data):
                img.extend(b"\0" * (start + len(data) - len(img)))
            img[start:start + len(data)] = data
        if keep_size and len(img) < self.size(cut):
            img.extend(b"\0" * (self.size(cut) - len(img)))
        return bytes(img)


def choose_none(page, d, m):
    return d


def choose_all(page, d, m):
    return m


def choose_random(seed):
    rng = random.Random(seed)

    def choose(page, d, m):
        return rng.randint(d, m)

    return choose
