"""Exact key set on open addressing (public API: ``eoscore.dedup.ExactKeySet``).

Three linear-probing tables of 64-bit words, each doubling at 80% load:

* ints in [1, 2**64) stored exactly, one word per slot (0 marks an empty slot; the key
  0 is a flag), placed by xxh3 of the key;
* negative ints (as their uint64 bit pattern) the same way, in their own table, so -1
  and 2**64 - 1 stay different keys;
* bytes and str as a 128-bit xxh3 fingerprint, two words per slot, placed by its low
  half; bytes and str hash with different seeds, so b"a" and "a" stay different.

Deletion shifts the following cluster back (no tombstones), which also lets the
Deduplicator sweep expired generations in place. Tagged sets (the Deduplicator's)
keep one byte per slot naming the generation that added the key.
"""

cimport cython
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

from eoscore._native._keys cimport (
    AHEAD, BATCH_I64, BATCH_SEQ, BATCH_U64, CHUNK, KIND_BYTES, KIND_NEG, KIND_UINT, NOGIL_MIN,
    OP_ADD, OP_CONTAINS, Batch, Rec, as_batch, eos_prefetch, eos_table_alloc, eos_table_free,
    fingerprint, fixed_len, key_parts, new_array, seq_item,
)
from eoscore._native._xxh3 cimport eos_xxh3_64_u64

import os
import struct

import numpy as np

from eoscore.snapshot_format import PayloadReader, pack, unpack

cnp.import_array()

cdef enum:
    MIN_CAPACITY = 16

_KIND = b"KSET"
_VERSION = 1
_HEAD = struct.Struct("<QQQQQBBBB")  # seed, init_cap, npos, nneg, nfp, flags, zero_tag, cur, live
_FLAG_ZERO = 1
_FLAG_TAGGED = 2
_MAX_HINT = 2 ** 40


# ----------------------------------------------------------------------------------
# Tables. w (width in words) is a literal at every call site, so each inlined copy
# is specialised for ints (1) or fingerprints (2).

cdef inline size_t _limit(size_t cap) noexcept nogil:
    return cap - cap // 5


cdef inline size_t _cap_for(uint64_t keys) noexcept nogil:
    """Smallest capacity that holds keys under the load limit."""
    cdef size_t cap = MIN_CAPACITY
    while _limit(cap) < keys:
        cap *= 2
    return cap


cdef inline int _shift_for(size_t cap) noexcept nogil:
    cdef int bits = 0
    while (<size_t>1 << bits) < cap:
        bits += 1
    return 64 - bits


cdef inline uint64_t _place(const Table *t, const uint64_t *s, int w) noexcept nogil:
    """The placing hash of the key in slot s."""
    if w == 2:
        return s[0]
    return eos_xxh3_64_u64(s[0], t.seed)


cdef int _resize(Table *t, size_t cap, int w) noexcept nogil:
    """Rehash into cap slots (cap >= the keys held / 0.8). -1 if out of memory."""
    cdef uint64_t *slots = <uint64_t *>eos_table_alloc(cap * w * 8)
    cdef uint8_t *tags = NULL
    cdef size_t i, j, mask = cap - 1, old_cap = t.mask + 1 if t.slots != NULL else 0
    cdef int shift = _shift_for(cap)
    cdef uint64_t *s
    if slots == NULL:
        return -1
    if t.counts != NULL:
        tags = <uint8_t *>eos_table_alloc(cap)
        if tags == NULL:
            eos_table_free(slots, cap * w * 8)
            return -1
    for i in range(old_cap):
        s = t.slots + i * w
        if s[0] == 0:
            continue
        j = _place(t, s, w) >> shift
        while slots[j * w] != 0:
            j = (j + 1) & mask
        slots[j * w] = s[0]
        if w == 2:
            slots[j * w + 1] = s[1]
        if tags != NULL:
            tags[j] = t.tags[i]
    eos_table_free(t.slots, old_cap * w * 8)
    eos_table_free(t.tags, old_cap)
    t.slots = slots
    t.tags = tags
    t.mask = mask
    t.shift = shift
    t.limit = _limit(cap)
    return 0


cdef void _release(Table *t, int w) noexcept nogil:
    """Free the slots; the table reads as empty and reallocates on the next add."""
    cdef size_t cap = t.mask + 1 if t.slots != NULL else 0
    eos_table_free(t.slots, cap * w * 8)
    eos_table_free(t.tags, cap)
    t.slots = NULL
    t.tags = NULL
    t.mask = 0
    t.size = 0
    t.limit = 0
    t.shift = 63


