"""Exactly-once files: NDJSON and CSV parts that appear whole, once, or never.

No Kafka transaction covers a file system (the article's "Kafka exactly-once
skipping writes to non-transactional sinks"), so files get their own two phases:

1. ``write``: records go to staging parts in ``<directory>/.eoscore-staging/<sink>/``,
   named by checkpoint id and part number; a part is rolled (closed, fsynced)
   when it reaches ``max_bytes`` or is older than ``max_seconds``.
2. ``pre_commit(n)``: the open part is closed; every part and the staging
   directory are fsynced. The handle lists (staging, final) name pairs.
3. ``commit(n)``: each staging part is renamed to its final name (atomic on one
   file system), then the directory is fsynced. Redoable: a part already renamed
   is skipped, so a commit cut short by a crash is finished by the next one.
4. ``abort(n)``: the staging parts of n are deleted.

Readers list ``<directory>`` and never see a partial file: final names appear
only by rename of complete, fsynced parts. Final names are deterministic
(``<prefix>-<checkpoint>-<worker>-<part>.<ext>``), so a redo can never write a second copy.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import msgspec

from eoscore import failpoints
from eoscore.sinks.errors import SinkConfigError, SinkRecoveryError, SinkStateError, SinkWriteError
from eoscore.sinks.two_phase import PreparedHandle, RecoveryPlan, TwoPhaseSink

__all__ = ["FileSink"]

FORMATS = {"ndjson": "ndjson", "csv": "csv"}
#: NDJSON lines of a batch; what it cannot encode (ints beyond 64 bits, say)
#: goes through ``json.dumps`` record by record.
_LINES = msgspec.json.Encoder()
_STAGED = re.compile(r"^(\d{12})-(\d{6})\.")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class FileSink(TwoPhaseSink):
    """Newline-delimited JSON or CSV files, committed by rename.

    ``columns`` fixes the CSV header (and the field order; mappings or sequences
    are accepted); for NDJSON each record is one ``json.dumps`` line.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        format: str = "ndjson",
        columns: Sequence[str] | None = None,
        prefix: str = "part",
        max_bytes: int = 64 << 20,
        max_seconds: float | None = None,
        name: str | None = None,
    ) -> None:
        if format not in FORMATS:
            raise SinkConfigError(f"FileSink format must be one of {sorted(FORMATS)}: {format!r}")
        if format == "csv" and not columns:
            raise SinkConfigError("FileSink(format='csv') needs columns=[...] for the header")
        if max_bytes < 1:
            raise SinkConfigError(f"max_bytes must be >= 1, not {max_bytes}")
        self.directory = Path(directory)
        self.format = format
        self.columns = tuple(columns or ())
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.name = name or f"files:{self.directory.name}"
        self.pipeline = ""
        self._worker = ""
        self._open_id: int | None = None
        self._parts: list[tuple[str, str]] = []  # (staging, final) names of the open checkpoint
        self._file: IO[bytes] | None = None
        self._file_bytes = 0
        self._file_opened = 0.0
        self._written = 0

    # --- setup -------------------------------------------------------------------------

    def open(self, pipeline: str, worker: str) -> None:
        """Each worker stages in its own directory and names its files with its id."""
        self.pipeline = pipeline
        self._worker = f"-{_safe(worker)}" if worker else ""
        self.staging = self.directory / ".eoscore-staging" / _safe(
            f"{pipeline}.{self.name}{self._worker}"
        )
        self.staging.mkdir(parents=True, exist_ok=True)

    def _final_name(self, n: int, part: int) -> str:
        return f"{self.prefix}-{n:012d}{self._worker}-{part:06d}.{FORMATS[self.format]}"

    # --- writing -----------------------------------------------------------------------

    def begin(self, checkpoint_id: int) -> None:
        if self._open_id is not None:
            raise SinkStateError(f"sink {self.name!r}: begin({checkpoint_id}) while "
                                 f"{self._open_id} is open")
        self._open_id = checkpoint_id
        self._parts = []
        self._written = 0

    def write(self, records: Sequence[Any]) -> None:
        n = self._open_id
        if n is None:
            raise SinkStateError(f"sink {self.name!r}: write() outside begin/pre_commit")
        if not records:
            return
        data = self._encode(records, n)
        if self._file is not None and self.max_seconds is not None and (
            time.monotonic() - self._file_opened >= self.max_seconds
        ):
            self._roll()
        if self._file is None:
            self._start_part(n)
        assert self._file is not None
        self._file.write(data)
        self._file_bytes += len(data)
        self._written += len(records)
        failpoints.hit("files.after_write")
        if self._file_bytes >= self.max_bytes:
            self._roll()

    def _encode(self, records: Sequence[Any], n: int) -> bytes:
        if self.format == "ndjson":
            try:  # the whole batch in one call (msgspec); json names a bad record
                return _LINES.encode_lines(records)
            except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
                pass
            out = []
            for i, record in enumerate(records):
                try:
                    out.append(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
                except (TypeError, ValueError) as exc:
                    raise SinkWriteError(self.name, n, self._written + i, record, str(exc)) from exc
            return ("\n".join(out) + "\n").encode()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        cols = self.columns
        for i, record in enumerate(records):
            try:
                row = [record[c] for c in cols] if isinstance(record, dict) else list(record)
            except (KeyError, TypeError) as exc:
                raise SinkWriteError(
                    self.name, n, self._written + i, record, f"missing column {exc}"
                ) from exc
            if len(row) != len(cols):
                raise SinkWriteError(
                    self.name, n, self._written + i, record,
                    f"{len(row)} fields, the header has {len(cols)}",
                )
            writer.writerow(row)
        return buf.getvalue().encode()

    def _start_part(self, n: int) -> None:
        part = len(self._parts)
        final = self._final_name(n, part)
        staged = f"{n:012d}-{part:06d}.{FORMATS[self.format]}.inprogress"
        self._file = open(self.staging / staged, "wb")  # closed in _roll
        self._parts.append((staged, final))
        self._file_bytes = 0
        self._file_opened = time.monotonic()
        if self.format == "csv":
            header = io.StringIO()
            csv.writer(header, lineterminator="\n").writerow(self.columns)
            self._file.write(header.getvalue().encode())

    def _roll(self) -> None:
        """Close the open part durably; the next write starts a new one."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    # --- two phases --------------------------------------------------------------------

    def pre_commit(self, checkpoint_id: int) -> PreparedHandle:
        if self._open_id != checkpoint_id:
            raise SinkStateError(
                f"sink {self.name!r}: pre_commit({checkpoint_id}) but {self._open_id} is open"
            )
        self._roll()  # Step 2
        _fsync_dir(self.staging)
        self._open_id = None
        failpoints.hit("files.after_pre_commit")
        return {
            "sink": self.name,
            "checkpoint_id": checkpoint_id,
            "files": [list(pair) for pair in self._parts],
        }

    def commit(self, checkpoint_id: int, handle: PreparedHandle) -> None:
        for staged, final in handle.get("files", []):  # Step 3
            source, target = self.staging / staged, self.directory / final
            try:
                os.rename(source, target)
            except FileNotFoundError:
                if not target.exists():
                    raise SinkRecoveryError(
                        f"sink {self.name!r}: checkpoint {checkpoint_id}: neither the staged "
                        f"part {source} nor the committed file {target} exists"
                    ) from None
            failpoints.hit("files.mid_commit")
        _fsync_dir(self.directory)

    def abort(self, checkpoint_id: int, handle: PreparedHandle | None) -> None:
        if self._open_id == checkpoint_id:  # Step 4
            if self._file is not None:
                self._file.close()
                self._file = None
            self._open_id = None
        for n, path in self._staged():
            if n == checkpoint_id:
                path.unlink(missing_ok=True)

    def _staged(self) -> list[tuple[int, Path]]:
        out = []
        for path in self.staging.iterdir():
            match = _STAGED.match(path.name)
            if match:
                out.append((int(match.group(1)), path))
        return out

    def recover(self, plan: RecoveryPlan) -> None:
        for n, handle in plan.commit:
            self.commit(n, handle)
        for n, handle in plan.abort:
            self.abort(n, handle)
        decided = plan.decided.checkpoint_id if plan.decided else None
        unsure = set()
        for n, path in self._staged():
            if decided is None or n > decided:
                path.unlink(missing_ok=True)  # never decided: never visible
            else:
                unsure.add(n)
        if unsure:
            raise SinkRecoveryError(
                f"sink {self.name!r}: staged parts of checkpoints {sorted(unsure)} in "
                f"{self.staging} are not in the recovery plan (decided: {decided}); commit "
                "them by renaming or delete them, as the checkpoint storage says"
            )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
