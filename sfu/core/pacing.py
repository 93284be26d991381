"""Egress pacing of a subscriber transport: the rate and the paced Python-path sender.

The queue itself is a kernel (``sfu._fastpath._pacer`` / ``_pacer_py``, in the bundle as
``Kernels.Pacer``): the compiled forwarder queues forwarded media there without Python.
This module holds what the control plane adds: the pacing factor over the bandwidth estimate
and :class:`PacedSender`, through which the Python paths (NACK retransmissions, probe
clusters) queue their packets in the same pacer, in their own class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from sfu._fastpath import SrtpError

if TYPE_CHECKING:
    from sfu.core.kernels import Pacer, SendHistory
    from sfu.transport.transport import WebRtcTransport

__all__ = [
    "CONGESTED_PACING_FACTOR",
    "CONGESTED_PACING_HOLD",
    "PACING_FACTOR",
    "PacedSender",
    "pacing_rate",
]

#: The pacing rate over the bandwidth estimate: bursts (a keyframe) leave spread over a few
#: frame intervals instead of at the publisher's pace into a small bottleneck queue.
#: libwebrtc paces at 2.5x, for an estimate near the link's capacity; here the estimate right
#: after an upgrade is the probe's rate, near the new layer's own, and at 2.5x the middle
#: layer's keyframe still overran a 900 kbit/s link (delay overuse undid the upgrade; 10 % of
#: the phase on the middle layer against 72 % at 1.5x, bench/RESULTS.md).
PACING_FACTOR: Final = 1.5
#: The pacing rate over the estimate for CONGESTED_PACING_HOLD seconds after the link showed
#: congestion (a delay overuse, a loss window above 10 %). The estimate is then a measurement
#: of the link (what got through, or BETA of it), and whatever is paced above it goes into a
#: queue known to be full: lost at a policer or short drop-tail queue, or another overuse at a
#: deep one. In the real-client lab's 400 kbit/s cap (tbf, 50 ms queue) the estimate fell to
#: 381 kbit/s within 0.8 s and the low layer was forwarded 1.3 s after the cap, yet loss stayed
#: at 25-42 % for two more seconds and the first low-layer frame showed after 5.7 s: the new
#: layer's keyframe and the retransmissions left at 1.5 x 381 = 572 kbit/s into the cap.
CONGESTED_PACING_FACTOR: Final = 1.0
#: Seconds after the last congestion signal that the pacer keeps to the estimate: as long as
#: the allocator holds a subscription down after a congestion downgrade (CONGESTION_HOLD),
#: so a link that keeps showing congestion (a cap the top layer or its keyframes overrun) is
#: paced at what it took for as long as it does. A probe that gets more through than the
#: estimate ends it at once (the estimator clears ``congested_at``): in the lab's uncapped
#: phase after a cap, the top layer's keyframe, paced at 1.0x a fresh probe's estimate behind
#: the layer's own 1.4 Mbit/s, waited past the queue limit and 39 of its packets expired.
CONGESTED_PACING_HOLD: Final = 10.0


def pacing_rate(estimate_bps: float, *, congested_at: float, now: float) -> float:
    """The pacing rate (bps) for ``estimate_bps``: PACING_FACTOR times it, or
    CONGESTED_PACING_FACTOR times it within CONGESTED_PACING_HOLD of ``congested_at``."""
    if now - congested_at < CONGESTED_PACING_HOLD:
        return CONGESTED_PACING_FACTOR * estimate_bps
    return PACING_FACTOR * estimate_bps


class PacedSender:
    """``Sender.send_rtp`` for a paced transport: protect, then queue in the pacer under
    ``cls`` (``_pacer_py.RETRANSMISSION`` or ``PROBE``); RTCP goes straight out."""

    def __init__(
        self,
        transport: WebRtcTransport,
        pacer: Pacer,
        history: SendHistory | None,
        cls: int,
        on_queued: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.pacer = pacer
        self.history = history
        self.cls = cls
        self.on_queued = on_queued
        #: Packets the pacer refused (its queue was full of higher classes).
        self.dropped = 0
        #: The time the owner is acting at (``send_rtp`` takes no clock): set before use.
        self.now = 0.0

    def queue_delay(self) -> float:
        """Seconds a packet queued now waits before it leaves (what is queued at the rate)."""
        rate = self.pacer.rate_bps
        return self.pacer.queued_bytes * 8.0 / rate if rate > 0.0 else 0.0

    @property
    def has_srtp(self) -> bool:
        return self.transport.has_srtp

    def send_rtp(self, packet: bytes) -> bool:
        """Queue ``packet``: its transport-wide number (the history's newest, recorded by the
        caller just before) is the tag its release restamps. False if it cannot go out."""
        history = self.history
        tag = (history.packets - 1) & 0xFFFF if history is not None and history.packets else -1
        return self.send_rtp_tagged(packet, tag)

    def send_rtp_tagged(self, packet: bytes, tag: int) -> bool:
        """Queue ``packet`` whose transport-wide number is ``tag`` (-1: none), for callers
        that stamp several packets before sending them (a NACK's retransmissions)."""
        srtp = self.transport.srtp
        if srtp is None or self.transport.ice.selected_address is None:
            # Nothing the pacer could release either: the transport's own answer.
            return self.transport.send_rtp(packet)
        try:
            wire = srtp.protect_rtp(packet)
        except SrtpError:
            return False
        if not self.pacer.push(wire, self.cls, tag, self.now):
            self.dropped += 1
            return False
        self.on_queued()
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        return self.transport.send_rtcp(packet)