cdef inline int _add(Table *t, uint64_t a, uint64_t b, uint64_t h, uint8_t tag,
                     int w) noexcept nogil:
    """Insert a key: 1 if it was new, 0 if present, -1 if out of memory."""
    cdef size_t i
    cdef uint64_t *s
    if t.size >= t.limit:
        if _resize(t, 2 * (t.mask + 1) if t.slots != NULL else t.init_cap, w) < 0:
            return -1
    i = h >> t.shift
    while True:
        s = t.slots + i * w
        if s[0] == a and (w == 1 or s[1] == b):
            return 0
        if s[0] == 0:
            s[0] = a
            if w == 2:
                s[1] = b
            if t.tags != NULL:
                t.tags[i] = tag
                t.counts[tag] += 1
            t.size += 1
            return 1
        i = (i + 1) & t.mask


cdef inline Py_ssize_t _find(const Table *t, uint64_t a, uint64_t b, uint64_t h,
                             int w) noexcept nogil:
    """Slot index of a key, or -1."""
    cdef size_t i
    cdef const uint64_t *s
    if t.size == 0:
        return -1
    i = h >> t.shift
    while True:
        s = t.slots + i * w
        if s[0] == a and (w == 1 or s[1] == b):
            return <Py_ssize_t>i
        if s[0] == 0:
            return -1
        i = (i + 1) & t.mask


cdef void _remove_at(Table *t, size_t i, int w) noexcept nogil:
    """Empty slot i, shifting later keys of its cluster back toward their homes."""
    cdef size_t j = i, home, mask = t.mask
    cdef uint64_t *s
    if t.tags != NULL:
        t.counts[t.tags[i]] -= 1
    while True:
        j = (j + 1) & mask
        s = t.slots + j * w
        if s[0] == 0:
            break
        home = _place(t, s, w) >> t.shift
        # The key at j may fill the hole at i unless its home lies in (i, j].
        if ((j - home) & mask) >= ((j - i) & mask):
            t.slots[i * w] = s[0]
            if w == 2:
                t.slots[i * w + 1] = s[1]
            if t.tags != NULL:
                t.tags[i] = t.tags[j]
            i = j
    t.slots[i * w] = 0
    if w == 2:
        t.slots[i * w + 1] = 0
    t.size -= 1


cdef inline bint _expired(uint8_t tag, uint8_t cur, uint8_t live) noexcept nogil:
    return <uint8_t>(cur - tag) >= live


cdef size_t _sweep(Table *t, uint8_t cur, uint8_t live, int w) noexcept nogil:
    """Remove keys whose tag has expired, in place; shrink a mostly empty table."""
    cdef size_t cap, start = 0, i, steps = 0, removed = 0, want
    if t.size == 0:
        return 0
    cap = t.mask + 1
    # Start after an empty slot: no cluster straddles the scan's start, so the keys a
    # removal shifts back always come from slots the scan has not reached yet.
    while t.slots[start * w] != 0:
        start += 1
    i = (start + 1) & t.mask
    while steps < cap:
        if t.slots[i * w] != 0 and _expired(t.tags[i], cur, live):
            _remove_at(t, i, w)
            removed += 1
            continue          # slot i may now hold a shifted key: look again
        i = (i + 1) & t.mask
        steps += 1
    if t.size < _limit(cap) // 4 and cap > t.init_cap:
        want = _cap_for(2 * t.size)
        if want < t.init_cap:
            want = t.init_cap
        if want < cap:
            _resize(t, want, w)   # out of memory: keep the larger table
    return removed


cdef void _collect(const Table *t, uint64_t *keys, uint8_t *tags, int w) noexcept nogil:
    """Copy the keys (and tags) densely, in slot order."""
    cdef size_t i, n = 0, cap = t.mask + 1 if t.slots != NULL else 0
    for i in range(cap):
        if t.slots[i * w] != 0:
            keys[n * w] = t.slots[i * w]
            if w == 2:
                keys[n * w + 1] = t.slots[i * w + 1]
            if tags != NULL:
                tags[n] = t.tags[i]
            n += 1


cdef Py_ssize_t _table_bytes(const Table *t, int w) noexcept:
    if t.slots == NULL:
        return 0
    return (t.mask + 1) * (8 * w + (1 if t.tags != NULL else 0))


cdef inline void _prefetch(const Table *t, uint64_t h, int w) noexcept nogil:
    cdef size_t i
    if t.slots != NULL:
        i = h >> t.shift
        eos_prefetch(t.slots + i * w)
        eos_prefetch(t.slots + (i + 2) * w)   # the next line, when a probe will reach it
        if t.tags != NULL:
            eos_prefetch(t.tags + i)


# ----------------------------------------------------------------------------------
# Key-level operations on a Core.

