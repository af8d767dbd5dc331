# State chunk codec: sequences of tagged values (_valuecodec) or numeric columns,
# lz4 block compression per chunk into reused buffers, an xxh3 checksum per chunk
# and a versioned 32-byte header. Layout and guarantees: docs/checkpoint-format.md.
#
# Decoding checks magic, version, lengths and the checksum before it decompresses,
# and decompresses into a buffer of exactly the declared size before it parses;
# the parser is bounds-checked as well, so damaged input raises
# CorruptCheckpointError and never reads out of bounds or returns wrong data.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from posix.dlfcn cimport RTLD_LOCAL, RTLD_NOW, dlopen, dlsym

import numpy as np

from eoscore._native._valuecodec cimport (
    STR_CACHE,
    Buf,
    Reader,
    buf_reserve,
    corrupt as _corrupt,
    decode_obj,
    encode_obj,
)
from eoscore._native._xxh3 cimport eos_xxh3_64

# The value encoding is its own module; these stay importable from here.
from eoscore._native._valuecodec import check_value, decode_value, encode_value
from eoscore.errors import RecordTooLargeError

# ---- format constants (docs/checkpoint-format.md, "Chunk header") -------------

DEF HDR = 32                  # header bytes before the payload
DEF VERSION = 1               # chunk format version written and accepted
DEF MAX_RAW = 64 << 20        # largest decoded payload accepted (one huge record)
DEF MAX_COLS = 7              # numeric columns per chunk (column descriptor is 8 bytes)

cdef uint32_t MAGIC = 0x4B534F45  # b"EOSK" read little-endian

HEADER_SIZE = HDR
FORMAT_VERSION = VERSION
MIN_CHUNK_SIZE = 64 << 10
MAX_CHUNK_SIZE = 1 << 20
DEFAULT_CHUNK_SIZE = 256 << 10

KIND_RECORDS = 1         # (key, value) pairs, tagged encoding
KIND_KEYS = 2            # keys only (tombstones), tagged encoding
KIND_COLUMNS = 3         # int64 keys + numeric columns
KIND_COLUMN_KEYS = 4     # int64 keys only (tombstones of columnar state)

CODEC_RAW = 0
CODEC_LZ4 = 1


DEF DT_INT64 = 1
DEF DT_FLOAT64 = 2

# ---- lz4 through the lz4 package's own library ---------------------------------
# The lz4 package bundles liblz4 and exports its symbols; calling them directly
# lets us compress into reused buffers without the GIL. If they cannot be found
# (a build that hides them) the Python API is used instead: same bytes on disk.

ctypedef int (*lz4_bound_t)(int) noexcept nogil
ctypedef int (*lz4_state_size_t)() noexcept nogil
ctypedef int (*lz4_compress_t)(void *state, const char *src, char *dst, int src_size,
                               int dst_cap, int acceleration) noexcept nogil
ctypedef int (*lz4_decompress_t)(const char *src, char *dst, int src_size,
                                 int dst_cap) noexcept nogil

cdef lz4_bound_t c_lz4_bound = NULL
cdef lz4_state_size_t c_lz4_state_size = NULL
cdef lz4_compress_t c_lz4_compress = NULL
cdef lz4_decompress_t c_lz4_decompress = NULL


cdef void _load_lz4():
    global c_lz4_bound, c_lz4_state_size, c_lz4_compress, c_lz4_decompress
    try:
        import lz4.block._block as block
        path = block.__file__.encode()
    except Exception:
        return
    cdef void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL)
    if handle == NULL:
        return
    cdef void *b = dlsym(handle, "LZ4_compressBound")
    cdef void *s = dlsym(handle, "LZ4_sizeofState")
    cdef void *c = dlsym(handle, "LZ4_compress_fast_extState")
    cdef void *d = dlsym(handle, "LZ4_decompress_safe")
    if b != NULL and s != NULL and c != NULL and d != NULL:
        c_lz4_bound = <lz4_bound_t>b
        c_lz4_state_size = <lz4_state_size_t>s
        c_lz4_compress = <lz4_compress_t>c
        c_lz4_decompress = <lz4_decompress_t>d


