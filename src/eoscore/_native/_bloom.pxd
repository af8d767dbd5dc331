cimport cython
from libc.stdint cimport uint8_t, uint64_t

from eoscore._native._keys cimport Batch


cdef class BloomFilter:
    cdef uint64_t *_words          # _nblocks blocks of 8 words (one 64-byte cache line each)
    cdef uint64_t _nblocks         # number of blocks, in [1, 2**32)
    cdef uint64_t _seed            # hash seed (random per filter, kept in snapshots)
    cdef Py_ssize_t _capacity      # keys the filter was sized for
    cdef double _fp_rate           # false-positive rate at _capacity keys
    cdef uint64_t _count           # insertions that set at least one new bit (~distinct keys)
    cdef bint _busy                # a batch is running (maybe without the GIL)
    cdef cython.pymutex _lock      # serialises batches; single-key calls wait on it if _busy

    cdef int _setup(self, Py_ssize_t capacity, double fp_rate, uint64_t nblocks,
                    uint64_t seed) except -1
    cdef int _ready(self) except -1
    cdef uint64_t _hash_one(self, object key) except? 0
    cdef int _run(self, const Batch *bp, object owner, int op, uint8_t *out) except -1
    cdef object _hashes(self, object keys)
    cdef void _clear(self) noexcept nogil
    cdef void _mark_seen(self, const uint64_t *h, Py_ssize_t n, uint8_t *new) noexcept nogil
    cdef void _insert_new(self, const uint64_t *h, Py_ssize_t n, uint8_t *new) noexcept nogil
    cdef bytes _payload(self)
