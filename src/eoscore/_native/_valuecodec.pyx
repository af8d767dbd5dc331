# The tagged value encoding state is stored in (no pickle): None, bool, int,
# float, str, bytes, and lists, tuples and dicts of those. Chunks
# (_statecodec) hold sequences of these; docs/checkpoint-format.md has the tags.
#
# The decoder is bounds-checked at every read and builds only the types above,
# so any bytes either decode to a legal value or raise CorruptCheckpointError.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_GET_ITEM
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromLongLong
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy

from eoscore._native._xxh3 cimport eos_xxh3_64

DEF MAX_DEPTH = 64  # deepest nesting of lists/tuples/dicts

# Value tags.
DEF T_NONE = 0
DEF T_FALSE = 1
DEF T_TRUE = 2
DEF T_INT = 3     # zigzag varint, fits int64
DEF T_BIGINT = 4  # varint byte count + signed little-endian bytes
DEF T_FLOAT = 5   # 8 bytes IEEE-754 little-endian
DEF T_STR = 6     # varint length + UTF-8
DEF T_BYTES = 7   # varint length + bytes
DEF T_LIST = 8    # varint count + items
DEF T_TUPLE = 9   # varint count + items
DEF T_DICT = 10   # varint count + key, value pairs

DEF STR_CACHED = 32   # longest string (bytes) the decoder's cache holds


cdef object corrupt(str reason):
    from eoscore.checkpoint.errors import CorruptCheckpointError

    return CorruptCheckpointError(reason)


# ---- growable byte buffer ------------------------------------------------------

cdef int buf_reserve(Buf *b, size_t extra) except -1:
    cdef size_t need = b.len + extra
    cdef size_t cap
    cdef uint8_t *p
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < need:
        cap *= 2
    p = <uint8_t *>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int put_byte(Buf *b, uint8_t v) except -1:
    if b.len + 1 > b.cap:
        buf_reserve(b, 1)
    b.data[b.len] = v
    b.len += 1
    return 0


cdef inline int put_bytes(Buf *b, const void *src, size_t n) except -1:
    if b.len + n > b.cap:
        buf_reserve(b, n)
    memcpy(b.data + b.len, src, n)
    b.len += n
    return 0


cdef inline int put_varint(Buf *b, uint64_t v) except -1:
    if b.len + 10 > b.cap:
        buf_reserve(b, 10)
    while v >= 0x80:
        b.data[b.len] = <uint8_t>(v | 0x80)
        b.len += 1
        v >>= 7
    b.data[b.len] = <uint8_t>v
    b.len += 1
    return 0


# ---- tagged encoding -----------------------------------------------------------

