"""FeedbackHandler (RTCP in) and Reporter (RTCP out), driven without a transport."""

from __future__ import annotations

from typing import cast

from core_parts import RecordingSender, subscription, video_publication

from sfu.core.binder import Binder
from sfu.core.counters import PeerCounters
from sfu.core.feedback import FeedbackHandler
from sfu.core.peer import Peer
from sfu.core.publication import SourceStream
from sfu.core.reporter import MAX_BYE_SOURCES, REPORT_INTERVAL, Reporter, goodbye_packet
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.rtcp import Bye, ReceiverReport, ReportBlock, SenderReport, parse_compound
from sfu.packet.rtcp_feedback import Fir, FirEntry, Nack, Pli, Remb
from sfu.transport.transport import WebRtcTransport


def _handler() -> tuple[FeedbackHandler, RecordingSender, PeerCounters, None]:
    sender, counters = RecordingSender(), PeerCounters()
    return FeedbackHandler(sender, Binder(), counters), sender, counters, None


def test_pli_and_fir_become_one_rate_limited_request_upstream() -> None:
    handler, _, counters, _ = _handler()
    pub = video_publication()
    stream = pub.add_stream(0x100, 0)
    asked: list[tuple[SourceStream, float]] = []

    def requester(s: SourceStream, now: float) -> bool:
        asked.append((s, now))
        return s.should_request_keyframe(now)

    pub.keyframe_requester = requester
    sub = subscription(pub, 0x9000)
    assert sub.selector is not None
    sub.selector.set_target(0, None)
    handler.add_subscription(sub)
    handler.on_rtcp(Pli(1, 0x9000).serialize(), now=1.0)
    handler.on_rtcp(Fir(1, 0, [FirEntry(0x9000, 1)]).serialize(), now=1.1)
    handler.on_rtcp(Pli(1, 0x1234).serialize(), now=1.2)  # names nothing we send
    assert [a[0] for a in asked] == [stream, stream]
    assert stream.keyframe_requests == 1  # the second came within the interval
    assert (counters.pli_in, counters.fir_in, counters.keyframe_requests_in) == (2, 1, 2)


def test_nack_of_an_unknown_ssrc_is_ignored_and_remb_is_recorded() -> None:
    handler, sender, counters, _ = _handler()
    handler.on_rtcp(Nack.from_seqs(1, 0x4242, [5, 6]).serialize(), now=1.0)
    handler.on_rtcp(Remb.from_bitrate(1, 640_000, [0x9000]).serialize(), now=1.0)
    assert counters.nacks_in == 0 and sender.rtp == []
    assert handler.latest_remb == 640_000 and counters.remb_in == 1


def test_report_blocks_reach_the_subscription_they_name() -> None:
    handler, _, _, _ = _handler()
    sub = subscription(video_publication(), 0x9000)
    handler.add_subscription(sub)
    block = ReportBlock(0x9000, 64, 3, 1000, 0, 0, 0)
    handler.on_rtcp(ReceiverReport(7, [block]).serialize(), now=2.0)
    assert sub.send_stats.cumulative_lost == 3
    handler.remove_subscription(sub)
    handler.on_rtcp(
        ReceiverReport(7, [ReportBlock(0x9000, 64, 9, 1000, 0, 0, 0)]).serialize(), now=3.0
    )
    assert sub.send_stats.cumulative_lost == 3


def test_malformed_rtcp_is_counted() -> None:
    handler, _, counters, _ = _handler()
    handler.on_rtcp(b"\x80\xc9\x00\x09garbage", now=1.0)
    assert counters.malformed == 1


def test_reporter_sends_nacks_for_gaps_and_reports_once_per_interval() -> None:
    sender, counters = RecordingSender(), PeerCounters()
    reporter = Reporter(0x77, sender, TwccRecorder(0x77), counters)
    pub = video_publication()
    stream = pub.add_stream(0x100, 0)
    for seq in (10, 11, 14):  # 12 and 13 lost
        stream.stats.on_packet(seq, seq * 3000, 1.0, False)
        assert stream.nacks is not None
        stream.nacks.on_packet(seq, 1.0)
    reporter.poll_feedback([pub], [], now=1.2)
    nacks = [p for raw in sender.rtcp for p in parse_compound(raw) if isinstance(p, Nack)]
    assert nacks and sorted(nacks[0].lost_seqs()) == [12, 13]
    assert counters.nacks_out == len(nacks)
    sender.rtcp.clear()
    reporter.poll_reports([pub], [], now=2.0, wallclock=1e9)
    reporter.poll_reports([pub], [], now=2.0 + REPORT_INTERVAL / 2, wallclock=1e9)
    reports = [p for raw in sender.rtcp for p in parse_compound(raw)]
    assert len(reports) == 1 and isinstance(reports[0], ReceiverReport)
    assert reports[0].reports[0].ssrc == 0x100
    assert not any(isinstance(r, SenderReport) for r in reports)
    assert counters.reports_out == 1