cdef inline void _jpush(Core *c, uint64_t a, uint64_t b, int table) noexcept nogil:
    """Log one added key (the caller reserved room: see ExactKeySet._jreserve)."""
    cdef uint64_t *w
    if c.jlen < c.jcap:
        w = c.jbuf + 3 * c.jlen
        w[0] = a
        w[1] = b
        w[2] = (<uint64_t>c.jgen << 2) | <uint64_t>table
        c.jlen += 1


cdef inline int _core_add(Core *c, const Rec *r) noexcept nogil:
    cdef int res
    if r.kind == KIND_UINT:
        if r.a == 0:
            if c.has_zero:
                return 0
            c.has_zero = True
            c.zero_tag = c.cur_tag
            c.counts[c.cur_tag] += c.tagged
            res = 1
        else:
            res = _add(&c.pos, r.a, 0, r.h, c.cur_tag, 1)
    elif r.kind == KIND_NEG:
        res = _add(&c.neg, r.a, 0, r.h, c.cur_tag, 1)
    else:
        res = _add(&c.fp, r.a, r.b, r.h, c.cur_tag, 2)
    if res == 1 and c.journal:
        _jpush(c, r.a, r.b, 2 if r.kind >= KIND_BYTES else r.kind)
    return res


cdef inline bint _core_contains(const Core *c, const Rec *r) noexcept nogil:
    if r.kind == KIND_UINT:
        if r.a == 0:
            return c.has_zero
        return _find(&c.pos, r.a, 0, r.h, 1) >= 0
    if r.kind == KIND_NEG:
        return _find(&c.neg, r.a, 0, r.h, 1) >= 0
    return _find(&c.fp, r.a, r.b, r.h, 2) >= 0


cdef inline bint _core_discard(Core *c, const Rec *r) noexcept nogil:
    cdef Py_ssize_t i
    cdef Table *t
    if r.kind == KIND_UINT and r.a == 0:
        if not c.has_zero:
            return False
        c.has_zero = False
        if c.tagged:
            c.counts[c.zero_tag] -= 1
        return True
    if r.kind == KIND_UINT:
        t = &c.pos
        i = _find(t, r.a, 0, r.h, 1)
        if i >= 0:
            _remove_at(t, i, 1)
    elif r.kind == KIND_NEG:
        t = &c.neg
        i = _find(t, r.a, 0, r.h, 1)
        if i >= 0:
            _remove_at(t, i, 1)
    else:
        t = &c.fp
        i = _find(t, r.a, r.b, r.h, 2)
        if i >= 0:
            _remove_at(t, i, 2)
    return i >= 0


cdef inline void _int_rec(const Core *c, uint64_t v, int kind, Rec *r) noexcept nogil:
    r.a = v
    r.b = 0
    r.h = eos_xxh3_64_u64(v, c.seed)
    r.kind = kind


cdef inline void _prefetch_rec(const Core *c, const Rec *r) noexcept nogil:
    if r.kind == KIND_UINT:
        _prefetch(&c.pos, r.h, 1)
    elif r.kind == KIND_NEG:
        _prefetch(&c.neg, r.h, 1)
    else:
        _prefetch(&c.fp, r.h, 2)


cdef inline void _prep_array(const Core *c, const Batch *b, Py_ssize_t start, Py_ssize_t m,
                             Rec *r) noexcept nogil:
    """Records (hashed) for array keys [start, start + m)."""
    cdef Py_ssize_t j
    cdef const uint64_t *u
    cdef const char *row
    cdef uint64_t v
    if b.kind == BATCH_U64:
        u = (<const uint64_t *>b.data) + start
        for j in range(m):
            _int_rec(c, u[j], KIND_UINT, &r[j])
    elif b.kind == BATCH_I64:
        u = (<const uint64_t *>b.data) + start
        for j in range(m):
            v = u[j]
            _int_rec(c, v, KIND_NEG if (v >> 63) else KIND_UINT, &r[j])
    else:
        row = b.data + start * b.itemsize
        for j in range(m):
            fingerprint(KIND_BYTES, row, fixed_len(row, b.itemsize), c.seed, &r[j])
            row += b.itemsize


cdef inline Py_ssize_t _apply(Core *c, const Rec *r, Py_ssize_t m, int op,
                              uint8_t *out) noexcept nogil:
    """Run op on m records; the index of a record that ran out of memory, or -1."""
    cdef Py_ssize_t j
    cdef int res
    for j in range(min(<Py_ssize_t>AHEAD, m)):
        _prefetch_rec(c, &r[j])
    if op == OP_CONTAINS:
        for j in range(m):
            if j + AHEAD < m:
                _prefetch_rec(c, &r[j + AHEAD])
            out[j] = _core_contains(c, &r[j])
        return -1
    for j in range(m):
        if j + AHEAD < m:
            _prefetch_rec(c, &r[j + AHEAD])
        res = _core_add(c, &r[j])
        if res < 0:
            return j
        out[j] = <uint8_t>res
    return -1


