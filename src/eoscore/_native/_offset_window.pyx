"""One partition's pending-offset window and its commit-metadata codec.

The window keeps one bit per offset in ``[low, end)``: set means "pending"
(handed out, or restored as not done, and not completed yet).  Offsets are
handed out in increasing order, so an offset skipped between two handed-out
ones never exists (transaction marker, compaction gap) and counts as done.
Used by ``_offsets.OffsetTracker``; rules and format in ``docs/trackers.md``.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memmove, memset

from eoscore._native._xxh3 cimport eos_xxh3_64

from eoscore.errors import CorruptSnapshotError

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil
    int __builtin_clzll(unsigned long long) nogil
    int __builtin_popcountll(unsigned long long) nogil

cdef enum:
    TAG_BITSET = 0xB1           # metadata body: bit i set = offset base + i done
    TAG_RUNS = 0xB2             # metadata body: varint run lengths, pending first
    CHECKSUM_BYTES = 4          # low 32 bits of xxh3-64 of everything before them
    MIN_WORDS = 16

cdef int64_t OFFSET_MAX = (<int64_t>1) << OFFSET_BITS
cdef int64_t SPAN_MAX = 1 << 28        # metadata never describes more offsets (32 MiB bitmap)
cdef uint64_t ALL = 0xFFFFFFFFFFFFFFFFULL

MIN_ENCODE_BYTES = 24           # tag + varint base (<= 10) + varint span (<= 5) + checksum
MAX_SPAN = SPAN_MAX


cdef inline int _varlen(uint64_t v) noexcept nogil:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline Py_ssize_t _put_varint(uint8_t *out, uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 0
    while v >= 0x80:
        out[n] = <uint8_t>(v & 0x7F) | 0x80
        v >>= 7
        n += 1
    out[n] = <uint8_t>v
    return n + 1


cdef Py_ssize_t _get_varint(const uint8_t *data, Py_ssize_t pos, Py_ssize_t size,
                            uint64_t *value) noexcept nogil:
    """Position after the varint at pos, or -1 when it is truncated or over 63 bits."""
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t b
    while pos < size and shift < 63:
        b = data[pos]
        pos += 1
        v |= <uint64_t>(b & 0x7F) << shift
        if b < 0x80:
            if v >> 63:
                return -1
            value[0] = v
            return pos
        shift += 7
    return -1


cdef class OffsetWindow:
    """The pending-bit window of one topic-partition (fields: see the .pxd)."""

    def __cinit__(self):
        self.words = NULL
        self.capacity = self.start = self.nwords = 0
        self.origin = self.low = self.next = self.end = self.npending = 0
        self.started = False

    def __dealloc__(self):
        free(self.words)

    cdef uint64_t *_word(self, int64_t off) noexcept nogil:
        return &self.words[self.start + <size_t>((off - self.origin) >> 6)]

    cdef bint _get(self, int64_t off) noexcept nogil:
        if off < self.origin or off >= self.origin + 64 * <int64_t>self.nwords:
            return False
        return (self._word(off)[0] >> ((off - self.origin) & 63)) & 1

    cdef void begin(self, int64_t off) noexcept nogil:
        """Empty window at off: everything below it is done."""
        self.started = True
        self.start = self.nwords = 0
        self.origin = off & ~(<int64_t>63)
        self.low = self.next = self.end = off
        self.npending = 0

    cdef int _reserve(self, int64_t off) except -1 nogil:
        """Make the live words cover off (>= origin); new words are zero."""
        cdef size_t need = <size_t>((off - self.origin) >> 6) + 1
        cdef size_t capacity
        cdef uint64_t *words
        if need <= self.nwords:
            return 0
        if self.start + need > self.capacity:
            if self.start:
                memmove(self.words, self.words + self.start, self.nwords * sizeof(uint64_t))
                self.start = 0
            if need * 2 > self.capacity:
                capacity = need * 2 if need * 2 > MIN_WORDS else MIN_WORDS
                words = <uint64_t *>realloc(self.words, capacity * sizeof(uint64_t))
                if words == NULL:
                    with gil:
                        raise MemoryError(f"OffsetTracker: cannot grow a window to {need} words")
                self.words = words
                self.capacity = capacity
        memset(self.words + self.start + self.nwords, 0,
               (need - self.nwords) * sizeof(uint64_t))
        self.nwords = need
        return 0

    cdef int64_t _fill(self, int64_t a, int64_t b, bint pending) noexcept nogil:
        """Set (pending) or clear bits of [a, b) inside the live words; returns bits changed."""
        cdef int64_t changed = 0
        cdef int64_t ia, ib
        cdef size_t wa, wb, w
        cdef uint64_t m
        if a < self.origin:
            a = self.origin
        if b > self.origin + 64 * <int64_t>self.nwords:
            b = self.origin + 64 * <int64_t>self.nwords
        if a >= b:
            return 0
        ia = a - self.origin
        ib = b - 1 - self.origin
        wa = self.start + <size_t>(ia >> 6)
        wb = self.start + <size_t>(ib >> 6)
        for w in range(wa, wb + 1):
            m = ALL
            if w == wa:
                m &= ALL << (ia & 63)
            if w == wb:
                m &= ALL >> (63 - (ib & 63))
            if pending:
                changed += __builtin_popcountll(~self.words[w] & m)
                self.words[w] |= m
            else:
                changed += __builtin_popcountll(self.words[w] & m)
                self.words[w] &= ~m
        return changed

    cdef void advance(self) noexcept nogil:
        """Move low to the lowest pending offset and drop the words below it."""
        cdef size_t w
        cdef uint64_t word
        if self.npending == 0:
            self.low = self.end
            self.start = self.nwords = 0
            self.origin = self.end & ~(<int64_t>63)
            return
        w = <size_t>((self.low - self.origin) >> 6)
        word = self.words[self.start + w] & (ALL << ((self.low - self.origin) & 63))
        while word == 0:
            w += 1
            word = self.words[self.start + w]
        self.low = self.origin + 64 * <int64_t>w + __builtin_ctzll(word)
        self.start += w
        self.nwords -= w
        self.origin += 64 * <int64_t>w

    cdef int track(self, int64_t off) except -1 nogil:
        """Hand out off (> every earlier one); 1 if it must be processed, 0 if done."""
        cdef int result
        if not self.started:
            self.begin(off)
        if self.next < self.end:
            # Restored offsets the consumer skipped no longer exist.
            self.npending -= self._fill(self.next, off if off < self.end else self.end, False)
        if off < self.end:
            result = self._get(off)
        else:
            if self.npending == 0:
                self.begin(off)
            self._reserve(off)
            self._word(off)[0] |= (<uint64_t>1) << ((off - self.origin) & 63)
            self.npending += 1
            self.end = off + 1
            result = 1
        self.next = off + 1
        return result

    cdef bint complete(self, int64_t off) noexcept nogil:
        """Complete off (< next); True if it was pending."""
        cdef uint64_t *word
        cdef uint64_t bit
        if off < self.low or off >= self.end:
            return False
        word = self._word(off)
        bit = (<uint64_t>1) << ((off - self.origin) & 63)
        if not word[0] & bit:
            return False
        word[0] &= ~bit
        self.npending -= 1
        return True

    cdef int64_t _next_with(self, int64_t pos, int64_t limit, bint pending) noexcept nogil:
        """First offset in [pos, limit) whose bit equals pending, else limit."""
        cdef size_t w
        cdef uint64_t word
        cdef int64_t found
        if pos >= limit:
            return limit
        w = <size_t>((pos - self.origin) >> 6)
        word = self.words[self.start + w]
        if not pending:
            word = ~word
        word &= ALL << ((pos - self.origin) & 63)
        while word == 0:
            w += 1
            if self.origin + 64 * <int64_t>w >= limit:
                return limit
            word = self.words[self.start + w] if w < self.nwords else 0
            if not pending:
                word = ~word
        found = self.origin + 64 * <int64_t>w + __builtin_ctzll(word)
        return found if found < limit else limit

    cdef int64_t _last_done(self, int64_t floor, int64_t limit) noexcept nogil:
        """Last offset in [floor, limit) whose bit is clear, else floor - 1."""
        cdef int64_t top = limit - 1
        cdef size_t w
        cdef uint64_t word
        cdef int64_t found
        if top < floor:
            return floor - 1
        w = <size_t>((top - self.origin) >> 6)
        word = ~self.words[self.start + w] & (ALL >> (63 - ((top - self.origin) & 63)))
        while word == 0:
            if w == 0:
                return floor - 1
            w -= 1
            word = ~self.words[self.start + w]
        found = self.origin + 64 * <int64_t>w + 63 - __builtin_clzll(word)
        return found if found >= floor else floor - 1

    cdef uint64_t _pending64(self, int64_t off) noexcept nogil:
        """The 64 pending bits from off (words past the live ones read as zero)."""
        cdef int64_t idx = off - self.origin
        cdef size_t w = <size_t>(idx >> 6)
        cdef int s = idx & 63
        cdef uint64_t lo = self.words[self.start + w] if w < self.nwords else 0
        cdef uint64_t hi
        if s == 0:
            return lo
        hi = self.words[self.start + w + 1] if w + 1 < self.nwords else 0
        return (lo >> s) | (hi << (64 - s))

    cdef bytes encode(self, Py_ssize_t max_bytes):
        self.advance()
        cdef int64_t base = self.low
        cdef int64_t span = self.end - base
        if span > SPAN_MAX:
            span = SPAN_MAX
        cdef Py_ssize_t budget = max_bytes - 1 - _varlen(base) - _varlen(span) - CHECKSUM_BYTES
        cdef Py_ssize_t run_room = budget if budget < 10 * (span // 2 + 1) else 10 * (span // 2 + 1)
        cdef int64_t limit = base + span
        # Bitset: as many offsets as fit, trimmed to end on a done offset.
        cdef int64_t bit_span = span if span <= 8 * <int64_t>budget else 8 * <int64_t>budget
        bit_span = self._last_done(base, base + bit_span) + 1 - base
        # Runs: whole (pending, done) pairs while they fit.
        runs = bytearray(run_room + 20)
        cdef uint8_t *r = runs
        cdef Py_ssize_t nruns = 0, cost
        cdef int64_t pos = base, pend, dend, run_span = 0
        while pos < limit:
            pend = self._next_with(pos, limit, False)
            if pend >= limit:
                break
            dend = self._next_with(pend, limit, True)
            cost = _varlen(pend - pos) + _varlen(dend - pend)
            if nruns + cost > budget:
                break
            nruns += _put_varint(r + nruns, pend - pos)
            nruns += _put_varint(r + nruns, dend - pend)
            run_span = dend - base
            pos = dend
        cdef Py_ssize_t bit_bytes = (bit_span + 7) // 8
        use_bits = bit_span > run_span or (bit_span == run_span and bit_bytes < nruns)
        cdef int64_t covered = bit_span if use_bits else run_span
        cdef Py_ssize_t body = bit_bytes if use_bits else nruns
        out = bytearray(1 + _varlen(base) + _varlen(covered) + body + CHECKSUM_BYTES)
        cdef uint8_t *o = out
        cdef Py_ssize_t n = 0, i, j
        cdef uint64_t done, checksum
        o[0] = TAG_BITSET if use_bits else TAG_RUNS
        n = 1
        n += _put_varint(o + n, base)
        n += _put_varint(o + n, covered)
        if use_bits:
            i = 0
            while i < bit_bytes:
                done = ~self._pending64(base + 8 * i)
                if covered - 8 * i < 64:
                    done &= ((<uint64_t>1) << (covered - 8 * i)) - 1
                j = 0
                while j < 8 and i < bit_bytes:
                    o[n] = <uint8_t>(done >> (8 * j))
                    n += 1
                    i += 1
                    j += 1
        else:
            for i in range(nruns):
                o[n + i] = r[i]
            n += nruns
        checksum = eos_xxh3_64(o, n, 0)
        for i in range(CHECKSUM_BYTES):
            o[n + i] = <uint8_t>(checksum >> (8 * i))
        return bytes(out)

    cdef int decode(self, int64_t offset, const uint8_t[::1] data) except -1:
        """Start at offset with the done set in data.

        Step 1 checks everything (checksum, tag, header, body lengths, run sums)
        and raises CorruptSnapshotError; only then step 2 builds the window.
        """
        cdef Py_ssize_t size = data.shape[0]
        cdef const uint8_t *d = &data[0] if size else NULL
        cdef uint64_t checksum = 0, base, span, pend, dend, total = 0
        cdef Py_ssize_t pos, i, body
        # Step 1: validate.
        if size < 3 + CHECKSUM_BYTES:
            raise CorruptSnapshotError(f"offset metadata: {size} bytes is too short (truncated?)")
        for i in range(CHECKSUM_BYTES):
            checksum |= <uint64_t>d[size - CHECKSUM_BYTES + i] << (8 * i)
        if checksum != (eos_xxh3_64(d, size - CHECKSUM_BYTES, 0) & 0xFFFFFFFFULL):
            raise CorruptSnapshotError(
                "offset metadata: checksum mismatch (not written by OffsetTracker, or corrupted)"
            )
        size -= CHECKSUM_BYTES
        if d[0] != TAG_BITSET and d[0] != TAG_RUNS:
            raise CorruptSnapshotError(f"offset metadata: unknown format tag {d[0]:#x}")
        pos = _get_varint(d, 1, size, &base)
        if pos >= 0:
            pos = _get_varint(d, pos, size, &span)
        if pos < 0:
            raise CorruptSnapshotError("offset metadata: truncated header")
        if <int64_t>base != offset:
            raise CorruptSnapshotError(
                f"offset metadata was written for offset {base}, but the committed offset is "
                f"{offset}: start without it (decode(tp, {offset}))"
            )
        if span > <uint64_t>SPAN_MAX or base + span > <uint64_t>OFFSET_MAX:
            raise CorruptSnapshotError(f"offset metadata: span {span} is out of range")
        body = size - pos
        if d[0] == TAG_BITSET:
            if body != <Py_ssize_t>((span + 7) // 8):
                raise CorruptSnapshotError(
                    f"offset metadata: bitset of {span} offsets needs {(span + 7) // 8} bytes, "
                    f"has {body}"
                )
            if span % 8 and d[size - 1] >> (span % 8):
                raise CorruptSnapshotError("offset metadata: bits set past the span")
        else:
            i = pos
            while i < size:
                i = _get_varint(d, i, size, &pend)
                if i >= 0:
                    i = _get_varint(d, i, size, &dend)
                if i < 0 or pend == 0 or dend == 0 or pend > span or dend > span:
                    raise CorruptSnapshotError("offset metadata: bad run lengths")
                total += pend + dend
                if total > span:
                    break
            if total != span:
                raise CorruptSnapshotError(
                    f"offset metadata: runs cover {total} offsets, header says {span}"
                )
        # Step 2: everything checked; build the window.
        cdef int64_t b = <int64_t>base
        cdef int64_t at
        self.begin(b)
        if span == 0:
            return 0
        self._reserve(b + <int64_t>span - 1)
        self.npending = self._fill(b, b + <int64_t>span, True)
        self.end = b + <int64_t>span
        if d[0] == TAG_BITSET:
            for i in range(body):
                if d[pos + i]:
                    for at in range(8):
                        if (d[pos + i] >> at) & 1:
                            self.complete(b + 8 * i + at)
        else:
            at = b
            i = pos
            while i < size:
                i = _get_varint(d, i, size, &pend)
                i = _get_varint(d, i, size, &dend)
                at += <int64_t>pend
                self.npending -= self._fill(at, at + <int64_t>dend, False)
                at += <int64_t>dend
        self.advance()
        return 0
