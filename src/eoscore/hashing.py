"""XXH3 hashing of keys, bit-identical to the ``xxhash`` package.

The hash is the project's own implementation (``_native/xxh3.h``), so native modules
(dedup, partitioning) and Python code agree on every key without a per-record call.

* :func:`xxh3_64` and :func:`xxh3_128`: one buffer or str (UTF-8), equal to
  ``xxhash.xxh3_64_intdigest`` / ``xxhash.xxh3_128_intdigest``.
* :func:`xxh3_64_many`: a whole batch (list of bytes/str, ``S`` array, integer array)
  into a ``numpy.uint64`` array, with the GIL released for arrays.

Seeds are ints in ``[0, 2**64)``.
"""

from __future__ import annotations

from eoscore._native._hashing import xxh3_64, xxh3_64_many, xxh3_128

__all__ = ["xxh3_64", "xxh3_64_many", "xxh3_128"]
