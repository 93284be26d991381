"""Wrap-aware RTP sequence number and timestamp arithmetic (RFC 3550 §A.1), and unwrapping.

On the wire sequence numbers are 16 bits and timestamps 32 bits; inside the SFU every value is
extended to 64 bits so comparisons and offsets never have to think about wrap-around again.
"""

from __future__ import annotations

SEQ_BITS = 16
TS_BITS = 32


def _diff(a: int, b: int, bits: int) -> int:
    """Signed distance ``a - b`` on a ring of ``2**bits``, in ``[-2**(bits-1), 2**(bits-1))``."""
    half = 1 << (bits - 1)
    return ((a - b + half) & ((1 << bits) - 1)) - half


def seq_diff(a: int, b: int) -> int:
    """Signed forward distance from sequence number ``b`` to ``a`` (16-bit, wrap-aware)."""
    return _diff(a, b, SEQ_BITS)


def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit sequence number ``a`` comes after ``b`` (RFC 1982 serial arithmetic)."""
    return _diff(a, b, SEQ_BITS) > 0


def ts_diff(a: int, b: int) -> int:
    """Signed forward distance from 32-bit RTP timestamp ``b`` to ``a``."""
    return _diff(a, b, TS_BITS)


def ts_newer(a: int, b: int) -> bool:
    """True when 32-bit RTP timestamp ``a`` comes after ``b``."""
    return _diff(a, b, TS_BITS) > 0


class Unwrapper:
    """Extends wrapping ``bits``-wide counters to monotonic-ish 64-bit values.

    Each input is placed at the extended value closest to the last one seen, so reordered or
    late packets map below it and wraps map above it. The first value maps to itself plus
    ``2**bits`` so that a packet slightly older than the first never goes negative.
    """

    __slots__ = ("_bits", "_last", "_mask")

    def __init__(self, bits: int) -> None:
        if bits not in (16, 32):
            raise ValueError("bits must be 16 or 32")
        self._bits = bits
        self._mask = (1 << bits) - 1
        self._last: int | None = None

    @property
    def last(self) -> int | None:
        """The extended value of the most recent input, or None before the first one."""
        return self._last

    def unwrap(self, value: int) -> int:
        """Return the extended value for wire value ``value`` and remember it as the latest."""
        extended = self.peek(value)
        self._last = extended
        return extended

    def peek(self, value: int) -> int:
        """Like :meth:`unwrap` but does not remember ``value`` (for late or repaired packets)."""
        last = self._last
        value &= self._mask
        if last is None:
            return value + (1 << self._bits)
        return last + _diff(value, last & self._mask, self._bits)


class SequenceUnwrapper(Unwrapper):
    """Unwraps 16-bit RTP sequence numbers."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(SEQ_BITS)


class TimestampUnwrapper(Unwrapper):
    """Unwraps 32-bit RTP timestamps."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(TS_BITS)
