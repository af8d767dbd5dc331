"""Pure-Python models of the trackers: the specification the native code is held to."""

from __future__ import annotations

from dataclasses import dataclass, field

from eoscore.sequence import ACCEPT, DUPLICATE, FENCED, OUT_OF_ORDER

SEQ_MOD = 2**31


@dataclass
class ProducerModel:
    epoch: int
    batches: list[tuple[int, int]]
    last_seen: float


@dataclass
class SequenceModel:
    expire_after: float | None
    producers: dict[int, ProducerModel] = field(default_factory=dict)

    def _expired(self, p: ProducerModel, now: float) -> bool:
        return self.expire_after is not None and now - p.last_seen >= self.expire_after

    def check(self, pid: int, epoch: int, first: int, last: int, now: float) -> int:
        p = self.producers.get(pid)
        if p is None or self._expired(p, now):
            self.producers[pid] = ProducerModel(epoch, [(first, last)], now)
            return ACCEPT
        if epoch < p.epoch:
            return FENCED
        if epoch > p.epoch:
            if first != 0:
                return OUT_OF_ORDER
            self.producers[pid] = ProducerModel(epoch, [(first, last)], now)
            return ACCEPT
        if (first, last) in p.batches:
            return DUPLICATE
        if first != (p.batches[-1][1] + 1) % SEQ_MOD:
            return OUT_OF_ORDER
        p.batches = [*p.batches, (first, last)][-5:]
        p.last_seen = now
        return ACCEPT

    def expire(self, now: float) -> int:
        gone = [pid for pid, p in self.producers.items() if self._expired(p, now)]
        for pid in gone:
            del self.producers[pid]
        return len(gone)

    def state(self, pid: int) -> tuple[int, list[tuple[int, int]], float] | None:
        p = self.producers.get(pid)
        return None if p is None else (p.epoch, list(p.batches), p.last_seen)


class PartitionModel:
    """One partition: handed-out offsets increase; skipped offsets never exist."""

    def __init__(self, base: int, done: set[int] | None = None, span: int = 0) -> None:
        self.next = base
        self.end = base + span
        done = done or set()
        # Pending: handed out and not completed, or restored as not done.
        self.pending = {o for o in range(base, base + span) if o not in done}

    def track(self, offset: int) -> bool:
        assert offset >= self.next
        self.pending -= {o for o in self.pending if self.next <= o < offset}
        if offset < self.end:
            result = offset in self.pending
        else:
            self.pending.add(offset)
            self.end = offset + 1
            result = True
        self.next = offset + 1
        return result

    def complete(self, offset: int) -> bool:
        assert offset < self.next
        if offset in self.pending:
            self.pending.discard(offset)
            return True
        return False

    def committable(self) -> int:
        return min(self.pending) if self.pending else self.end

    def done_above_committable(self) -> set[int]:
        low = self.committable()
        return {o for o in range(low, self.end) if o not in self.pending}
