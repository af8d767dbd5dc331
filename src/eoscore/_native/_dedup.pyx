"""Deduplicator: first-occurrence filter with TTL (public API: ``eoscore.dedup``).

Exact mode keeps one tagged ExactKeySet: each key carries the generation that first
accepted it, and a rotation sweeps the expired generation out of the table in place,
so one probe answers a key whatever the number of generations. Approximate mode
keeps one BloomFilter per generation (a ring); a key is checked against every live
one and inserted into the current one. See docs/dedup.md.
"""

cimport cython
cimport numpy as cnp
from libc.math cimport floor, isfinite
from libc.stdint cimport int64_t, uint8_t, uint64_t

from eoscore._native._bloom cimport BloomFilter
from eoscore._native._keys cimport (
    BATCH_SEQ, NOGIL_MIN, OP_ADD, Batch, as_batch, key_parts, new_array, seq_item,
)
from eoscore._native._keyset cimport ExactKeySet

import math
import os
import struct

import numpy as np

from eoscore._native._bloom import _blocks_for, _check_capacity, _check_fp_rate
from eoscore._native._bloom import _restore_payload as _bloom_payload
from eoscore._native._keyset import _restore_payload as _keyset_payload
from eoscore.snapshot_format import PayloadReader, pack, unpack

cnp.import_array()

cdef enum:
    MODE_EXACT = 0
    MODE_APPROXIMATE = 1

_MODES = {"exact": MODE_EXACT, "approximate": MODE_APPROXIMATE}
_MODE_NAMES = {v: k for k, v in _MODES.items()}
_KIND = b"DDUP"
_VERSION = 1
# mode, flags, generations, capacity, fp_rate, ttl, origin, clock, gen, checked, dups, expired
_HEAD = struct.Struct("<BBHQddddqQQQ")
_FLAG_TTL = 1
_FLAG_CLOCK = 2
_MAX_GENERATIONS = 64


def _check_ttl(ttl):
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be None or a number > 0, got {type(ttl).__name__}")
    value = float(ttl)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"ttl must be a finite number > 0, got {ttl!r}")
    return value


def _check_generations(generations):
    if isinstance(generations, bool) or not isinstance(generations, int):
        raise TypeError(f"generations must be an int, got {type(generations).__name__}")
    if not 2 <= generations <= _MAX_GENERATIONS:
        raise ValueError(f"generations must be in [2, {_MAX_GENERATIONS}], got {generations}")
    return generations


def _check_time(now, str name):
    if isinstance(now, bool) or not isinstance(now, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(now).__name__}")
    value = float(now)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {now!r}")
    return value


cdef object _check_times(object event_times, Py_ssize_t n):
    """event_times as a contiguous float64 array of n values."""
    if isinstance(event_times, (str, bytes)):
        raise TypeError("event_times: expected an array or list of numbers, got "
                        f"{type(event_times).__name__}")
    try:
        times = np.ascontiguousarray(event_times, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"event_times: expected numbers ({exc})") from None
    if times.ndim != 1 or times.shape[0] != n:
        raise ValueError(f"event_times: expected {n} values (one per key), got shape "
                         f"{times.shape}")
    return times


