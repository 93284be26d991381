"""RTCP from one participant: what it says about the streams it receives and sends.

As a subscriber it sends NACKs (answered from the publication's retransmission cache, RFC
4585 §6.2.1), PLI/FIR (collapsed into one rate-limited keyframe request toward the publisher,
RFC 4585 §6.3.1, RFC 5104 §4.3.1), Receiver Report blocks (loss and round-trip time, RFC 3550
§6.4), transport-wide CC feedback about what the server sent it (the send-side estimator's
input) and REMB (its own estimate, the estimator's input only when transport-cc is not
negotiated); as a publisher, Sender Reports (for the receive statistics' DLSR arithmetic).
Retransmissions answering NACKs are taken from the transport's retransmission budget.
"""

from __future__ import annotations

from sfu.core.binder import Binder
from sfu.core.counters import PeerCounters
from sfu.core.estimator import BandwidthEstimator
from sfu.core.pacing import PacedSender
from sfu.core.retransmission import RetransmissionBudget
from sfu.core.sender import Sender
from sfu.core.subscription import Subscription
from sfu.packet.errors import ParseError
from sfu.packet.extensions import abs_send_time_from_seconds
from sfu.packet.rtcp import ReceiverReport, ReportBlock, SenderReport, parse_compound
from sfu.packet.rtcp_feedback import Fir, Nack, Pli, Remb
from sfu.packet.twcc import TransportFeedback

__all__ = ["FeedbackHandler"]


class FeedbackHandler:
    """Acts on the RTCP compounds one participant sends."""

    def __init__(self, sender: Sender, binder: Binder, counters: PeerCounters) -> None:
        self.sender = sender
        self.binder = binder
        self.counters = counters
        #: The transport's estimator and retransmission budget (set once it sends media).
        self.estimator: BandwidthEstimator | None = None
        self.budget: RetransmissionBudget | None = None
        #: The subscriber's latest REMB (bps), for metrics and debugging.
        self.latest_remb: int | None = None
        #: The subscriptions this participant receives, by outgoing media and RTX SSRC.
        self._subscriptions: dict[int, Subscription] = {}

    def add_subscription(self, sub: Subscription) -> None:
        """Feedback naming ``sub``'s SSRCs concerns it from now on."""
        self._subscriptions[sub.out_ssrc] = sub
        if sub.rtx_ssrc is not None:
            self._subscriptions[sub.rtx_ssrc] = sub

    def remove_subscription(self, sub: Subscription) -> None:
        """Forget ``sub``'s SSRCs."""
        self._subscriptions.pop(sub.out_ssrc, None)
        if sub.rtx_ssrc is not None:
            self._subscriptions.pop(sub.rtx_ssrc, None)

    def on_rtcp(self, packet: bytes, *, now: float) -> None:
        """One decrypted RTCP compound (never raises on bad input: counted as malformed)."""
        try:
            items = parse_compound(packet)
        except ParseError:
            self.counters.malformed += 1
            return
        for item in items:
            if isinstance(item, SenderReport):
                entry = self.binder.media(item.ssrc)
                if entry is not None:
                    entry[1].stats.on_sender_report(item.ntp_timestamp, now)
                self._report_blocks(item.reports, now=now)
            elif isinstance(item, ReceiverReport):
                self._report_blocks(item.reports, now=now)
            elif isinstance(item, Nack):
                self._on_nack(item, now=now)
            elif isinstance(item, Pli):
                self.counters.pli_in += 1
                self._keyframe_wanted(item.media_ssrc, now=now)
            elif isinstance(item, Fir):
                self.counters.fir_in += 1
                for fir in item.entries:
                    self._keyframe_wanted(fir.ssrc, now=now)
            elif isinstance(item, TransportFeedback):
                self.counters.twcc_in += 1
                if self.estimator is not None:
                    self.estimator.on_feedback(item, now=now)
            elif isinstance(item, Remb):
                self.counters.remb_in += 1
                self.latest_remb = item.bitrate
                if self.estimator is not None:
                    self.estimator.on_remb(item.bitrate, now=now)

    def _report_blocks(self, blocks: list[ReportBlock], *, now: float) -> None:
        for block in blocks:
            sub = self._subscriptions.get(block.ssrc)
            if sub is not None and block.ssrc == sub.out_ssrc:
                sub.send_stats.on_report_block(block, now)
                rtt = sub.send_stats.rtt
                if rtt is not None:
                    sub.throttle.update_rtt(rtt)
                if self.estimator is not None:
                    if rtt is not None:
                        self.estimator.on_rtt(rtt)
                    self.estimator.on_report_loss(block.fraction_lost / 256, now=now)

    def _on_nack(self, nack: Nack, *, now: float) -> None:
        sub = self._subscriptions.get(nack.media_ssrc)
        if sub is None:
            return
        self.counters.nacks_in += 1
        abs_time = abs_send_time_from_seconds(now)
        dropped, superseded = sub.retransmit_dropped, sub.retransmit_superseded
        tags: list[int] = []
        sender = self.sender
        hold = sender.queue_delay() if isinstance(sender, PacedSender) else 0.0
        packets = sub.retransmit(nack.lost_seqs(), now, abs_time, self.budget, tags, hold)
        for packet, tag in zip(packets, tags, strict=True):
            # A pacer restamps each packet's own transport-wide number when it leaves.
            sent = (
                sender.send_rtp_tagged(packet, tag)
                if isinstance(sender, PacedSender)
                else sender.send_rtp(packet)
            )
            if sent:
                self.counters.retransmits += 1
        self.counters.retransmits_dropped += sub.retransmit_dropped - dropped
        self.counters.retransmits_superseded += sub.retransmit_superseded - superseded

    def _keyframe_wanted(self, ssrc: int, *, now: float) -> None:
        """A subscriber's PLI/FIR: one request upstream for the layer it receives."""
        sub = self._subscriptions.get(ssrc)
        if sub is None or sub.selector is None:
            return
        self.counters.keyframe_requests_in += 1
        layer = sub.selector.current.spatial
        if layer is None:
            layer = sub.selector.target.spatial
        stream = sub.publication.stream_for(layer) if layer is not None else None
        if stream is not None:
            sub.publication.request_keyframe(stream, now)