cdef int encode_obj(Buf *b, object o, int depth) except -1:
    cdef type t = type(o)
    cdef int overflow = 0
    cdef long long v
    cdef double d
    cdef Py_ssize_t n
    cdef const char *s
    if depth > MAX_DEPTH:
        raise ValueError(f"state value nested deeper than {MAX_DEPTH} levels")
    if o is None:
        return put_byte(b, T_NONE)
    if t is bool:
        return put_byte(b, T_TRUE if o is True else T_FALSE)
    if t is int:
        v = PyLong_AsLongLongAndOverflow(o, &overflow)
        if overflow == 0:
            put_byte(b, T_INT)
            return put_varint(b, (<uint64_t>v << 1) ^ <uint64_t>(v >> 63))
        raw = (<object>o).to_bytes(((<object>o).bit_length() + 8) // 8, "little", signed=True)
        put_byte(b, T_BIGINT)
        put_varint(b, len(raw))
        return put_bytes(b, PyBytes_AS_STRING(raw), len(raw))
    if t is float:
        d = PyFloat_AS_DOUBLE(o)
        put_byte(b, T_FLOAT)
        return put_bytes(b, &d, 8)
    if t is str:
        s = PyUnicode_AsUTF8AndSize(o, &n)
        put_byte(b, T_STR)
        put_varint(b, <uint64_t>n)
        return put_bytes(b, s, <size_t>n)
    if t is bytes:
        n = len(<bytes>o)
        put_byte(b, T_BYTES)
        put_varint(b, <uint64_t>n)
        return put_bytes(b, PyBytes_AS_STRING(o), <size_t>n)
    if t is list or t is tuple:
        put_byte(b, T_LIST if t is list else T_TUPLE)
        put_varint(b, <uint64_t>len(o))
        for item in o:
            encode_obj(b, item, depth + 1)
        return 0
    if t is dict:
        put_byte(b, T_DICT)
        put_varint(b, <uint64_t>len(<dict>o))
        for key, item in (<dict>o).items():
            encode_obj(b, key, depth + 1)
            encode_obj(b, item, depth + 1)
        return 0
    raise TypeError(
        f"state cannot hold {t.__name__!s} values: use int, float, bool, None, str, "
        "bytes, or lists, tuples and dicts of those"
    )


cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void *PyUnicode_DATA(object o)


cdef uint64_t HIGH_BITS = 0x8080808080808080  # the top bit of each byte


cdef inline bint is_ascii(const char *s, size_t n) noexcept nogil:
    cdef size_t i = 0
    cdef uint64_t w, acc = 0
    while i + 8 <= n:
        memcpy(&w, s + i, 8)
        acc |= w
        i += 8
    while i < n:
        acc |= <uint8_t>s[i]
        i += 1
    return (acc & HIGH_BITS) == 0


cdef inline object make_str(const char *src, size_t n):
    if is_ascii(src, n):  # the common case: a copy, no UTF-8 decoding
        value = PyUnicode_New(n, 127)
        memcpy(PyUnicode_DATA(value), src, n)
        return value
    try:
        return PyUnicode_DecodeUTF8(src, n, NULL)
    except UnicodeDecodeError:
        raise corrupt("string is not valid UTF-8") from None


cdef object decode_str(Reader *r, size_t n):
    cdef const char *src = <const char *>r.p + r.pos
    cdef const char *have
    cdef Py_ssize_t have_n
    cdef size_t slot
    cdef object cached
    r.pos += n
    if r.strs == NULL or n > STR_CACHED:
        return make_str(src, n)
    slot = <size_t>(eos_xxh3_64(src, n, 0) & (STR_CACHE - 1))
    cached = <object>PyList_GET_ITEM(<object>r.strs, slot)
    if cached is not None:
        have = PyUnicode_AsUTF8AndSize(cached, &have_n)
        if <size_t>have_n == n and memcmp(have, src, n) == 0:
            return cached
    value = make_str(src, n)
    (<list>r.strs)[slot] = value
    return value


cdef inline uint64_t get_varint(Reader *r) except? 0xFFFFFFFFFFFFFFFF:
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t c
    while True:
        if r.pos >= r.n:
            raise corrupt("varint runs past the end of the payload")
        c = r.p[r.pos]
        r.pos += 1
        if shift == 63 and c > 1:
            raise corrupt("varint overflows 64 bits")
        v |= (<uint64_t>(c & 0x7F)) << shift
        if c < 0x80:
            return v
        shift += 7
        if shift > 63:
            raise corrupt("varint longer than 10 bytes")


cdef inline size_t get_len(Reader *r) except? 0xFFFFFFFFFFFFFFFF:
    cdef uint64_t v = get_varint(r)
    if v > r.n - r.pos:
        raise corrupt("length runs past the end of the payload")
    return <size_t>v


cdef object decode_obj(Reader *r, int depth):
    cdef uint8_t tag
    cdef uint64_t u
    cdef size_t n, i
    cdef double d
    cdef list items
    cdef dict mapping
    if depth > MAX_DEPTH:
        raise corrupt(f"value nested deeper than {MAX_DEPTH} levels")
    if r.pos >= r.n:
        raise corrupt("value runs past the end of the payload")
    tag = r.p[r.pos]
    r.pos += 1
    if tag == T_NONE:
        return None
    if tag == T_FALSE:
        return False
    if tag == T_TRUE:
        return True
    if tag == T_INT:
        u = get_varint(r)
        return PyLong_FromLongLong(<long long>((u >> 1) ^ (0 - (u & 1))))
    if tag == T_BIGINT:
        n = get_len(r)
        if n == 0:
            raise corrupt("empty big integer")
        i = r.pos
        r.pos += n
        return int.from_bytes(PyBytes_FromStringAndSize(<const char *>r.p + i, n),
                              "little", signed=True)
    if tag == T_FLOAT:
        if r.n - r.pos < 8:
            raise corrupt("float runs past the end of the payload")
        memcpy(&d, r.p + r.pos, 8)
        r.pos += 8
        return d
    if tag == T_STR:
        return decode_str(r, get_len(r))
    if tag == T_BYTES:
        n = get_len(r)
        i = r.pos
        r.pos += n
        return PyBytes_FromStringAndSize(<const char *>r.p + i, n)
    if tag == T_LIST or tag == T_TUPLE:
        n = get_len(r)  # every item takes at least one byte
        items = [decode_obj(r, depth + 1) for i in range(n)]
        return items if tag == T_LIST else tuple(items)
    if tag == T_DICT:
        n = get_len(r)
        mapping = {}
        for i in range(n):
            key = decode_obj(r, depth + 1)
            try:
                mapping[key] = decode_obj(r, depth + 1)
            except TypeError:
                raise corrupt("dict key is not hashable") from None
        if <size_t>len(mapping) != n:
            raise corrupt("dict holds a duplicate key")
        return mapping
    raise corrupt(f"unknown value tag {tag}")


cdef int check_obj(object o, int depth) except -1:
    cdef type t = type(o)
    cdef Py_ssize_t n
    if depth > MAX_DEPTH:
        raise ValueError(f"state value nested deeper than {MAX_DEPTH} levels")
    if o is None or t is bool or t is int or t is float or t is bytes:
        return 0
    if t is str:
        PyUnicode_AsUTF8AndSize(o, &n)  # rejects lone surrogates now, not at checkpoint
        return 0
    if t is list or t is tuple:
        for item in o:
            check_obj(item, depth + 1)
        return 0
    if t is dict:
        for key, item in (<dict>o).items():
            check_obj(key, depth + 1)
            check_obj(item, depth + 1)
        return 0
    raise TypeError(
        f"state cannot hold {t.__name__!s} values: use int, float, bool, None, str, "
        "bytes, or lists, tuples and dicts of those"
    )


def check_value(object value):
    """Raise TypeError (or ValueError) now if ``value`` could not be checkpointed."""
    check_obj(value, 0)


def encode_value(object value):
    """The tagged encoding of one value (the bytes a chunk stores for it)."""
    cdef Buf b
    b.data = NULL
    b.len = 0
    b.cap = 0
    try:
        encode_obj(&b, value, 0)
        return PyBytes_FromStringAndSize(<const char *>b.data, b.len)
    finally:
        free(b.data)


def decode_value(const uint8_t[::1] data):
    """Inverse of encode_value; raises CorruptCheckpointError on bad bytes."""
    cdef Reader r
    r.p = &data[0] if data.shape[0] else <const uint8_t *>""
    r.n = data.shape[0]
    r.pos = 0
    r.strs = NULL
    value = decode_obj(&r, 0)
    if r.pos != r.n:
        raise corrupt("trailing bytes after the value")
    return value
