"""Counters of the exactly-once loop, readable as an object and logged per interval."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from eoscore.kafka.txn import TransactionMetrics

__all__ = ["MetricsSnapshot", "ProcessorMetrics"]


@dataclass(frozen=True)
class MetricsSnapshot:
    """Totals since start, and rates over the last completed log interval."""

    records_in: int
    records_out: int
    duplicates_dropped: int
    txns_committed: int
    txns_aborted: int
    rebalances: int
    records_in_per_s: float
    records_out_per_s: float
    commit_latency_p50_ms: float
    commit_latency_p99_ms: float
    interval_s: float

    def line(self) -> str:
        """One log line."""
        return (
            f"in {self.records_in_per_s:.0f}/s out {self.records_out_per_s:.0f}/s "
            f"(total in {self.records_in} out {self.records_out} "
            f"dup {self.duplicates_dropped}) txns committed {self.txns_committed} "
            f"aborted {self.txns_aborted} rebalances {self.rebalances} commit "
            f"p50 {self.commit_latency_p50_ms:.1f} ms p99 {self.commit_latency_p99_ms:.1f} ms"
        )


class ProcessorMetrics:
    """Updated by the processor's thread only; read from anywhere.

    Transactions are counted by the producer's :class:`TransactionMetrics`
    (``txn``): commit latency is ``send_offsets_to_transaction`` plus
    ``commit_transaction``, percentiles over the last ``window`` commits.
    """

    def __init__(
        self,
        *,
        interval_s: float = 10.0,
        window: int = 1024,
        logger: logging.Logger | None = None,
    ) -> None:
        self.records_in = 0
        self.records_out = 0
        self.duplicates_dropped = 0
        self.rebalances = 0
        self.batches_during_commit = 0  # consumed and transformed while a commit ran
        self.txn = TransactionMetrics(window)
        self._interval_s = interval_s
        self._logger = logger
        now = time.monotonic()
        self._mark = now
        self._mark_in = 0
        self._mark_out = 0
        self._rate_in = 0.0
        self._rate_out = 0.0
        self._last_interval = 0.0

    @property
    def txns_committed(self) -> int:
        return self.txn.commits

    @property
    def txns_aborted(self) -> int:
        return self.txn.aborts

    def tick(self, now: float | None = None) -> MetricsSnapshot | None:
        """Close the interval when it is due: update rates, log one line."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._mark
        if elapsed < self._interval_s:
            return None
        self._rate_in = (self.records_in - self._mark_in) / elapsed
        self._rate_out = (self.records_out - self._mark_out) / elapsed
        self._last_interval = elapsed
        self._mark, self._mark_in, self._mark_out = now, self.records_in, self.records_out
        snap = self.snapshot()
        if self._logger is not None:
            self._logger.info("%s", snap.line())
        return snap

    def snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(
            records_in=self.records_in,
            records_out=self.records_out,
            duplicates_dropped=self.duplicates_dropped,
            txns_committed=self.txns_committed,
            txns_aborted=self.txns_aborted,
            rebalances=self.rebalances,
            records_in_per_s=self._rate_in,
            records_out_per_s=self._rate_out,
            commit_latency_p50_ms=self.txn.commit_latency_ms(0.50),
            commit_latency_p99_ms=self.txn.commit_latency_ms(0.99),
            interval_s=self._last_interval,
        )