_load_lz4()
NATIVE_LZ4 = c_lz4_compress != NULL
cdef bint use_native = True  # False: the Python lz4 API (tests check both agree)


def _use_native_lz4(bint flag):
    """Testing hook: switch between liblz4 directly and the lz4 package's API."""
    global use_native
    previous = use_native
    use_native = flag
    return previous


# ---- header --------------------------------------------------------------------

cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)


cdef inline void wr32(uint8_t *p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)


cdef inline void wr64(uint8_t *p, uint64_t v) noexcept nogil:
    memcpy(p, &v, 8)


cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint64_t rd64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline uint64_t chunk_checksum(const uint8_t *chunk, size_t stored) noexcept nogil:
    # Covers the first 24 header bytes (through the seed) and the whole payload.
    return eos_xxh3_64(chunk + HDR, stored, eos_xxh3_64(chunk, 24, 0))


cdef struct Header:
    uint8_t kind     # KIND_*
    uint8_t codec    # CODEC_*
    uint32_t raw     # decoded payload bytes
    uint32_t stored  # payload bytes after the header
    uint32_t count   # entries in the chunk
    uint64_t checksum


cdef int parse_header(const uint8_t *p, size_t n, Header *h) except -1:
    """Validate everything about a chunk that needs no decompression."""
    cdef bint ok
    if n < HDR:
        raise _corrupt(f"chunk is {n} bytes, shorter than its {HDR}-byte header (file truncated?)")
    if rd32(p) != MAGIC:
        raise _corrupt("bad magic (not a chunk, or the offset is wrong)")
    if rd16(p + 4) != VERSION:
        raise _corrupt(f"chunk format version {rd16(p + 4)} is not supported (this reads {VERSION})")
    h.kind = p[6]
    h.codec = p[7]
    h.raw = rd32(p + 8)
    h.stored = rd32(p + 12)
    h.count = rd32(p + 16)
    h.checksum = rd64(p + 24)
    if rd32(p + 20) != 0:
        raise _corrupt("reserved header field is not zero")
    if h.kind < 1 or h.kind > 4:
        raise _corrupt(f"unknown chunk kind {h.kind}")
    if h.codec > 1:
        raise _corrupt(f"unknown chunk codec {h.codec}")
    if h.raw > MAX_RAW:
        raise _corrupt(f"declared size {h.raw} exceeds the {MAX_RAW}-byte limit")
    if n - HDR != h.stored:
        if n - HDR < h.stored:
            raise _corrupt(f"chunk has {n - HDR} of {h.stored} payload bytes (file truncated?)")
        raise _corrupt(f"chunk has {n - HDR - h.stored} bytes after its payload")
    if h.codec == 0 and h.stored != h.raw:
        raise _corrupt("uncompressed chunk whose sizes disagree")
    with nogil:
        ok = chunk_checksum(p, h.stored) == h.checksum
    if not ok:
        raise _corrupt("checksum mismatch (file truncated or damaged?)")
    return 0


def read_header(const uint8_t[::1] chunk):
    """(kind, codec, raw_len, stored_len, count, checksum) of a chunk's header.

    Checks the magic, version and declared lengths but not the checksum, so it
    can be used on the first HEADER_SIZE bytes alone to learn how many follow.
    """
    cdef const uint8_t *p = &chunk[0] if chunk.shape[0] else <const uint8_t *>""
    cdef size_t n = chunk.shape[0]
    if n < HDR:
        raise _corrupt(f"chunk is {n} bytes, shorter than its {HDR}-byte header (file truncated?)")
    if rd32(p) != MAGIC:
        raise _corrupt("bad magic (not a chunk, or the offset is wrong)")
    if rd16(p + 4) != VERSION:
        raise _corrupt(f"chunk format version {rd16(p + 4)} is not supported (this reads {VERSION})")
    if p[6] < 1 or p[6] > 4 or p[7] > 1 or rd32(p + 20) != 0 or rd32(p + 8) > MAX_RAW:
        raise _corrupt("invalid header fields")
    return (p[6], p[7], rd32(p + 8), rd32(p + 12), rd32(p + 16), rd64(p + 24))


