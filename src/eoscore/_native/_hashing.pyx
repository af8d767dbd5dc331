# cython: binding=False
"""XXH3 over Python objects and whole key batches (public API: ``eoscore.hashing``)."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Check, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.long cimport PyLong_Check
from cpython.object cimport PyObject
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_SIZE, PySequence_Fast_ITEMS
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_Check
from libc.stdint cimport uint8_t, uint64_t

from eoscore._native._xxh3 cimport eos_xxh3_128, eos_xxh3_64, eos_xxh3_64_u64

import numpy as np

cdef enum:
    _NOGIL_MIN = 16384  # buffers at least this long are hashed with the GIL released

_SEED_RANGE = "an int in [0, 2**64)"
_DATA_KINDS = "bytes, bytearray, memoryview, str or another C-contiguous buffer"


cdef extern from *:
    """
    /* Python int from the two halves of a 128-bit hash (no Python arithmetic). */
    static PyObject *eos_u128_to_pylong(uint64_t lo, uint64_t hi) {
        unsigned char le[16];
        if (hi == 0) return PyLong_FromUnsignedLongLong(lo);
        for (int i = 0; i < 8; i++) {
            le[i] = (unsigned char)(lo >> (8 * i));
            le[8 + i] = (unsigned char)(hi >> (8 * i));
        }
    #if PY_VERSION_HEX >= 0x030D0000
        return PyLong_FromUnsignedNativeBytes(le, 16, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
    #else
        return _PyLong_FromByteArray(le, 16, 1, 0);
    #endif
    }
    """
    object eos_u128_to_pylong(uint64_t lo, uint64_t hi)
    # The C-API call itself, unchecked: _seed tells an error from 2**64 - 1.
    unsigned long long _as_u64 "PyLong_AsUnsignedLongLong"(object o)


cdef uint64_t _seed(object seed) except? 0:
    """The seed as uint64_t; TypeError for non-ints, ValueError when out of range."""
    cdef unsigned long long v
    if not PyLong_Check(seed):
        raise TypeError(f"seed must be {_SEED_RANGE}, not {type(seed).__name__}")
    v = _as_u64(seed)
    if v == <unsigned long long>-1 and PyErr_Occurred():
        PyErr_Clear()  # OverflowError: negative or >= 2**64
        raise ValueError(f"seed must be {_SEED_RANGE}, got {seed!r}")
    return v


cdef int _get_buffer(object data, Py_buffer *view) except -1:
    """PyBUF_SIMPLE view of data; non-contiguous exporters become a ValueError."""
    try:
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except (BufferError, ValueError) as exc:
        raise ValueError(
            f"data must be a C-contiguous buffer ({type(data).__name__}: {exc}); "
            "copy it first, e.g. bytes(data) or numpy.ascontiguousarray(data)"
        ) from None
    return 0


cdef inline bint _key_bytes(object key, const char **ptr, Py_ssize_t *size) except -1:
    """Point at the bytes of a bytes/bytearray/str key; False if it is none of those."""
    if PyBytes_Check(key):
        ptr[0] = PyBytes_AS_STRING(key)
        size[0] = PyBytes_GET_SIZE(key)
        return True
    if PyUnicode_Check(key):
        ptr[0] = PyUnicode_AsUTF8AndSize(key, size)
        return True
    if PyByteArray_Check(key):
        ptr[0] = PyByteArray_AS_STRING(key)
        size[0] = PyByteArray_GET_SIZE(key)
        return True
    return False


def xxh3_64(data, seed=0):
    """XXH3-64 of ``data``, identical to ``xxhash.xxh3_64_intdigest(data, seed)``.

    ``data`` is bytes, bytearray, a C-contiguous buffer (memoryview, numpy array: its
    raw bytes) or str (hashed as its UTF-8 encoding). ``seed`` is in [0, 2**64).
    """
    cdef uint64_t s = _seed(seed)
    cdef const char *ptr
    cdef Py_ssize_t size
    cdef Py_buffer view
    cdef uint64_t h
    if PyBytes_Check(data) or PyUnicode_Check(data):
        _key_bytes(data, &ptr, &size)
        if size < _NOGIL_MIN:
            return eos_xxh3_64(ptr, <size_t>size, s)
        with nogil:
            h = eos_xxh3_64(ptr, <size_t>size, s)
        return h
    if not PyObject_CheckBuffer(data):
        raise TypeError(f"data must be {_DATA_KINDS}, not {type(data).__name__}")
    _get_buffer(data, &view)
    try:
        if view.len < _NOGIL_MIN:
            h = eos_xxh3_64(view.buf, <size_t>view.len, s)
        else:
            with nogil:
                h = eos_xxh3_64(view.buf, <size_t>view.len, s)
    finally:
        PyBuffer_Release(&view)
    return h


def xxh3_128(data, seed=0):
    """XXH3-128 of ``data``, identical to ``xxhash.xxh3_128_intdigest(data, seed)``.

    Accepts the same ``data`` and ``seed`` as :func:`xxh3_64`; returns ``(hi << 64) | lo``.
    """
    cdef uint64_t s = _seed(seed)
    cdef const char *ptr
    cdef Py_ssize_t size
    cdef Py_buffer view
    cdef uint64_t lo, hi
    if PyBytes_Check(data) or PyUnicode_Check(data):
        _key_bytes(data, &ptr, &size)
        if size < _NOGIL_MIN:
            eos_xxh3_128(ptr, <size_t>size, s, &lo, &hi)
        else:
            with nogil:
                eos_xxh3_128(ptr, <size_t>size, s, &lo, &hi)
        return eos_u128_to_pylong(lo, hi)
    if not PyObject_CheckBuffer(data):
        raise TypeError(f"data must be {_DATA_KINDS}, not {type(data).__name__}")
    _get_buffer(data, &view)
    try:
        if view.len < _NOGIL_MIN:
            eos_xxh3_128(view.buf, <size_t>view.len, s, &lo, &hi)
        else:
            with nogil:
                eos_xxh3_128(view.buf, <size_t>view.len, s, &lo, &hi)
    finally:
        PyBuffer_Release(&view)
    return eos_u128_to_pylong(lo, hi)


cdef object _many_objects(object keys, uint64_t s):
    """Hash each bytes/bytearray/str of an iterable as it is visited, holding the GIL.

    Hashing as we go measured ~2x faster than gathering pointers and hashing them
    without the GIL (which also needs a private copy of the list to be safe).
    """
    cdef object seq = PySequence_Fast(keys, b"keys must be an iterable of bytes or str")
    cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i
    cdef PyObject **items = PySequence_Fast_ITEMS(seq)
    cdef const char *ptr
    cdef Py_ssize_t size
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    for i in range(n):
        # Nothing in this loop runs Python code, so seq cannot change under us.
        if not _key_bytes(<object>items[i], &ptr, &size):
            raise TypeError(
                f"keys[{i}] must be bytes, bytearray or str, not {type(<object>items[i]).__name__}"
            )
        o[i] = eos_xxh3_64(ptr, <size_t>size, s)
    return out


cdef object _many_fixed_width(object arr, uint64_t s):
    """Hash each element of a 1-D ``S`` array, trailing NUL padding stripped."""
    cdef Py_ssize_t n = arr.shape[0], width = arr.dtype.itemsize, i, m
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    cdef const uint8_t[::1] raw
    cdef const uint8_t *p
    if n == 0:
        return out
    if width == 0:
        out.fill(eos_xxh3_64(b"", 0, s))
        return out
    raw = arr.view(np.uint8)
    with nogil:
        for i in range(n):
            p = &raw[i * width]
            m = width
            while m > 0 and p[m - 1] == 0:
                m -= 1
            o[i] = eos_xxh3_64(p, <size_t>m, s)
    return out


cdef object _many_ints(object arr, uint64_t s):
    """Hash each integer as the 8 little-endian bytes of its int64/uint64 value."""
    wide = arr.astype(np.int64 if arr.dtype.kind == "i" else np.uint64, copy=False)
    cdef const uint64_t[::1] v = wide.view(np.uint64)
    cdef Py_ssize_t n = v.shape[0], i
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    with nogil:
        for i in range(n):
            o[i] = eos_xxh3_64_u64(v[i], s)
    return out


def xxh3_64_many(keys, seed=0):
    """XXH3-64 of every key in a batch, as a ``numpy.uint64`` array of ``len(keys)``.

    ``out[i] == xxh3_64(keys[i], seed)`` for each kind of batch:

    * an iterable (list, tuple, ...) of bytes, bytearray or str (str as UTF-8);
    * a 1-D ``S`` (fixed-width bytes) array: each element is hashed with its trailing
      NUL padding stripped, i.e. as the value ``keys[i]`` that numpy returns, so
      ``np.array([b"ab"], "S16")`` hashes like ``[b"ab"]`` (a key that really ends in
      NUL bytes cannot be told from a shorter one in an ``S`` array);
    * a 1-D ``U`` or object array: hashed like the list ``keys.tolist()``;
    * a 1-D integer array of any width: each key is hashed as the 8 little-endian bytes
      of its value widened to 64 bits (signed dtypes sign-extended to int64, unsigned
      zero-extended to uint64), so ``out[i] == xxh3_64(int(keys[i]).to_bytes(8,
      "little", signed=keys.dtype.kind == "i"), seed)``.

    Arrays must be 1-D and C-contiguous (ValueError otherwise); other dtypes, and
    bytes or str given as the whole batch, raise TypeError. Array batches are hashed
    with the GIL released.
    """
    cdef uint64_t s = _seed(seed)
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1:
            raise ValueError(f"keys must be a 1-D array, got {keys.ndim}-D shape {keys.shape}")
        if not keys.flags.c_contiguous:
            raise ValueError(
                "keys must be a C-contiguous array (got a strided view such as arr[::2]); "
                "pass numpy.ascontiguousarray(keys)"
            )
        kind = keys.dtype.kind
        if kind == "i" or kind == "u":
            return _many_ints(keys, s)
        if kind == "S":
            return _many_fixed_width(keys, s)
        if kind == "U" or kind == "O":
            return _many_objects(keys.tolist(), s)
        raise TypeError(
            f"keys array dtype {keys.dtype} is not supported; "
            "use an integer, fixed-width bytes (S), str (U) or object array"
        )
    if keys is None or PyBytes_Check(keys) or PyUnicode_Check(keys) or PyObject_CheckBuffer(keys):
        raise TypeError(
            f"keys must be a list/tuple of bytes or str or a 1-D numpy array, "
            f"not {type(keys).__name__} (use xxh3_64 for a single key)"
        )
    return _many_objects(keys, s)
