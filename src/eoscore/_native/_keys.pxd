# Key normalisation shared by _bloom, _keyset and _dedup (inline only: no module of its own).
#
# A key is an int in [-2**63, 2**64), bytes, or str (hashed as its UTF-8 bytes). Each
# key belongs to one of four domains, and every hash of a key is seeded per domain, so
# keys a Python set tells apart stay apart here too: -1 and 2**64 - 1, b"a" and "a".
#
# A batch is checked once at the boundary (as_batch) and then walked without Python:
#   BATCH_U64 / BATCH_I64  a C-contiguous 64-bit integer array (narrower ints are widened)
#   BATCH_FIXED            a C-contiguous 'S' array; a row's trailing NUL bytes are not
#                          part of its key (numpy's own rule: arr[i] drops them)
#   BATCH_SEQ              a list or tuple of int/bytes/str objects ('U' and object arrays
#                          and other iterables are turned into a list first)
# Python-object batches are gathered whole with the GIL held (checking every key, and
# hashing bytes and str while the object is in cache), then the table work runs without
# it: a bad key raises before anything changes.

cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_Check
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_Check
from libc.stdint cimport int64_t, uint8_t, uint64_t

from eoscore._native._xxh3 cimport eos_xxh3_128, eos_xxh3_64, eos_xxh3_64_u64


cdef extern from *:
    """
    /* Per-domain seed tweaks (XORed into an object's seed): arbitrary odd constants. */
    static const uint64_t eos_key_tweak[4] = {
        UINT64_C(0),
        UINT64_C(0x6a09e667f3bcc909),
        UINT64_C(0xbb67ae8584caa73b),
        UINT64_C(0x3c6ef372fe94f82b),
    };
    /* Ask for the cache line at p (for writing); never faults, even on a bad address.
       The empty volatile asm marks it as having an effect: GCC otherwise judges small
       helpers that only prefetch to be pure, and deletes their calls. */
    static inline void eos_prefetch(const void *p) {
        __builtin_prefetch(p, 1, 3);
        __asm__ __volatile__("" : : "r"(p));
    }

    #include <stdlib.h>
    #include <string.h>
    #include <sys/mman.h>
    #define EOS_HUGE_PAGE ((size_t)2 << 20)
    /* Zeroed, 64-byte aligned memory for a table; release it with eos_table_free and
       the same size. Tables of 2 MiB and more are mapped directly: 2 MiB aligned, asked
       to live on transparent huge pages (a random probe then costs one cache miss,
       not a cache miss plus a TLB miss), and zeroed by the kernel page by page as they
       are first touched rather than by a memset pass. */
    static inline void *eos_table_alloc(size_t bytes) {
        void *p = NULL;
        if (bytes < EOS_HUGE_PAGE) {
            if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
            memset(p, 0, bytes);
            return p;
        }
        size_t span = bytes + EOS_HUGE_PAGE;
        char *raw = (char *)mmap(NULL, span, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == (char *)MAP_FAILED) return NULL;
        char *start = (char *)(((uintptr_t)raw + EOS_HUGE_PAGE - 1) & ~(uintptr_t)(EOS_HUGE_PAGE - 1));
        size_t head = (size_t)(start - raw), tail = span - head - bytes;
        if (head) munmap(raw, head);
        if (tail) munmap(start + bytes, tail);
    #ifdef MADV_HUGEPAGE
        (void)madvise(start, bytes, MADV_HUGEPAGE);
    #endif
        return start;
    }
    static inline void eos_table_free(void *p, size_t bytes) {
        if (p == NULL) return;
        if (bytes < EOS_HUGE_PAGE) free(p);
        else munmap(p, bytes);
    }
    """
    const uint64_t eos_key_tweak[4]        # seed tweak per KIND_*
    void eos_prefetch(const void *p) nogil  # cache-line prefetch hint
    void *eos_table_alloc(size_t bytes) nogil  # zeroed table memory (huge pages if large)
    void eos_table_free(void *p, size_t bytes) nogil  # release it (same bytes); NULL is fine

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int *overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object obj)  # errors: -1 + PyErr_Occurred
    void *PyErr_Occurred()
    void PyErr_Clear()
    bint PyIndex_Check(object obj)
    object PyNumber_Index(object obj)
    bint PyList_Check(object obj)