# ---- encoder -------------------------------------------------------------------

cdef class ChunkEncoder:
    """Encodes state into self-contained chunks, reusing its buffers.

    Each method is a generator that yields one chunk (``bytes``) at a time, so
    a caller writing them to a file holds at most one chunk in memory. A chunk
    closes once its decoded payload reaches ``chunk_size`` bytes (64 KiB-1 MiB);
    a single record larger than that gets a chunk of its own.
    """

    cdef Buf raw            # decoded payload being filled
    cdef Buf out            # header + compressed payload of the chunk being emitted
    cdef void *lz4_state    # LZ4 compression state, reused across chunks
    cdef readonly Py_ssize_t chunk_size
    cdef readonly bint compress
    cdef readonly int acceleration

    def __cinit__(self):
        self.raw.data = NULL
        self.out.data = NULL
        self.lz4_state = NULL

    def __init__(self, Py_ssize_t chunk_size=DEFAULT_CHUNK_SIZE, bint compress=True,
                 int acceleration=1):
        if chunk_size < MIN_CHUNK_SIZE or chunk_size > MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
        if acceleration < 1:
            raise ValueError("acceleration must be >= 1")
        self.chunk_size = chunk_size
        self.compress = compress
        self.acceleration = acceleration
        buf_reserve(&self.raw, <size_t>chunk_size + 4096)
        if c_lz4_state_size != NULL and self.lz4_state == NULL:
            self.lz4_state = malloc(c_lz4_state_size())
            if self.lz4_state == NULL:
                raise MemoryError()

    def __dealloc__(self):
        free(self.raw.data)
        free(self.out.data)
        free(self.lz4_state)

    cdef bytes _seal(self, uint8_t kind, uint32_t count):
        """Compress, checksum and frame the raw payload; reset it for the next chunk."""
        cdef size_t raw_len = self.raw.len
        cdef int bound, stored = 0
        cdef uint8_t codec = 1 if self.compress else 0
        cdef uint8_t *o
        if raw_len > MAX_RAW:
            raise ValueError(f"one record encodes to {raw_len} bytes, over the {MAX_RAW} limit")
        if codec and use_native and c_lz4_compress != NULL:
            bound = c_lz4_bound(<int>raw_len)
            self.out.len = 0
            buf_reserve(&self.out, HDR + <size_t>bound)
            o = self.out.data
            with nogil:
                stored = c_lz4_compress(self.lz4_state, <const char *>self.raw.data,
                                        <char *>o + HDR, <int>raw_len, bound, self.acceleration)
            if stored <= 0:
                raise RuntimeError("lz4 compression failed")
        elif codec:
            import lz4.block
            packed = lz4.block.compress(
                PyBytes_FromStringAndSize(<const char *>self.raw.data, raw_len),
                store_size=False,
            )
            stored = len(packed)
            self.out.len = 0
            buf_reserve(&self.out, HDR + <size_t>stored)
            o = self.out.data
            memcpy(o + HDR, PyBytes_AS_STRING(packed), stored)
        if not codec or <size_t>stored >= raw_len:
            # Incompressible (or compression off): store the payload as is.
            codec = 0
            stored = <int>raw_len
            self.out.len = 0
            buf_reserve(&self.out, HDR + raw_len)
            o = self.out.data
            memcpy(o + HDR, self.raw.data, raw_len)
        o = self.out.data
        with nogil:
            wr32(o, MAGIC)
            wr16(o + 4, VERSION)
            o[6] = kind
            o[7] = codec
            wr32(o + 8, <uint32_t>raw_len)
            wr32(o + 12, <uint32_t>stored)
            wr32(o + 16, count)
            wr32(o + 20, 0)
            wr64(o + 24, chunk_checksum(o, <size_t>stored))
        self.raw.len = 0
        return PyBytes_FromStringAndSize(<const char *>o, HDR + stored)

    def records(self, items):
        """Chunks of KIND_RECORDS from an iterable of (key, value) pairs."""
        cdef uint32_t count = 0
        cdef size_t mark
        self.raw.len = 0
        for key, value in items:
            mark = self.raw.len
            try:
                encode_obj(&self.raw, key, 0)
                encode_obj(&self.raw, value, 0)
            except BaseException:
                self.raw.len = mark
                raise
            if self.raw.len - mark > MAX_RAW:
                size = self.raw.len - mark
                self.raw.len = mark
                raise RecordTooLargeError(size, MAX_RAW, key=key)
            count += 1
            if self.raw.len >= <size_t>self.chunk_size:
                yield self._seal(KIND_RECORDS, count)
                count = 0
        if count:
            yield self._seal(KIND_RECORDS, count)

    def keys(self, keys):
        """Chunks of KIND_KEYS (tombstones) from an iterable of keys."""
        cdef uint32_t count = 0
        self.raw.len = 0
        for key in keys:
            encode_obj(&self.raw, key, 0)
            count += 1
            if self.raw.len >= <size_t>self.chunk_size:
                yield self._seal(KIND_KEYS, count)
                count = 0
        if count:
            yield self._seal(KIND_KEYS, count)

    def columns(self, keys, columns=()):
        """Chunks of KIND_COLUMNS (or KIND_COLUMN_KEYS with no columns).

        ``keys`` is a 1-D int64 array; each column a 1-D int64 or float64 array
        of the same length. Rows are split so each chunk's payload stays within
        chunk_size; the copy, compression and checksum run without the GIL.
        """
        cdef const uint8_t[::1] kview
        cdef const uint8_t[::1] cview
        cdef const uint8_t *cols[MAX_COLS]
        cdef uint8_t dtypes[MAX_COLS]
        cdef Py_ssize_t ncols = len(columns)
        cdef Py_ssize_t n, row_bytes, per_chunk, start, rows, j
        cdef uint8_t *dst
        if ncols > MAX_COLS:
            raise ValueError(f"at most {MAX_COLS} columns per state")
        karr = np.ascontiguousarray(keys, dtype=np.int64)
        if karr.ndim != 1:
            raise ValueError("keys must be a 1-D array")
        n = karr.shape[0]
        held = [karr]
        kview = karr.view(np.uint8)
        for j in range(ncols):
            col = columns[j]
            if col.dtype == np.int64:
                dtypes[j] = DT_INT64
            elif col.dtype == np.float64:
                dtypes[j] = DT_FLOAT64
            else:
                raise TypeError(f"column {j} has dtype {col.dtype}; use int64 or float64")
            col = np.ascontiguousarray(col)
            if col.ndim != 1 or col.shape[0] != n:
                raise ValueError(f"column {j} must be 1-D with {n} rows")
            held.append(col)
            cview = col.view(np.uint8)
            cols[j] = &cview[0] if n else NULL
        kind = KIND_COLUMNS if ncols else KIND_COLUMN_KEYS
        row_bytes = 8 * (1 + ncols)
        per_chunk = (self.chunk_size - 8) // row_bytes
        start = 0
        while start < n:
            rows = min(per_chunk, n - start)
            self.raw.len = 0
            buf_reserve(&self.raw, 8 + <size_t>(rows * row_bytes))
            dst = self.raw.data
            with nogil:
                memset(dst, 0, 8)
                dst[0] = <uint8_t>ncols
                for j in range(ncols):
                    dst[1 + j] = dtypes[j]
                memcpy(dst + 8, &kview[0] + 8 * start, 8 * rows)
                for j in range(ncols):
                    memcpy(dst + 8 + 8 * rows * (1 + j), cols[j] + 8 * start, 8 * rows)
            self.raw.len = 8 + <size_t>(rows * row_bytes)
            yield self._seal(kind, <uint32_t>rows)
            start += rows


