"""Checkpoint latency behind a slow operator (issue 14): duration percentiles.

    python bench/bench_checkpoint_latency.py          # 4 channels, 24,000 records each
    python bench/bench_checkpoint_latency.py --fast   # 2 channels, 10,000 records each

FileSource (fixed-width lines, so every read is exactly one batch) -> a map
limited to ``RATE`` records/s (it sleeps 5 ms every 25 records, so the GIL
stays free for the readers and the checkpoint writer) -> FileSink, with
``CheckpointConfig(interval=0.5)``, aligned and unaligned, batches of 2,000
and 250 records. A checkpoint's duration is the coordinator's: from the
trigger to step 5 (what a ``read_committed`` reader waits for).

Not pyperf: the measured quantity is a distribution the run itself produces
(one sample per checkpoint), not the time of a callable. The baseline is the
target of docs/runtime.md, "Barrier overtaking and queue bounds": one interval
plus the processing time of one batch (``bound`` in the table); ``p50/bound``
and ``max/bound`` are the ratios. Aligned checkpoints are bounded by the
channel queues instead (their bound is printed too).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from eoscore.pipeline import FileSource, Pipeline
from eoscore.runtime import CheckpointConfig
from eoscore.sinks import FileSink

RATE = 5_000  # records/s through the slow map
STEP = 25  # the map sleeps once per STEP records
INTERVAL = 0.5
LINE = 24  # bytes per input line, newline included


def make_input(directory: Path, channels: int, records: int) -> None:
    directory.mkdir(parents=True)
    for c in range(channels):
        with open(directory / f"in-{c}.txt", "w") as f:
            for i in range(records):
                f.write(f"{c:03d}-{i:019d}\n")


def slow() -> Any:
    seen = 0

    def fn(record: str) -> str:
        nonlocal seen
        seen += 1
        if seen % STEP == 0:
            time.sleep(STEP / RATE)
        return record

    return fn


def run(inputs: Path, work: Path, batch: int, unaligned: bool) -> tuple[list[float], float]:
    p = Pipeline("latency")
    source = FileSource(inputs, read_bytes=batch * LINE)
    p.source(source).map(slow()).sink(FileSink(work / "out"))
    config = CheckpointConfig(interval=INTERVAL, unaligned=unaligned)
    result = p.run(work / "state", config)
    # The last duration is the final checkpoint at the end of the input.
    return result.checkpoints.durations[:-1], result.seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="2 channels, 10,000 records each")
    args, _ = parser.parse_known_args()  # other pyperf-style options are ignored
    channels, records = (2, 10_000) if args.fast else (4, 24_000)
    root = Path(tempfile.mkdtemp(prefix="eoscore-latency-"))
    try:
        inputs = root / "in"
        make_input(inputs, channels, records)
        print(
            f"{channels} channels x {records:,} records, map at {RATE:,} records/s, "
            f"interval {INTERVAL}s"
        )
        header = (
            f"{'mode':<10}{'batch':>6}{'ckpts':>6}{'run s':>7}{'p50 s':>7}{'p90 s':>7}"
            f"{'max s':>7}{'bound s':>8}{'p50/bound':>10}{'max/bound':>10}"
        )
        print(header)
        for batch in (2_000, 250):
            for unaligned in (False, True):
                work = root / f"{batch}-{unaligned}"
                durations, seconds = run(inputs, work, batch, unaligned)
                bound = INTERVAL + batch / RATE
                mode = "unaligned" if unaligned else "aligned"
                if not durations:
                    print(f"{mode:<10}{batch:>6}{0:>6}{seconds:>7.1f}  (no periodic checkpoint)")
                    continue
                p50, p90 = percentile(durations, 0.5), percentile(durations, 0.9)
                top = max(durations)
                print(
                    f"{mode:<10}{batch:>6}{len(durations):>6}{seconds:>7.1f}{p50:>7.2f}"
                    f"{p90:>7.2f}{top:>7.2f}{bound:>8.2f}{p50 / bound:>10.2f}{top / bound:>10.2f}"
                )
                shutil.rmtree(work)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
