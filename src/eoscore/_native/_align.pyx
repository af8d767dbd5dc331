# cython: language_level=3
"""Barrier alignment for one multi-input point (public API: ``eoscore.runtime``).

The executor asks two things per batch it pulls: "is this channel blocked by
a barrier?" and, after a watermark moves, "what is the minimum over channels?".
Both are answered from C arrays; the records of a blocked channel are kept in
arrival order in a bounded buffer (counted in records), and ``push`` says when
a channel must stop being pulled (backpressure). Design: docs/runtime.md.

Idleness (``assign_timestamps(idle_timeout=...)``) is a flag per channel,
separate from the alignment state: an idle channel is left out of the
watermark minimum but still owes every barrier. The executor reports
deliveries per batch (``delivered``) and asks ``check_idle(now)`` every few
milliseconds; both are constant work per channel, nothing runs per record.
"""

from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport calloc, free
from libc.math cimport INFINITY, isnan

cdef enum ChannelFlag:
    OPEN = 0        # delivers records; not part of an alignment
    ALIGNED = 1     # delivered the pending barrier; its records are buffered
    ENDED = 2       # no more input (counts as aligned for every barrier)


cdef class AlignmentBuffer:
    """Per-channel barrier flags, buffered items, watermarks and idleness."""

    cdef int n                   # channels
    cdef uint8_t *flags          # ChannelFlag per channel
    cdef int64_t *buffered       # records buffered per channel
    cdef double *marks           # watermark per channel (-inf until the first one)
    cdef uint8_t *idle           # 1: left out of the watermark minimum (see check_idle)
    cdef uint8_t *seen           # 1: delivered records since the last check_idle
    cdef double *idle_after      # idle timeout per channel in seconds (inf: never idle)
    cdef double *last_seen       # check_idle time at which the channel was last seen active
    cdef int64_t capacity        # records the buffer holds over all channels
    cdef int64_t total           # records buffered now
    cdef int64_t pending         # checkpoint id being aligned, or -1
    cdef list items              # (channel, item) in arrival order

    def __cinit__(self, int channels, int64_t capacity):
        if channels < 1:
            raise ValueError(f"an alignment buffer needs at least one channel, not {channels}")
        if capacity < 1:
            raise ValueError(f"alignment capacity must be at least one record, not {capacity}")
        self.n = channels
        self.flags = <uint8_t *>calloc(channels, sizeof(uint8_t))
        self.buffered = <int64_t *>calloc(channels, sizeof(int64_t))
        self.marks = <double *>calloc(channels, sizeof(double))
        self.idle = <uint8_t *>calloc(channels, sizeof(uint8_t))
        self.seen = <uint8_t *>calloc(channels, sizeof(uint8_t))
        self.idle_after = <double *>calloc(channels, sizeof(double))
        self.last_seen = <double *>calloc(channels, sizeof(double))
        if (
            self.flags == NULL or self.buffered == NULL or self.marks == NULL
            or self.idle == NULL or self.seen == NULL or self.idle_after == NULL
            or self.last_seen == NULL
        ):
            raise MemoryError()
        cdef int i
        for i in range(channels):
            self.marks[i] = -INFINITY
            self.idle_after[i] = INFINITY
            self.seen[i] = 1  # the first check_idle starts the channel's clock
        self.capacity = capacity
        self.total = 0
        self.pending = -1
        self.items = []

    def __dealloc__(self):
        free(self.flags)
        free(self.buffered)
        free(self.marks)
        free(self.idle)
        free(self.seen)
        free(self.idle_after)
        free(self.last_seen)

    cdef inline int _check(self, int channel) except -1:
        if channel < 0 or channel >= self.n:
            raise IndexError(f"channel {channel} out of range (0..{self.n - 1})")
        return 0

    @property
    def channels(self) -> int:
        return self.n

    @property
    def capacity(self) -> int:
        return self.capacity

    @property
    def pending(self) -> int:
        """Checkpoint id being aligned, or -1."""
        return self.pending

    @property
    def buffered_records(self) -> int:
        return self.total

    def blocked(self, int channel) -> bool:
        """True while ``channel`` delivered the pending barrier (pull into the buffer)."""
        self._check(channel)
        return self.flags[channel] == ALIGNED

    def has_room(self, int channel) -> bool:
        """False once the buffer is full: stop pulling from a blocked channel."""
        self._check(channel)
        return self.total < self.capacity

    def barrier(self, int channel, int64_t checkpoint_id) -> int:
        """Record that ``channel`` delivered barrier ``checkpoint_id``.

        Returns how many channels have still to deliver it (0: aligned). A
        barrier of a newer checkpoint than the pending one raises ValueError:
        the caller must ``cancel`` the pending one first.
        """
        self._check(channel)
        if self.pending == -1:
            self.pending = checkpoint_id
        elif checkpoint_id != self.pending:
            raise ValueError(
                f"barrier {checkpoint_id} on channel {channel} while aligning {self.pending}"
            )
        if self.flags[channel] == OPEN:
            self.flags[channel] = ALIGNED
        return self.missing()

    def missing(self) -> int:
        """Channels that have not delivered the pending barrier (nor ended)."""
        cdef int i, count = 0
        with nogil:
            for i in range(self.n):
                if self.flags[i] == OPEN:
                    count += 1
        return count

    def end(self, int channel) -> int:
        """``channel`` has no more input; returns the channels still missing."""
        self._check(channel)
        self.flags[channel] = ENDED
        self.marks[channel] = INFINITY
        self.idle[channel] = 0
        return self.missing() if self.pending != -1 else 0

    def ended(self, int channel) -> bool:
        self._check(channel)
        return self.flags[channel] == ENDED

    def all_ended(self) -> bool:
        cdef int i
        cdef bint result = True
        with nogil:
            for i in range(self.n):
                if self.flags[i] != ENDED:
                    result = False
                    break
        return result

    def push(self, int channel, object item, int64_t records) -> bool:
        """Buffer an item of a blocked channel; False when the buffer is now full."""
        self._check(channel)
        if self.flags[channel] != ALIGNED:
            raise ValueError(f"channel {channel} is not blocked; process its records directly")
        self.items.append((channel, item))
        self.buffered[channel] += records
        self.total += records
        return self.total < self.capacity

    def release(self) -> list:
        """End the alignment: return the buffered (channel, item) pairs in arrival order."""
        cdef int i
        items = self.items
        self.items = []
        with nogil:
            for i in range(self.n):
                if self.flags[i] == ALIGNED:
                    self.flags[i] = OPEN
                self.buffered[i] = 0
        self.total = 0
        self.pending = -1
        return items

    def open_channels(self) -> list:
        """Channels that still owe the pending barrier."""
        return [i for i in range(self.n) if self.flags[i] == OPEN]

    def set_watermark(self, int channel, double mark) -> double:
        """Raise ``channel``'s watermark (never lowers it); returns ``watermark()``."""
        self._check(channel)
        if mark > self.marks[channel]:
            self.marks[channel] = mark
        return self.watermark()

    def channel_watermark(self, int channel) -> float:
        self._check(channel)
        return self.marks[channel]

    def watermark(self) -> float:
        """The minimum watermark over the channels that are not idle.

        -inf until each of them reported one; an ended channel counts as +inf.
        When no channel that is neither idle nor at +inf is left, idleness
        cannot move the watermark: the minimum over *every* channel is
        returned, which is at most what the caller already has.
        """
        cdef int i
        cdef double low = INFINITY, every = INFINITY
        cdef bint any_idle = False
        with nogil:
            for i in range(self.n):
                if self.marks[i] < every:
                    every = self.marks[i]
                if self.idle[i]:
                    any_idle = True
                elif self.marks[i] < low:
                    low = self.marks[i]
        if any_idle and low == INFINITY:
            return every
        return low

    # ---- idleness ---------------------------------------------------------------

    def set_idle_timeout(self, int channel, double seconds) -> None:
        """``channel`` becomes idle after ``seconds`` without records (inf: never)."""
        self._check(channel)
        if not seconds > 0:  # NaN too
            raise ValueError(f"idle timeout of channel {channel} must be positive, not {seconds}")
        self.idle_after[channel] = seconds
        self.seen[channel] = 1

    def idle_timeout(self, int channel) -> float:
        self._check(channel)
        return self.idle_after[channel]

    def delivered(self, int channel) -> bool:
        """``channel`` delivered records: it is active again. True if it was idle.

        Called per batch. Reactivation never raises the minimum, so the caller
        need not recompute the watermark.
        """
        self._check(channel)
        cdef bint was = self.idle[channel]
        self.seen[channel] = 1
        self.idle[channel] = 0
        return was

    def is_idle(self, int channel) -> bool:
        self._check(channel)
        return self.idle[channel] != 0

    def check_idle(self, double now) -> int:
        """Mark idle the channels without records for their timeout; returns how many.

        ``now`` is a monotonic clock in seconds. A channel's clock runs from the
        last call that found it had delivered (the first call starts it), so
        the resolution is the caller's calling interval. A blocked channel whose
        buffer is full is not read (backpressure, not silence): its clock
        restarts instead. Ended channels are never idle. When the result is
        not 0 the caller recomputes the watermark.
        """
        if isnan(now):
            raise ValueError("check_idle: now is NaN")
        cdef int i, count = 0
        cdef bint full = self.total >= self.capacity
        with nogil:
            for i in range(self.n):
                if self.idle_after[i] == INFINITY or self.flags[i] == ENDED:
                    continue
                if self.seen[i] or (full and self.flags[i] == ALIGNED):
                    self.seen[i] = 0
                    self.last_seen[i] = now
                elif not self.idle[i] and now - self.last_seen[i] >= self.idle_after[i]:
                    self.idle[i] = 1
                    count += 1
        return count