cdef Py_ssize_t _run_array(Core *c, const Batch *b, int op, uint8_t *out) noexcept nogil:
    """Run op over an array batch; the index that ran out of memory, or -1."""
    cdef Rec r[CHUNK]
    cdef Py_ssize_t start = 0, m, bad
    while start < b.n:
        m = min(<Py_ssize_t>CHUNK, b.n - start)
        _prep_array(c, b, start, m, r)
        bad = _apply(c, r, m, op, out + start)
        if bad >= 0:
            return start + bad
        start += m
    return -1


cdef void _undo_array(Core *c, const Batch *b, Py_ssize_t upto, const uint8_t *out) noexcept nogil:
    """Remove the keys that a failed add of keys [0, upto) added."""
    cdef Rec r[CHUNK]
    cdef Py_ssize_t start = 0, m, j
    while start < upto:
        m = min(<Py_ssize_t>CHUNK, upto - start)
        _prep_array(c, b, start, m, r)
        for j in range(m):
            if out[start + j]:
                _core_discard(c, &r[j])
        start += m


cdef Py_ssize_t _run_recs(Core *c, Rec *r, Py_ssize_t n, int op, uint8_t *out) noexcept nogil:
    """Run op over gathered records (ints not hashed yet); the failing index, or -1."""
    cdef Py_ssize_t start = 0, m, j, bad
    while start < n:
        m = min(<Py_ssize_t>CHUNK, n - start)
        for j in range(start, start + m):
            if r[j].kind <= KIND_NEG:
                r[j].h = eos_xxh3_64_u64(r[j].a, c.seed)
        bad = _apply(c, r + start, m, op, out + start)
        if bad >= 0:
            return start + bad
        start += m
    return -1


cdef int _gather(const Core *c, object seq, Py_ssize_t n, Rec *r) except -1:
    """Records of a sequence batch, with the GIL (they are objects). Ints are hashed
    later, without it; bytes and str are fingerprinted here, while in cache."""
    cdef Py_ssize_t j
    cdef uint64_t v = 0
    cdef const char *p = NULL
    cdef Py_ssize_t size = 0
    cdef int kind
    for j in range(n):
        key = seq_item(seq, j)
        kind = key_parts(key, j, &v, &p, &size)
        if kind <= KIND_NEG:
            r[j].a = v
            r[j].b = 0
            r[j].kind = kind
        else:
            fingerprint(kind, p, size, c.seed, &r[j])
    return 0


cdef int _one_rec(const Core *c, object key, Rec *r) except -1:
    cdef uint64_t v = 0
    cdef const char *p = NULL
    cdef Py_ssize_t size = 0
    cdef int kind = key_parts(key, -1, &v, &p, &size)
    if kind <= KIND_NEG:
        _int_rec(c, v, kind, r)
    else:
        fingerprint(kind, p, size, c.seed, r)
    return 0


def _check_hint(capacity_hint, str name="capacity_hint"):
    if isinstance(capacity_hint, bool) or not isinstance(capacity_hint, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(capacity_hint).__name__}")
    if not 0 <= capacity_hint <= _MAX_HINT:
        raise ValueError(f"{name} must be in [0, 2**40], got {capacity_hint}")
    return capacity_hint


# ----------------------------------------------------------------------------------

