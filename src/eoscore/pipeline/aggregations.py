"""Built-in aggregations that run natively over a batch: ``count``, ``sum_of``...

    .window(Tumbling(60)).agg(total=sum_of("amount"), n=count(), top=max_of("amount"))

Each aggregation names what it reads (a field name or index of the record,
or a function of the record) and keeps its accumulator in numeric state
columns, folded a batch at a time by native scatter kernels; a window's
result is a dict of the named values. ``int64`` sums are exact; ``float64``
ones follow float addition order, which can differ across a replay after a
crash in the last bits: use integer units (cents) for money.

``first_of``/``last_of`` take the value with the earliest/latest *event
time* (ties: the earlier/later-seen record), so they do not depend on how
channels interleave. Every aggregation also has a plain-Python form
(``py_*``) for operators that fold record by record (session windows).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from eoscore._native._aggregate import (
    scatter_count,
    scatter_first,
    scatter_last,
    scatter_max,
    scatter_min,
    scatter_sum,
)
from eoscore.pipeline.errors import PipelineDefinitionError, PipelineError

__all__ = [
    "Aggregation",
    "count",
    "first_of",
    "last_of",
    "max_of",
    "mean_of",
    "min_of",
    "sum_of",
]

Field = str | int | Callable[[Any], Any]
DType = Literal["int64", "float64"]
Array = npt.NDArray[Any]
I64 = npt.NDArray[np.int64]

_NP = {"int64": np.dtype(np.int64), "float64": np.dtype(np.float64)}
_LOW = {"int64": np.iinfo(np.int64).min, "float64": -np.inf}
_HIGH = {"int64": np.iinfo(np.int64).max, "float64": np.inf}


class Aggregation:
    """One named result computed per key and window from state columns."""

    kind = "aggregation"
    #: Column suffix -> dtype of the columns this aggregation keeps.
    parts: dict[str, DType] = {}

    def __init__(self, field: Field | None, dtype: DType = "float64") -> None:
        if dtype not in _NP:
            raise PipelineDefinitionError(f"dtype must be 'int64' or 'float64', not {dtype!r}")
        self.field = field
        self.dtype = dtype
        self.getter: Callable[[Any], Any] | None
        if field is None:
            self.getter = None
        elif isinstance(field, (str, int)):
            self.getter = operator.itemgetter(field)
        elif callable(field):
            self.getter = field
        else:
            raise PipelineDefinitionError(
                f"{self.kind}: a field is a name, an index or a function, not {field!r}"
            )

    def __repr__(self) -> str:
        return f"{self.kind}({self.field!r})" if self.field is not None else f"{self.kind}()"

    # ---- batch form -------------------------------------------------------------

    def columns(self) -> dict[str, DType]:
        return dict(self.parts)

    def extract(self, values: list[Any]) -> Array | None:
        """The values this aggregation reads, one per record, as an array."""
        if self.getter is None:
            return None
        try:
            return np.fromiter(map(self.getter, values), _NP[self.dtype], len(values))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PipelineError(f"aggregation {self!r}: cannot read a record: {exc!r}") from None

    def start(self, cols: dict[str, Array], rows: I64) -> None:
        """Give new rows their identity value (zeros are there already)."""

    def fold(self, cols: dict[str, Array], rows: I64, values: Any, times: I64) -> None:
        raise NotImplementedError

    def result(self, cols: dict[str, Array], rows: I64) -> Array:
        return cols[next(iter(self.parts))][rows]

    # ---- record form (session windows) --------------------------------------------

    def py_value(self, record: Any) -> Any:
        return None if self.getter is None else _NP[self.dtype].type(self.getter(record)).item()

    def py_init(self, value: Any, t: int) -> Any:
        return value

    def py_add(self, acc: Any, value: Any, t: int) -> Any:
        raise NotImplementedError

    def py_merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def py_result(self, acc: Any) -> Any:
        return acc


class _Count(Aggregation):
    kind = "count"
    parts = {"": "int64"}

    def __init__(self) -> None:
        super().__init__(None, "int64")

    def fold(self, cols: dict[str, Array], rows: I64, values: Any, times: I64) -> None:
        scatter_count(cols[""], rows)

    def py_init(self, value: Any, t: int) -> Any:
        return 1

    def py_add(self, acc: Any, value: Any, t: int) -> Any:
        return acc + 1

    def py_merge(self, a: Any, b: Any) -> Any:
        return a + b


class _Sum(Aggregation):
    kind = "sum_of"

    @property
    def parts(self) -> dict[str, DType]:  # type: ignore[override]
        return {"": self.dtype}

    def fold(self, cols: dict[str, Array], rows: I64, values: Any, times: I64) -> None:
        scatter_sum(cols[""], rows, values)

    def py_add(self, acc: Any, value: Any, t: int) -> Any:
        return acc + value

    def py_merge(self, a: Any, b: Any) -> Any:
        return a + b


class _Min(_Sum):
    kind = "min_of"

    def start(self, cols: dict[str, Array], rows: I64) -> None:
        cols[""][rows] = _HIGH[self.dtype]

    def fold(self, cols: dict[str, Array], rows: I64, values: Any, times: I64) -> None:
        scatter_min(cols[""], rows, values)

    def py_add(self, acc: Any, value: Any, t: int) -> Any:
        return min(acc, value)

    def py_merge(self, a: Any, b: Any) -> Any:
        return min(a, b)


class _Max(_Sum):
    kind = "max_of"

    def start(self, cols: dict[str, Array], rows: I64) -> None:
        cols[""][rows] = _LOW[self.dtype]

    def fold(self, cols: dict[str, Array], rows: I64, values: Any, times: I64) -> None:
        scatter_max(cols[""], rows, values)

    def py_add(self, acc: Any, value: Any, t: int) -> Any:
        return max(acc, value)

    def py_merge(self, a: Any, b: Any) -> Any:
        return max(a, b)


class _Mean(Aggregation):
    kind = "mean_of"
    parts = {".sum": "float64", ".count": "int64"}

    def __init__(self, field: Field) -> None:
        super().__init__(field, "float64")

    def fold(self, cols: dict[str, Array], rows: I64, values: Any, times: I64) -> None:
        scatter_sum(cols[".sum"], rows, values)
        scatter_count(cols[".count"], rows)

    def result(self, cols: dict[str, Array], rows: I64) -> Array:
        out: Array = cols[".sum"][rows] / cols[".count"][rows]
        return out

    def py_init(self, value: Any, t: int) -> Any:
        return (value, 1)

    def py_add(self, acc: Any, value: Any, t: int) -> Any:
        return (acc[0] + value, acc[1] + 1)

    def py_merge(self, a: Any, b: Any) -> Any:
        return (a[0] + b[0], a[1] + b[1])

    def py_result(self, acc: Any) -> Any:
        return acc[0] / acc[1]


class _First(Aggregation):
    kind = "first_of"

    @property
    def parts(self) -> dict[str, DType]:  # type: ignore[override]
        return {"": self.dtype, ".time": "int64"}

    def start(self, cols: dict[str, Array], rows: I64) -> None:
        cols[".time"][rows] = _HIGH["int64"]

    def fold(self, cols: dict[str, Array], rows: I64, values: Any, times: I64) -> None:
        scatter_first(cols[".time"], cols[""], rows, times, values)

    def py_init(self, value: Any, t: int) -> Any:
        return (t, value)

    def py_add(self, acc: Any, value: Any, t: int) -> Any:
        return (t, value) if t < acc[0] else acc

    def py_merge(self, a: Any, b: Any) -> Any:
        return b if b[0] < a[0] else a

    def py_result(self, acc: Any) -> Any:
        return acc[1]


class _Last(_First):
    kind = "last_of"

    def start(self, cols: dict[str, Array], rows: I64) -> None:
        cols[".time"][rows] = _LOW["int64"]

    def fold(self, cols: dict[str, Array], rows: I64, values: Any, times: I64) -> None:
        scatter_last(cols[".time"], cols[""], rows, times, values)

    def py_add(self, acc: Any, value: Any, t: int) -> Any:
        return (t, value) if t >= acc[0] else acc

    def py_merge(self, a: Any, b: Any) -> Any:
        return b if b[0] >= a[0] else a


def count() -> Aggregation:
    """The number of records."""
    return _Count()


def sum_of(field: Field, dtype: DType = "float64") -> Aggregation:
    """The sum of a field (``dtype="int64"`` for exact integer sums)."""
    return _Sum(field, dtype)


def min_of(field: Field, dtype: DType = "float64") -> Aggregation:
    return _Min(field, dtype)


def max_of(field: Field, dtype: DType = "float64") -> Aggregation:
    return _Max(field, dtype)


def mean_of(field: Field) -> Aggregation:
    """The arithmetic mean of a field (float64)."""
    return _Mean(field)


def first_of(field: Field, dtype: DType = "float64") -> Aggregation:
    """The field of the record with the earliest event time."""
    return _First(field, dtype)


def last_of(field: Field, dtype: DType = "float64") -> Aggregation:
    """The field of the record with the latest event time."""
    return _Last(field, dtype)
