"""Event time inside the runtime: int64 microseconds since the Unix epoch.

User timestamps (float or int seconds, int milliseconds, ``datetime``,
``numpy.datetime64``) are converted once per batch, at
``assign_timestamps``; from there on every event time, watermark and window
bound is an integer, so window math is exact (no float drift at boundaries
such as 0.1 + 0.2). Durations given in seconds (window sizes, lateness,
out-of-orderness) are converted with ``duration`` and must be a whole number
of microseconds.

Watermarks travel through the native alignment buffer as doubles, which hold
every integer below 2**53 exactly: event times are refused outside
``[-2**53, 2**53)`` microseconds (about 285 years either side of 1970).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from eoscore.pipeline.errors import PipelineDefinitionError, PipelineError

__all__ = [
    "BEFORE_TIME",
    "END_OF_TIME",
    "TICKS_PER_SECOND",
    "TIME_UNIT",
    "Ticks",
    "Unit",
    "duration",
    "seconds",
    "to_ticks",
]

#: The runtime's time unit (recorded in checkpoints).
TIME_UNIT = "us"
TICKS_PER_SECOND = 1_000_000
#: The watermark before any record (no event time is this small).
BEFORE_TIME = -(2**63)
#: The watermark at the end of the input (every window fires).
END_OF_TIME = 2**63 - 1
#: Event times are exact in the alignment buffer's doubles below this magnitude.
LIMIT = 2**53

Ticks = npt.NDArray[np.int64]
Unit = Literal["s", "ms", "us"]

_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_US = dt.timedelta(microseconds=1)


def duration(value: float | int | dt.timedelta, what: str = "duration") -> int:
    """Seconds (or a ``timedelta``) as a whole number of microseconds.

    ``Fraction`` of the float is exact, so 0.7 s is 700,000 us although the
    float 0.7 is slightly below it; a value that is not within a thousandth
    of a microsecond of a whole one is refused rather than rounded silently.
    """
    if isinstance(value, dt.timedelta):
        return value // _US if value % _US == dt.timedelta(0) else _not_whole(what, value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PipelineDefinitionError(f"{what} must be seconds or a timedelta, not {value!r}")
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        raise PipelineDefinitionError(f"{what} must be finite, not {value!r}")
    exact = Fraction(value) * TICKS_PER_SECOND
    ticks = round(exact)
    if abs(exact - ticks) > Fraction(1, 1000):
        _not_whole(what, value)
    return ticks


def _not_whole(what: str, value: object) -> int:
    raise PipelineDefinitionError(
        f"{what} {value!r} is not a whole number of microseconds (the runtime's time unit)"
    )


def seconds(ticks: int) -> int | float:
    """Microseconds as seconds for output: an int when whole, else the nearest float."""
    whole, rest = divmod(ticks, TICKS_PER_SECOND)
    return whole if rest == 0 else ticks / TICKS_PER_SECOND


def to_ticks(values: Sequence[Any] | npt.NDArray[Any], unit: Unit = "s") -> Ticks:
    """A batch of user timestamps as int64 microseconds (one conversion per batch).

    Numbers are in ``unit`` (seconds by default; floats are rounded to the
    nearest microsecond); ``datetime`` objects (naive ones are taken as UTC)
    and ``numpy.datetime64`` need no unit.
    """
    if unit not in _PER_UNIT:
        raise PipelineDefinitionError(f"time unit must be 's', 'ms' or 'us', not {unit!r}")
    if isinstance(values, np.ndarray):
        arr = values
    elif not len(values):
        return np.empty(0, np.int64)
    elif isinstance(values[0], dt.datetime):
        return _check(np.fromiter(map(_datetime_ticks, values), np.int64, len(values)))
    else:
        try:
            arr = np.asarray(values)
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"event times must be numbers or datetimes: {exc}") from None
    per = _PER_UNIT[unit]
    kind = arr.dtype.kind
    if kind == "M":
        return _check(arr.astype("datetime64[us]").astype(np.int64))
    if kind in "iu":
        if arr.size and (int(arr.max()) >= LIMIT // per or int(arr.min()) < -LIMIT // per):
            _out_of_range(arr)
        return arr.astype(np.int64) * per
    if kind in "fb":
        if kind == "b":
            raise PipelineError("event times must be numbers or datetimes, not bools")
        scaled = np.rint(arr.astype(np.float64) * per)
        if not np.isfinite(scaled).all() or (scaled.size and np.abs(scaled).max() >= LIMIT):
            _out_of_range(arr)
        return scaled.astype(np.int64)
    if kind == "O":
        return to_ticks([_number(v) for v in arr.tolist()], unit)
    raise PipelineError(f"event times must be numbers or datetimes, not {arr.dtype}")


def _number(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return np.datetime64(_datetime_ticks(v), "us")
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
        raise PipelineError(f"event time {v!r} is not a number or a datetime")
    return float(v)


def _datetime_ticks(value: dt.datetime) -> int:
    if not isinstance(value, dt.datetime):
        raise PipelineError(f"event time {value!r} is not a datetime (the batch began with one)")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return (value - _EPOCH) // _US


def _check(ticks: Ticks) -> Ticks:
    if ticks.size and (int(ticks.max()) >= LIMIT or int(ticks.min()) < -LIMIT):
        _out_of_range(ticks)
    return ticks


def _out_of_range(arr: npt.NDArray[Any]) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        worst = arr[~np.isfinite(arr)].flat[0]
    else:
        worst = arr.flat[int(np.argmax(np.abs(arr.astype(np.float64))))]
    raise PipelineError(
        f"event time out of range (e.g. {worst!r}): "
        "times must lie within about 285 years of 1970 (|t| < 2**53 microseconds)"
    )