cdef enum:
    KIND_UINT = 0    # int in [0, 2**64): the value itself
    KIND_NEG = 1     # int in [-2**63, 0): its two's-complement bit pattern
    KIND_BYTES = 2   # bytes, or a row of an 'S' array
    KIND_STR = 3     # str, as UTF-8

cdef enum:
    BATCH_U64 = 0    # uint64 array
    BATCH_I64 = 1    # int64 array (negative values are KIND_NEG)
    BATCH_FIXED = 2  # 'S' array
    BATCH_SEQ = 3    # list or tuple of key objects

cdef enum:
    OP_ADD = 0       # insert; report which keys were new
    OP_CONTAINS = 1  # look up only

cdef enum:
    CHUNK = 512          # keys hashed ahead of the table work
    AHEAD = 32           # table lines prefetched ahead of the key being worked on
    NOGIL_MIN = 256      # smaller batches keep the GIL (releasing it costs more)


cdef struct Batch:
    int kind               # BATCH_*
    Py_ssize_t n           # number of keys
    const char *data       # first element (arrays only)
    Py_ssize_t itemsize    # row width in bytes (BATCH_FIXED only)


cdef struct Rec:
    uint64_t a             # the int (as uint64), or the fingerprint's low half (never 0)
    uint64_t b             # the fingerprint's high half (bytes and str)
    uint64_t h             # the hash that places the key
    int kind               # KIND_*


cdef inline str _where(Py_ssize_t index):
    """How an error names the key: 'key' for a single key, 'keys[i]' in a batch."""
    return "key" if index < 0 else f"keys[{index}]"


cdef inline int _big_int(object key, Py_ssize_t index, int overflow,
                         uint64_t *value) except -1:
    """int_parts for ints outside int64: [2**63, 2**64) is fine, the rest is an error."""
    cdef unsigned long long v
    if overflow > 0:
        v = PyLong_AsUnsignedLongLong(key)
        if v != <unsigned long long>-1 or not PyErr_Occurred():
            value[0] = v
            return KIND_UINT
        PyErr_Clear()
    raise ValueError(
        f"{_where(index)}: int {key} is out of range; keys are an int in [-2**63, 2**64), "
        "bytes or str"
    )


