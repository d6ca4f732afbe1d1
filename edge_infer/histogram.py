"""A latency histogram with constant memory and ~1.6 % precision (HdrHistogram's layout).

A service that runs for weeks cannot keep every latency to compute p99; this
keeps counts in log-linear buckets: values below 128 are exact, above that
each power of two is split into 64 buckets. Percentiles are reported as the
bucket's upper edge (never optimistic), capped by the exact maximum.
"""

from __future__ import annotations

from typing import Dict, Iterable

import numpy as np

_SUB_BITS = 7
_SUB = 1 << _SUB_BITS  # values below this are stored exactly
_HALF = _SUB >> 1
_MAX_EXPONENT = 40  # about 12 days in microseconds
_LAST = _SUB + _MAX_EXPONENT * _HALF - 1


def _index(value: int) -> int:
    if value < _SUB:
        return value
    shift = value.bit_length() - _SUB_BITS
    return _SUB + (shift - 1) * _HALF + ((value >> shift) - _HALF)


def _upper_edge(index: int) -> int:
    if index < _SUB:
        return index
    shift, offset = divmod(index - _SUB, _HALF)
    shift += 1
    return ((offset + _HALF + 1) << shift) - 1


class Histogram:
    """Counts of non-negative integer values (microseconds, say)."""

    def __init__(self) -> None:
        self.counts = [0] * (_SUB + _MAX_EXPONENT * _HALF)
        self.total = 0
        self.max = 0
        self.sum = 0

    def record(self, value: float) -> None:
        v = int(value) if value > 0 else 0
        if v < _SUB:  # _index, inlined: this runs twice per decision
            index = v
        else:
            shift = v.bit_length() - _SUB_BITS
            index = _SUB + (shift - 1) * _HALF + ((v >> shift) - _HALF)
            if index >= _LAST:
                index = _LAST
        self.counts[index] += 1
        self.total += 1
        self.sum += v
        if v > self.max:
            self.max = v

    def record_all(self, values: Iterable[float]) -> None:
        for value in values:
            self.record(value)

    def record_many(self, values: np.ndarray) -> None:
        """:meth:`record` for every value of an array at once (``eval`` records millions)."""
        v = np.asarray(values, dtype=np.float64)
        v = np.where(v > 0, v, 0).astype(np.int64)
        if not len(v):
            return
        shift = np.maximum(_bit_length(v) - _SUB_BITS, 0)
        index = np.where(v < _SUB, v, _SUB + (shift - 1) * _HALF + ((v >> shift) - _HALF))
        index = np.minimum(index, len(self.counts) - 1)
        for i, count in zip(*np.unique(index, return_counts=True)):
            self.counts[int(i)] += int(count)
        self.total += len(v)
        self.sum += int(v.sum())
        self.max = max(self.max, int(v.max()))

    def merge(self, other: "Histogram") -> "Histogram":
        """Add ``other``'s counts to this one (a total over several streams); returns self."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.total += other.total
        self.sum += other.sum
        self.max = max(self.max, other.max)
        return self

    def percentile(self, p: float) -> int:
        """The smallest bucket edge with at least ``p`` percent of values at or below it."""
        if self.total == 0:
            return 0
        wanted = max(1, int(-(-self.total * p // 100)))  # ceil without floats drifting
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= wanted:
                return min(_upper_edge(index), self.max)
        return self.max

    def summary(self, percentiles: Iterable[float] = (50, 99)) -> Dict[str, int]:
        """``{"p50": ..., "p99": ..., "max": ...}`` for the JSON summary."""
        out = {_name(p): self.percentile(p) for p in percentiles}
        out["max"] = self.max
        return out


def _bit_length(values: np.ndarray) -> np.ndarray:
    """``int.bit_length`` of non-negative int64 values, exactly (no float rounding near powers of two)."""
    length = np.zeros(values.shape, dtype=np.int64)
    rest = values.copy()
    for bits in (32, 16, 8, 4, 2, 1):
        big = rest >= (1 << bits)
        length += np.where(big, bits, 0)
        rest = np.where(big, rest >> bits, rest)
    return length + (rest > 0)


def _name(p: float) -> str:
    return "p" + (str(int(p)) if float(p).is_integer() else str(p))
