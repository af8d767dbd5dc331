# The tagged value encoding, for the chunk codec (_statecodec):
#     from eoscore._native._valuecodec cimport Buf, Reader, encode_obj, decode_obj
# Encoding and decoding touch Python objects and need the GIL.

from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t


cdef enum:
    STR_CACHE = 1024  # slots of a decoder's short-string cache (a power of two)


cdef struct Buf:
    uint8_t *data  # owned allocation (malloc/realloc; the owner frees it)
    size_t len     # bytes in use
    size_t cap     # bytes allocated


cdef struct Reader:
    const uint8_t *p  # payload start (not owned)
    size_t n          # payload length
    size_t pos        # next byte to read
    PyObject *strs    # borrowed list of STR_CACHE recent short strs, or NULL: state
                      # repeats the same small strings (dict keys), so reuse them


# Make room for extra more bytes after b.len (MemoryError on failure).
cdef int buf_reserve(Buf *b, size_t extra) except -1
# Append the tagged encoding of o (TypeError/ValueError for what state cannot hold).
cdef int encode_obj(Buf *b, object o, int depth) except -1
# Decode one value at r.pos, advancing it (CorruptCheckpointError on bad bytes).
cdef object decode_obj(Reader *r, int depth)
# A CorruptCheckpointError(reason), imported lazily (no import cycle at load time).
cdef object corrupt(str reason)
