# The project's XXH3 (xxh3.h), for other native modules:
#     from eoscore._native._xxh3 cimport eos_xxh3_64, eos_xxh3_64_u64, eos_xxh3_128
# All three are pure functions of their arguments: they never fail, never touch
# Python objects, and are safe to call without the GIL.

from libc.stdint cimport uint64_t


cdef extern from "xxh3.h" nogil:
    # XXH3-64 of len bytes at data; == xxhash.xxh3_64_intdigest(data, seed).
    uint64_t eos_xxh3_64(const void *data, size_t len, uint64_t seed)
    # XXH3-64 of the key's 8 little-endian bytes (integer-key fast path).
    uint64_t eos_xxh3_64_u64(uint64_t key, uint64_t seed)
    # XXH3-128 as two halves; xxhash.xxh3_128_intdigest(data, seed) == (hi << 64) | lo.
    void eos_xxh3_128(const void *data, size_t len, uint64_t seed, uint64_t *lo, uint64_t *hi)
