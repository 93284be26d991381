"""Per-subscription state the data plane writes on every forwarded packet (reference).

One :class:`RouteState` belongs to one :class:`~sfu.core.subscription.Subscription`. The
packet path (the compiled forwarder, or :meth:`Subscription.forward`) writes it; the control
plane reads it: the sender counters for RTCP Sender Reports (RFC 3550 §6.4.1), the history
that maps a NACKed outgoing sequence number back to the packet it was made from, and the
forwarded count for metrics. ``blocked`` is pushed by the control plane (an audio
subscription that is paused or held forwards nothing).

The compiled twin is ``sfu._fastpath._forward.RouteState``: same contract, C storage.
"""

from __future__ import annotations

from typing import Final

from sfu._fastpath.values import HistoryEntry
from sfu.packet.seqnum import ts_diff

__all__ = ["HISTORY", "RouteState"]

#: Outgoing packets remembered for NACKs (a power of two).
HISTORY: Final = 1024
_MASK: Final = HISTORY - 1
_U32: Final = 0xFFFFFFFF


class RouteState:
    """Sender counters, NACK history and the forwarding switch of one subscription."""

    __slots__ = (
        "_h_in",
        "_h_key",
        "_h_layer",
        "_h_out",
        "_h_pid",
        "_h_tl0",
        "_h_ts",
        "_h_vp8",
        "_last_at",
        "_last_rtp_ts",
        "blocked",
        "forwarded",
        "octets_sent",
        "packets_sent",
    )

    def __init__(self) -> None:
        self.blocked = False
        self.forwarded = 0
        self.packets_sent = 0
        self.octets_sent = 0
        self._last_rtp_ts = 0
        self._last_at: float | None = None
        self._h_out = [-1] * HISTORY
        self._h_in = [0] * HISTORY
        self._h_ts = [0] * HISTORY
        self._h_layer = [0] * HISTORY
        self._h_vp8 = [False] * HISTORY
        self._h_pid = [-1] * HISTORY
        self._h_tl0 = [-1] * HISTORY
        self._h_key = [-1] * HISTORY

    # -- sender counters (RFC 3550 §6.4.1) ----------------------------------------------------

    @property
    def last_rtp_ts(self) -> int:
        """RTP timestamp anchoring the RTP-to-wallclock mapping (0 before any packet)."""
        return self._last_rtp_ts

    @property
    def last_at(self) -> float | None:
        """``now`` of the packet that set :attr:`last_rtp_ts` (None before any packet)."""
        return self._last_at

    def on_packet(self, rtp_timestamp: int, payload_bytes: int, now: float) -> None:
        """Count one packet sent; its timestamp anchors the SR mapping unless it is older."""
        self.packets_sent += 1
        self.octets_sent += payload_bytes
        rtp_timestamp &= _U32
        if self._last_at is None or ts_diff(rtp_timestamp, self._last_rtp_ts) >= 0:
            self._last_rtp_ts = rtp_timestamp
            self._last_at = now

    # -- NACK history ---------------------------------------------------------------------

    def record(
        self,
        out_seq: int,
        in_ext_seq: int,
        timestamp: int,
        layer: int,
        has_vp8: bool,
        picture_id: int,
        tl0picidx: int,
        keyidx: int,
    ) -> None:
        """Remember that outgoing ``out_seq`` (extended) was made from ``in_ext_seq``."""
        slot = out_seq & _MASK
        self._h_out[slot] = out_seq & 0xFFFF
        self._h_in[slot] = in_ext_seq
        self._h_ts[slot] = timestamp
        self._h_layer[slot] = layer
        self._h_vp8[slot] = has_vp8
        self._h_pid[slot] = picture_id
        self._h_tl0[slot] = tl0picidx
        self._h_key[slot] = keyidx

    def lookup(self, seq: int) -> HistoryEntry | None:
        """The packet outgoing 16-bit ``seq`` was made from, if still remembered."""
        slot = seq & _MASK
        if self._h_out[slot] != seq:
            return None
        return HistoryEntry(
            self._h_in[slot],
            self._h_ts[slot],
            self._h_layer[slot],
            self._h_vp8[slot],
            self._h_pid[slot],
            self._h_tl0[slot],
            self._h_key[slot],
        )
