"""A lock-free histogram of plain integers, observed on the control plane, read at scrape time.

prometheus-client's own ``Histogram`` takes a lock per ``observe``; this one is a list of
counts and a float sum, which is all a single-threaded event loop needs. The collector turns
it into a Prometheus histogram (cumulative buckets) when scraped.

A leaf module (no sfu imports): transport/ and core/ observe into these, and metrics/ reads
them, so it sits below all of them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = [
    "BANDWIDTH_BUCKETS_BPS",
    "HANDSHAKE_BUCKETS_S",
    "LATENCY_BUCKETS_S",
    "LOOP_LAG_BUCKETS_S",
    "PlainHistogram",
]

#: Forwarding latency inside the server: tens of microseconds to tens of milliseconds.
LATENCY_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
#: ICE and DTLS handshakes: a few ms on a LAN to seconds over lossy paths.
HANDSHAKE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: How late the event loop runs a timer that should have fired.
LOOP_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Per-subscriber downlink estimates: audio-only to full HD simulcast.
BANDWIDTH_BUCKETS_BPS = (
    64e3, 128e3, 256e3, 512e3, 1e6, 1.5e6, 2.5e6, 4e6, 6e6, 10e6, 20e6,
)  # fmt: skip


class PlainHistogram:
    """Counts of observations per bucket (``le`` upper bounds, +Inf implied) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be a non-empty increasing sequence")
        self.bounds = tuple(float(b) for b in bounds)
        #: Per-bucket counts; the last one is the +Inf bucket.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Add one observation (``le`` semantics: a value equal to a bound falls in it)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """All observations."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs ending with ``+Inf``, as Prometheus exposes them."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out

    def merge(self, other: PlainHistogram) -> None:
        """Add ``other``'s observations (same bounds) into this one."""
        if other.bounds != self.bounds:
            raise ValueError("cannot merge histograms with different buckets")
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum += other.sum