def test_reporter_keyframe_requests_are_rate_limited() -> None:
    sender, counters = RecordingSender(), PeerCounters()
    reporter = Reporter(0x77, sender, TwccRecorder(0x77), counters)
    stream = video_publication().add_stream(0x100, 0)
    assert reporter.request_keyframe(stream, now=1.0)
    assert not reporter.request_keyframe(stream, now=1.1)
    assert [type(p) for raw in sender.rtcp for p in parse_compound(raw)] == [Pli]
    assert counters.keyframe_requests_out == 1


def test_keyframe_requests_wait_for_a_slow_publisher_to_answer() -> None:
    sender, counters = RecordingSender(), PeerCounters()
    reporter = Reporter(0x77, sender, TwccRecorder(0x77), counters)
    stream = video_publication().add_stream(0x100, 0)
    assert reporter.request_keyframe(stream, now=1.0, rtt=0.8)
    # 500 ms is the floor; a publisher 800 ms away cannot have answered within 800 ms + a frame.
    assert not reporter.request_keyframe(stream, now=1.6, rtt=0.8)
    assert not reporter.request_keyframe(stream, now=1.85, rtt=0.8)
    assert reporter.request_keyframe(stream, now=1.9, rtt=0.8)
    # A fast path keeps the 500 ms floor.
    assert not reporter.request_keyframe(stream, now=2.3, rtt=0.02)
    assert reporter.request_keyframe(stream, now=2.4, rtt=0.02)
    assert counters.keyframe_requests_out == 3


def test_goodbye_is_one_compound_rr_then_bye_naming_each_source_once() -> None:
    packet = goodbye_packet(0x77, [0x9000, 0x9001, 0x77, 0x9000], b"moved to another node")
    rr, bye = parse_compound(packet)
    # RFC 3550 section 6.1: a compound packet starts with an SR or RR; the BYE comes last.
    assert isinstance(rr, ReceiverReport) and rr.ssrc == 0x77 and rr.reports == []
    assert isinstance(bye, Bye)
    assert bye.ssrcs == [0x77, 0x9000, 0x9001]
    assert bye.reason == b"moved to another node"


def test_goodbye_splits_over_31_sources_and_cuts_the_reason_to_255_octets() -> None:
    ssrcs = list(range(1000, 1040))
    packets = parse_compound(goodbye_packet(1, ssrcs, b"x" * 300))
    assert isinstance(packets[0], ReceiverReport)
    byes = packets[1:]
    assert all(isinstance(b, Bye) for b in byes)
    named = [s for b in byes for s in b.ssrcs]  # type: ignore[union-attr]
    assert named == [1, *ssrcs]
    assert [len(b.ssrcs) for b in byes] == [MAX_BYE_SOURCES, 41 - MAX_BYE_SOURCES]  # type: ignore[union-attr]
    assert all(b.reason == b"x" * 255 for b in byes)  # type: ignore[union-attr]


def test_a_peers_goodbye_names_its_subscriptions_and_those_that_ended() -> None:
    sender = RecordingSender()
    peer = Peer("viewer", cast(WebRtcTransport, sender), 0x55, extensions={})
    pub = video_publication()
    kept, ended = subscription(pub, 0x9000, rtx_ssrc=0x9001), subscription(pub, 0x9100)
    ended.mid = "other"
    peer.add_subscription(kept)
    peer.add_subscription(ended)
    assert peer.remove_subscription("other") is ended  # its publisher left
    assert peer.goodbye(b"bye")
    (packet,) = sender.rtcp
    _, bye = parse_compound(packet)
    assert isinstance(bye, Bye)
    assert sorted(bye.ssrcs) == [0x55, 0x9000, 0x9001, 0x9100]


def test_a_peers_goodbye_reports_when_it_could_not_be_sent() -> None:
    sender = RecordingSender()
    sender.send_rtcp = lambda packet: False  # type: ignore[method-assign]
    peer = Peer("viewer", cast(WebRtcTransport, sender), 0x55, extensions={})
    assert not peer.goodbye(b"bye")
