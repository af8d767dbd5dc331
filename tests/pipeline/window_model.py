"""An independent model of window membership, for expected values in tests.

It enumerates candidate window starts ``offset + k * slide`` around ``t`` and
keeps those with ``start <= t < start + size``, in exact ``Fraction``
arithmetic on the decimal text of each number: no floor formula and no code
of the library's, so a wrong assigner cannot agree with it by construction.
"""

from __future__ import annotations

from fractions import Fraction


def exact(x: float | int | str | Fraction) -> Fraction:
    """The number a user meant: floats by their shortest decimal text (0.1 is 1/10)."""
    if isinstance(x, Fraction):
        return x
    return Fraction(repr(x)) if isinstance(x, float) else Fraction(x)


def window_starts(t: float | int | Fraction, size: float | int, slide: float | int | None = None,
                  offset: float | int = 0) -> list[Fraction]:
    """Starts of every window ``[start, start + size)`` that holds ``t``, ascending."""
    t_, size_, offset_ = exact(t), exact(size), exact(offset)
    slide_ = exact(slide) if slide is not None else size_
    # A rough k near t, found by a loop over the slide (not floor division).
    k = 0
    while offset_ + k * slide_ > t_:
        k -= max(1, int((offset_ + k * slide_ - t_) / slide_ / 2))
    while offset_ + (k + 1) * slide_ <= t_:
        k += max(1, int((t_ - offset_ - (k + 1) * slide_) / slide_ / 2))
    starts = []
    j = k
    while offset_ + j * slide_ + size_ > t_:
        start = offset_ + j * slide_
        if start <= t_:
            starts.append(start)
        j -= 1
    return sorted(starts)


def as_output(x: Fraction) -> int | float:
    """How the runtime prints a bound in seconds: an int when whole."""
    return int(x) if x.denominator == 1 else float(x)
