# Native int64 key -> slot index for columnar state (eoscore.state.ColumnarState).
#
# Open addressing with linear probing and backward-shift deletion (no
# tombstones, so lookups never slow down as keys come and go). Buckets are
# mapped with Lemire's multiply-shift range reduction, so the table need not be
# a power of two and stays near its target load of 0.7 rather than up to 2x over.
# Slots are dense row numbers into the state's column arrays; freed slots are
# reused (most recently freed first). Batch methods run without the GIL and
# prefetch the buckets of a block of keys before probing them.

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

import numpy as np

from eoscore._native._xxh3 cimport eos_xxh3_64_u64


cdef extern from *:
    """
    static inline uint64_t eos_ki_range(uint64_t h, uint64_t n) {
        return (uint64_t)(((__uint128_t)h * n) >> 64);
    }
    #define eos_ki_prefetch(p) __builtin_prefetch((p), 1, 1)
    #include <stdlib.h>
    #include <string.h>
    #include <sys/mman.h>
    /* Tables of 4 MiB and up go on 2 MiB-aligned memory with transparent huge
       pages requested: random probes then miss the cache but not the TLB too. */
    #define EOS_KI_BIG ((size_t)4 << 20)
    static void *eos_ki_alloc(size_t bytes) {  /* zeroed */
        void *p = NULL;
        if (bytes < EOS_KI_BIG) return calloc(1, bytes);
        if (posix_memalign(&p, (size_t)2 << 20, bytes) != 0) return NULL;
    #ifdef MADV_HUGEPAGE
        madvise(p, bytes, MADV_HUGEPAGE);
    #endif
        memset(p, 0, bytes);  /* touch now: huge pages, faulted in order */
        return p;
    }
    static void eos_ki_free(void *p, size_t bytes) {
        (void)bytes;
        free(p);
    }
    """
    uint64_t eos_ki_range(uint64_t h, uint64_t n) nogil
    void eos_ki_prefetch(const void *p) nogil
    void *eos_ki_alloc(size_t nbytes) nogil
    void eos_ki_free(void *p, size_t nbytes) nogil


cdef struct Entry:
    int64_t key   # the key stored in this bucket
    int64_t tag   # its slot + 1; 0 marks an empty bucket (so fresh zero pages are empty)


DEF BLOCK = 16          # keys hashed and prefetched ahead in batch methods
DEF MIN_BUCKETS = 16
DEF REGIONS = 1024       # build(): regions the table is cut into, at most ...
DEF REGION_BITS = 16     # ... unless they'd exceed 2**16 buckets (offsets fill tag's top 16 bits)


