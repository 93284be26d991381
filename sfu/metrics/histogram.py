"""Compatibility name for :mod:`sfu.histogram`, which now holds the plain histogram.

Kept only because ``sfu/core/peer.py`` (being rewritten elsewhere) still imports this path;
delete it once that import reads ``from sfu.histogram import ...``.
"""

from sfu.histogram import LATENCY_BUCKETS_S, PlainHistogram

__all__ = ["LATENCY_BUCKETS_S", "PlainHistogram"]
