"""One frame format for every piece of native state that is snapshotted.

Bloom filters, key sets and deduplicators use it today; sequence trackers and
checkpoint state are meant to reuse it unchanged. A frame is a fixed 40-byte header
followed by the body (all integers little-endian)::

    offset  size  field
    0       4     magic b"EOSF"
    4       2     frame format version (FRAME_VERSION)
    6       2     flags: bit 0 = the body is an lz4 block (other bits must be 0)
    8       4     kind: four ASCII bytes naming the payload type, e.g. b"BLOM"
    12      2     kind version: the payload's own schema version
    14      2     reserved, 0
    16      8     payload length (after decompression)
    24      8     body length (as stored)
    32      8     checksum: xxh3_64(body, seed=xxh3_64(header[0:32]))
    40      ...   body

Reading is done in this order, and nothing is decompressed or parsed before it passes:

1. Length, magic, frame version, flags and kind are checked against the header.
2. The body length must match the bytes present (truncation, trailing garbage).
3. The checksum over header and body must match (bit flips anywhere).
4. The body is decompressed; its length must equal the payload length.

Payloads themselves are parsed with :class:`PayloadReader`, whose every short read
raises :class:`~eoscore.errors.CorruptSnapshotError`, so a payload that passes the
checksum but was written by something else still cannot be misread.
"""

from __future__ import annotations

import struct
from collections.abc import Collection

import lz4.block

from eoscore.errors import CorruptSnapshotError
from eoscore.hashing import xxh3_64

__all__ = [
    "FRAME_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "PayloadReader",
    "pack",
    "peek_kind",
    "unpack",
]

MAGIC = b"EOSF"
FRAME_VERSION = 1
HEADER_SIZE = 40
COMPRESS_MIN = 4096  # payloads at least this long are offered to lz4
_FLAG_LZ4 = 1
_HEADER = struct.Struct("<4sHH4sHHQQ")  # the 32 checksummed header bytes
_CHECKSUM = struct.Struct("<Q")
_LZ4_MAX_RATIO = 255  # lz4 cannot expand a block by more than this


def _checksum(header: bytes, body: memoryview) -> int:
    return int(xxh3_64(body, xxh3_64(header)))


def pack(
    kind: bytes,
    version: int,
    payload: bytes | bytearray | memoryview,
    *,
    compress: bool | None = None,
) -> bytes:
    """Frame ``payload`` as a snapshot of type ``kind`` (4 ASCII bytes) at ``version``.

    ``compress=None`` tries lz4 on payloads of at least 4 KiB and keeps it only when
    it saves at least 10%; True/False force the choice.
    """
    if len(kind) != 4 or not kind.isascii():
        raise ValueError(f"kind must be 4 ASCII bytes, got {kind!r}")
    if not 0 <= version < 2**16:
        raise ValueError(f"version must be in [0, 65536), got {version}")
    raw = memoryview(payload).cast("B")
    flags = 0
    body = raw
    if compress or (compress is None and len(raw) >= COMPRESS_MIN):
        packed = lz4.block.compress(raw, store_size=False)
        if compress or len(packed) <= len(raw) - len(raw) // 10:
            body = memoryview(packed)
            flags |= _FLAG_LZ4
    header = _HEADER.pack(MAGIC, FRAME_VERSION, flags, kind, version, 0, len(raw), len(body))
    return b"".join((header, _CHECKSUM.pack(_checksum(header, body)), body))


def peek_kind(data: bytes | bytearray | memoryview) -> bytes | None:
    """The kind of a frame, or None if ``data`` does not start like one (unverified)."""
    view = memoryview(data).cast("B")
    if len(view) < HEADER_SIZE or view[:4] != MAGIC:
        return None
    return bytes(view[8:12])


