"""The ingest side of one participant: what it publishes, routed to every subscription.

Per RTP packet (synchronous, no ``await``): the :class:`~sfu.core.binder.Binder` names the
source stream (binding a new SSRC on first sight), :func:`sfu._fastpath.ingest.ingest` (the
same function the reference forwarder runs) unwraps, caches, describes and fans the packet out
to the publication's subscriptions, and :meth:`Router.replay` does the receive bookkeeping from
the record ingest returns: RTCP receive statistics, NACK and TWCC feedback state, the bitrate
meter, keyframe times, audio levels and counters. The data plane replays its own records of
the packets it forwarded through the same method, so the two paths account a packet alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from sfu._fastpath.ingest import ingest
from sfu._fastpath.values import (
    F_HEADER_BAD,
    F_KEYFRAME,
    F_LEVEL,
    F_MALFORMED_EXT,
    F_MALFORMED_PAYLOAD,
    F_PADDING,
    F_REASON_SHIFT,
    F_RTX,
    F_STRUCTURE,
    F_TWCC,
    F_VAD,
    LogRecord,
)
from sfu.core.binder import Binder
from sfu.core.counters import PeerCounters, RouterStats
from sfu.core.publication import Publication, SourceStream
from sfu.core.sender import Sender
from sfu.core.subscription import Subscription
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.errors import ParseError
from sfu.packet.extensions import parse_transport_cc_seq
from sfu.packet.rtp import (
    RTP_DEFECT_HEADER,
    RTP_DEFECT_NO_PAYLOAD,
    RTP_DEFECT_NONE,
    Extensions,
    peek_rtp_header,
    rtp_defect,
)
from sfu.packet.rtx import restore_rtx

__all__ = ["AudioLevelSink", "Router"]

#: (participant id, level in -dBov, voice activity or None, now): RFC 6464 levels.
AudioLevelSink = Callable[[str, int, bool | None, float], None]


#: The flags :meth:`Router.replay_records` handles inline; a record with any other bit (a
#: refusal, a malformed or padding packet, a repair, a scalability structure) takes
#: :meth:`Router.replay`, which handles every case.
_INLINE_FLAGS: Final = F_TWCC | F_KEYFRAME | F_LEVEL | F_VAD


def _send(sub: Subscription, sender: Sender, n: int) -> bool:
    return sender.send_rtp(bytes(memoryview(sub.buf)[:n]))


def _ready(sender: Sender) -> bool:
    return sender.has_srtp


class Router:
    """Binds, ingests and routes one participant's published RTP; replays ingest records."""

    def __init__(
        self,
        participant_id: str,
        binder: Binder,
        twcc: TwccRecorder,
        counters: PeerCounters,
        *,
        stats: RouterStats | None = None,
    ) -> None:
        self.participant_id = participant_id
        self.binder = binder
        self.twcc = twcc
        self.counters = counters
        self.stats = stats
        self.on_audio_level: AudioLevelSink | None = None
        self.twcc_id = 0
        self.level_id = 0

    def on_rtp(self, packet: bytes, *, now: float) -> None:
        """One decrypted RTP packet from the participant (never raises on bad input)."""
        header = peek_rtp_header(packet)
        if header is None:
            self.counters.refuse(RTP_DEFECT_HEADER)
            return
        ssrc, _, _, payload_type = header
        binder = self.binder
        entry = binder.media(ssrc)
        if entry is not None:
            self._ingest(entry[0], entry[1], packet, now=now, rtx=False)
            return
        defect = rtp_defect(packet)
        if defect != RTP_DEFECT_NONE and defect != RTP_DEFECT_NO_PAYLOAD:
            # Nothing binds or repairs from a malformed header (a bare one may be a probe).
            self.counters.rtp_in += 1
            self.counters.refuse(defect)
            return
        extensions = Extensions(packet)  # one pass for naming and TWCC
        repaired = binder.rtx(ssrc)
        if repaired is None:
            try:
                binding = binder.bind(ssrc, payload_type, extensions)
            except ParseError:
                self.counters.rtp_in += 1
                self.counters.malformed += 1
                return
            if binding is None:
                self._arrival(extensions, ssrc, now=now)
                self.counters.unknown_ssrc += 1
                return
            if not binding.rtx:
                self._ingest(binding.publication, binding.stream, packet, now=now, rtx=False)
                return
            repaired = (binding.publication, binding.stream)
        if self._arrival(extensions, ssrc, now=now):
            self._repair(repaired[0], repaired[1], packet, now=now)

    def _arrival(self, extensions: Extensions, ssrc: int, *, now: float) -> bool:
        """Count a packet that is not ingested as media and record its transport-wide CC
        arrival (every packet on the transport counts there, RFC draft-holmer §2)."""
        self.counters.rtp_in += 1
        if not self.twcc_id:
            return True
        try:
            raw = extensions.get(self.twcc_id)
        except ParseError:
            self.counters.malformed += 1
            return False
        if raw is not None and len(raw) == 2:
            self.twcc.on_packet(parse_transport_cc_seq(raw), ssrc, now)
        return True

    def _repair(self, pub: Publication, stream: SourceStream, packet: bytes, *, now: float) -> None:
        """An RTX packet (RFC 4588): ingest the original it carries."""
        try:
            apt = pub.rtx_apt.get(packet[1] & 0x7F, pub.codec.payload_type)
            original = restore_rtx(packet, stream.ssrc, apt)
        except ParseError:
            self.counters.malformed += 1
            return
        if original is None:
            self.counters.padding_in += 1  # bandwidth probing padding: TWCC already counted it
            return
        self.counters.rtx_in += 1
        self._ingest(pub, stream, original, now=now, rtx=True)

    def _ingest(
        self, pub: Publication, stream: SourceStream, packet: bytes, *, now: float, rtx: bool
    ) -> None:
        record = ingest(
            -1,
            pub.stream_kind,
            stream,
            pub.fanout,
            packet,
            now=now,
            # A repair's arrival was recorded from the RTX packet itself.
            twcc_id=0 if rtx else self.twcc_id,
            level_id=self.level_id,
            emit=_send,
            ready=_ready,
            rtx=rtx,
        )
        self.replay(pub, stream, record)
        stats = self.stats
        if (
            record[8]
            and stats is not None
            and stats.clock is not None
            and not stream.packets & stats.sample_mask
        ):
            stats.forward_latency.observe(stats.clock() - now)

    def replay(self, pub: Publication, stream: SourceStream, record: LogRecord) -> None:
        """The receive bookkeeping of one ingested packet, from its ingest record."""
        _, flags, ext_seq, timestamp, now, size, twcc, level, forwarded, out_bytes = record
        counters = self.counters
        refused = flags >> F_REASON_SHIFT
        if refused:
            counters.refuse(refused)
        if flags & F_HEADER_BAD:
            return
        rtx = bool(flags & F_RTX)
        if not rtx:  # a repair's arrival was counted when its RTX packet came in
            counters.rtp_in += 1
            if flags & F_TWCC:
                self.twcc.on_packet(twcc, stream.ssrc, now)
        if flags & F_MALFORMED_EXT:
            return
        self._account(pub, stream, size, ext_seq, timestamp, now=now, rtx=rtx)
        if flags & F_MALFORMED_PAYLOAD:
            return
        if flags & F_PADDING:
            return
        if flags & F_KEYFRAME:
            stream.last_keyframe_at = now
            if ext_seq > stream.last_keyframe_seq:
                stream.last_keyframe_seq = ext_seq
        if flags & F_STRUCTURE:
            _learn_structure(pub, stream, ext_seq, now)
        if flags & F_LEVEL and self.on_audio_level is not None:
            self.on_audio_level(self.participant_id, level, bool(flags & F_VAD), now)
        if forwarded:
            counters.rtp_forwarded += forwarded
            if pub.video:
                counters.video_out += forwarded
                counters.video_out_bytes += out_bytes
            else:
                counters.audio_out += forwarded
                counters.audio_out_bytes += out_bytes

    def replay_records(
        self,
        records: Sequence[LogRecord],
        streams: Mapping[int, tuple[Any, Publication, SourceStream]],
    ) -> None:
        """:meth:`replay` of many records of this participant's streams, in their order.

        ``streams`` maps each record's stream handle to ``(peer, publication, stream)``. The
        state is exactly what :meth:`replay` of each record in turn leaves; the common case
        (a well-formed media packet) is done inline, with the counters summed once per call,
        because the data plane replays every packet it forwarded (the per-record calls and
        counter updates were the larger part of the replay's cost at meeting loads).
        """
        rtp_in = video_in = video_in_bytes = audio_in = audio_in_bytes = 0
        forwarded_sum = video_out = video_out_bytes = audio_out = audio_out_bytes = 0
        twcc_on_packet = self.twcc.on_packet
        on_level = self.on_audio_level
        participant_id = self.participant_id
        for record in records:
            _, pub, stream = streams[record[0]]
            flags = record[1]
            if flags & ~_INLINE_FLAGS:
                self.replay(pub, stream, record)
                continue
            _, _, ext_seq, timestamp, now, size, twcc, level, forwarded, out_bytes = record
            rtp_in += 1
            if flags & F_TWCC:
                twcc_on_packet(twcc, stream.ssrc, now)
            # _account(), not a repair:
            stream.packets += 1
            stream.last_packet_at = now
            stream.meter.add(size, now)
            stream.stats.on_packet(ext_seq, timestamp, now, False)
            nacks = stream.nacks
            if nacks is not None:
                nacks.on_packet(ext_seq, now, False)
            video = pub.kind == "video"
            if video:
                video_in += 1
                video_in_bytes += size
            else:
                audio_in += 1
                audio_in_bytes += size
            if flags & F_KEYFRAME:
                stream.last_keyframe_at = now
                if ext_seq > stream.last_keyframe_seq:
                    stream.last_keyframe_seq = ext_seq
            if flags & F_LEVEL and on_level is not None:
                on_level(participant_id, level, bool(flags & F_VAD), now)
            if forwarded:
                forwarded_sum += forwarded
                if video:
                    video_out += forwarded
                    video_out_bytes += out_bytes
                else:
                    audio_out += forwarded
                    audio_out_bytes += out_bytes
        counters = self.counters
        counters.rtp_in += rtp_in
        counters.video_in += video_in
        counters.video_in_bytes += video_in_bytes
        counters.audio_in += audio_in
        counters.audio_in_bytes += audio_in_bytes
        counters.rtp_forwarded += forwarded_sum
        counters.video_out += video_out
        counters.video_out_bytes += video_out_bytes
        counters.audio_out += audio_out
        counters.audio_out_bytes += audio_out_bytes

    def _account(
        self,
        pub: Publication,
        stream: SourceStream,
        size: int,
        ext_seq: int,
        timestamp: int,
        *,
        now: float,
        rtx: bool,
    ) -> None:
        """Receive statistics, NACK state, meter and counters of one ingested packet."""
        stream.packets += 1
        stream.last_packet_at = now
        if not rtx:  # probes and repairs are no part of what the layer costs
            stream.meter.add(size, now)
        stream.stats.on_packet(ext_seq, timestamp, now, rtx)
        if stream.nacks is not None:
            stream.nacks.on_packet(ext_seq, now, rtx)
        counters = self.counters
        if pub.video:
            counters.video_in += 1
            counters.video_in_bytes += size
        else:
            counters.audio_in += 1
            counters.audio_in_bytes += size


def _learn_structure(pub: Publication, stream: SourceStream, ext_seq: int, now: float) -> None:
    """Hand a packet with a scalability structure (still in the retransmission cache, read
    without counting as a subscriber's hit) to the publication, which learns its layers."""
    cache = stream.cache
    hits, misses = cache.hits, cache.misses
    try:
        packet = cache.get(ext_seq, now)
    finally:
        cache.hits, cache.misses = hits, misses
    if packet is not None:
        pub.learn_structure(packet)
