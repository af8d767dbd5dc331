"""The four Kafka requests behind ``kafka-transactions.sh`` that confluent-kafka lacks.

confluent-kafka 2.16's ``AdminClient`` has no ListTransactions (API 66) or
DescribeTransactions (API 65), and these are what Kafka's own
``TransactionsCommand`` uses to name the transactional id of an open
transaction and to say since when the coordinator has had it open. This module
speaks just those requests, plus ApiVersions (18) to check the broker has them
and FindCoordinator (10) to find the coordinator of a transactional id, over a
plain TCP connection: a PLAINTEXT listener only (no TLS, no SASL). The field
layouts follow the broker's message schemas (``common/message/*.json`` in
kafka-clients); every request used here is a flexible version (compact strings
and arrays, tagged fields).

Private: :mod:`eoscore.kafka.transactions` is the API.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from eoscore.kafka.errors import KafkaProcessorError

__all__ = [
    "Connection",
    "ProtocolError",
    "TransactionDescription",
    "TransactionListing",
    "TransactionalIdNotFound",
]

API_FIND_COORDINATOR = 10
API_VERSIONS = 18
API_DESCRIBE_TRANSACTIONS = 65
API_LIST_TRANSACTIONS = 66

# Broker error codes met here (Kafka's Errors enum).
NONE = 0
COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
TRANSACTIONAL_ID_NOT_FOUND = 105
RETRIABLE = frozenset({COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR})
_NAMES = {
    COORDINATOR_LOAD_IN_PROGRESS: "COORDINATOR_LOAD_IN_PROGRESS",
    COORDINATOR_NOT_AVAILABLE: "COORDINATOR_NOT_AVAILABLE",
    NOT_COORDINATOR: "NOT_COORDINATOR",
    29: "TOPIC_AUTHORIZATION_FAILED",
    31: "CLUSTER_AUTHORIZATION_FAILED",
    35: "UNSUPPORTED_VERSION",
    53: "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    TRANSACTIONAL_ID_NOT_FOUND: "TRANSACTIONAL_ID_NOT_FOUND",
}
KEY_TYPE_TRANSACTION = 1
_CLIENT_ID = b"eoscore-txn"
_MAX_RESPONSE = 64 << 20

T = TypeVar("T")


class ProtocolError(KafkaProcessorError):
    """A transaction request failed: the broker answered an error, or could not be asked.

    ``code`` is the broker's error code (``-1`` when there was no answer).
    """

    def __init__(self, message: str, code: int = -1) -> None:
        super().__init__(message)
        self.code = code

    @property
    def retriable(self) -> bool:
        return self.code in RETRIABLE


class TransactionalIdNotFound(ProtocolError):
    """The coordinator has no state for the transactional id (never used, or expired)."""


def error_name(code: int) -> str:
    return _NAMES.get(code, f"error {code}")


@dataclass(frozen=True)
class TransactionListing:
    """One row of ListTransactions: a transactional id its coordinator knows."""

    transactional_id: str
    producer_id: int
    state: str
    coordinator: int


@dataclass(frozen=True)
class TransactionDescription:
    """DescribeTransactions for one id, as its coordinator has it.

    ``start_time_ms`` is when the coordinator began the current transaction (its
    clock, epoch milliseconds; ``-1`` when none is open): the figure Kafka's
    ``kafka-transactions.sh describe`` shows as CurrentTransactionStartTimeMs.
    ``partitions`` are those in the open transaction.
    """

    transactional_id: str
    coordinator: int
    state: str
    timeout_ms: int
    start_time_ms: int
    producer_id: int
    producer_epoch: int
    partitions: tuple[tuple[str, int], ...]

    @property
    def is_open(self) -> bool:
        """True while a transaction is open and nobody has begun ending it."""
        return self.state == "Ongoing"

    @property
    def open_since(self) -> float | None:
        """``start_time_ms`` in epoch seconds, ``None`` when no transaction is open."""
        return None if self.start_time_ms < 0 else self.start_time_ms / 1000.0


# --- encoding --------------------------------------------------------------------------


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _compact_str(s: str | None) -> bytes:
    if s is None:
        return _uvarint(0)
    data = s.encode("utf-8")
    return _uvarint(len(data) + 1) + data


def _compact_array(items: Sequence[bytes]) -> bytes:
    return _uvarint(len(items) + 1) + b"".join(items)


_NO_TAGS = b"\x00"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("truncated response from the broker")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int8(self) -> int:
        return int(struct.unpack(">b", self._take(1))[0])

    def int16(self) -> int:
        return int(struct.unpack(">h", self._take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack(">q", self._take(8))[0])

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            byte = self._take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ProtocolError("malformed varint in a response from the broker")

    def compact_str(self) -> str | None:
        n = self.uvarint()
        return None if n == 0 else self._take(n - 1).decode("utf-8")

    def compact_array(self, item: Callable[[_Reader], T]) -> list[T]:
        n = self.uvarint()
        return [] if n == 0 else [item(self) for _ in range(n - 1)]

    def tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self._take(self.uvarint())


def _str(r: _Reader) -> str:
    return r.compact_str() or ""


# --- one connection ----------------------------------------------------------------------


class Connection:
    """A blocking PLAINTEXT connection to one broker; one request in flight."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.address = f"{host}:{port}"
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise ProtocolError(f"{self.address}: cannot connect ({exc})") from exc
        self._correlation = 0
        self.versions: dict[int, tuple[int, int]] = {}
        try:
            self._load_versions()
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _roundtrip(self, api: int, version: int, body: bytes, flexible: bool) -> _Reader:
        self._correlation += 1
        header = struct.pack(">hhih", api, version, self._correlation, len(_CLIENT_ID))
        header += _CLIENT_ID + (_NO_TAGS if flexible else b"")
        message = header + body
        try:
            self._sock.sendall(struct.pack(">i", len(message)) + message)
            size = struct.unpack(">i", self._recv(4))[0]
            if not 0 < size <= _MAX_RESPONSE:
                raise ProtocolError(f"{self.address}: implausible response size {size}")
            reader = _Reader(self._recv(size))
        except OSError as exc:
            raise ProtocolError(
                f"{self.address}: no answer to API {api} v{version} ({exc}; "
                "a TLS or SASL listener? these tools speak PLAINTEXT only)"
            ) from exc
        if reader.int32() != self._correlation:
            raise ProtocolError(f"{self.address}: response out of order")
        if flexible and api != API_VERSIONS:  # ApiVersions answers with header v0
            reader.tags()
        return reader

    def _recv(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self._sock.recv(n)
            if not chunk:
                raise ProtocolError(
                    f"{self.address}: connection closed by the broker (a TLS or SASL "
                    "listener? these tools speak PLAINTEXT only)"
                )
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _load_versions(self) -> None:
        r = self._roundtrip(API_VERSIONS, 0, b"", flexible=False)
        code = r.int16()
        n = r.int32()
        for _ in range(max(n, 0)):
            api, low, high = r.int16(), r.int16(), r.int16()
            self.versions[api] = (low, high)
        if code != NONE:
            raise ProtocolError(f"{self.address}: ApiVersions failed: {error_name(code)}", code)

    def _version(self, api: int, ours: tuple[int, int], what: str) -> int:
        low, high = self.versions.get(api, (0, -1))
        version = min(high, ours[1])
        if version < max(low, ours[0]):
            raise ProtocolError(
                f"{self.address}: the broker does not support {what} "
                "(Kafka 3.0 or newer is needed)",
                35,
            )
        return version

    # --- the requests ---------------------------------------------------------------

    def find_transaction_coordinators(self, ids: Sequence[str]) -> dict[str, tuple[int, str, int]]:
        """``{transactional_id: (node_id, host, port)}``; raises on per-key errors."""
        version = self._version(API_FIND_COORDINATOR, (4, 6), "batched FindCoordinator")
        body = struct.pack(">b", KEY_TYPE_TRANSACTION)
        body += _compact_array([_compact_str(i) for i in ids]) + _NO_TAGS
        r = self._roundtrip(API_FIND_COORDINATOR, version, body, flexible=True)
        r.int32()  # throttle
        out: dict[str, tuple[int, str, int]] = {}

        def coordinator(r: _Reader) -> None:
            key, node, host, port = _str(r), r.int32(), _str(r), r.int32()
            code, message = r.int16(), r.compact_str()
            r.tags()
            if code != NONE:
                raise ProtocolError(
                    f"FindCoordinator for transactional.id {key!r}: {error_name(code)}"
                    + (f" ({message})" if message else ""),
                    code,
                )
            out[key] = (node, host, port)

        r.compact_array(coordinator)
        return out

    def list_transactions(
        self, node_id: int, states: Iterable[str] = ()
    ) -> list[TransactionListing]:
        """The transactions this broker coordinates (all, or those in ``states``)."""
        version = self._version(API_LIST_TRANSACTIONS, (0, 2), "ListTransactions")
        body = _compact_array([_compact_str(s) for s in states]) + _compact_array([])
        if version >= 1:
            body += struct.pack(">q", -1)  # DurationFilter: any age
        if version >= 2:
            body += _compact_str(None)  # TransactionalIdPattern: any id
        r = self._roundtrip(API_LIST_TRANSACTIONS, version, body + _NO_TAGS, flexible=True)
        r.int32()  # throttle
        code = r.int16()
        r.compact_array(_str)  # unknown state filters
        if code != NONE:
            raise ProtocolError(
                f"{self.address}: ListTransactions failed: {error_name(code)}", code
            )

        def row(r: _Reader) -> TransactionListing:
            tid, pid, state = _str(r), r.int64(), _str(r)
            r.tags()
            return TransactionListing(tid, pid, state, node_id)

        return r.compact_array(row)

    def describe_transactions(
        self, node_id: int, ids: Sequence[str]
    ) -> dict[str, TransactionDescription | ProtocolError]:
        """DescribeTransactions on this broker (which must coordinate ``ids``)."""
        version = self._version(API_DESCRIBE_TRANSACTIONS, (0, 0), "DescribeTransactions")
        body = _compact_array([_compact_str(i) for i in ids]) + _NO_TAGS
        r = self._roundtrip(API_DESCRIBE_TRANSACTIONS, version, body, flexible=True)
        r.int32()  # throttle
        out: dict[str, TransactionDescription | ProtocolError] = {}

        def topic(r: _Reader) -> list[tuple[str, int]]:
            name = _str(r)
            parts = r.compact_array(lambda r: r.int32())
            r.tags()
            return [(name, p) for p in parts]

        def state(r: _Reader) -> None:
            code, tid, st = r.int16(), _str(r), _str(r)
            timeout, start, pid, epoch = r.int32(), r.int64(), r.int64(), r.int16()
            topics = r.compact_array(topic)
            r.tags()
            if code == TRANSACTIONAL_ID_NOT_FOUND:
                out[tid] = TransactionalIdNotFound(
                    f"transactional.id {tid!r}: the coordinator has no such id", code
                )
            elif code != NONE:
                out[tid] = ProtocolError(
                    f"DescribeTransactions for {tid!r}: {error_name(code)}", code
                )
            else:
                parts = tuple(sorted(tp for t in topics for tp in t))
                out[tid] = TransactionDescription(
                    tid, node_id, st, timeout, start, pid, epoch, parts
                )

        r.compact_array(state)
        return out


def retrying(call: Callable[[], T], timeout_s: float) -> T:
    """``call()``, repeated while it raises a retriable :class:`ProtocolError`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return call()
        except ProtocolError as exc:
            if not exc.retriable or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
