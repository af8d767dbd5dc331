# One topic-partition's pending-offset window, for _offsets.OffsetTracker.
# Invariants: origin <= low <= next <= end; set bits lie in [low, end) and are
# exactly npending; every offset below low is done.

from libc.stdint cimport int64_t, uint8_t, uint64_t

cdef enum:
    OFFSET_BITS = 62            # offsets are in [0, 2**OFFSET_BITS]


cdef class OffsetWindow:
    cdef uint64_t *words        # pending bits; bit b of words[start + w] is origin + 64*w + b
    cdef size_t capacity        # words allocated
    cdef size_t start           # index of the first live word
    cdef size_t nwords          # live words, from start
    cdef int64_t origin         # offset of bit 0 of words[start]; a multiple of 64
    cdef int64_t low            # committable: lowest pending offset, or end when none
    cdef int64_t next           # one past the last handed-out offset
    cdef int64_t end            # one past the last offset whose state is known (>= next)
    cdef int64_t npending       # set bits
    cdef bint started           # False until the first track() or decode()

    # Empty window at off: everything below it is done.
    cdef void begin(self, int64_t off) noexcept nogil
    # Hand out off (> every earlier one): 1 = must be processed, 0 = restored as done.
    cdef int track(self, int64_t off) except -1 nogil
    # Complete off (< next): True if it was pending.
    cdef bint complete(self, int64_t off) noexcept nogil
    # Move low to the lowest pending offset and drop the words below it.
    cdef void advance(self) noexcept nogil
    # Commit metadata for low, at most max_bytes (>= MIN_ENCODE_BYTES) long.
    cdef bytes encode(self, Py_ssize_t max_bytes)
    # Start at offset with the done set in data; CorruptSnapshotError before any change.
    cdef int decode(self, int64_t offset, const uint8_t[::1] data) except -1

    # Helpers (see _offset_window.pyx).
    cdef uint64_t *_word(self, int64_t off) noexcept nogil
    cdef bint _get(self, int64_t off) noexcept nogil
    cdef int _reserve(self, int64_t off) except -1 nogil
    cdef int64_t _fill(self, int64_t a, int64_t b, bint pending) noexcept nogil
    cdef int64_t _next_with(self, int64_t pos, int64_t limit, bint pending) noexcept nogil
    cdef int64_t _last_done(self, int64_t floor, int64_t limit) noexcept nogil
    cdef uint64_t _pending64(self, int64_t off) noexcept nogil
