"""A participant's media endpoint: ingest of what it publishes, egress of what it subscribes.

:class:`Peer` is the :class:`~sfu.transport.transport.TransportListener` of one participant's
transport. Its packet path is synchronous (no ``await``): an RTP packet from the publisher is
bound to a publication's source stream (by SSRC, or on first sight by the ``mid``/``rid``
header extensions, RFC 8852), recorded for transport-wide congestion control feedback, NACK
generation, receive statistics and the retransmission cache, then handed to every subscription
of the publication (a tuple snapshot, rebuilt on subscribe/unsubscribe) and sent on each
subscriber's transport. RTCP from the participant is the subscriber side: NACKs answered from the
cache, PLI/FIR turned into one rate-limited keyframe request upstream, Receiver Reports giving
loss and RTT, REMB giving the bandwidth estimate the allocator works with.

:meth:`Peer.poll` runs the periodic work: TWCC feedback and NACKs toward the publisher, Sender
and Receiver Reports once a second, keyframe requests for pending layer switches and the
bandwidth allocation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Final

from sfu._fastpath.values import (
    F_HEADER_BAD,
    F_KEYFRAME,
    F_LEVEL,
    F_MALFORMED_EXT,
    F_MALFORMED_PAYLOAD,
    F_PADDING,
    F_TWCC,
    F_VAD,
    LogRecord,
)
from sfu.codecs.h264 import parse_h264
from sfu.codecs.vp8 import parse_vp8
from sfu.codecs.vp9 import parse_vp9
from sfu.core.dataplane import DataPlane
from sfu.core.nack import build_nacks
from sfu.core.publication import Publication, SourceStream
from sfu.core.subscription import AUDIO_INFO, PacketInfo, Subscription
from sfu.core.twcc_recorder import TwccRecorder
from sfu.metrics.histogram import LATENCY_BUCKETS_S, PlainHistogram
from sfu.packet.errors import ParseError
from sfu.packet.extensions import (
    AUDIO_LEVEL_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
    abs_send_time_from_seconds,
    parse_audio_level,
    parse_sdes_item,
    parse_transport_cc_seq,
)
from sfu.packet.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderReport,
    parse_compound,
)
from sfu.packet.rtcp_feedback import Fir, Nack, Pli, Remb
from sfu.packet.rtp import find_extension, payload_offset, peek_rtp_header
from sfu.transport.transport import TransportState, WebRtcTransport

__all__ = ["MAX_STREAMS", "Peer", "PeerCounters", "RouterStats"]

log = logging.getLogger(__name__)

#: Most incoming SSRCs (media and RTX) one peer may bind: bounds a hostile publisher's state.
MAX_STREAMS: Final = 32
#: Receiver and Sender Reports this often (RFC 3550 §6.2 allows far less for 2 participants;
#: one a second keeps RTT and loss current for the allocator).
REPORT_INTERVAL: Final = 1.0
ALLOCATION_INTERVAL: Final = 0.5
#: Loss above this in a subscriber's report makes the allocator step its layers down.
LOSS_STEP_DOWN: Final = 0.10
#: A REMB this far below its peak of the last REMB_WINDOW seconds signals congestion (the
#: receiver's estimator backs off to ~0.85 of the incoming rate on overuse).
REMB_DROP: Final = 0.8
REMB_WINDOW: Final = 5.0


@dataclass(slots=True)
class PeerCounters:
    """Plain counters of one peer, read by metrics and tests."""

    rtp_in: int = 0
    rtp_forwarded: int = 0
    unknown_ssrc: int = 0
    malformed: int = 0
    rtx_in: int = 0
    padding_in: int = 0
    nacks_in: int = 0
    nacks_out: int = 0
    retransmits: int = 0
    keyframe_requests_in: int = 0
    keyframe_requests_out: int = 0
    twcc_out: int = 0
    reports_out: int = 0
    #: Media ingested (including RTX repairs) and forwarded, by kind; bytes are RTP bytes.
    audio_in: int = 0
    audio_in_bytes: int = 0
    video_in: int = 0
    video_in_bytes: int = 0
    audio_out: int = 0
    audio_out_bytes: int = 0
    video_out: int = 0
    video_out_bytes: int = 0
    #: Keyframe requests from this peer's receivers, by message (RFC 4585 PLI, RFC 5104 FIR).
    pli_in: int = 0
    fir_in: int = 0
    #: Folded in when a publication or subscription ends (live ones are read at scrape time).
    layer_switches: int = 0
    ingress_expected: int = 0
    ingress_lost: int = 0
    egress_sent: int = 0
    egress_lost: int = 0

    def add(self, other: PeerCounters) -> None:
        """Add every counter of ``other`` into this one."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _latency_histogram() -> PlainHistogram:
    return PlainHistogram(LATENCY_BUCKETS_S)