cdef inline int int_parts(object key, Py_ssize_t index, uint64_t *value) except -1:
    """Domain of an int key, its value in value[0]."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(key, &overflow)
    if overflow == 0:
        value[0] = <uint64_t>v
        return KIND_UINT if v >= 0 else KIND_NEG
    return _big_int(key, index, overflow, value)


cdef inline int _other_key(object key, Py_ssize_t index, uint64_t *value) except -1:
    """Cold path of key_parts: integer-like objects (numpy scalars) and errors."""
    if key is None:
        raise TypeError(f"{_where(index)}: None is not a key; keys are an int in [-2**63, 2**64), bytes or str")
    # Integer-like objects (numpy integer scalars), but not numpy's bool.
    if PyIndex_Check(key) and getattr(getattr(key, "dtype", None), "kind", "i") in "iu":
        return int_parts(PyNumber_Index(key), index, value)
    raise TypeError(
        f"{_where(index)}: {type(key).__name__} is not a key type; keys are an int in [-2**63, 2**64), bytes or str"
    )


cdef inline int key_parts(object key, Py_ssize_t index, uint64_t *value, const char **ptr,
                          Py_ssize_t *size) except -1:
    """Domain of one key (index < 0: a single key; else its place in a batch).

    ints set value[0]; bytes and str set ptr[0]/size[0], valid while key is alive.
    """
    if PyLong_Check(key):
        return int_parts(key, index, value)
    if PyBytes_Check(key):
        ptr[0] = PyBytes_AS_STRING(key)
        size[0] = PyBytes_GET_SIZE(key)
        return KIND_BYTES
    if PyUnicode_Check(key):
        ptr[0] = PyUnicode_AsUTF8AndSize(key, size)
        return KIND_STR
    return _other_key(key, index, value)


cdef inline uint64_t hash64(int kind, uint64_t value, const char *ptr, Py_ssize_t size,
                            uint64_t seed) noexcept nogil:
    """64-bit hash of a key from key_parts, in its domain."""
    if kind <= KIND_NEG:
        return eos_xxh3_64_u64(value, seed ^ eos_key_tweak[kind])
    return eos_xxh3_64(ptr, <size_t>size, seed ^ eos_key_tweak[kind])


cdef inline void fingerprint(int kind, const char *ptr, Py_ssize_t size, uint64_t seed,
                             Rec *r) noexcept nogil:
    """128-bit fingerprint of a bytes/str key into r (a = low half, never 0; h = a)."""
    cdef uint64_t lo, hi
    eos_xxh3_128(ptr, <size_t>size, seed ^ eos_key_tweak[kind], &lo, &hi)
    if lo == 0:
        lo = 1   # 0 marks an empty slot; the merge costs one more 2**-128 collision
    r.a = lo
    r.b = hi
    r.h = lo
    r.kind = kind


cdef inline Py_ssize_t fixed_len(const char *row, Py_ssize_t itemsize) noexcept nogil:
    """Length of an 'S' row without its trailing NUL padding."""
    while itemsize > 0 and row[itemsize - 1] == 0:
        itemsize -= 1
    return itemsize


cdef inline object _array_batch(cnp.ndarray arr, Batch *b, str name):
    cdef int ndim = cnp.PyArray_NDIM(arr)
    if ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got a {ndim}-D array")
    kind = arr.dtype.kind
    if kind == "U" or kind == "O":
        seq = arr.tolist()
        b.kind = BATCH_SEQ
        b.n = len(seq)
        return seq
    if kind != "u" and kind != "i" and kind != "S":
        raise TypeError(
            f"{name}: unsupported array dtype {arr.dtype}; expected a 1-D numpy integer or 'S' array, or a list or tuple of keys"
        )
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(
            f"{name}: array is not C-contiguous (a strided view?); "
            f"pass numpy.ascontiguousarray({name})"
        )
    if not arr.dtype.isnative:
        raise ValueError(f"{name}: array is not in native byte order; pass {name}.astype('=')")
    if kind == "S":
        b.kind = BATCH_FIXED
        b.itemsize = cnp.PyArray_ITEMSIZE(arr)
    else:
        if cnp.PyArray_ITEMSIZE(arr) != 8:
            arr = arr.astype("i8" if kind == "i" else "u8")
        b.kind = BATCH_I64 if kind == "i" else BATCH_U64
        b.itemsize = 8
    b.n = cnp.PyArray_DIM(arr, 0)
    b.data = <const char *>cnp.PyArray_DATA(arr)
    return arr


cdef inline object as_batch(object keys, Batch *b, str name="keys"):
    """Check a batch argument and describe it in b.

    Returns the object that owns the data: keep it alive while b is in use.
    """
    if cnp.PyArray_Check(keys):
        return _array_batch(keys, b, name)
    if isinstance(keys, (list, tuple)):
        b.kind = BATCH_SEQ
        b.n = len(keys)
        return keys
    if keys is None or isinstance(keys, (bytes, bytearray, str, memoryview, int, float)):
        raise TypeError(
            f"{name}: expected a 1-D numpy integer or 'S' array, or a list or tuple of keys, got {type(keys).__name__}"
            + ("" if keys is None else "; pass a single key to add() or 'in'")
        )
    if hasattr(keys, "__array__"):
        return _array_batch(keys.__array__(), b, name)
    try:
        seq = list(keys)
    except TypeError:
        raise TypeError(f"{name}: expected a 1-D numpy integer or 'S' array, or a list or tuple of keys, got {type(keys).__name__}") from None
    b.kind = BATCH_SEQ
    b.n = len(seq)
    return seq


cdef inline object seq_item(object seq, Py_ssize_t i):
    """seq[i] of a list or tuple batch, safe if the list shrank meanwhile."""
    if PyList_Check(seq):
        if i >= PyList_GET_SIZE(seq):
            raise RuntimeError("keys: the list changed size during the call")
        return <object>PyList_GET_ITEM(seq, i)
    return <object>PyTuple_GET_ITEM(seq, i)


cdef inline cnp.ndarray new_array(Py_ssize_t n, int typenum):
    """Uninitialised 1-D array of n elements."""
    cdef cnp.npy_intp dim = n
    return cnp.PyArray_EMPTY(1, &dim, typenum, 0)
