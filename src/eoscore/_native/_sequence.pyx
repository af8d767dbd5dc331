"""Kafka's producer-state idempotence check (public API: ``eoscore.sequence``).

The hot structure is an open-addressing table (linear probing, power-of-two
capacity, load <= 3/4) of 64-byte ``Producer`` slots keyed by producer id.  Slots
are never deleted in place: ``expire`` rebuilds the table without the idle
producers.  ``check_many`` runs the whole batch without the GIL.  The rules are
documented in ``docs/trackers.md`` and on ``SequenceTracker.check``.
"""

cimport cython
from libc.math cimport INFINITY
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from eoscore._native._batch cimport int64_array

import enum
import math
import numbers
import operator
import struct
import time

import numpy as np

from eoscore import snapshot_format
from eoscore.errors import CorruptSnapshotError

cdef enum:
    RETAINED = 5                # batches kept per producer, as in Kafka
    MIN_CAPACITY = 16
    R_ACCEPT = 0
    R_DUPLICATE = 1
    R_OUT_OF_ORDER = 2
    R_FENCED = 3

cdef int64_t EMPTY = -1         # pid of a free slot (valid pids are >= 0)
cdef int64_t SEQ_MAX = 2147483647  # sequences wrap: after SEQ_MAX comes 0
cdef int64_t EPOCH_MAX = 2147483647


ctypedef struct Producer:
    int64_t pid                 # producer id; EMPTY marks a free slot
    double last_seen            # `now` of the last accepted batch
    int32_t epoch               # current producer epoch
    uint8_t count               # retained batches, 1..RETAINED
    uint8_t head                # ring index of the newest retained batch
    int32_t first[RETAINED]     # first_seq of the retained batches (ring)
    int32_t last[RETAINED]      # last_seq of the retained batches (ring)


class CheckResult(enum.IntEnum):
    """What ``check`` decided for a batch; ``check_many`` returns these as uint8."""

    ACCEPT = R_ACCEPT
    DUPLICATE = R_DUPLICATE
    OUT_OF_ORDER = R_OUT_OF_ORDER
    FENCED = R_FENCED


_RESULTS = tuple(CheckResult)

# Snapshot records: oldest retained batch first.
_RECORD = np.dtype(
    [
        ("pid", "<i8"),
        ("last_seen", "<f8"),
        ("epoch", "<i4"),
        ("count", "u1"),
        ("pad", "u1", (3,)),
        ("first", "<i4", (RETAINED,)),
        ("last", "<i4", (RETAINED,)),
    ]
)
_HEADER = struct.Struct("<dQ")  # expire_after (inf = never), record count
SNAPSHOT_KIND = b"SEQT"   # snapshot_format kind
SNAPSHOT_VERSION = 1


cdef inline uint64_t _mix(int64_t pid) noexcept nogil:
    # murmur3 fmix64: pids are often small consecutive ints; spread them.
    cdef uint64_t h = <uint64_t>pid
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


cdef inline int32_t _next_seq(int32_t seq) noexcept nogil:
    return 0 if seq == SEQ_MAX else seq + 1


cdef double _now(object now) except? -1:
    if now is None:
        return time.time()
    if isinstance(now, (bool, np.bool_)) or not isinstance(now, numbers.Real):
        raise TypeError(f"now must be a float (seconds) or None, not {type(now).__name__}")
    cdef double value = now
    if not math.isfinite(value):
        raise ValueError(f"now must be finite, got {now!r}")
    return value


