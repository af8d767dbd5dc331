"""Out-of-order offset completion per topic-partition (public API: ``eoscore.sequence``).

``OffsetTracker`` validates arguments and keeps one ``OffsetWindow`` per
(topic, partition); batch loops run in the window without the GIL.  The rules
are in ``docs/trackers.md``.
"""

from libc.stdint cimport int64_t, uint8_t

from eoscore._native._batch cimport int64_array
from eoscore._native._offset_window cimport OFFSET_BITS, OffsetWindow

import base64
import binascii
import numbers
import operator

import numpy as np

from eoscore._native._offset_window import MAX_SPAN, MIN_ENCODE_BYTES
from eoscore.errors import CorruptSnapshotError

cdef int64_t OFFSET_MAX = (<int64_t>1) << OFFSET_BITS

__all__ = ["MAX_SPAN", "MIN_ENCODE_BYTES", "OffsetTracker"]


cdef object _check_tp(object tp):
    if (not isinstance(tp, tuple) or len(tp) != 2 or not isinstance(tp[0], str)
            or isinstance(tp[1], bool) or not isinstance(tp[1], int)):
        raise TypeError(f"tp must be a (topic: str, partition: int) tuple, not {tp!r}")
    if not tp[0]:
        raise ValueError("tp: the topic name is empty")
    if tp[1] < 0:
        raise ValueError(f"tp: partition must be >= 0, got {tp[1]}")
    return tp


cdef int64_t _offset_arg(object offset, str name) except? -1:
    if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(offset).__name__}")
    offset = operator.index(offset)
    if not 0 <= offset <= OFFSET_MAX:
        raise ValueError(f"{name} must be in [0, 2**62], got {offset}")
    return offset


cdef Py_ssize_t _max_bytes_arg(object max_bytes, Py_ssize_t minimum) except? -1:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
    if max_bytes < minimum:
        raise ValueError(f"max_bytes must be at least {minimum}, got {max_bytes}")
    return min(max_bytes, 1 << 30)


