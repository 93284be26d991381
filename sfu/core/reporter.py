"""RTCP toward one participant: reports, receive-side feedback and keyframe requests.

Toward the participant as a publisher: transport-wide CC feedback (draft-holmer-rmcat-
transport-wide-cc-extensions), NACKs for the gaps in what it sends (RFC 4585 §6.2.1), PLIs
(RFC 4585 §6.3.1) at most once per interval per source stream, and Receiver Report blocks.
Toward it as a subscriber: Sender Reports of each subscription (RFC 3550 §6.4.1), which carry
the receive blocks when there are any.
"""

from __future__ import annotations

import random
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

__all__ = [
    "DEFAULT_RTT",
    "MAX_REPORT_BLOCKS",
    "REPORT_INTERVAL",
    "REPORT_SPREAD",
    "Reporter",
    "report_interval",
]

#: Receiver and Sender Reports this often on average (RFC 3550 §6.2 allows far less for 2
#: participants; one a second keeps RTT and loss current for the allocator).
REPORT_INTERVAL: Final = 1.0
#: Each interval is drawn uniformly from [1 - REPORT_SPREAD, 1 + REPORT_SPREAD] x
#: REPORT_INTERVAL (RFC 3550 §6.3.1: [0.5, 1.5]), so the reports of participants who joined
#: together do not stay synchronised (and the server's RTCP does not come in bursts).
REPORT_SPREAD: Final = 0.5


def report_interval(rng: random.Random) -> float:
    """One randomised report interval (RFC 3550 §6.3.1), in seconds."""
    return REPORT_INTERVAL * rng.uniform(1.0 - REPORT_SPREAD, 1.0 + REPORT_SPREAD)


#: The round-trip time NACK timing assumes before any subscriber has reported one: a typical
#: one-region RTT; too low only costs a duplicate NACK, too high delays recovery.
DEFAULT_RTT: Final = 0.05
#: An SR/RR carries at most 31 report blocks (its 5-bit count, RFC 3550 §6.4.1).
MAX_REPORT_BLOCKS: Final = 31


class Reporter:
    """Periodic and requested RTCP of one participant's transport."""

    def __init__(
        self,
        rtcp_ssrc: int,
        sender: Sender,
        twcc: TwccRecorder,
        counters: PeerCounters,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.rtcp_ssrc = rtcp_ssrc
        self.sender = sender
        self.twcc = twcc
        self.counters = counters
        self._rng = rng if rng is not None else random.Random()
        #: When the next SR/RR is due (the first one goes out at the first poll).
        self.next_report = -1e9

    def next_feedback(self, publications: Iterable[Publication]) -> float | None:
        """When :meth:`poll_feedback` next has something to send: TWCC feedback or a NACK
        (None: nothing waits). A keyframe request a NACK generator gave up to goes with the
        next of these (a stream whose gap was hopeless keeps arriving, so TWCC is soon due).

        RFC 4585 §3.5.2 immediate mode: this feedback goes out when it is due, not with the
        next regular report."""
        due = self.twcc.next_timer()
        for pub in publications:
            for stream in pub.streams.values():
                gen = stream.nacks
                if gen is None:
                    continue
                at = gen.next_timer()
                if at is not None and (due is None or at < due):
                    due = at
        return due

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
        """Sender and Receiver Reports, once per randomised :data:`REPORT_INTERVAL`."""
        if now < self.next_report:
            return
        self.next_report = now + report_interval(self._rng)
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
