# Argument checks shared by the trackers' batch calls (_sequence, _offsets).
# Inline, so each extension compiles its own copy from this one source.

cdef inline object int64_array(object values, str name):
    """values as a C-contiguous 1-D int64 array; TypeError/ValueError name the argument.

    Any integer dtype is accepted (int64 avoids a copy) except uint64, which
    does not fit; bool, float and object arrays are TypeErrors.
    """
    import numpy as np

    if values is None:
        raise TypeError(f"{name} must be a 1-D integer array, not None")
    arr = np.asarray(values)
    if arr.ndim == 1 and arr.shape[0] == 0:
        return np.empty(0, dtype=np.int64)  # [] is float64 to numpy
    if arr.dtype.kind not in "iu" or arr.dtype == np.uint64:
        raise TypeError(
            f"{name} must be a 1-D integer array (int64 avoids a copy), not dtype {arr.dtype}"
        )
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {arr.ndim} dimensions")
    return np.ascontiguousarray(arr, dtype=np.int64)