cdef class ExactKeySet:
    """A set of int, bytes and str keys on open addressing, in native memory.

    ``ExactKeySet(capacity_hint=0)`` grows by doubling; a hint presizes it. Behaves
    like a Python ``set`` of those keys (``add``, ``in``, ``discard``, ``len``), plus
    batch calls that cross into native code once: ``add_many`` returns which keys
    were new (the first occurrence counts, also inside one batch).

    Ints in [-2**63, 2**64) are stored exactly, 8 bytes a slot (10-20 bytes per key
    at the 40-80% load it runs at). Bytes and str are stored as a 128-bit xxh3
    fingerprint (16 bytes a slot), seeded per set: two different keys collide with
    probability 2**-128, so among n such keys the chance that any two are confused
    is at most n**2 / 2**129 (about 1.5e-25 at n = 10**7, 1.5e-21 at 10**9). A
    collision makes ``add`` report a new key as present; nothing else can go wrong.

    Safe to share between threads: batches are serialised by an internal lock.
    """

    def __cinit__(self):
        memset(&self._c, 0, sizeof(Core))
        self._c.pos.shift = self._c.neg.shift = self._c.fp.shift = 63

    def __init__(self, capacity_hint=0):
        hint = _check_hint(capacity_hint)
        self._init_core(hint, int.from_bytes(os.urandom(8), "little"), False, 1)

    cdef int _init_core(self, uint64_t hint, uint64_t seed, bint tagged, int live) except -1:
        cdef Core *c = &self._c
        _release(&c.pos, 1)
        _release(&c.neg, 1)
        _release(&c.fp, 2)
        c.seed = seed
        c.pos.seed = c.neg.seed = c.fp.seed = seed
        # The int and fingerprint tables take the hint on first use; negative ints
        # are assumed rare and start small.
        c.pos.init_cap = c.fp.init_cap = _cap_for(hint)
        c.neg.init_cap = MIN_CAPACITY
        c.tagged = tagged
        c.live = live
        c.cur_tag = 0
        c.has_zero = False
        memset(c.counts, 0, sizeof(c.counts))
        c.pos.counts = c.neg.counts = c.fp.counts = c.counts if tagged else NULL
        return 0

    def __dealloc__(self):
        free(self._c.jbuf)
        self._c.jbuf = NULL
        _release(&self._c.pos, 1)
        _release(&self._c.neg, 1)
        _release(&self._c.fp, 2)

    cdef int _ready(self) except -1:
        if self._c.pos.init_cap == 0:
            raise ValueError("ExactKeySet is not initialised (use ExactKeySet(...))")
        return 0

    def __len__(self):
        return <Py_ssize_t>(self._c.pos.size + self._c.neg.size + self._c.fp.size
                            + self._c.has_zero)

    @property
    def nbytes(self):
        """Memory held by the set (slots, tags and the object), in bytes."""
        return (type(self).__basicsize__ + _table_bytes(&self._c.pos, 1)
                + _table_bytes(&self._c.neg, 1) + _table_bytes(&self._c.fp, 2))

    def __repr__(self):
        return f"ExactKeySet(len={len(self)}, nbytes={self.nbytes})"

    def __reduce__(self):
        return (type(self).restore, (self.snapshot(),))

    # -- single keys -----------------------------------------------------------------

    @cython.always_allow_keywords(False)
    def add(self, key):
        """Add one key; True if it was not in the set."""
        self._ready()
        cdef Rec r
        cdef int res
        _one_rec(&self._c, key, &r)
        if self._c.journal:
            self._jreserve(1)
        if self._busy:
            with self._lock:
                res = _core_add(&self._c, &r)
        else:
            res = _core_add(&self._c, &r)
        if res < 0:
            raise MemoryError("ExactKeySet: cannot grow the table")
        return res == 1

    def __contains__(self, key):
        self._ready()
        cdef Rec r
        _one_rec(&self._c, key, &r)
        if self._busy:
            with self._lock:
                return _core_contains(&self._c, &r)
        return _core_contains(&self._c, &r)

    @cython.always_allow_keywords(False)
    def discard(self, key):
        """Remove a key if present (like ``set.discard``)."""
        self._ready()
        cdef Rec r
        _one_rec(&self._c, key, &r)
        if self._busy:
            with self._lock:
                _core_discard(&self._c, &r)
        else:
            _core_discard(&self._c, &r)

    # -- batches ---------------------------------------------------------------------

    cdef int _run(self, const Batch *b, object owner, int op, uint8_t *out) except -1:
        """Run op over a batch. The caller holds the lock and has set _busy.

        A bad key raises before anything changes; running out of memory undoes the
        batch's additions before raising, so a batch is applied entirely or not at all.
        """
        cdef Py_ssize_t bad = -1
        cdef Rec *recs
        cdef Core *c = &self._c
        cdef size_t jmark = c.jlen
        if c.journal:
            self._jreserve(<size_t>b.n)
        if b.kind != BATCH_SEQ:
            if b.n >= NOGIL_MIN:
                with nogil:
                    bad = _run_array(c, b, op, out)
                    if bad >= 0:
                        _undo_array(c, b, bad, out)
            else:
                bad = _run_array(c, b, op, out)
                if bad >= 0:
                    _undo_array(c, b, bad, out)
        else:
            recs = <Rec *>malloc(max(b.n, 1) * sizeof(Rec))
            if recs == NULL:
                raise MemoryError(f"ExactKeySet: no memory to gather {b.n} keys")
            try:
                _gather(c, owner, b.n, recs)
                if b.n >= NOGIL_MIN:
                    with nogil:
                        bad = _run_recs(c, recs, b.n, op, out)
                        if bad >= 0:
                            _undo_recs(c, recs, bad, out)
                else:
                    bad = _run_recs(c, recs, b.n, op, out)
                    if bad >= 0:
                        _undo_recs(c, recs, bad, out)
            finally:
                free(recs)
        if bad >= 0:
            c.jlen = jmark
            raise MemoryError("ExactKeySet: cannot grow the table; the batch was not added")
        return 0

    cdef object _batch(self, object keys, int op):
        cdef Batch b
        owner = as_batch(keys, &b)
        out = new_array(b.n, cnp.NPY_BOOL)
        with self._lock:
            self._busy = True
            try:
                self._run(&b, owner, op, <uint8_t *>cnp.PyArray_DATA(out))
            finally:
                self._busy = False
        return out

    def add_many(self, keys):
        """Add a batch of keys; ``ndarray[bool]``, True where a key was new.

        Keys: a numpy integer or ``S`` array (a row's trailing NULs are not part of
        its key), or a list/tuple of keys. Within the batch only the first occurrence
        of a key is new. The batch is added entirely or (on an error) not at all.
        """
        self._ready()
        return self._batch(keys, OP_ADD)

    def contains_many(self, keys):
        """``ndarray[bool]``, True where a key is in the set."""
        self._ready()
        return self._batch(keys, OP_CONTAINS)

    # -- for the Deduplicator: generations ------------------------------------------

    cdef Py_ssize_t _rotate(self, uint64_t steps) except -1:
        """Advance the current tag by steps and drop the keys whose tag expired.

        Returns how many keys were dropped. The caller holds the lock.
        """
        cdef Core *c = &self._c
        cdef Py_ssize_t before = len(self)
        if steps == 0:
            return 0
        if steps >= c.live:
            _release(&c.pos, 1)
            _release(&c.neg, 1)
            _release(&c.fp, 2)
            c.has_zero = False
            memset(c.counts, 0, sizeof(c.counts))
            c.cur_tag = <uint8_t>(c.cur_tag + steps)
            return before
        c.cur_tag = <uint8_t>(c.cur_tag + steps)
        with nogil:
            _sweep(&c.pos, c.cur_tag, c.live, 1)
            _sweep(&c.neg, c.cur_tag, c.live, 1)
            _sweep(&c.fp, c.cur_tag, c.live, 2)
        if c.has_zero and _expired(c.zero_tag, c.cur_tag, c.live):
            c.has_zero = False
            c.counts[c.zero_tag] -= 1
        return before - len(self)

    # -- for the Deduplicator: the checkpoint log -------------------------------------

    cdef int _jreserve(self, size_t more) except -1:
        """Room for ``more`` journaled keys (the caller holds the lock)."""
        cdef Core *c = &self._c
        cdef size_t want = c.jlen + more, cap
        cdef uint64_t *buf
        if want <= c.jcap:
            return 0
        cap = max(want, 2 * c.jcap, <size_t>1024)
        buf = <uint64_t *>realloc(c.jbuf, cap * 3 * sizeof(uint64_t))
        if buf == NULL:
            raise MemoryError(f"ExactKeySet: no memory to log {more} keys")
        c.jbuf = buf
        c.jcap = cap
        return 0

    cdef object _jdrain(self):
        """The keys journaled since the last drain, as an (n, 3) int64 array; empties it."""
        cdef Core *c = &self._c
        cdef size_t n = c.jlen
        out = np.empty((n, 3), np.int64)
        if n:
            memcpy(cnp.PyArray_DATA(out), c.jbuf, n * 3 * sizeof(uint64_t))
        c.jlen = 0
        if c.jcap > 1 << 20 and n < c.jcap // 8:   # a huge batch passed: give the memory back
            free(c.jbuf)
            c.jbuf = NULL
            c.jcap = 0
        return out

    cdef object _export(self, int64_t gen):
        """Every key as an (n, 3) int64 array in the journal's layout, in slot order.

        ``gen`` is the current generation: a tag t is generation gen - (cur_tag - t) mod 256.
        """
        cdef Core *c = &self._c
        cdef size_t n = len(self), i, j, k = 0
        cdef size_t sizes[3]
        cdef int w
        cdef const Table *t
        cdef const Table *tables[3]
        tables[0] = &c.pos
        tables[1] = &c.neg
        tables[2] = &c.fp
        out = np.empty((n, 3), np.int64)
        cdef uint64_t *o = <uint64_t *>cnp.PyArray_DATA(out)
        cdef uint8_t tag
        with nogil:
            if c.has_zero:
                tag = c.zero_tag if c.tagged else c.cur_tag
                o[0] = 0
                o[1] = 0
                o[2] = (<uint64_t>(gen - <uint8_t>(c.cur_tag - tag)) << 2)
                k = 1
            for j in range(3):
                t = tables[j]
                w = 2 if j == 2 else 1
                if t.slots == NULL:
                    continue
                for i in range(t.mask + 1):
                    if t.slots[i * w] == 0:
                        continue
                    tag = t.tags[i] if t.tags != NULL else c.cur_tag
                    o[3 * k] = t.slots[i * w]
                    o[3 * k + 1] = t.slots[i * w + 1] if w == 2 else 0
                    o[3 * k + 2] = ((<uint64_t>(gen - <uint8_t>(c.cur_tag - tag)) << 2)
                                    | <uint64_t>j)
                    k += 1
        return out

    cdef Py_ssize_t _load(self, const int64_t[::1] a, const int64_t[::1] b,
                          const int64_t[::1] info, int64_t low, int64_t high) except -2:
        """Insert logged keys (journal layout) whose generations lie in [low, high].

        Returns -1 on success, else the index of the first invalid or repeated entry
        (the set is then damaged: the caller throws it away). The caller holds the lock.
        """
        cdef Core *c = &self._c
        cdef Py_ssize_t n = a.shape[0], j, bad = -1
        cdef size_t counts[3]
        cdef uint64_t x, y, g
        cdef int64_t gen
        cdef int table, res = 0
        cdef Table *t
        if b.shape[0] != n or info.shape[0] != n:
            raise ValueError("log columns differ in length")
        if n == 0:
            return -1
        counts[0] = counts[1] = counts[2] = 0
        with nogil:
            for j in range(n):
                table = <int>(<uint64_t>info[j] & 3)
                if table < 3:
                    counts[table] += 1
            for table in range(3):
                t = &c.pos if table == 0 else (&c.neg if table == 1 else &c.fp)
                if counts[table] and t.size + counts[table] > t.limit:
                    if _resize(t, max(_cap_for(t.size + counts[table]), t.init_cap),
                               2 if table == 2 else 1) < 0:
                        res = -1
                        break
            j = 0
            while res == 0 and j < n:
                x = <uint64_t>a[j]
                y = <uint64_t>b[j]
                table = <int>(<uint64_t>info[j] & 3)
                gen = info[j] >> 2
                if gen < low or gen > high or table == 3 or (table != 2 and y != 0):
                    bad = j
                    break
                g = <uint8_t>gen if c.tagged else c.cur_tag
                if table == 0 and x == 0:
                    if c.has_zero:
                        bad = j
                        break
                    c.has_zero = True
                    c.zero_tag = <uint8_t>g
                    c.counts[<uint8_t>g] += c.tagged
                    j += 1
                    continue
                if table == 0:
                    res = _add(&c.pos, x, 0, eos_xxh3_64_u64(x, c.seed), <uint8_t>g, 1)
                elif table == 1:
                    if not (x >> 63):
                        bad = j
                        break
                    res = _add(&c.neg, x, 0, eos_xxh3_64_u64(x, c.seed), <uint8_t>g, 1)
                else:
                    if x == 0:
                        bad = j
                        break
                    res = _add(&c.fp, x, y, x, <uint8_t>g, 2)
                if res == 0:
                    bad = j
                    break
                if res < 0:
                    break
                res = 0
                j += 1
        if res < 0:
            raise MemoryError("ExactKeySet: out of memory loading keys")
        return bad

    # -- snapshots -------------------------------------------------------------------

    cdef bytes _payload(self):
        cdef Core *c = &self._c
        cdef uint8_t flags = (_FLAG_ZERO if c.has_zero else 0) | (_FLAG_TAGGED if c.tagged else 0)
        head = _HEAD.pack(c.seed, c.pos.init_cap, c.pos.size, c.neg.size, c.fp.size, flags,
                          c.zero_tag, c.cur_tag, c.live)
        cdef Py_ssize_t nwords = c.pos.size + c.neg.size + 2 * c.fp.size
        cdef Py_ssize_t ntags = c.pos.size + c.neg.size + c.fp.size if c.tagged else 0
        body = bytearray(len(head) + 8 * nwords + ntags)
        body[:len(head)] = head
        cdef uint8_t[::1] view = body
        cdef uint64_t *words = <uint64_t *>&view[len(head)]
        cdef uint8_t *tags = &view[len(head) + 8 * nwords] if c.tagged else NULL
        with nogil:
            _collect(&c.pos, words, tags, 1)
            words += c.pos.size
            if tags != NULL:
                tags += c.pos.size
            _collect(&c.neg, words, tags, 1)
            words += c.neg.size
            if tags != NULL:
                tags += c.neg.size
            _collect(&c.fp, words, tags, 2)
        return bytes(body)

    def snapshot(self):
        """The set as bytes (versioned, checksummed frame; see :meth:`restore`)."""
        self._ready()
        with self._lock:
            self._busy = True   # _payload releases the GIL: single-key calls must wait
            try:
                payload = self._payload()
            finally:
                self._busy = False
        return pack(_KIND, _VERSION, payload)

    @classmethod
    def restore(cls, data):
        """A set equal to the one that wrote ``data`` (from :meth:`snapshot`).

        Raises CorruptSnapshotError if the bytes are truncated, altered or foreign.
        """
        _, payload = unpack(data, _KIND, (_VERSION,))
        return _from_payload(cls, PayloadReader(payload, "ExactKeySet"), True)