cdef class KeyIndex:
    """Maps int64 keys to dense int64 slots (row numbers), reusing freed slots."""

    cdef Entry *table        # buckets
    cdef uint64_t nbuckets   # allocated buckets
    cdef Py_ssize_t count    # keys present
    cdef int64_t next_slot   # slots [0, next_slot) have been handed out at least once
    cdef int64_t *free_slots # stack of freed slots
    cdef Py_ssize_t nfree    # entries on the stack
    cdef Py_ssize_t free_cap # allocated stack entries

    def __cinit__(self, Py_ssize_t capacity=0):
        self.table = NULL
        self.free_slots = NULL
        self.nbuckets = 0
        self.count = 0
        self.next_slot = 0
        self.nfree = 0
        self.free_cap = 0
        self._alloc(self._buckets_for(capacity))

    def __dealloc__(self):
        eos_ki_free(self.table, self.nbuckets * sizeof(Entry))
        free(self.free_slots)

    cdef uint64_t _buckets_for(self, Py_ssize_t n) noexcept:
        cdef uint64_t b = <uint64_t>(n / 0.7) + 1
        return b if b > MIN_BUCKETS else MIN_BUCKETS

    cdef int _alloc(self, uint64_t nbuckets) except -1:
        cdef Entry *t = <Entry *>eos_ki_alloc(nbuckets * sizeof(Entry))
        if t == NULL:
            raise MemoryError()
        eos_ki_free(self.table, self.nbuckets * sizeof(Entry))
        self.table = t
        self.nbuckets = nbuckets
        return 0

    cdef int _resize(self, uint64_t nbuckets) except -1:
        cdef Entry *old = self.table
        cdef uint64_t oldn = self.nbuckets, i, b
        cdef Entry *t = <Entry *>eos_ki_alloc(nbuckets * sizeof(Entry))
        if t == NULL:
            raise MemoryError()
        with nogil:
            for i in range(oldn):
                if old[i].tag != 0:
                    b = eos_ki_range(eos_xxh3_64_u64(<uint64_t>old[i].key, 0), nbuckets)
                    while t[b].tag != 0:
                        b += 1
                        if b == nbuckets:
                            b = 0
                    t[b] = old[i]
        self.table = t
        self.nbuckets = nbuckets
        eos_ki_free(old, oldn * sizeof(Entry))
        return 0

    cdef inline int _grow_for(self, Py_ssize_t extra) except -1:
        if <uint64_t>(self.count + extra) * 10 > self.nbuckets * 7:
            self._resize(self._buckets_for(2 * (self.count + extra)))
        return 0

    cdef inline Py_ssize_t _home_block(self, const int64_t[::1] keys, Py_ssize_t i,
                                       Py_ssize_t n, uint64_t *homes) noexcept nogil:
        """Home buckets of keys[i:i+BLOCK] into homes, prefetched; how many there were."""
        cdef Py_ssize_t j, m = min(<Py_ssize_t>BLOCK, n - i)
        for j in range(m):
            homes[j] = eos_ki_range(eos_xxh3_64_u64(<uint64_t>keys[i + j], 0), self.nbuckets)
            eos_ki_prefetch(&self.table[homes[j]])
        return m

    cdef inline int64_t _find(self, int64_t key, uint64_t b) noexcept nogil:
        cdef Entry *t = self.table
        while t[b].tag != 0:
            if t[b].key == key:
                return t[b].tag - 1
            b += 1
            if b == self.nbuckets:
                b = 0
        return -1

    cdef inline int64_t _insert(self, int64_t key, uint64_t b) noexcept nogil:
        # Caller has ensured room for one more key.
        cdef Entry *t = self.table
        cdef int64_t slot
        while t[b].tag != 0:
            if t[b].key == key:
                return t[b].tag - 1
            b += 1
            if b == self.nbuckets:
                b = 0
        if self.nfree:
            self.nfree -= 1
            slot = self.free_slots[self.nfree]
        else:
            slot = self.next_slot
            self.next_slot += 1
        t[b].key = key
        t[b].tag = slot + 1
        self.count += 1
        return slot

    cdef inline bint _place(self, int64_t key, uint64_t b, int64_t slot) noexcept nogil:
        # Insert key at the given slot; False (and nothing changed) if it is present.
        # Caller has ensured room for one more key.
        cdef Entry *t = self.table
        while t[b].tag != 0:
            if t[b].key == key:
                return False
            b += 1
            if b == self.nbuckets:
                b = 0
        t[b].key = key
        t[b].tag = slot + 1
        self.count += 1
        return True

    cdef inline int64_t _remove(self, int64_t key, uint64_t b) noexcept nogil:
        # Returns the freed slot or -1; the caller pushes it on the free stack.
        cdef Entry *t = self.table
        cdef uint64_t n = self.nbuckets, i, j, home
        cdef int64_t slot
        while t[b].tag != 0:
            if t[b].key == key:
                break
            b += 1
            if b == n:
                b = 0
        else:
            return -1
        slot = t[b].tag - 1
        i = b
        j = b
        while True:
            j += 1
            if j == n:
                j = 0
            if t[j].tag == 0:
                break
            home = eos_ki_range(eos_xxh3_64_u64(<uint64_t>t[j].key, 0), n)
            # The entry at j may move into the hole at i unless its home lies
            # cyclically in (i, j].
            if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
                continue
            t[i] = t[j]
            i = j
        t[i].tag = 0
        self.count -= 1
        return slot

    cdef int _push_free(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t cap
        cdef int64_t *p
        if self.nfree + extra <= self.free_cap:
            return 0
        cap = max(self.free_cap * 2, self.nfree + extra, 64)
        p = <int64_t *>realloc(self.free_slots, cap * sizeof(int64_t))
        if p == NULL:
            raise MemoryError()
        self.free_slots = p
        self.free_cap = cap
        return 0

    # ---- public API ------------------------------------------------------------

    def __len__(self):
        return self.count

    @property
    def slot_limit(self):
        """One past the highest slot ever handed out (size column arrays to this)."""
        return self.next_slot

    def reserve(self, Py_ssize_t n):
        """Make room for n keys in total without further rehashing."""
        if self._buckets_for(n) > self.nbuckets:
            self._resize(self._buckets_for(n))

    def get(self, int64_t key):
        """The key's slot, or -1."""
        return self._find(key, eos_ki_range(eos_xxh3_64_u64(<uint64_t>key, 0), self.nbuckets))

    def get_or_insert(self, int64_t key):
        """The key's slot, inserting the key if absent."""
        self._grow_for(1)
        return self._insert(key, eos_ki_range(eos_xxh3_64_u64(<uint64_t>key, 0), self.nbuckets))

    def remove(self, int64_t key):
        """Remove the key; return its freed slot or -1 if absent."""
        cdef int64_t slot
        self._push_free(1)
        slot = self._remove(key, eos_ki_range(eos_xxh3_64_u64(<uint64_t>key, 0), self.nbuckets))
        if slot >= 0:
            self.free_slots[self.nfree] = slot
            self.nfree += 1
        return slot

    def lookup(self, const int64_t[::1] keys not None):
        """Slots of keys as an int64 array, -1 where a key is absent."""
        cdef Py_ssize_t n = keys.shape[0], i, j, m
        out = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] o = out
        cdef uint64_t homes[BLOCK]
        with nogil:
            i = 0
            while i < n:
                m = self._home_block(keys, i, n, homes)
                for j in range(m):
                    o[i + j] = self._find(keys[i + j], homes[j])
                i += m
        return out

    def insert(self, const int64_t[::1] keys not None):
        """Slots of keys as an int64 array, inserting absent keys."""
        cdef Py_ssize_t n = keys.shape[0], i, j, m
        out = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] o = out
        cdef uint64_t homes[BLOCK]
        self._grow_for(n)
        with nogil:
            i = 0
            while i < n:
                m = self._home_block(keys, i, n, homes)
                for j in range(m):
                    o[i + j] = self._insert(keys[i + j], homes[j])
                i += m
        return out

    cdef int _build_fill(self, const int64_t[::1] keys, int64_t first, int64_t *bad) except -1:
        """build() into an empty table: keys are written in home-bucket order.

        Under linear probing a key goes to the first free bucket at or after
        its home; taken in home order that is max(home, previous + 1), so the
        table is written front to back and never probed. Pass 1 counts the
        keys per region of 2**shift buckets; pass 2 copies them, grouped by
        region, to the last n buckets of the (still empty) table, each with
        its slot and its home's offset in the region (the top 16 bits of
        tag); pass 3 takes one region at a time, sorts it by home (a counting
        sort that stays in cache) and writes it out. The writes trail the
        regions still to be read; should they catch up, the rest is moved to
        a side buffer first. Buckets the writes skip get zeroed. The few keys
        pushed past the last bucket then wrap around with an ordinary probe.
        A repeated key is met among the keys placed between its home and its
        bucket, exactly where a probe would meet it. Returns 0, or 1 with
        *bad set to a repeated key (the table is then empty again).
        """
        cdef Py_ssize_t n = keys.shape[0], i, j, a, e, m, maxpart = 0, part, nparts
        cdef uint64_t nb = self.nbuckets, home, base, region, zone = nb - <uint64_t>n
        cdef int shift = 0
        cdef Py_ssize_t *starts = NULL
        cdef Py_ssize_t *counts = NULL
        cdef Entry *t = self.table
        cdef Entry *buf = t + zone  # pass 2's output, in the table's last n buckets
        cdef Entry *moved = NULL    # the unread rest of buf, once the writes catch up
        cdef Entry *ordered = NULL
        cdef Entry *wrapped = NULL  # keys pushed past the last bucket
        cdef Py_ssize_t nwrapped = 0, wcap = 0
        cdef int64_t last = -1, pos, q, key, reach, lo, hi
        cdef Py_ssize_t off
        cdef Entry *moving
        cdef int64_t slot_mask = (<int64_t>1 << 48) - 1  # tag bits below the home offset
        cdef int rc = 0
        while (nb >> shift) >= REGIONS and shift < REGION_BITS:
            shift += 1
        region = <uint64_t>1 << shift
        nparts = <Py_ssize_t>(nb >> shift) + 1
        starts = <Py_ssize_t *>calloc(nparts + 1, sizeof(Py_ssize_t))
        counts = <Py_ssize_t *>malloc((region + 1) * sizeof(Py_ssize_t))
        if starts == NULL or counts == NULL:
            free(starts)
            free(counts)
            raise MemoryError()
        with nogil:
            # Pass 1: keys per region.
            for i in range(n):
                home = eos_ki_range(eos_xxh3_64_u64(<uint64_t>keys[i], 0), nb)
                starts[(home >> shift) + 1] += 1
            for part in range(nparts):
                if starts[part + 1] > maxpart:
                    maxpart = starts[part + 1]
                starts[part + 1] += starts[part]
            # Pass 2: grouped by region; starts[p] ends as region p's end.
            for i in range(n):
                home = eos_ki_range(eos_xxh3_64_u64(<uint64_t>keys[i], 0), nb)
                part = <Py_ssize_t>(home >> shift)
                buf[starts[part]].key = keys[i]
                buf[starts[part]].tag = (first + i + 1) | <int64_t>((home & (region - 1)) << 48)
                starts[part] += 1
        ordered = <Entry *>malloc((maxpart + 1) * sizeof(Entry))
        if ordered == NULL:
            rc = -1
        else:
            with nogil:
                # Pass 3: region by region, counting-sort by home, then fill in order.
                a = 0
                for part in range(nparts):
                    e = starts[part]
                    m = e - a
                    base = <uint64_t>part << shift
                    # Furthest bucket this region can write to; past zone + e lies
                    # unread input (regions part + 1, ...).
                    reach = (last if last > <int64_t>(base + region - 1) else
                             <int64_t>(base + region - 1)) + m
                    if moved == NULL and e < n and reach >= <int64_t>(zone + <uint64_t>e):
                        moved = <Entry *>malloc((n - a) * sizeof(Entry))  # this region on
                        if moved == NULL:
                            rc = -1
                            break
                        memcpy(moved, buf + a, (n - a) * sizeof(Entry))
                        buf = moved - a
                    for j in range(<Py_ssize_t>region + 1):
                        counts[j] = 0
                    for j in range(m):
                        counts[(<uint64_t>buf[a + j].tag >> 48) + 1] += 1
                    for j in range(<Py_ssize_t>region):
                        counts[j + 1] += counts[j]
                    for j in range(m):
                        off = <Py_ssize_t>(<uint64_t>buf[a + j].tag >> 48)
                        ordered[counts[off]] = buf[a + j]
                        counts[off] += 1
                    # Clear what pass 2 left in the region's buckets not written yet
                    # (its own input is in ordered now).
                    lo = last + 1 if last + 1 > <int64_t>base else <int64_t>base
                    hi = <int64_t>(base + region) if base + region < nb else <int64_t>nb
                    if hi > lo:
                        memset(&t[lo], 0, (hi - lo) * sizeof(Entry))
                    for j in range(m):
                        q = <int64_t>(base + (<uint64_t>ordered[j].tag >> 48))
                        ordered[j].tag &= slot_mask
                        pos = q if q > last else last + 1
                        key = ordered[j].key
                        while q < pos and q < <int64_t>nb:
                            if t[q].key == key:
                                rc = 1
                                break
                            q += 1
                        if rc:
                            bad[0] = key
                            break
                        if pos < <int64_t>nb:
                            t[pos] = ordered[j]
                            last = pos
                        else:  # past the end: placed after the last region
                            if nwrapped == wcap:
                                wcap = 2 * wcap + 64
                                moving = <Entry *>realloc(wrapped, wcap * sizeof(Entry))
                                if moving == NULL:
                                    rc = -1
                                    break
                                wrapped = moving
                            wrapped[nwrapped] = ordered[j]
                            nwrapped += 1
                    if rc:
                        break
                    a = e
                if rc == 0:
                    if last + 1 < <int64_t>nb:
                        memset(&t[last + 1], 0, (nb - <uint64_t>(last + 1)) * sizeof(Entry))
                    # Keys pushed past the end: the run before them reaches the last
                    # bucket, so a probe for them continues from bucket 0.
                    for j in range(nwrapped):
                        key = wrapped[j].key
                        q = 0
                        while t[q].tag != 0:
                            if t[q].key == key:
                                rc = 1
                                break
                            q += 1
                        if rc:
                            bad[0] = key
                            break
                        t[q] = wrapped[j]
        free(starts)
        free(counts)
        free(ordered)
        free(moved)
        free(wrapped)
        if rc != 0:  # back to empty, as it was
            memset(t, 0, nb * sizeof(Entry))
        if rc < 0:
            raise MemoryError()
        self.count += n if rc == 0 else 0
        return rc

    def build(self, const int64_t[::1] keys not None):
        """Bulk-insert distinct, absent keys at slots slot_limit, slot_limit + 1, ...

        The fast path for restoring a checkpoint: into an empty index the
        table is written in bucket order, without probing (see _build_fill);
        otherwise keys are inserted one by one, with no lookup pass and no
        free-slot reuse. Returns the first slot. Raises ValueError if a key
        repeats or is already present: an empty index is then left empty, a
        non-empty one inconsistent (discard it; restore does).
        """
        cdef Py_ssize_t n = keys.shape[0], i, j, m
        cdef int64_t first = self.next_slot, bad = 0
        cdef uint64_t homes[BLOCK]
        cdef bint dup = False
        if n == 0:
            return first
        self._grow_for(n)
        if self.count == 0 and first + n < (<int64_t>1 << 47):
            dup = self._build_fill(keys, first, &bad)
        else:
            with nogil:
                i = 0
                while i < n and not dup:
                    m = self._home_block(keys, i, n, homes)
                    for j in range(m):
                        if not self._place(keys[i + j], homes[j], first + i + j):
                            bad = keys[i + j]
                            dup = True
                            break
                    i += m
        if dup:
            raise ValueError(f"key {bad} repeats or is already indexed")
        self.next_slot = first + n
        return first

    def remove_many(self, const int64_t[::1] keys not None):
        """Remove keys; return their freed slots (-1 where absent)."""
        cdef Py_ssize_t n = keys.shape[0], i
        cdef int64_t slot
        out = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] o = out
        self._push_free(n)
        with nogil:
            for i in range(n):
                slot = self._remove(keys[i], eos_ki_range(eos_xxh3_64_u64(<uint64_t>keys[i], 0),
                                                          self.nbuckets))
                o[i] = slot
                if slot >= 0:
                    self.free_slots[self.nfree] = slot
                    self.nfree += 1
        return out