cdef class Deduplicator:
    """Marks the first occurrence of each key in a stream, in bounded memory.

    ``Deduplicator(capacity, fp_rate=1e-3, ttl=None, generations=4, mode="exact")``

    ``check_and_add(keys)`` returns an ``ndarray[bool]``: True for keys seen for the
    first time (keep the record), False for repeats (drop it); the first occurrence
    inside a batch counts too.

    Modes:

    * ``"exact"``: never drops a new key (for bytes/str keys, up to the 128-bit
      fingerprint bound of :class:`ExactKeySet`). Memory grows with the live keys;
      ``capacity`` presizes it.
    * ``"approximate"``: Bloom filters of fixed size. **It drops about ``fp_rate`` of
      NEW keys as false duplicates** (records are lost, silently), more if more than
      ``capacity`` keys are live. Use it only where losing a few records is
      acceptable and exact memory is not affordable.

    TTL: with ``ttl``, keys are forgotten through ``generations`` rotating
    generations of ``ttl / (generations - 1)`` each, so a stream of unique keys runs
    in bounded memory forever. A key is remembered for at least ``ttl`` and at most
    ``ttl * generations / (generations - 1)`` after it was first accepted, measured on
    the deduplicator's clock: the largest ``event_times`` value seen, or the ``now``
    of :meth:`expire` (pass checkpoint epochs there for epoch-based TTL). A repeat
    does not extend its key's life. Without ``ttl`` nothing is forgotten;
    ``capacity`` is then the total number of keys.

    ``capacity`` is the number of distinct keys live at once (per ``ttl`` window).
    """

    cdef int _mode
    cdef Py_ssize_t _capacity
    cdef double _fp_rate
    cdef object _ttl             # None or float
    cdef int _generations        # live generations (1 without ttl)
    cdef double _span            # ttl / (generations - 1)
    cdef bint _has_clock         # _origin and _clock are set
    cdef double _origin          # start time of generation 0
    cdef double _clock           # largest time seen
    cdef int64_t _gen            # index of the current generation
    cdef uint64_t _checked       # keys checked
    cdef uint64_t _duplicates    # keys reported as repeats
    cdef uint64_t _expired       # keys forgotten by rotations
    cdef ExactKeySet _set        # exact mode
    cdef list _filters           # approximate mode: generation g lives in _filters[g % G]
    cdef cython.pymutex _lock    # serialises every call that reads or changes state

    def __init__(self, capacity, fp_rate=1e-3, ttl=None, generations=4, mode="exact"):
        capacity = _check_capacity(capacity)
        rate = _check_fp_rate(fp_rate)
        ttl_value = _check_ttl(ttl)
        generations = _check_generations(generations)
        if not isinstance(mode, str):
            raise TypeError(f"mode must be 'exact' or 'approximate', got {type(mode).__name__}")
        if mode not in _MODES:
            raise ValueError(f"mode must be 'exact' or 'approximate', got {mode!r}")
        if mode == "exact" and capacity > 2 ** 40:
            raise ValueError(f"capacity must be at most 2**40 in exact mode, got {capacity}")
        self._setup(_MODES[mode], capacity, rate, ttl_value,
                    generations if ttl_value is not None else 1,
                    int.from_bytes(os.urandom(8), "little"))

    cdef int _setup(self, int mode, object capacity, double fp_rate, object ttl,
                    int generations, uint64_t seed) except -1:
        self._mode = mode
        self._capacity = capacity
        self._fp_rate = fp_rate
        self._ttl = ttl
        self._generations = generations
        self._span = ttl / (generations - 1) if ttl is not None else 0.0
        self._has_clock = False
        self._origin = self._clock = 0.0
        self._gen = 0
        self._checked = self._duplicates = self._expired = 0
        cdef BloomFilter bf
        if mode == MODE_EXACT:
            self._set = ExactKeySet.__new__(ExactKeySet)
            self._set._init_core(capacity, seed, ttl is not None, generations)
            self._filters = None
            return 0
        self._set = None
        # Up to `generations` filters are live; each holds a (generations - 1)th of a
        # TTL window, at fp_rate / generations, so a new key's total false-duplicate
        # rate stays within fp_rate.
        per_gen = -(-capacity // (generations - 1)) if ttl is not None else capacity
        per_rate = fp_rate / generations
        nblocks = _blocks_for(per_gen, per_rate)
        self._filters = []
        for _ in range(generations):
            bf = BloomFilter.__new__(BloomFilter)
            bf._setup(per_gen, per_rate, nblocks, seed)
            self._filters.append(bf)
        return 0

    cdef int _ready(self) except -1:
        if self._set is None and self._filters is None:
            raise ValueError("Deduplicator is not initialised (use Deduplicator(capacity, ...))")
        return 0

    # -- properties ------------------------------------------------------------------

    @property
    def mode(self):
        """``"exact"`` or ``"approximate"``."""
        return _MODE_NAMES[self._mode]

    @property
    def capacity(self):
        """Distinct keys expected to be live at once (per ttl window)."""
        return self._capacity

    @property
    def fp_rate(self):
        """False-duplicate rate of approximate mode (unused in exact mode)."""
        return self._fp_rate

    @property
    def ttl(self):
        """How long keys are remembered at least (clock units), or None: forever."""
        return self._ttl

    @property
    def generations(self):
        """Live generations (1 without ttl)."""
        return self._generations

    @property
    def nbytes(self):
        """Native memory held, in bytes."""
        if self._mode == MODE_EXACT:
            return self._set.nbytes + type(self).__basicsize__
        return sum(bf.nbytes for bf in self._filters) + type(self).__basicsize__

    def __len__(self):
        """Keys remembered (approximate mode: an estimate, low by its false positives)."""
        if self._mode == MODE_EXACT:
            return len(self._set)
        return sum((<BloomFilter>bf)._count for bf in self._filters)

    def __repr__(self):
        return (f"Deduplicator(capacity={self._capacity}, mode={self.mode!r}, ttl={self._ttl}, "
                f"generations={self._generations}, keys={len(self)})")

    def __reduce__(self):
        return (type(self).restore, (self.snapshot(),))

    # -- the work ----------------------------------------------------------------------

    cdef int _check_range(self, const Batch *b, object owner, Py_ssize_t start, Py_ssize_t stop,
                          uint8_t *out) except -1:
        """check_and_add keys [start, stop) of a batch into out[start:stop]."""
        cdef Batch sub = b[0]
        cdef Py_ssize_t m = stop - start, i
        cdef BloomFilter bf
        cdef const uint64_t *h
        cdef int64_t g
        if m <= 0:
            return 0
        if sub.kind == BATCH_SEQ:
            if start or stop != b.n:
                owner = owner[start:stop]
        else:
            sub.data += start * sub.itemsize
        sub.n = m
        if self._mode == MODE_EXACT:
            self._set._run(&sub, owner, OP_ADD, out + start)
        else:
            hashes = (<BloomFilter>self._filters[0])._hashes(
                owner if sub.kind == BATCH_SEQ else owner[start:stop])
            h = <const uint64_t *>cnp.PyArray_DATA(hashes)
            for i in range(m):
                out[start + i] = 1
            for g in range(max(0, self._gen - self._generations + 1), self._gen):
                bf = self._filters[g % self._generations]
                if m >= NOGIL_MIN:
                    with nogil:
                        bf._mark_seen(h, m, out + start)
                else:
                    bf._mark_seen(h, m, out + start)
            bf = self._filters[self._gen % self._generations]
            if m >= NOGIL_MIN:
                with nogil:
                    bf._insert_new(h, m, out + start)
            else:
                bf._insert_new(h, m, out + start)
        cdef Py_ssize_t new = 0
        for i in range(start, stop):
            new += out[i]
        self._checked += m
        self._duplicates += m - new
        return 0

    cdef Py_ssize_t _advance(self, int64_t gen) except -1:
        """Make gen the current generation; returns the keys forgotten."""
        cdef int64_t steps = gen - self._gen, s
        cdef Py_ssize_t dropped = 0
        cdef BloomFilter bf
        if steps <= 0:
            return 0
        if self._mode == MODE_EXACT:
            dropped = self._set._rotate(<uint64_t>steps)
            self._set._c.jgen = gen
        else:
            for s in range(1, min(steps, self._generations) + 1):
                bf = self._filters[(self._gen + s) % self._generations]
                dropped += bf._count
                bf._clear()
        self._gen = gen
        self._expired += dropped
        return dropped

    cdef int64_t _gen_of(self, double t) except? -1:
        cdef double g = floor((t - self._origin) / self._span)
        if not g < 4e18:
            raise ValueError(f"time {t} is too far past the first time seen ({self._origin}) "
                             f"for ttl={self._ttl}")
        return <int64_t>g

    cdef int _start_clock(self, double t) except -1:
        if not self._has_clock:
            self._has_clock = True
            self._origin = self._clock = t
        return 0

    def check_and_add(self, keys, event_times=None):
        """Mark first occurrences: ``ndarray[bool]``, True where a key is new.

        ``keys``: a numpy integer or ``S`` array, or a list/tuple of int, bytes and
        str keys. ``event_times`` (optional, one number per key, same unit as ``ttl``)
        advance the clock as the batch is walked in order, so generations rotate
        mid-batch exactly as they would one record at a time. A batch with a bad key
        raises before any key is added.
        """
        self._ready()
        cdef Batch b
        owner = as_batch(keys, &b)
        out = new_array(b.n, cnp.NPY_BOOL)
        cdef uint8_t *o = <uint8_t *>cnp.PyArray_DATA(out)
        times = None if event_times is None else _check_times(event_times, b.n)
        with self._lock:
            if times is None or self._ttl is None or b.n == 0:
                if times is not None and b.n:
                    self._observe(times)
                self._check_range(&b, owner, 0, b.n, o)
            else:
                self._check_timed(&b, owner, times, o)
        return out

    cdef int _observe(self, object times) except -1:
        """Move the clock to the batch's largest time (no ttl: nothing rotates)."""
        if np.isnan(times).any():
            raise ValueError("event_times: NaN is not a time")
        self._start_clock(float(times[0]))
        self._clock = max(self._clock, float(times.max()))
        return 0

    cdef int _check_timed(self, const Batch *b, object owner, object times, uint8_t *out) except -1:
        cdef const double[::1] t = times
        cdef Py_ssize_t n = b.n, i = 0, j
        cdef double clock, end, x
        cdef int64_t gen
        for j in range(n):
            if not isfinite(t[j]):
                raise ValueError(f"event_times[{j}]: {t[j]} is not a finite time")
        cdef bint fresh = not self._has_clock
        self._start_clock(t[0])
        end = self._origin + (self._gen + 1) * self._span
        if _max(t) >= end:
            # Several segments: check what could fail before the first one is applied.
            try:
                self._gen_of(_max(t))
                _validate_seq(b, owner)
            except BaseException:
                if fresh:
                    self._has_clock = False
                    self._origin = self._clock = 0.0
                raise
        clock = self._clock
        while i < n:
            j = i
            while j < n:
                x = t[j]
                if x > clock:
                    if x >= end:
                        break
                    clock = x
                j += 1
            self._clock = clock
            self._check_range(b, owner, i, j, out)
            if j < n:
                clock = self._clock = t[j]
                gen = max(self._gen + 1, self._gen_of(clock))
                self._advance(gen)
                end = self._origin + (self._gen + 1) * self._span
            i = j
        return 0

    def expire(self, now):
        """Advance the clock to ``now`` and forget expired generations.

        ``now`` is in the unit of ``ttl``: an event time, or a checkpoint epoch for
        epoch-based TTL. Returns the number of keys forgotten. Never moves the clock
        back; without ``ttl`` only the clock moves.
        """
        self._ready()
        cdef double t = _check_time(now, "now")
        with self._lock:
            if not self._has_clock:
                self._start_clock(t)
                return 0
            if t <= self._clock:
                return 0
            if self._ttl is None:
                self._clock = t
                return 0
            gen = self._gen_of(t)
            self._clock = t
            return self._advance(gen)

    def stats(self):
        """Counters, memory, the clock and the live generations (newest first)."""
        self._ready()
        cdef int64_t g
        with self._lock:
            gens = []
            for g in range(self._gen, max(-1, self._gen - self._generations), -1):
                start = self._origin + g * self._span if self._ttl is not None else None
                gens.append({
                    "index": g,
                    "start": start if self._has_clock else None,
                    "age": (self._clock - start) if self._has_clock and start is not None
                           else None,
                    "keys": self._gen_keys(g),
                })
            return {
                "mode": self.mode,
                "keys": len(self),
                "nbytes": self.nbytes,
                "capacity": self._capacity,
                "checked": self._checked,
                "duplicates": self._duplicates,
                "duplicate_rate": (<double>self._duplicates / self._checked if self._checked
                                   else 0.0),
                "expired": self._expired,
                "ttl": self._ttl,
                "clock": self._clock if self._has_clock else None,
                "generations": gens,
            }

    cdef uint64_t _gen_keys(self, int64_t g):
        if self._mode == MODE_EXACT:
            if not self._set._c.tagged:
                return len(self._set)
            return self._set._c.counts[<uint8_t>g]
        return (<BloomFilter>self._filters[g % self._generations])._count

    # -- the checkpoint log (eoscore.state.DedupState) ------------------------------------
    #
    # With the log on, every key the exact set adds is also written to a journal as
    # three int64 words: the stored key (a, b: the int or the 128-bit fingerprint), and
    # generation << 2 | table (0 ints >= 0, 1 negative ints, 2 fingerprints). The
    # state drains it after each batch; generations never decrease along the log.

    cdef int _exact(self) except -1:
        self._ready()
        if self._mode != MODE_EXACT:
            raise ValueError("the checkpoint log needs an exact-mode Deduplicator")
        return 0

    def _log_on(self):
        """Journal every key added from now on."""
        self._exact()
        with self._lock:
            self._set._c.journal = True
            self._set._c.jgen = self._gen

    def _take_log(self):
        """The keys added since the last call: an (n, 3) int64 array (a, b, gen << 2 | table)."""
        self._exact()
        with self._lock:
            return self._set._jdrain()

    def _export_log(self):
        """Every live key in the log's layout, ordered by generation (the oldest first)."""
        self._exact()
        with self._lock:
            rows = self._set._export(self._gen)
        if rows.shape[0]:
            rows = rows[np.argsort(rows[:, 2] >> 2, kind="stable")]
        return rows

    def _control(self):
        """(seed, has_clock, origin, clock, generation, checked, duplicates, expired)."""
        self._exact()
        with self._lock:
            return (self._set._c.seed, self._has_clock, self._origin, self._clock, self._gen,
                    self._checked, self._duplicates, self._expired)

    def _key_kinds(self):
        """(int keys, bytes/str fingerprints) held; exact mode only."""
        self._exact()
        cdef ExactKeySet k = self._set
        return (<Py_ssize_t>(k._c.pos.size + k._c.neg.size + k._c.has_zero),
                <Py_ssize_t>k._c.fp.size)

    @property
    def _generation(self):
        """Index of the current generation (0 without ttl)."""
        return self._gen

    @classmethod
    def _from_control(cls, capacity, ttl, generations, control, expected=0):
        """An empty exact deduplicator with the given settings and clock (see _control)."""
        seed, has_clock, origin, clock, gen, checked, duplicates, expired = control
        capacity = _check_capacity(capacity)
        ttl_value = _check_ttl(ttl)
        generations = _check_generations(generations) if ttl_value is not None else 1
        if not (0 <= seed < 2 ** 64 and 0 <= gen < 2 ** 60 and 0 <= duplicates <= checked
                and 0 <= expired and math.isfinite(origin) and math.isfinite(clock)
                and (gen == 0 or ttl_value is not None)):
            raise ValueError("invalid deduplicator state")
        cdef Deduplicator d = cls.__new__(cls)
        d._setup(MODE_EXACT, max(capacity, expected), 1e-3, ttl_value, generations, seed)
        d._has_clock = bool(has_clock)
        d._origin = origin
        d._clock = clock
        d._gen = gen
        d._checked = checked
        d._duplicates = duplicates
        d._expired = expired
        d._set._c.cur_tag = <uint8_t>(gen & 255)
        d._set._c.jgen = gen
        return d

    def _load_log(self, a, b, info):
        """Insert logged keys (int64 arrays); raises ValueError on an invalid or repeated one."""
        self._exact()
        cdef int64_t low = self._gen - self._generations + 1 if self._ttl is not None else 0
        cdef Py_ssize_t bad
        ca = np.ascontiguousarray(a, np.int64)
        cb = np.ascontiguousarray(b, np.int64)
        ci = np.ascontiguousarray(info, np.int64)
        with self._lock:
            bad = self._set._load(ca, cb, ci, low, self._gen)
        if bad >= 0:
            raise ValueError(f"log entry {bad} is invalid, expired or repeated")

    # -- snapshots -----------------------------------------------------------------------

    def snapshot(self):
        """The deduplicator as bytes (versioned, checksummed frame; see :meth:`restore`)."""
        self._ready()
        flags = (_FLAG_TTL if self._ttl is not None else 0) | (_FLAG_CLOCK if self._has_clock
                                                                else 0)
        with self._lock:
            parts = [_HEAD.pack(self._mode, flags, self._generations, self._capacity,
                                self._fp_rate, self._ttl or 0.0, self._origin, self._clock,
                                self._gen, self._checked, self._duplicates, self._expired)]
            if self._mode == MODE_EXACT:
                parts.append(self._set._payload())
            else:
                parts.extend((<BloomFilter>bf)._payload() for bf in self._filters)
        return pack(_KIND, _VERSION, b"".join(parts))

    @classmethod
    def restore(cls, data):
        """A deduplicator equal to the one that wrote ``data`` (from :meth:`snapshot`).

        Raises CorruptSnapshotError if the bytes are truncated, altered or foreign.
        """
        _, payload = unpack(data, _KIND, (_VERSION,))
        reader = PayloadReader(payload, "Deduplicator")
        (mode, flags, generations, capacity, fp_rate, ttl, origin, clock, gen, checked,
         duplicates, expired) = reader.unpack(_HEAD)
        has_ttl = bool(flags & _FLAG_TTL)
        if (mode not in _MODE_NAMES or flags & ~(_FLAG_TTL | _FLAG_CLOCK)
                or not 1 <= capacity < 2 ** 62 or not 0.0 < fp_rate < 1.0
                or (has_ttl and not (2 <= generations <= _MAX_GENERATIONS
                                     and 0.0 < ttl < math.inf))
                or (not has_ttl and generations != 1)
                or not (math.isfinite(origin) and math.isfinite(clock))
                or gen < 0 or duplicates > checked):
            raise reader.fail("invalid deduplicator parameters")
        cdef Deduplicator d = cls.__new__(cls)
        d._mode = mode
        d._capacity = capacity
        d._fp_rate = fp_rate
        d._ttl = ttl if has_ttl else None
        d._generations = generations
        d._span = ttl / (generations - 1) if has_ttl else 0.0
        d._has_clock = bool(flags & _FLAG_CLOCK)
        d._origin = origin
        d._clock = clock
        d._gen = gen
        d._checked = checked
        d._duplicates = duplicates
        d._expired = expired
        cdef ExactKeySet s
        cdef BloomFilter bf, first
        if mode == MODE_EXACT:
            s = _keyset_payload(reader)
            if (s._c.tagged != has_ttl or s._c.live != generations
                    or (has_ttl and s._c.cur_tag != gen % 256)):
                raise reader.fail("key set does not match the deduplicator")
            d._set = s
            d._filters = None
        else:
            d._set = None
            d._filters = [_bloom_payload(reader) for _ in range(generations)]
            first = d._filters[0]
            for bf in d._filters:
                if bf._nblocks != first._nblocks or bf._seed != first._seed:
                    raise reader.fail("generation filters do not match")
        reader.done()
        return d


cdef double _max(const double[::1] t) noexcept:
    cdef double m = t[0]
    cdef Py_ssize_t i
    for i in range(1, t.shape[0]):
        if t[i] > m:
            m = t[i]
    return m


cdef int _validate_seq(const Batch *b, object owner) except -1:
    """Check every key of a sequence batch (before the batch is applied in parts)."""
    cdef Py_ssize_t j
    cdef uint64_t v
    cdef const char *p
    cdef Py_ssize_t size
    if b.kind != BATCH_SEQ:
        return 0
    for j in range(b.n):
        key_parts(seq_item(owner, j), j, &v, &p, &size)
    return 0