def unpack(
    data: bytes | bytearray | memoryview, kind: bytes, versions: Collection[int]
) -> tuple[int, bytes | memoryview]:
    """Verify a frame of type ``kind`` and return ``(kind_version, payload)``.

    Raises CorruptSnapshotError (naming what failed) for anything that is not an
    intact frame of that kind at one of ``versions``.
    """
    what = kind.decode("ascii", "replace")
    try:
        view = memoryview(data).cast("B")
    except TypeError:
        raise TypeError(
            f"{what} snapshot: expected bytes-like data, got {type(data).__name__}"
        ) from None
    # Step 1: the header.
    if len(view) < HEADER_SIZE:
        raise CorruptSnapshotError(
            f"{what} snapshot: {len(view)} bytes is shorter than the {HEADER_SIZE}-byte "
            "header (truncated?)"
        )
    header = bytes(view[:32])
    magic, frame_version, flags, got_kind, version, reserved, raw_len, body_len = _HEADER.unpack(
        header
    )
    if magic != MAGIC:
        raise CorruptSnapshotError(
            f"{what} snapshot: bad magic {magic!r} (not an eoscore snapshot)"
        )
    if frame_version != FRAME_VERSION:
        raise CorruptSnapshotError(
            f"{what} snapshot: frame version {frame_version} is not supported "
            f"(this eoscore reads version {FRAME_VERSION})"
        )
    if got_kind != kind:
        raise CorruptSnapshotError(
            f"{what} snapshot: the bytes hold a {got_kind!r} snapshot, not {kind!r}"
        )
    if flags & ~_FLAG_LZ4 or reserved:
        raise CorruptSnapshotError(f"{what} snapshot: unknown flags {flags:#x}/{reserved:#x}")
    if version not in versions:
        raise CorruptSnapshotError(
            f"{what} snapshot: version {version} is not supported (readable: "
            f"{sorted(versions)}); written by a newer eoscore?"
        )
    # Step 2: the body is all there, and nothing follows it.
    body = view[HEADER_SIZE:]
    if len(body) != body_len:
        raise CorruptSnapshotError(
            f"{what} snapshot: body is {len(body)} bytes, header says {body_len} "
            "(truncated or padded?)"
        )
    # Step 3: the checksum over header and body.
    (stored,) = _CHECKSUM.unpack(view[32:HEADER_SIZE])
    if _checksum(header, body) != stored:
        raise CorruptSnapshotError(f"{what} snapshot: checksum mismatch (bytes corrupted?)")
    # Step 4: the payload.
    if not flags & _FLAG_LZ4:
        if raw_len != body_len:
            raise CorruptSnapshotError(f"{what} snapshot: payload length mismatch")
        return version, body
    if raw_len > _LZ4_MAX_RATIO * body_len + 64:
        raise CorruptSnapshotError(f"{what} snapshot: implausible payload length {raw_len}")
    try:
        payload = lz4.block.decompress(body, uncompressed_size=raw_len)
    except (lz4.block.LZ4BlockError, ValueError) as exc:
        raise CorruptSnapshotError(f"{what} snapshot: lz4 body does not decode ({exc})") from None
    if len(payload) != raw_len:
        raise CorruptSnapshotError(f"{what} snapshot: payload length mismatch after lz4")
    return version, payload


class PayloadReader:
    """Bounds-checked sequential reads of a payload.

    Every read past the end, and :meth:`done` with bytes left over, raises
    CorruptSnapshotError naming ``what``.
    """

    __slots__ = ("_pos", "_view", "what")

    def __init__(self, payload: bytes | bytearray | memoryview, what: str) -> None:
        self._view = memoryview(payload).cast("B")
        self._pos = 0
        self.what = what

    def fail(self, problem: str) -> CorruptSnapshotError:
        """An error to raise for an invalid field."""
        return CorruptSnapshotError(f"{self.what} snapshot: {problem}")

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes."""
        if n < 0 or n > len(self._view) - self._pos:
            raise self.fail(f"payload too short for a {n}-byte field at offset {self._pos}")
        out = self._view[self._pos : self._pos + n]
        self._pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple[object, ...]:
        """The next ``fmt.size`` bytes unpacked with ``fmt``."""
        return fmt.unpack(self.take(fmt.size))

    def rest(self) -> memoryview:
        """Everything not read yet."""
        return self.take(len(self._view) - self._pos)

    def done(self) -> None:
        """Check that the payload was read to its end."""
        if self._pos != len(self._view):
            raise self.fail(f"{len(self._view) - self._pos} unexpected trailing bytes")
