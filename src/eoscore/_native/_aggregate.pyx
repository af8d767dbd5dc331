# Per-batch kernels of the keyed window operators (eoscore.pipeline.windows).
#
# intern_keys turns a batch of Python keys into dense int64 key ids with one
# dict probe per key (exact: Python equality, no fingerprint can collide).
# The scatter kernels fold a batch of values into state columns by row:
# bounds are checked once per batch, then the loop runs without the GIL.

from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_Append, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLong
from cpython.object cimport PyObject
from libc.stdint cimport int64_t

cimport numpy as cnp
import numpy as np

cnp.import_array()

ctypedef fused num_t:
    int64_t
    double


def intern_keys(list keys not None, dict ids not None, list originals not None,
                list free not None, list fresh not None):
    """Key ids of ``keys`` (int64 array), giving new keys ids as they come.

    ``ids`` maps key -> id and ``originals[id]`` is the key (None where free).
    A new key takes the last id of ``free`` (ids whose keys are gone) or
    ``len(originals)``; its id is appended to ``fresh``.
    """
    cdef Py_ssize_t i, n = PyList_GET_SIZE(keys)
    cdef cnp.ndarray[int64_t, ndim=1] out = np.empty(n, np.int64)
    cdef int64_t *dst = <int64_t *>cnp.PyArray_DATA(out)
    cdef PyObject *found
    cdef object key, kid
    for i in range(n):
        key = <object>PyList_GET_ITEM(keys, i)
        found = PyDict_GetItem(ids, key)
        if found != NULL:
            dst[i] = PyLong_AsLongLong(<object>found)
            continue
        if PyList_GET_SIZE(free):
            kid = free.pop()
            originals[kid] = key
        else:
            kid = PyList_GET_SIZE(originals)
            PyList_Append(originals, key)
        PyDict_SetItem(ids, key, kid)
        PyList_Append(fresh, kid)
        dst[i] = PyLong_AsLongLong(kid)
    return out


cdef int _check_rows(const int64_t[::1] rows, Py_ssize_t n, Py_ssize_t values,
                     Py_ssize_t limit) except -1:
    cdef Py_ssize_t i
    cdef int64_t lo = 0, hi = -1
    if values != n:
        raise ValueError(f"{n} rows but {values} values")
    if n == 0:
        return 0
    with nogil:
        lo = hi = rows[0]
        for i in range(1, n):
            if rows[i] < lo:
                lo = rows[i]
            elif rows[i] > hi:
                hi = rows[i]
    if lo < 0 or hi >= limit:
        raise IndexError(f"row {lo if lo < 0 else hi} outside 0..{limit - 1}")
    return 0


def scatter_min(num_t[::1] target not None, const int64_t[::1] rows not None,
                const num_t[::1] values not None):
    """target[rows[i]] = min(target[rows[i]], values[i]) for every i; no GIL."""
    cdef Py_ssize_t i, n = rows.shape[0]
    _check_rows(rows, n, values.shape[0], target.shape[0])
    with nogil:
        for i in range(n):
            if values[i] < target[rows[i]]:
                target[rows[i]] = values[i]


def scatter_max(num_t[::1] target not None, const int64_t[::1] rows not None,
                const num_t[::1] values not None):
    """target[rows[i]] = max(target[rows[i]], values[i]) for every i; no GIL."""
    cdef Py_ssize_t i, n = rows.shape[0]
    _check_rows(rows, n, values.shape[0], target.shape[0])
    with nogil:
        for i in range(n):
            if values[i] > target[rows[i]]:
                target[rows[i]] = values[i]


def scatter_sum(num_t[::1] target not None, const int64_t[::1] rows not None,
                const num_t[::1] values not None):
    """target[rows[i]] += values[i] for every i (repeated rows add up); no GIL."""
    cdef Py_ssize_t i, n = rows.shape[0]
    _check_rows(rows, n, values.shape[0], target.shape[0])
    with nogil:
        for i in range(n):
            target[rows[i]] += values[i]


def scatter_count(int64_t[::1] target not None, const int64_t[::1] rows not None):
    """target[rows[i]] += 1 for every i; no GIL."""
    cdef Py_ssize_t i, n = rows.shape[0]
    _check_rows(rows, n, n, target.shape[0])
    with nogil:
        for i in range(n):
            target[rows[i]] += 1


def scatter_first(int64_t[::1] target_time not None, num_t[::1] target not None,
                  const int64_t[::1] rows not None, const int64_t[::1] times not None,
                  const num_t[::1] values not None):
    """Keep, per row, the value with the earliest time (the earlier-seen on a tie)."""
    cdef Py_ssize_t i, n = rows.shape[0]
    _check_rows(rows, n, values.shape[0], min(target.shape[0], target_time.shape[0]))
    if times.shape[0] != n:
        raise ValueError(f"{n} rows but {times.shape[0]} times")
    with nogil:
        for i in range(n):
            if times[i] < target_time[rows[i]]:
                target_time[rows[i]] = times[i]
                target[rows[i]] = values[i]


def scatter_last(int64_t[::1] target_time not None, num_t[::1] target not None,
                 const int64_t[::1] rows not None, const int64_t[::1] times not None,
                 const num_t[::1] values not None):
    """Keep, per row, the value with the latest time (the later-seen on a tie)."""
    cdef Py_ssize_t i, n = rows.shape[0]
    _check_rows(rows, n, values.shape[0], min(target.shape[0], target_time.shape[0]))
    if times.shape[0] != n:
        raise ValueError(f"{n} rows but {times.shape[0]} times")
    with nogil:
        for i in range(n):
            if times[i] >= target_time[rows[i]]:
                target_time[rows[i]] = times[i]
                target[rows[i]] = values[i]
