"""RTCP toward one participant: reports, receive-side feedback and keyframe requests.

Toward the participant as a publisher: transport-wide CC feedback (draft-holmer-rmcat-
transport-wide-cc-extensions), NACKs for the gaps in what it sends (RFC 4585 §6.2.1), PLIs
(RFC 4585 §6.3.1) at most once per interval per source stream, and Receiver Report blocks.
Toward it as a subscriber: Sender Reports of each subscription (RFC 3550 §6.4.1), which carry
the receive blocks when there are any. When the server ends the session on its own (a drain
moves it to another node), a BYE for every source it sends (RFC 3550 §6.6), so that a client
with no other channel to the server notices at once.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
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
from sfu.packet.rtcp import Bye, ReceiverReport, serialize_compound
from sfu.packet.rtcp_feedback import Pli

__all__ = [
    "DEFAULT_RTT",
    "MAX_BYE_SOURCES",
    "MAX_REPORT_BLOCKS",
    "REPORT_INTERVAL",
    "REPORT_SPREAD",
    "Reporter",
    "goodbye_packet",
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
#: A BYE names at most 31 sources (the same 5-bit count, RFC 3550 §6.6).
MAX_BYE_SOURCES: Final = 31


def goodbye_packet(rtcp_ssrc: int, ssrcs: Sequence[int], reason: bytes) -> bytes:
    """One compound RTCP packet that says the sources ``ssrcs`` (and ``rtcp_ssrc``, the
    source of this transport's reports) have left: an empty Receiver Report first (RFC 3550
    §6.1: a compound packet starts with an SR or RR), then BYE packets of at most
    :data:`MAX_BYE_SOURCES` sources each, all with ``reason`` (RFC 3550 §6.6; at most 255
    octets, cut to that). Each source is named once, in the order given."""
    sources = list(dict.fromkeys((rtcp_ssrc, *ssrcs)))
    text = reason[:255]
    byes = [
        Bye(sources[i : i + MAX_BYE_SOURCES], text) for i in range(0, len(sources), MAX_BYE_SOURCES)
    ]
    return serialize_compound([ReceiverReport(rtcp_ssrc), *byes])


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

    def goodbye(self, ssrcs: Sequence[int], reason: bytes) -> bool:
        """Send a BYE (:func:`goodbye_packet`) for the sources ``ssrcs`` and the reports' own
        source. False when it could not be sent (the transport is not connected)."""
        return self.sender.send_rtcp(goodbye_packet(self.rtcp_ssrc, ssrcs, reason))
