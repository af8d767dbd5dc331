"""Counters of the exactly-once loop, readable as an object and logged per interval."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

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


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


class ProcessorMetrics:
    """Updated by the processor's thread only; read from anywhere.

    Commit latency is the time of ``send_offsets_to_transaction`` plus
    ``commit_transaction``; percentiles are over the last ``window`` commits.
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
        self.txns_committed = 0
        self.txns_aborted = 0
        self.rebalances = 0
        self._latencies: deque[float] = deque(maxlen=window)
        self._interval_s = interval_s
        self._logger = logger
        now = time.monotonic()
        self._mark = now
        self._mark_in = 0
        self._mark_out = 0
        self._rate_in = 0.0
        self._rate_out = 0.0
        self._last_interval = 0.0

    def commit_done(self, latency_s: float) -> None:
        self.txns_committed += 1
        self._latencies.append(latency_s)

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
        latencies = sorted(self._latencies)
        return MetricsSnapshot(
            records_in=self.records_in,
            records_out=self.records_out,
            duplicates_dropped=self.duplicates_dropped,
            txns_committed=self.txns_committed,
            txns_aborted=self.txns_aborted,
            rebalances=self.rebalances,
            records_in_per_s=self._rate_in,
            records_out_per_s=self._rate_out,
            commit_latency_p50_ms=_percentile(latencies, 0.50) * 1000.0,
            commit_latency_p99_ms=_percentile(latencies, 0.99) * 1000.0,
            interval_s=self._last_interval,
        )