cdef class OffsetTracker:
    """Offsets handed out and completed out of order, per (topic, partition).

    Per partition, offsets are handed out (``track``) in increasing order and
    completed (``complete``) in any order.  ``committable`` is one past the
    highest offset below which everything handed out is complete; an offset
    never handed out between two handed-out ones (a transaction marker, a
    compaction gap) does not hold it back.
    """

    cdef dict _parts            # (topic, partition) -> OffsetWindow
    cdef bint busy              # a batch loop runs without the GIL

    def __cinit__(self):
        self._parts = {}

    cdef int _idle(self) except -1:
        if self.busy:
            raise RuntimeError(
                "OffsetTracker: a batch call is running in another thread; share a tracker "
                "between threads only under a lock"
            )
        return 0

    cdef OffsetWindow _part(self, object tp, bint create):
        _check_tp(tp)
        self._idle()
        cdef object part = self._parts.get(tp)
        if part is None or not (<OffsetWindow>part).started:
            if not create:
                raise ValueError(f"tp {tp!r}: nothing handed out for this partition")
            if part is None:
                part = OffsetWindow()  # the caller stores it once its input is valid
        return <OffsetWindow>part

    def track(self, tp, offset):
        """Hand out one offset; True if it must be processed, False if already done."""
        cdef int64_t off = _offset_arg(offset, "offset")
        cdef OffsetWindow part = self._part(tp, True)
        if part.started and off < part.next:
            raise ValueError(
                f"offset {off} of {tp!r} is not above the last handed out ({part.next - 1}): "
                "offsets are handed out in increasing order; after a seek call decode()"
            )
        self._parts[tp] = part
        result = part.track(off)
        part.advance()
        return bool(result)

    def track_many(self, tp, offsets):
        """``track`` for a strictly increasing array; returns a bool array (True: process).

        False marks offsets restored as done by ``decode``: skip them.  The array
        is validated before anything changes.
        """
        arr = int64_array(offsets, "offsets")
        cdef OffsetWindow part = self._part(tp, True)
        cdef const int64_t[::1] o = arr
        cdef Py_ssize_t n = o.shape[0], i, bad = -1
        cdef int64_t floor = part.next if part.started else 0
        with nogil:
            for i in range(n):
                if o[i] < floor or o[i] > OFFSET_MAX:
                    bad = i
                    break
                floor = o[i] + 1
        if bad >= 0:
            if o[bad] > OFFSET_MAX:
                raise ValueError(f"offsets[{bad}] = {o[bad]}: offsets must be in [0, 2**62]")
            raise ValueError(
                f"offsets[{bad}] = {o[bad]} is not above {floor - 1}: offsets of {tp!r} are "
                "handed out in strictly increasing order; after a seek call decode()"
            )
        out = np.empty(n, dtype=np.bool_)
        cdef uint8_t[::1] r = out.view(np.uint8)
        self._parts[tp] = part
        self.busy = True
        try:
            with nogil:
                for i in range(n):
                    r[i] = <uint8_t>part.track(o[i])
                part.advance()
        finally:
            self.busy = False
        return out

    def complete(self, tp, offset):
        """Complete one handed-out offset; True if it was pending (False: already done)."""
        cdef int64_t off = _offset_arg(offset, "offset")
        cdef OffsetWindow part = self._part(tp, False)
        if off >= part.next:
            raise ValueError(
                f"offset {off} of {tp!r} was never handed out (last handed out: "
                f"{part.next - 1}): track() it first"
            )
        result = part.complete(off)
        part.advance()
        return result

    def complete_many(self, tp, offsets):
        """``complete`` for an array in any order; returns how many were pending.

        The array is validated before anything changes.
        """
        arr = int64_array(offsets, "offsets")
        cdef OffsetWindow part = self._part(tp, False)
        cdef const int64_t[::1] o = arr
        cdef Py_ssize_t n = o.shape[0], i, bad = -1
        cdef int64_t count = 0
        with nogil:
            for i in range(n):
                if o[i] < 0 or o[i] >= part.next:
                    bad = i
                    break
        if bad >= 0:
            if o[bad] < 0:
                raise ValueError(f"offsets[{bad}] = {o[bad]}: offsets must be >= 0")
            raise ValueError(
                f"offsets[{bad}] = {o[bad]} of {tp!r} was never handed out (last handed out: "
                f"{part.next - 1}): track() it first"
            )
        self.busy = True
        try:
            with nogil:
                for i in range(n):
                    count += part.complete(o[i])
                part.advance()
        finally:
            self.busy = False
        return count

    def committable(self, tp):
        """The offset to commit for tp (None if nothing was handed out or decoded)."""
        part = self._parts.get(_check_tp(tp))
        self._idle()
        if part is None or not (<OffsetWindow>part).started:
            return None
        return (<OffsetWindow>part).low

    def pending(self, tp):
        """How many offsets of tp the watermark still waits for."""
        part = self._parts.get(_check_tp(tp))
        self._idle()
        return 0 if part is None else (<OffsetWindow>part).npending

    def encode(self, tp, max_bytes=4096):
        """Commit metadata for ``committable(tp)``: the done offsets above it, in bytes.

        The smaller of a bitset and a run-length encoding; never more than
        ``max_bytes`` (at least ``MIN_ENCODE_BYTES``).  When not everything fits,
        only a prefix is kept: the rest is processed again after a restart,
        nothing is skipped.
        """
        cdef Py_ssize_t limit = _max_bytes_arg(max_bytes, MIN_ENCODE_BYTES)
        return self._part(tp, False).encode(limit)

    def encode_str(self, tp, max_bytes=4096):
        """``encode`` as base64 text (Kafka offset metadata is a string), <= max_bytes chars."""
        cdef Py_ssize_t limit = _max_bytes_arg(max_bytes, (MIN_ENCODE_BYTES + 2) // 3 * 4)
        raw = self._part(tp, False).encode(limit // 4 * 3)
        return base64.b64encode(raw).decode("ascii")

    def decode(self, tp, offset, metadata=b""):
        """Start tp at its committed ``offset``, with the done set from ``metadata``.

        ``metadata`` is what ``encode`` (bytes) or ``encode_str`` (str) returned
        for that offset, or empty.  Replaces any state of tp (call it again after
        seeking back to the committed offset).  Returns ``committable(tp)``.
        Raises CorruptSnapshotError, leaving tp as it was, on metadata that fails
        validation or belongs to another offset.
        """
        cdef int64_t off = _offset_arg(offset, "offset")
        _check_tp(tp)
        if isinstance(metadata, str):
            try:
                metadata = base64.b64decode(metadata.encode("ascii"), validate=True)
            except (UnicodeEncodeError, binascii.Error) as exc:
                raise CorruptSnapshotError(f"offset metadata: not base64 ({exc})") from None
        elif metadata is None or not isinstance(metadata, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"metadata must be bytes or str, not {type(metadata).__name__}"
            )
        self._idle()
        cdef OffsetWindow part = OffsetWindow()
        data = bytes(metadata)
        if data:
            part.decode(off, data)
        else:
            part.begin(off)
        self._parts[tp] = part
        return part.low

    def remove(self, tp):
        """Forget tp (e.g. when its partition is revoked); no error if unknown."""
        _check_tp(tp)
        self._idle()
        self._parts.pop(tp, None)

    def partitions(self):
        """The (topic, partition) pairs tracked, in insertion order."""
        return list(self._parts)

    def __contains__(self, tp):
        return tp in self._parts

    def __len__(self):
        return len(self._parts)
