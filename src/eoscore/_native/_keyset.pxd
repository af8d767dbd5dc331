cimport cython
from libc.stdint cimport int64_t, uint8_t, uint64_t

from eoscore._native._keys cimport Batch


# One open-addressing table with linear probing and backward-shift deletion.
cdef struct Table:
    uint64_t *slots      # capacity * width words; a slot whose first word is 0 is empty
    uint8_t *tags        # generation tag per slot (tagged sets), else NULL
    uint64_t *counts     # the owner's per-tag key counts (tagged sets), else NULL
    size_t mask          # capacity - 1 (capacity a power of two); 0 while unallocated
    size_t size          # occupied slots
    size_t limit         # size at which the table doubles (80% load); 0 while unallocated
    size_t init_cap      # capacity on first use; sweeps never shrink below it
    uint64_t seed        # int tables place keys by xxh3(key, seed); fingerprints by lo
    int shift            # 64 - log2(capacity): the top bits of a hash pick the home slot


# A key set: three tables so that no two key domains can meet.
cdef struct Core:
    Table pos            # ints in [1, 2**64), stored exactly (width 1)
    Table neg            # ints in [-2**63, 0), their uint64 bit pattern (width 1)
    Table fp             # bytes and str: 128-bit fingerprints lo, hi (width 2)
    uint64_t seed        # random per set; seeds placement and fingerprints
    bint has_zero        # the int 0 is in the set (0 marks empty slots)
    uint8_t zero_tag     # its generation tag
    bint tagged          # slots carry generation tags (the Deduplicator's TTL)
    uint8_t cur_tag      # tag given to keys added now
    uint8_t live         # tags cur_tag - live + 1 .. cur_tag are live
    uint64_t counts[256] # keys per tag (tagged sets)
    bint journal         # log every key added to jbuf (the Deduplicator's checkpoint log)
    uint64_t *jbuf       # journal: 3 words per added key: a, b, jgen << 2 | table (0 pos, 1 neg, 2 fp)
    size_t jlen          # keys in the journal since the last drain
    size_t jcap          # journal capacity, in keys (reserved before each batch)
    int64_t jgen         # generation written with each journaled key (set by the owner)


cdef class ExactKeySet:
    cdef Core _c                   # the tables
    cdef bint _busy                # a batch is running (maybe without the GIL)
    cdef cython.pymutex _lock      # serialises batches; single-key calls wait on it if _busy

    cdef int _init_core(self, uint64_t hint, uint64_t seed, bint tagged, int live) except -1
    cdef int _ready(self) except -1
    cdef int _run(self, const Batch *b, object owner, int op, uint8_t *out) except -1
    cdef object _batch(self, object keys, int op)
    cdef Py_ssize_t _rotate(self, uint64_t steps) except -1
    cdef bytes _payload(self)
    cdef int _jreserve(self, size_t more) except -1
    cdef object _jdrain(self)
    cdef object _export(self, int64_t gen)
    cdef Py_ssize_t _load(self, const int64_t[::1] a, const int64_t[::1] b,
                          const int64_t[::1] info, int64_t low, int64_t high) except -2
