"""RTCP toward one participant: reports, receive-side feedback and keyframe requests.

Toward the participant as a publisher: transport-wide CC feedback (draft-holmer-rmcat-
transport-wide-cc-extensions), NACKs for the gaps in what it sends (RFC 4585 §6.2.1), PLIs
(RFC 4585 §6.3.1) at most once per interval per source stream, and Receiver Report blocks.
Toward it as a subscriber: Sender Reports of each subscription (RFC 3550 §6.4.1), which carry
the receive blocks when there are any.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from sfu.core.counters import PeerCounters
from sfu.core.nack import build_nacks
from sfu.core.publication import (
    KEYFRAME_ANSWER_FRAME,
    KEYFRAME_REQUEST_INTERVAL,
    Publication,
    SourceStream,
)
from sfu.core.sender import Sender
from sfu.core.subscription import Subscription
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.rtcp import ReceiverReport
from sfu.packet.rtcp_feedback import Pli

__all__ = ["DEFAULT_RTT", "MAX_REPORT_BLOCKS", "REPORT_INTERVAL", "Reporter"]

#: Receiver and Sender Reports this often (RFC 3550 §6.2 allows far less for 2 participants;
#: one a second keeps RTT and loss current for the allocator).
REPORT_INTERVAL: Final = 1.0
#: The round-trip time NACK timing assumes before any subscriber has reported one: a typical
#: one-region RTT; too low only costs a duplicate NACK, too high delays recovery.
DEFAULT_RTT: Final = 0.05
#: An SR/RR carries at most 31 report blocks (its 5-bit count, RFC 3550 §6.4.1).
MAX_REPORT_BLOCKS: Final = 31


class Reporter:
    """Periodic and requested RTCP of one participant's transport."""

    def __init__(
        self, rtcp_ssrc: int, sender: Sender, twcc: TwccRecorder, counters: PeerCounters
    ) -> None:
        self.rtcp_ssrc = rtcp_ssrc
        self.sender = sender
        self.twcc = twcc
        self.counters = counters
        self._last_report = -1e9

    def request_keyframe(
        self, stream: SourceStream, *, now: float, rtt: float | None = None
    ) -> bool:
        """Send a PLI for ``stream`` to the publisher, at most once per interval: 500 ms, or
        the publisher's round trip plus a frame when that is longer (it cannot answer
        sooner, and a repeat would only make it send a second keyframe)."""
        interval = KEYFRAME_REQUEST_INTERVAL
        if rtt is not None:
            interval = max(interval, rtt + KEYFRAME_ANSWER_FRAME)
        if not stream.should_request_keyframe(now, interval):
            return False
        self.counters.keyframe_requests_out += 1
        return self.sender.send_rtcp(Pli(self.rtcp_ssrc, stream.ssrc).serialize())

    def poll_feedback(
        self,
        publications: Iterable[Publication],
        subscriptions: Iterable[Subscription],
        *,
        now: float,
    ) -> None:
        """Transport-wide CC feedback and NACKs due now (and keyframes for hopeless gaps)."""
        send = self.sender.send_rtcp
        for feedback in self.twcc.poll(now):
            send(feedback)
            self.counters.twcc_out += 1
        rtts = [s.send_stats.rtt for s in subscriptions if s.send_stats.rtt]
        rtt = min(rtts) if rtts else DEFAULT_RTT
        for pub in publications:
            for stream in pub.streams.values():
                gen = stream.nacks
                if gen is None:
                    continue
                seqs = gen.poll(now, rtt)
                if seqs:
                    for nack in build_nacks(self.rtcp_ssrc, stream.ssrc, seqs):
                        send(nack)
                        self.counters.nacks_out += 1
                if gen.take_keyframe_request():
                    self.request_keyframe(stream, now=now)

    def poll_reports(
        self,
        publications: Iterable[Publication],
        subscriptions: Iterable[Subscription],
        *,
        now: float,
        wallclock: float,
    ) -> None:
        """Sender and Receiver Reports, once per :data:`REPORT_INTERVAL`."""
        if now - self._last_report < REPORT_INTERVAL:
            return
        self._last_report = now
        blocks = [
            block
            for pub in publications
            for stream in pub.streams.values()
            if (block := stream.stats.report_block(now)) is not None
        ][:MAX_REPORT_BLOCKS]
        reports: list[bytes] = []
        for sub in subscriptions:
            sr = sub.send_stats.sender_report(now, wallclock)
            if sr is not None:
                if blocks:
                    sr.reports = blocks
                    blocks = []
                reports.append(sr.serialize())
        if blocks:
            reports.append(ReceiverReport(self.rtcp_ssrc, blocks).serialize())
        for report in reports:
            self.sender.send_rtcp(report)
            self.counters.reports_out += 1