@dataclass(slots=True)
class RouterStats:
    """Router figures that outlive peers: the counters of peers that ended, folded together,
    and the sampled forwarding latency (receive to last send of one packet)."""

    retired: PeerCounters = field(default_factory=PeerCounters)
    forward_latency: PlainHistogram = field(default_factory=_latency_histogram)
    #: The clock ``now`` came from; None disables latency sampling (tests on manual time).
    clock: Callable[[], float] | None = None
    #: Sample one forwarded packet in this many per source stream (a power of two).
    sample_mask: int = 63


def stream_loss(stream: SourceStream) -> tuple[int, int]:
    """(expected, lost) so far on one incoming stream (RFC 3550 §A.3)."""
    return stream.stats.packets_expected, max(0, stream.stats.packets_lost)


def subscription_loss(sub: Subscription) -> tuple[int, int]:
    """(sent, lost as the receiver reports it) so far on one outgoing stream."""
    return sub.send_stats.packets_sent, max(0, sub.send_stats.cumulative_lost)


def subscription_switches(sub: Subscription) -> int:
    """Spatial layer switches made for one subscription (0 for audio)."""
    return sub.selector.switches if sub.selector is not None else 0


def _one_id(peer_exts: dict[int, str], uri: str) -> int:
    for ext_id, value in peer_exts.items():
        if value == uri:
            return ext_id
    return 0


def describe_packet(codec: str, packet: bytes, offset: int) -> PacketInfo:
    """Keyframe / frame start / temporal layer from the codec payload descriptor."""
    if codec == "vp8":
        d = parse_vp8(packet, offset)
        return PacketInfo(
            d.is_keyframe,
            d.is_start_of_frame,
            d.temporal_id,
            d.layer_sync or not d.temporal_id,
            d,
            offset,
        )
    if codec == "h264":
        h = parse_h264(packet, offset)
        return PacketInfo(h.is_keyframe, h.is_start_of_frame, offset=offset)
    if codec == "vp9":
        v = parse_vp9(packet, offset)
        return PacketInfo(v.is_keyframe, v.is_start_of_frame, offset=offset)
    return PacketInfo(True, True, offset=offset)