cdef int64_t _int_arg(object value, str name, int64_t low, int64_t high) except? -1:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    value = operator.index(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


@cython.final
cdef class SequenceTracker:
    """Per-producer epoch and last 5 accepted batches: Kafka's idempotence check.

    ``expire_after`` (seconds, or None for never) forgets producers that had no
    accepted batch for that long, measured with the ``now`` given to ``check``.
    """

    cdef Producer *slots        # capacity slots; free ones have pid == EMPTY
    cdef size_t mask            # capacity - 1 (capacity is a power of two)
    cdef size_t used            # occupied slots
    cdef double _expire_after   # seconds; INFINITY = never
    cdef bint busy              # a check_many loop runs without the GIL

    def __cinit__(self, expire_after=86400.0):
        self.slots = NULL
        if expire_after is None:
            self._expire_after = INFINITY
        elif (isinstance(expire_after, (bool, np.bool_))
              or not isinstance(expire_after, numbers.Real)):
            raise TypeError(
                f"expire_after must be seconds (float) or None, not {type(expire_after).__name__}"
            )
        elif not expire_after > 0:
            raise ValueError(f"expire_after must be > 0 seconds or None, got {expire_after!r}")
        else:
            self._expire_after = expire_after
        self._allocate(MIN_CAPACITY)

    def __dealloc__(self):
        free(self.slots)

    cdef int _idle(self) except -1:
        if self.busy:
            raise RuntimeError(
                "SequenceTracker: a check_many call is running in another thread; share a "
                "tracker between threads only under a lock"
            )
        return 0

    cdef int _allocate(self, size_t capacity) except -1:
        cdef Producer *slots = <Producer *>malloc(capacity * sizeof(Producer))
        if slots == NULL:
            raise MemoryError(f"SequenceTracker: cannot allocate {capacity} slots")
        memset(slots, 0xFF, capacity * sizeof(Producer))  # pid == -1 == EMPTY
        free(self.slots)
        self.slots = slots
        self.mask = capacity - 1
        self.used = 0
        return 0

    cdef inline Producer *_slot(self, int64_t pid) noexcept nogil:
        """The slot holding pid, or the free slot where it would go."""
        cdef size_t i = _mix(pid) & self.mask
        while self.slots[i].pid != pid and self.slots[i].pid != EMPTY:
            i = (i + 1) & self.mask
        return &self.slots[i]

    cdef int _grow(self) except -1 nogil:
        """Double the capacity and re-insert every producer."""
        cdef size_t old_capacity = self.mask + 1
        cdef size_t capacity = old_capacity * 2
        cdef Producer *old = self.slots
        cdef Producer *slots = <Producer *>malloc(capacity * sizeof(Producer))
        cdef size_t i
        if slots == NULL:
            with gil:
                raise MemoryError(f"SequenceTracker: cannot grow to {capacity} slots")
        memset(slots, 0xFF, capacity * sizeof(Producer))
        self.slots = slots
        self.mask = capacity - 1
        for i in range(old_capacity):
            if old[i].pid != EMPTY:
                self._slot(old[i].pid)[0] = old[i]
        free(old)
        return 0

    cdef inline int _check(self, int64_t pid, int32_t epoch, int32_t first, int32_t last,
                    double now) except -1 nogil:
        """One batch; returns an R_* code and records the batch when it is accepted."""
        cdef Producer *p = self._slot(pid)
        cdef int i, k
        if p.pid == EMPTY:
            if (self.used + 1) * 4 > (self.mask + 1) * 3:
                self._grow()
                p = self._slot(pid)
            self.used += 1
            p.pid = pid
            self._start(p, epoch, first, last, now)
            return R_ACCEPT
        if now - p.last_seen >= self._expire_after:
            # Expired, not yet collected by expire(): a producer we know nothing of.
            self._start(p, epoch, first, last, now)
            return R_ACCEPT
        if epoch < p.epoch:
            return R_FENCED
        if epoch > p.epoch:
            if first != 0:
                return R_OUT_OF_ORDER
            self._start(p, epoch, first, last, now)
            return R_ACCEPT
        k = p.head
        for i in range(p.count):
            if p.first[k] == first and p.last[k] == last:
                return R_DUPLICATE
            k = k - 1 if k > 0 else RETAINED - 1
        if first != _next_seq(p.last[p.head]):
            return R_OUT_OF_ORDER
        p.head = p.head + 1 if p.head < RETAINED - 1 else 0
        p.first[p.head] = first
        p.last[p.head] = last
        if p.count < RETAINED:
            p.count += 1
        p.last_seen = now
        return R_ACCEPT

    cdef inline void _start(self, Producer *p, int32_t epoch, int32_t first, int32_t last,
                            double now) noexcept nogil:
        p.epoch = epoch
        p.count = 1
        p.head = 0
        p.first[0] = first
        p.last[0] = last
        p.last_seen = now

    def check(self, pid, epoch, first_seq, last_seq, now=None):
        """Decide one batch ``[first_seq, last_seq]`` of producer ``pid`` at ``epoch``.

        Rules (Kafka's broker-side check):

        - unknown (or expired) pid: ACCEPT, whatever the sequence;
        - ``epoch`` older than the producer's: FENCED;
        - newer epoch: ACCEPT only if ``first_seq == 0``, else OUT_OF_ORDER;
        - same epoch: DUPLICATE if ``(first_seq, last_seq)`` equals one of the 5
          retained batches, ACCEPT if ``first_seq`` follows the newest batch's
          ``last_seq`` (2**31-1 is followed by 0), else OUT_OF_ORDER (a gap, an
          overlap that is not an exact retained batch, or a retry older than the
          retained window).

        Only ACCEPT changes state (records the batch, sets last-seen to ``now``).
        ``now`` is seconds on the caller's clock (default ``time.time()``).
        """
        cdef int64_t p = _int_arg(pid, "pid", 0, 0x7FFFFFFFFFFFFFFF)
        cdef int64_t e = _int_arg(epoch, "epoch", 0, EPOCH_MAX)
        cdef int64_t f = _int_arg(first_seq, "first_seq", 0, SEQ_MAX)
        cdef int64_t l = _int_arg(last_seq, "last_seq", 0, SEQ_MAX)
        cdef double t = _now(now)
        self._idle()
        return _RESULTS[self._check(p, <int32_t>e, <int32_t>f, <int32_t>l, t)]

    def check_many(self, pids, epochs, first_seqs, last_seqs, now=None):
        """``check`` over whole arrays, in order; returns a uint8 array of CheckResult.

        Identical to calling ``check`` element by element (batches of one pid in
        the same call see each other).  All arguments are validated before any
        batch is applied, so a ValueError leaves the tracker unchanged.
        """
        cdef double t = _now(now)
        pid_arr = int64_array(pids, "pids")
        epoch_arr = int64_array(epochs, "epochs")
        first_arr = int64_array(first_seqs, "first_seqs")
        last_arr = int64_array(last_seqs, "last_seqs")
        cdef Py_ssize_t n = pid_arr.shape[0]
        for name, arr in (("epochs", epoch_arr), ("first_seqs", first_arr),
                          ("last_seqs", last_arr)):
            if arr.shape[0] != n:
                raise ValueError(f"{name} has {arr.shape[0]} elements but pids has {n}")
        cdef const int64_t[::1] p = pid_arr
        cdef const int64_t[::1] e = epoch_arr
        cdef const int64_t[::1] f = first_arr
        cdef const int64_t[::1] l = last_arr
        out = np.empty(n, dtype=np.uint8)
        cdef uint8_t[::1] o = out
        cdef Py_ssize_t i, bad = -1
        with nogil:
            for i in range(n):
                if (p[i] < 0 or e[i] < 0 or e[i] > EPOCH_MAX or f[i] < 0 or f[i] > SEQ_MAX
                        or l[i] < 0 or l[i] > SEQ_MAX):
                    bad = i
                    break
        if bad >= 0:
            _raise_bad_element(bad, p[bad], e[bad], f[bad], l[bad])
        self._idle()
        self.busy = True
        try:
            with nogil:
                for i in range(n):
                    o[i] = <uint8_t>self._check(p[i], <int32_t>e[i], <int32_t>f[i],
                                                <int32_t>l[i], t)
        finally:
            self.busy = False
        return out

    def expire(self, now=None):
        """Forget producers idle for ``expire_after`` seconds at ``now``; returns how many.

        Expired producers are already treated as unknown by ``check``; this call
        frees their slots (and shrinks the table).
        """
        cdef double t = _now(now)
        self._idle()
        cdef size_t old_capacity = self.mask + 1
        cdef Producer *old = self.slots
        cdef size_t i, live = 0, capacity = MIN_CAPACITY
        for i in range(old_capacity):
            if old[i].pid != EMPTY and not (t - old[i].last_seen >= self._expire_after):
                live += 1
        removed = self.used - live
        if removed == 0:
            return 0
        while live * 4 > capacity * 3 // 2:
            capacity *= 2
        self.slots = NULL
        try:
            self._allocate(capacity)
        except MemoryError:
            self.slots = old
            raise
        for i in range(old_capacity):
            if old[i].pid != EMPTY and not (t - old[i].last_seen >= self._expire_after):
                self._slot(old[i].pid)[0] = old[i]
        self.used = live
        free(old)
        return removed

    def producer(self, pid):
        """``(epoch, [(first_seq, last_seq), ...] oldest first, last_seen)`` or None."""
        cdef int64_t key = _int_arg(pid, "pid", 0, 0x7FFFFFFFFFFFFFFF)
        self._idle()
        cdef Producer *p = self._slot(key)
        if p.pid == EMPTY:
            return None
        batches = []
        cdef int i, k = (p.head - p.count + 1 + RETAINED) % RETAINED
        for i in range(p.count):
            batches.append((p.first[k], p.last[k]))
            k = (k + 1) % RETAINED
        return (p.epoch, batches, p.last_seen)

    def __len__(self):
        """Producers held (expired ones count until ``expire`` collects them)."""
        return self.used

    @property
    def expire_after(self):
        """Idle seconds after which a producer is forgotten (None: never)."""
        return None if self._expire_after == INFINITY else self._expire_after

    def _snapshot_payload(self):
        """Header + one record per producer (see ``_RECORD``, sorted by pid), unframed."""
        self._idle()
        cdef Py_ssize_t n = self.used
        pid_a = np.empty(n, dtype=np.int64)
        seen_a = np.empty(n, dtype=np.float64)
        epoch_a = np.empty(n, dtype=np.int32)
        count_a = np.empty(n, dtype=np.uint8)
        first_a = np.zeros((n, RETAINED), dtype=np.int32)
        last_a = np.zeros((n, RETAINED), dtype=np.int32)
        cdef int64_t[::1] pids = pid_a
        cdef double[::1] seen = seen_a
        cdef int32_t[::1] epochs = epoch_a
        cdef uint8_t[::1] counts = count_a
        cdef int32_t[:, ::1] firsts = first_a
        cdef int32_t[:, ::1] lasts = last_a
        cdef size_t i
        cdef Py_ssize_t j = 0
        cdef int b, k
        cdef Producer *p
        for i in range(self.mask + 1):
            p = &self.slots[i]
            if p.pid == EMPTY:
                continue
            pids[j] = p.pid
            seen[j] = p.last_seen
            epochs[j] = p.epoch
            counts[j] = p.count
            k = (p.head - p.count + 1 + RETAINED) % RETAINED
            for b in range(p.count):
                firsts[j, b] = p.first[k]
                lasts[j, b] = p.last[k]
                k = (k + 1) % RETAINED
            j += 1
        order = np.argsort(pid_a)
        records = np.zeros(n, dtype=_RECORD)
        records["pid"] = pid_a[order]
        records["last_seen"] = seen_a[order]
        records["epoch"] = epoch_a[order]
        records["count"] = count_a[order]
        records["first"] = first_a[order]
        records["last"] = last_a[order]
        return _HEADER.pack(self._expire_after, n) + records.tobytes()

    def snapshot(self):
        """The whole state as bytes (framed and checksummed); see ``restore``."""
        return snapshot_format.pack(SNAPSHOT_KIND, SNAPSHOT_VERSION, self._snapshot_payload())

    def restore(self, data):
        """Replace the state with a ``snapshot()``; CorruptSnapshotError on bad bytes.

        The bytes are fully validated before anything changes: on error the
        tracker keeps its current state.
        """
        if data is None or isinstance(data, str):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        _, payload = snapshot_format.unpack(data, SNAPSHOT_KIND, (SNAPSHOT_VERSION,))
        self._restore_payload(payload)

    def _restore_payload(self, data):
        """Replace the state with a validated payload (CorruptSnapshotError otherwise)."""
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise CorruptSnapshotError(
                f"sequence snapshot: payload of {len(data)} bytes is shorter than its header"
            )
        expire_after, count = _HEADER.unpack_from(data)
        body = len(data) - _HEADER.size
        if count * _RECORD.itemsize != body:
            raise CorruptSnapshotError(
                f"sequence snapshot: {count} producers need {count * _RECORD.itemsize} bytes, "
                f"payload has {body} (truncated?)"
            )
        if not (expire_after > 0):
            raise CorruptSnapshotError(f"sequence snapshot: bad expire_after {expire_after!r}")
        records = np.frombuffer(data, dtype=_RECORD, offset=_HEADER.size)
        _validate_records(records)
        self._idle()
        capacity = MIN_CAPACITY
        while count * 4 > capacity * 3 // 2:
            capacity *= 2
        cdef SequenceTracker fresh = SequenceTracker(expire_after=None)
        fresh._load(records, capacity)
        # Swap only now: a bad snapshot leaves this tracker untouched.
        cdef Producer *slots = self.slots
        cdef size_t mask = self.mask, used = self.used
        self.slots, self.mask, self.used = fresh.slots, fresh.mask, fresh.used
        fresh.slots, fresh.mask, fresh.used = slots, mask, used
        self._expire_after = expire_after

    cdef int _load(self, records, size_t capacity) except -1:
        self._allocate(capacity)
        cdef const int64_t[::1] pids = np.ascontiguousarray(records["pid"])
        cdef const double[::1] seen = np.ascontiguousarray(records["last_seen"])
        cdef const int32_t[::1] epochs = np.ascontiguousarray(records["epoch"])
        cdef const uint8_t[::1] counts = np.ascontiguousarray(records["count"])
        cdef const int32_t[:, ::1] firsts = np.ascontiguousarray(records["first"])
        cdef const int32_t[:, ::1] lasts = np.ascontiguousarray(records["last"])
        cdef Py_ssize_t i
        cdef int b
        cdef Producer *p
        for i in range(pids.shape[0]):
            p = self._slot(pids[i])
            if p.pid != EMPTY:
                raise CorruptSnapshotError(f"sequence snapshot: producer {pids[i]} appears twice")
            p.pid = pids[i]
            p.last_seen = seen[i]
            p.epoch = epochs[i]
            p.count = counts[i]
            p.head = counts[i] - 1
            for b in range(RETAINED):
                p.first[b] = firsts[i, b]
                p.last[b] = lasts[i, b]
            self.used += 1
        return 0


def _raise_bad_element(Py_ssize_t i, int64_t pid, int64_t epoch, int64_t first, int64_t last):
    if pid < 0:
        raise ValueError(f"pids[{i}] = {pid}: producer ids must be >= 0")
    if epoch < 0 or epoch > EPOCH_MAX:
        raise ValueError(f"epochs[{i}] = {epoch}: epochs must be in [0, {EPOCH_MAX}]")
    name, value = ("first_seqs", first) if first < 0 or first > SEQ_MAX else ("last_seqs", last)
    raise ValueError(f"{name}[{i}] = {value}: sequences must be in [0, {SEQ_MAX}]")


def _validate_records(records):
    """Every field in range before any slot is built from it."""
    if records.shape[0] == 0:
        return
    problems = []
    if (records["pid"] < 0).any():
        problems.append("negative producer id")
    if not np.isfinite(records["last_seen"]).all():
        problems.append("non-finite last_seen")
    if (records["epoch"] < 0).any():
        problems.append("negative epoch")
    counts = records["count"]
    if ((counts < 1) | (counts > RETAINED)).any():
        problems.append("retained batch count outside 1..5")
    if records["pad"].any():
        problems.append("non-zero padding")
    used = np.arange(RETAINED)[None, :] < counts[:, None]
    for field in ("first", "last"):
        seqs = records[field]
        if (seqs < 0).any():
            problems.append(f"negative {field} sequence")
        if (seqs[~used] != 0).any():
            problems.append(f"unused {field} slots not zero")
    if problems:
        raise CorruptSnapshotError("sequence snapshot: " + ", ".join(problems))