cdef void _undo_recs(Core *c, const Rec *r, Py_ssize_t upto, const uint8_t *out) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(upto):
        if out[j]:
            _core_discard(c, &r[j])


cdef int _fill(Table *t, const uint64_t *keys, const uint8_t *tags, size_t n, uint8_t tag,
               int w, int kind) noexcept nogil:
    """Insert n restored keys into an empty table presized for them.

    0 on success, 1 if a key is invalid or repeated, -1 if out of memory.
    """
    cdef size_t j
    cdef uint64_t a, b
    cdef int res
    if n == 0:
        return 0
    if _resize(t, max(_cap_for(n), t.init_cap), w) < 0:
        return -1
    for j in range(n):
        a = keys[j * w]
        b = keys[j * w + 1] if w == 2 else 0
        if a == 0 or (kind == KIND_NEG and not (a >> 63)):
            return 1
        res = _add(t, a, b, a if w == 2 else eos_xxh3_64_u64(a, t.seed),
                   tags[j] if tags != NULL else tag, w)
        if res != 1:
            return 1 if res == 0 else -1
    return 0


cdef ExactKeySet _from_payload(type cls, object reader, bint to_end):
    """Parse an ExactKeySet payload (also nested in a Deduplicator's)."""
    seed, init_cap, npos, nneg, nfp, flags, zero_tag, cur, live = reader.unpack(_HEAD)
    if flags & ~(_FLAG_ZERO | _FLAG_TAGGED):
        raise reader.fail(f"unknown flags {flags:#x}")
    tagged = bool(flags & _FLAG_TAGGED)
    if (init_cap < MIN_CAPACITY or init_cap & (init_cap - 1) or init_cap > 2 * _cap_for(_MAX_HINT)
            or not 1 <= live <= 128 or (not tagged and live != 1)):
        raise reader.fail(f"bad table parameters (capacity {init_cap}, generations {live})")
    if max(npos, nneg, nfp) > 2 ** 40:
        raise reader.fail("implausible key count")
    words = reader.take(8 * (npos + nneg + 2 * nfp))
    tags = reader.take(npos + nneg + nfp if tagged else 0)
    if to_end:
        reader.done()
    cdef ExactKeySet s = cls.__new__(cls)
    s._init_core(0, seed, tagged, live)
    cdef Core *c = &s._c
    c.pos.init_cap = c.fp.init_cap = init_cap
    c.cur_tag = cur
    c.has_zero = bool(flags & _FLAG_ZERO)
    c.zero_tag = zero_tag
    if c.has_zero and tagged:
        if _expired(zero_tag, cur, live):
            raise reader.fail("the key 0 carries an expired generation")
        c.counts[zero_tag] += 1
    cdef const uint8_t[::1] wv = words
    cdef const uint8_t[::1] tv = tags
    cdef const uint64_t *w = NULL
    cdef const uint8_t *t = NULL
    if wv.shape[0]:
        w = <const uint64_t *>&wv[0]
    if tv.shape[0]:
        t = &tv[0]
    cdef size_t j, n_pos = npos, n_neg = nneg, n_fp = nfp
    cdef uint8_t cur_tag = cur, n_live = live
    cdef int rc
    if t != NULL:
        for j in range(n_pos + n_neg + n_fp):
            if _expired(t[j], cur_tag, n_live):
                raise reader.fail("a key carries an expired generation")
    with nogil:
        rc = _fill(&c.pos, w, t, n_pos, cur_tag, 1, KIND_UINT)
        if rc == 0:
            rc = _fill(&c.neg, w + n_pos, t + n_pos if t != NULL else NULL, n_neg, cur_tag, 1,
                       KIND_NEG)
        if rc == 0:
            rc = _fill(&c.fp, w + n_pos + n_neg, t + n_pos + n_neg if t != NULL else NULL, n_fp,
                       cur_tag, 2, KIND_BYTES)
    if rc < 0:
        raise MemoryError("ExactKeySet.restore: out of memory")
    if rc > 0:
        raise reader.fail("a stored key is invalid or repeated")
    return s


def _restore_payload(reader):
    """Module-level hook for nested payloads (the Deduplicator's)."""
    return _from_payload(ExactKeySet, reader, False)