class Peer:
    """One participant's transport listener: publications in, subscriptions out."""

    def __init__(
        self,
        participant_id: str,
        transport: WebRtcTransport,
        rtcp_ssrc: int,
        *,
        extensions: dict[int, str],
        on_audio_level: Callable[[str, int, bool | None, float], None] | None = None,
        on_state: Callable[[Peer, TransportState], None] | None = None,
        stats: RouterStats | None = None,
        dataplane: DataPlane | None = None,
    ) -> None:
        self.participant_id = participant_id
        self.dataplane = dataplane
        self.transport = transport
        self.rtcp_ssrc = rtcp_ssrc
        self.on_audio_level = on_audio_level
        self.on_state_change = on_state
        self.publications: dict[str, Publication] = {}  # by mid
        self.subscriptions: dict[str, Subscription] = {}  # by mid
        self._by_ssrc: dict[int, tuple[Publication, SourceStream]] = {}
        self._rtx_by_ssrc: dict[int, tuple[Publication, SourceStream]] = {}
        self._sub_by_ssrc: dict[int, Subscription] = {}
        self.counters = PeerCounters()
        self.stats = stats
        #: True once the transport ended and the counters were folded into ``stats.retired``.
        self.retired = False
        self.remb_bps: int | None = None
        #: (now, bps) of recent REMBs, to tell a congestion drop from the estimator's ramp.
        self._remb_history: list[tuple[float, int]] = []
        self._twcc = TwccRecorder(rtcp_ssrc)
        self._last_report = -1e9
        self._last_allocation = -1e9
        self.set_extensions(extensions)

    def set_extensions(self, extensions: dict[int, str]) -> None:
        """The BUNDLE-wide extension ids (RFC 8843 §9.2: one id space per transport)."""
        self._mid_id = _one_id(extensions, MID_URI)
        self._rid_id = _one_id(extensions, RID_URI)
        self._rrid_id = _one_id(extensions, REPAIRED_RID_URI)
        self._twcc_id = _one_id(extensions, TRANSPORT_CC_URI)
        self._level_id = _one_id(extensions, AUDIO_LEVEL_URI)
        if self.dataplane is not None:
            self.dataplane.claim(self.transport, self, self._twcc_id, self._level_id)

    # -- membership (called by the room on offers) -------------------------------------------

    def add_publication(
        self, publication: Publication, declared: list[tuple[int, int | None]]
    ) -> None:
        """Track ``publication`` on its mid; ``declared`` are (ssrc, rtx ssrc) from the SDP."""
        self.publications[publication.mid] = publication
        if self.dataplane is not None:
            publication.on_fanout = self.dataplane.routes_changed
        for layer, (ssrc, rtx) in enumerate(declared[: publication.num_layers]):
            if ssrc in self._by_ssrc:
                continue
            self._replace_layer(publication, layer)
            stream = publication.add_stream(ssrc, layer, rtx)
            self._by_ssrc[ssrc] = (publication, stream)
            if rtx is not None:
                self._rtx_by_ssrc[rtx] = (publication, stream)
            if self.dataplane is not None:
                self.dataplane.add_stream(self, publication, stream)

    def _replace_layer(self, publication: Publication, layer: int) -> None:
        """The layer gets a new SSRC: the data plane forgets the old stream."""
        old = publication.layers.get(layer)
        if old is not None and self.dataplane is not None:
            self.dataplane.remove_stream(old)

    def remove_publication(self, mid: str) -> Publication | None:
        """Stop ingesting the publication on ``mid``; returns it (its subscriptions end too)."""
        publication = self.publications.pop(mid, None)
        if publication is None:
            return None
        for table in (self._by_ssrc, self._rtx_by_ssrc):
            for ssrc in [s for s, (p, _) in table.items() if p is publication]:
                del table[ssrc]
        if self.dataplane is not None:
            for stream in publication.streams.values():
                self.dataplane.remove_stream(stream)
        publication.on_fanout = None
        self._fold_publication(publication)
        return publication

    def add_subscription(self, subscription: Subscription) -> None:
        """Send ``subscription`` on its mid; NACK/PLI/RR for its SSRCs come back here."""
        self.subscriptions[subscription.mid] = subscription
        self._sub_by_ssrc[subscription.out_ssrc] = subscription
        if subscription.rtx_ssrc is not None:
            self._sub_by_ssrc[subscription.rtx_ssrc] = subscription

    def remove_subscription(self, mid: str) -> Subscription | None:
        """Forget the subscription on ``mid``; the caller unhooks it from the publication."""
        subscription = self.subscriptions.pop(mid, None)
        if subscription is not None:
            self._sub_by_ssrc.pop(subscription.out_ssrc, None)
            if subscription.rtx_ssrc is not None:
                self._sub_by_ssrc.pop(subscription.rtx_ssrc, None)
            self._fold_subscription(subscription)
        return subscription

    def _fold_publication(self, publication: Publication) -> None:
        counters = self.counters
        for stream in publication.layers.values():
            expected, lost = stream_loss(stream)
            counters.ingress_expected += expected
            counters.ingress_lost += lost

    def _fold_subscription(self, subscription: Subscription) -> None:
        counters = self.counters
        sent, lost = subscription_loss(subscription)
        counters.egress_sent += sent
        counters.egress_lost += lost
        counters.layer_switches += subscription_switches(subscription)

    # -- TransportListener --------------------------------------------------------------------

    def on_rtp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        """One decrypted RTP packet from this participant (never raises on bad input)."""
        header = peek_rtp_header(packet)
        if header is None:
            self.counters.malformed += 1
            return
        self.counters.rtp_in += 1
        ssrc, seq, timestamp, pt = header
        try:
            if self._twcc_id:
                raw = find_extension(packet, self._twcc_id)
                if raw is not None and len(raw) == 2:
                    self._twcc.on_packet(parse_transport_cc_seq(raw), ssrc, now)
            entry = self._by_ssrc.get(ssrc)
            if entry is None:
                rtx = self._rtx_by_ssrc.get(ssrc)
                if rtx is not None:
                    self._on_rtx(rtx[0], rtx[1], packet, now)
                    return
                entry = self._bind(ssrc, pt, packet)
                if entry is None:
                    return
            self._ingest(entry[0], entry[1], packet, seq, timestamp, now, False)
        except ParseError:
            self.counters.malformed += 1

    def _on_rtx(self, pub: Publication, stream: SourceStream, packet: bytes, now: float) -> None:
        """RFC 4588 §4: restore the original packet (OSN, primary SSRC and payload type)."""
        offset = payload_offset(packet)
        end = len(packet)
        if packet[0] & 0x20:
            end -= packet[-1]
        if end - offset < 2:
            self.counters.padding_in += 1  # bandwidth probing padding: TWCC already counted it
            return
        self.counters.rtx_in += 1
        original = bytearray(packet[:offset])
        original[0] &= ~0x20 & 0xFF  # padding (if any) is dropped with the RTX framing
        original[1] = (packet[1] & 0x80) | pub.codec.payload_type
        original[2:4] = packet[offset : offset + 2]
        original[8:12] = stream.ssrc.to_bytes(4, "big")
        restored = bytes(original) + packet[offset + 2 : end]
        header = peek_rtp_header(restored)
        assert header is not None
        self._ingest(pub, stream, restored, header[1], header[2], now, True)

    def _bind(self, ssrc: int, pt: int, packet: bytes) -> tuple[Publication, SourceStream] | None:
        """Bind a new SSRC by its mid/rid/repaired-rid extensions (Chromium's simulcast)."""
        if len(self._by_ssrc) + len(self._rtx_by_ssrc) >= MAX_STREAMS:
            self.counters.unknown_ssrc += 1
            return None
        raw_mid = find_extension(packet, self._mid_id) if self._mid_id else None
        pub: Publication | None = None
        if raw_mid is not None:
            pub = self.publications.get(parse_sdes_item(raw_mid))
        elif len(self.publications) == 1:
            pub = next(iter(self.publications.values()))
        if pub is None:
            self.counters.unknown_ssrc += 1
            return None
        raw_rrid = find_extension(packet, self._rrid_id) if self._rrid_id else None
        raw_rid = find_extension(packet, self._rid_id) if self._rid_id else None
        is_rtx = raw_rrid is not None or (
            pt == pub.codec.rtx_payload_type and pt != pub.codec.payload_type
        )
        rid = (
            parse_sdes_item(raw_rrid if raw_rrid is not None else raw_rid or b"")
            if (raw_rrid is not None or raw_rid is not None)
            else None
        )
        if rid is not None and pub.rids:
            if rid not in pub.rids:
                self.counters.unknown_ssrc += 1
                return None
            layer = pub.rids.index(rid)
        else:
            layer = 0
        if is_rtx:
            stream = pub.layers.get(layer)
            if stream is None:
                self.counters.unknown_ssrc += 1  # RTX before its media stream: wait for it
                return None
            stream.rtx_ssrc = ssrc
            self._rtx_by_ssrc[ssrc] = (pub, stream)
            self._on_rtx(pub, stream, packet, 0.0)
            return None
        if pt != pub.codec.payload_type:
            self.counters.unknown_ssrc += 1
            return None
        old = pub.layers.get(layer)
        if old is not None:
            self._by_ssrc.pop(old.ssrc, None)
        self._replace_layer(pub, layer)
        stream = pub.add_stream(ssrc, layer)
        self._by_ssrc[ssrc] = (pub, stream)
        if self.dataplane is not None:
            self.dataplane.add_stream(self, pub, stream)
        return pub, stream

    def _ingest(
        self,
        pub: Publication,
        stream: SourceStream,
        packet: bytes,
        seq: int,
        timestamp: int,
        now: float,
        is_rtx: bool,
    ) -> None:
        ext_seq = stream.unwrapper.unwrap(seq)
        self._account(pub, stream, len(packet), ext_seq, timestamp, now, is_rtx)
        stream.cache.put(packet, ext_seq, now)
        video = pub.video
        if video:
            offset = payload_offset(packet)
            if offset >= len(packet) - (packet[-1] if packet[0] & 0x20 else 0):
                return  # padding only: nothing to forward
            info = describe_packet(pub.codec.name.lower(), packet, offset)
            if info.is_keyframe and info.is_start_of_frame:
                stream.last_keyframe_at = now
        else:
            info = AUDIO_INFO
            if self._level_id and self.on_audio_level is not None and not is_rtx:
                raw = find_extension(packet, self._level_id)
                if raw is not None and len(raw) == 1:
                    level = parse_audio_level(raw)
                    self.on_audio_level(self.participant_id, level.level, level.voice_activity, now)
        abs_time = abs_send_time_from_seconds(now)
        forwarded = 0
        out_bytes = 0
        for sub, transport in pub.fanout:
            n = sub.forward(stream, packet, ext_seq, timestamp, info, now, abs_time)
            if n and transport.send_rtp(bytes(memoryview(sub.buf)[:n])):
                forwarded += 1
                out_bytes += n
        if not forwarded:
            return
        self._count_forwarded(video, forwarded, out_bytes)
        stats = self.stats
        if stats is not None and stats.clock is not None and not stream.packets & stats.sample_mask:
            stats.forward_latency.observe(stats.clock() - now)

    def _account(
        self,
        pub: Publication,
        stream: SourceStream,
        size: int,
        ext_seq: int,
        timestamp: int,
        now: float,
        is_rtx: bool,
    ) -> None:
        """Receive bookkeeping of one ingested packet (statistics, NACKs, meter, counters)."""
        stream.packets += 1
        stream.last_packet_at = now
        if not is_rtx:  # probes and repairs are no part of what the layer costs
            stream.meter.add(size, now)
        stream.stats.on_packet(ext_seq, timestamp, now, is_rtx)
        if stream.nacks is not None:
            stream.nacks.on_packet(ext_seq, now, is_rtx)
        counters = self.counters
        if pub.video:
            counters.video_in += 1
            counters.video_in_bytes += size
        else:
            counters.audio_in += 1
            counters.audio_in_bytes += size

    def _count_forwarded(self, video: bool, forwarded: int, out_bytes: int) -> None:
        counters = self.counters
        counters.rtp_forwarded += forwarded
        if video:
            counters.video_out += forwarded
            counters.video_out_bytes += out_bytes
        else:
            counters.audio_out += forwarded
            counters.audio_out_bytes += out_bytes

    def replay(self, pub: Publication, stream: SourceStream, record: LogRecord) -> None:
        """What :meth:`on_rtp` would have recorded for a packet the data plane forwarded."""
        _, flags, ext_seq, timestamp, now, size, twcc, level, forwarded, out_bytes = record
        counters = self.counters
        if flags & F_HEADER_BAD:
            counters.malformed += 1
            return
        counters.rtp_in += 1
        if flags & F_TWCC:
            self._twcc.on_packet(twcc, stream.ssrc, now)
        if flags & F_MALFORMED_EXT:
            counters.malformed += 1
            return
        self._account(pub, stream, size, ext_seq, timestamp, now, False)
        if flags & F_MALFORMED_PAYLOAD:
            counters.malformed += 1
            return
        if flags & F_PADDING:
            return
        if flags & F_KEYFRAME:
            stream.last_keyframe_at = now
        if flags & F_LEVEL and self.on_audio_level is not None:
            self.on_audio_level(self.participant_id, level, bool(flags & F_VAD), now)
        if forwarded:
            self._count_forwarded(pub.video, forwarded, out_bytes)

    def on_rtcp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        """RTCP from this participant: feedback about what it receives and reports."""
        try:
            items = parse_compound(packet)
        except ParseError:
            self.counters.malformed += 1
            return
        for item in items:
            if isinstance(item, SenderReport):
                entry = self._by_ssrc.get(item.ssrc)
                if entry is not None:
                    entry[1].stats.on_sender_report(item.ntp_timestamp, now)
                self._report_blocks(item.reports, now)
            elif isinstance(item, ReceiverReport):
                self._report_blocks(item.reports, now)
            elif isinstance(item, Nack):
                self._on_nack(item, now)
            elif isinstance(item, Pli):
                self.counters.pli_in += 1
                self._keyframe_wanted(item.media_ssrc, now)
            elif isinstance(item, Fir):
                self.counters.fir_in += 1
                for fir in item.entries:
                    self._keyframe_wanted(fir.ssrc, now)
            elif isinstance(item, Remb):
                self.remb_bps = item.bitrate
                history = self._remb_history
                history.append((now, item.bitrate))
                while history and now - history[0][0] > REMB_WINDOW:
                    history.pop(0)

    def on_state(self, transport: WebRtcTransport, state: TransportState, now: float) -> None:
        """Report transport state changes to the room (it frees everything on close)."""
        if self.on_state_change is not None:
            self.on_state_change(self, state)
        if self.dataplane is not None:
            self.dataplane.sync(transport)
        if transport.finished:
            self.retire()

    def retire(self) -> None:
        """Fold this peer's counters (and its live streams') into ``stats.retired``, once."""
        if self.retired:
            return
        self.retired = True
        for publication in self.publications.values():
            self._fold_publication(publication)
        for subscription in self.subscriptions.values():
            self._fold_subscription(subscription)
        if self.stats is not None:
            self.stats.retired.add(self.counters)

    def _report_blocks(self, blocks: list[ReportBlock], now: float) -> None:
        for block in blocks:
            sub = self._sub_by_ssrc.get(block.ssrc)
            if sub is not None and block.ssrc == sub.out_ssrc:
                sub.send_stats.on_report_block(block, now)
                rtt = sub.send_stats.rtt
                if rtt is not None:
                    sub.throttle.update_rtt(rtt)

    def _on_nack(self, nack: Nack, now: float) -> None:
        sub = self._sub_by_ssrc.get(nack.media_ssrc)
        if sub is None:
            return
        self.counters.nacks_in += 1
        abs_time = abs_send_time_from_seconds(now)
        for packet in sub.retransmit(nack.lost_seqs(), now, abs_time):
            if self.transport.send_rtp(packet):
                self.counters.retransmits += 1

    def _keyframe_wanted(self, ssrc: int, now: float) -> None:
        """A subscriber's PLI/FIR: one request upstream for the layer it receives."""
        sub = self._sub_by_ssrc.get(ssrc)
        if sub is None or sub.selector is None:
            return
        self.counters.keyframe_requests_in += 1
        layer = sub.selector.current.spatial
        if layer is None:
            layer = sub.selector.target.spatial
        stream = sub.publication.layers.get(layer) if layer is not None else None
        if stream is not None:
            sub.publication.request_keyframe(stream, now)

    # -- periodic work ------------------------------------------------------------------------

    def request_keyframe(self, stream: SourceStream, now: float) -> bool:
        """Send a PLI for ``stream`` to this (publishing) peer, at most once per interval."""
        if not stream.should_request_keyframe(now):
            return False
        self.counters.keyframe_requests_out += 1
        return self.transport.send_rtcp(Pli(self.rtcp_ssrc, stream.ssrc).serialize())

    def poll(self, now: float, wallclock: float) -> None:
        """Timers: TWCC, NACKs, pending-switch keyframes, reports and allocation."""
        if not self.transport.has_srtp:
            return
        send = self.transport.send_rtcp
        for feedback in self._twcc.poll(now):
            send(feedback)
            self.counters.twcc_out += 1
        rtt = self._rtt()
        for pub in self.publications.values():
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
                    self.request_keyframe(stream, now)
        for sub in self.subscriptions.values():
            selector = sub.selector
            if selector is None:
                continue
            selector.set_available(sub.publication.active_layers(now) or frozenset({0}))
            layer = selector.keyframe_needed(now)
            wanted = sub.publication.layers.get(layer) if layer is not None else None
            if wanted is not None:
                sub.publication.request_keyframe(wanted, now)
        if now - self._last_allocation >= ALLOCATION_INTERVAL:
            self._last_allocation = now
            self._allocate(now)
        if now - self._last_report >= REPORT_INTERVAL:
            self._last_report = now
            self._send_reports(now, wallclock)

    def _rtt(self) -> float:
        rtts = [s.send_stats.rtt for s in self.subscriptions.values() if s.send_stats.rtt]
        return min(rtts) if rtts else 0.05

    def _send_reports(self, now: float, wallclock: float) -> None:
        blocks = [
            block
            for pub in self.publications.values()
            for stream in pub.streams.values()
            if (block := stream.stats.report_block(now)) is not None
        ][:31]
        reports: list[bytes] = []
        for sub in self.subscriptions.values():
            sr = sub.send_stats.sender_report(now, wallclock)
            if sr is not None:
                if blocks:
                    sr.reports = blocks
                    blocks = []
                reports.append(sr.serialize())
        if blocks:
            reports.append(ReceiverReport(self.rtcp_ssrc, blocks).serialize())
        for report in reports:
            self.transport.send_rtcp(report)
            self.counters.reports_out += 1

    def _allocate(self, now: float) -> None:
        """Move each video subscription's target layer to what the bandwidth allows.

        A receiver's REMB estimate only grows with what it receives (it cannot see capacity
        above that), so it is used as a budget only when it signals congestion: a drop below
        ``REMB_DROP`` of its recent peak. Otherwise every subscription aims at the best layer
        its preferences allow. Under a budget, layers are handed out lowest first, then
        upgraded while the measured layer bitrates fit. A subscription whose receiver reports
        heavy loss is held one layer below what it has.
        """
        subs = [s for s in self.subscriptions.values() if s.selector is not None]
        if not subs:
            return
        budget: float | None = None
        history = [bps for t, bps in self._remb_history if now - t <= REMB_WINDOW]
        if self.remb_bps is not None and history and self.remb_bps < REMB_DROP * max(history):
            budget = self.remb_bps * 0.95
        plan: dict[Subscription, int] = {}
        for sub in subs:
            top = sub.publication.num_layers - 1
            if sub.max_spatial is not None:
                top = min(top, sub.max_spatial)
            plan[sub] = 0 if budget is not None else top
        if budget is not None:
            spent = sum(_layer_bps(s, 0, now) for s in subs)
            upgraded = True
            while upgraded:
                upgraded = False
                for sub in subs:
                    top = sub.publication.num_layers - 1
                    if sub.max_spatial is not None:
                        top = min(top, sub.max_spatial)
                    layer = plan[sub]
                    if layer >= top:
                        continue
                    extra = _layer_bps(sub, layer + 1, now) - _layer_bps(sub, layer, now)
                    if spent + extra <= budget:
                        plan[sub] = layer + 1
                        spent += extra
                        upgraded = True
        for sub, layer in plan.items():
            selector = sub.selector
            assert selector is not None
            current = selector.current.spatial
            if sub.send_stats.loss > LOSS_STEP_DOWN and current is not None:
                layer = min(layer, max(0, current - 1))
            selector.set_target(layer, None)


def _layer_bps(sub: Subscription, layer: int, now: float) -> int:
    stream = sub.publication.layers.get(layer)
    return stream.meter.bps(now) if stream is not None else 0