cdef int inflate(const uint8_t *p, Header *h, uint8_t *dst) except -1:
    """Payload of a validated chunk into dst (h.raw bytes)."""
    cdef int got = 0
    if h.codec == 0:
        with nogil:
            memcpy(dst, p + HDR, h.raw)
    elif use_native and c_lz4_decompress != NULL:
        with nogil:
            got = c_lz4_decompress(<const char *>p + HDR, <char *>dst, <int>h.stored,
                                   <int>h.raw)
        if got != <int>h.raw:
            raise _corrupt("payload does not decompress to its declared size")
    else:
        import lz4.block
        try:
            plain = lz4.block.decompress(
                PyBytes_FromStringAndSize(<const char *>p + HDR, h.stored),
                uncompressed_size=h.raw,
            )
        except Exception:
            raise _corrupt("payload does not decompress") from None
        if len(plain) != h.raw:
            raise _corrupt("payload does not decompress to its declared size")
        memcpy(dst, PyBytes_AS_STRING(plain), h.raw)
    return 0


# ---- decoder -------------------------------------------------------------------

cdef class ChunkDecoder:
    """Validates and decodes chunks; reuses one buffer for decompression.

    Every method checks the header and checksum first and raises
    ``CorruptCheckpointError`` (without location: the caller adds checkpoint,
    file and chunk) on anything wrong. ``expect_checksum`` guards against a
    valid chunk in the wrong place.
    """

    cdef Buf raw     # decompressed payload, reused
    cdef list strs   # short-string cache shared by the chunks this decoder reads

    def __cinit__(self):
        self.raw.data = NULL
        self.strs = [None] * STR_CACHE

    def __dealloc__(self):
        free(self.raw.data)

    cdef int _open(self, const uint8_t[::1] chunk, Header *h, object expect_checksum,
                   uint8_t *into) except -1:
        """Validate, then decompress into ``into`` (or the reused buffer if NULL)."""
        cdef const uint8_t *p = &chunk[0] if chunk.shape[0] else <const uint8_t *>""
        parse_header(p, chunk.shape[0], h)
        if expect_checksum is not None and h.checksum != <uint64_t>expect_checksum:
            raise _corrupt("checksum differs from the manifest's (wrong or replaced file?)")
        if into == NULL:
            self.raw.len = 0
            buf_reserve(&self.raw, h.raw + 1)
            into = self.raw.data
        inflate(p, h, into)
        self.raw.len = h.raw
        return 0

    def header(self, const uint8_t[::1] chunk):
        """Fully validate a chunk (header and checksum); return read_header's tuple."""
        cdef Header h
        parse_header(&chunk[0] if chunk.shape[0] else <const uint8_t *>"", chunk.shape[0], &h)
        return (h.kind, h.codec, h.raw, h.stored, h.count, h.checksum)

    def records(self, const uint8_t[::1] chunk, expect_checksum=None):
        """[(key, value), ...] of a KIND_RECORDS chunk."""
        cdef Header h
        cdef Reader r
        cdef uint32_t i
        self._open(chunk, &h, expect_checksum, NULL)
        if h.kind != KIND_RECORDS:
            raise _corrupt(f"expected a records chunk, found kind {h.kind}")
        if h.count > h.raw // 2:
            raise _corrupt("entry count exceeds what the payload can hold")
        r.p = self.raw.data
        r.n = h.raw
        r.pos = 0
        r.strs = <PyObject *>self.strs
        out = []
        for i in range(h.count):
            key = decode_obj(&r, 0)
            out.append((key, decode_obj(&r, 0)))
        if r.pos != r.n:
            raise _corrupt("payload longer than its entries")
        return out

    def records_into(self, const uint8_t[::1] chunk, dict target not None,
                     expect_checksum=None):
        """Decode a KIND_RECORDS chunk straight into ``target``; returns the count.

        The chunk is validated first; if its structure is damaged after all,
        ``target`` may hold part of it (restore builds into a fresh dict).
        """
        cdef Header h
        cdef Reader r
        cdef uint32_t i
        self._open(chunk, &h, expect_checksum, NULL)
        if h.kind != KIND_RECORDS:
            raise _corrupt(f"expected a records chunk, found kind {h.kind}")
        if h.count > h.raw // 2:
            raise _corrupt("entry count exceeds what the payload can hold")
        r.p = self.raw.data
        r.n = h.raw
        r.pos = 0
        r.strs = <PyObject *>self.strs
        for i in range(h.count):
            key = decode_obj(&r, 0)
            try:
                target[key] = decode_obj(&r, 0)
            except TypeError:
                raise _corrupt("record key is not hashable") from None
        if r.pos != r.n:
            raise _corrupt("payload longer than its entries")
        return h.count

    def keys(self, const uint8_t[::1] chunk, expect_checksum=None):
        """[key, ...] of a KIND_KEYS chunk."""
        cdef Header h
        cdef Reader r
        cdef uint32_t i
        self._open(chunk, &h, expect_checksum, NULL)
        if h.kind != KIND_KEYS:
            raise _corrupt(f"expected a keys chunk, found kind {h.kind}")
        if h.count > h.raw:
            raise _corrupt("entry count exceeds what the payload can hold")
        r.p = self.raw.data
        r.n = h.raw
        r.pos = 0
        r.strs = <PyObject *>self.strs
        out = [decode_obj(&r, 0) for i in range(h.count)]
        if r.pos != r.n:
            raise _corrupt("payload longer than its entries")
        return out

    def columns(self, const uint8_t[::1] chunk, expect_checksum=None):
        """(keys, [columns]) of a KIND_COLUMNS or KIND_COLUMN_KEYS chunk.

        The arrays are views into one fresh buffer the payload was
        decompressed into (no further copy).
        """
        cdef Header h
        cdef const uint8_t *p = &chunk[0] if chunk.shape[0] else <const uint8_t *>""
        cdef uint8_t[::1] dst
        cdef Py_ssize_t ncols, j, rows
        parse_header(p, chunk.shape[0], &h)
        if expect_checksum is not None and h.checksum != <uint64_t>expect_checksum:
            raise _corrupt("checksum differs from the manifest's (wrong or replaced file?)")
        if h.kind != KIND_COLUMNS and h.kind != KIND_COLUMN_KEYS:
            raise _corrupt(f"expected a columns chunk, found kind {h.kind}")
        out = np.zeros(max(<Py_ssize_t>h.raw, 8), dtype=np.uint8)
        dst = out
        inflate(p, &h, &dst[0])
        if h.raw < 8:
            raise _corrupt("columns payload shorter than its descriptor")
        ncols = dst[0]
        if ncols > MAX_COLS or (ncols == 0) != (h.kind == KIND_COLUMN_KEYS):
            raise _corrupt("bad column count")
        for j in range(1 + ncols, 8):
            if dst[j] != 0:
                raise _corrupt("bad column descriptor padding")
        rows = h.count
        if <size_t>h.raw != 8 + <size_t>rows * 8 * (1 + ncols):
            raise _corrupt("payload size does not match rows x columns")
        keys = out[8:8 + 8 * rows].view(np.int64)
        cols = []
        for j in range(ncols):
            code = dst[1 + j]
            if code == DT_INT64:
                dtype = np.int64
            elif code == DT_FLOAT64:
                dtype = np.float64
            else:
                raise _corrupt(f"unknown column type {code}")
            base = 8 + 8 * rows * (1 + j)
            cols.append(out[base:base + 8 * rows].view(dtype))
        return keys, cols


def checksum(const uint8_t[::1] data, uint64_t seed=0):
    """XXH3-64 of data (the hash chunks and manifests are checked with)."""
    cdef uint64_t h
    with nogil:
        h = eos_xxh3_64(&data[0] if data.shape[0] else <const uint8_t *>"", data.shape[0], seed)
    return h
