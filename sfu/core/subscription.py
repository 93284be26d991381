"""One subscriber's view of one publication: layer choice, rewriting, retransmission.

The subscriber sees one continuous RTP stream on its own SSRC whatever happens underneath
(layer switches, temporal layers filtered, pauses). Per packet, :meth:`Subscription.forward`
decides (the layer selector), then rewrites (the munger for sequence number and timestamp,
the VP8 munger for picture id / TL0PICIDX / KEYIDX, the extension rewriter for header-extension
ids) into the subscription's own buffer; the caller protects and sends it. Only RTP headers,
header extensions and codec payload descriptors are read, so end-to-end encrypted payloads are
forwarded unchanged.

A NACK from the subscriber names outgoing sequence numbers; a small history maps each back to
the source stream and incoming sequence number, whose packet the publication's retransmission
cache still holds, and the packet is rebuilt exactly as it was first sent (RFC 4588 RTX when
negotiated, else the original packet again).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, cast

from sfu import _fastpath
from sfu._fastpath.values import (
    AUDIO_INFO,
    AV1,
    MAX_SPATIAL_LAYERS,
    Decision,
    HistoryEntry,
    PacketInfo,
    Vp8Translation,
)
from sfu.codecs.av1 import element_offset
from sfu.codecs.vp9 import parse_vp9, rewrite_vp9_descriptor
from sfu.core.publication import Publication, SourceStream
from sfu.core.retransmission import RetransmissionBudget, RetransmissionThrottle
from sfu.core.route_state import HISTORY
from sfu.core.rtcp_stats import SendStats
from sfu.core.vp9_munger import Vp9Pictures
from sfu.packet.errors import ParseError
from sfu.packet.rtp import payload_offset

if TYPE_CHECKING:
    from sfu.core.kernels import (
        ExtensionRewriter,
        Kernels,
        RouteState,
        RtpMunger,
        SendHistory,
        SimulcastSelector,
        SvcSelector,
        Vp8Munger,
    )

__all__ = [
    "AUDIO_INFO",
    "HISTORY",
    "MARKED_HISTORY",
    "PROBE_COPY_MIN_BYTES",
    "PROBE_LOOKBACK",
    "PacketInfo",
    "Subscription",
]

#: Markers an SVC subscription remembers having added (one per picture whose top layers it
#: drops): some 8 s at 30 fps, longer than a retransmission stays useful.
MARKED_HISTORY: Final = 256
#: A probe made of media copies (:meth:`Subscription.probe_copies`) copies from this many of
#: the newest outgoing packets: a few frames' worth, still in every source's cache.
PROBE_LOOKBACK: Final = 32
#: ... and only packets of at least this many bytes: a smaller copy costs more packets than
#: the padding it replaces would (255 bytes of padding plus the header).
PROBE_COPY_MIN_BYTES: Final = 300


class Subscription:
    """Forwards one publication to one subscriber, with per-packet objects from ``kernels``
    (which must be its publication's: the forwarder serves both with one kind)."""

    __slots__ = (
        "_av1",
        "_frame_offset",
        "_last_frame",
        "_marked",
        "_marked_next",
        "_rtx_seq",
        "buf",
        "extensions",
        "held",
        "id",
        "kernels",
        "max_spatial",
        "max_temporal",
        "mid",
        "munger",
        "out_ssrc",
        "paused",
        "payload_type",
        "pinned",
        "pt_map",
        "publication",
        "retransmit_dropped",
        "retransmit_misses",
        "retransmit_superseded",
        "retransmitted",
        "rtx_payload_type",
        "rtx_payload_types",
        "rtx_ssrc",
        "selector",
        "send_history",
        "send_stats",
        "state",
        "subscriber_id",
        "svc",
        "throttle",
        "vp8",
        "vp9",
    )

    def __init__(
        self,
        id: str,
        publication: Publication,
        subscriber_id: str,
        mid: str,
        *,
        out_ssrc: int,
        payload_type: int,
        extensions: dict[int, str],
        rtx_ssrc: int | None = None,
        rtx_payload_type: int | None = None,
        initial_seq: int | None = None,
        initial_ts: int | None = None,
        payload_types: Mapping[int, int] | None = None,
        rtx_payload_types: Mapping[int, int] | None = None,
        kernels: Kernels,
    ) -> None:
        """``initial_seq`` / ``initial_ts``: the first outgoing wire values (None: those of
        the first packet forwarded; see :class:`~sfu.core.munger.RtpMunger`).
        ``payload_types`` maps each of the publisher's payload types to the subscriber's (per
        codec; None: the publication's codec to ``payload_type``), ``rtx_payload_types`` each
        of the subscriber's to its RTX type (None: ``rtx_payload_type`` for all)."""
        if kernels is not publication.kernels:
            raise ValueError("a subscription must use its publication's kernels")
        self.kernels = kernels
        self.id = id
        self.publication = publication
        self.subscriber_id = subscriber_id
        self.mid = mid
        self.out_ssrc = out_ssrc
        self.payload_type = payload_type
        self.rtx_ssrc = rtx_ssrc if rtx_payload_type is not None else None
        self.rtx_payload_type = rtx_payload_type if rtx_ssrc is not None else None
        clock_rate = publication.codec.clock_rate
        pt_map = {publication.codec.payload_type: payload_type}
        if payload_types is not None:
            pt_map.update(payload_types)
        #: Publisher payload type -> subscriber payload type (what the munger writes).
        self.pt_map = pt_map
        #: Subscriber payload type -> its RTX payload type (RFC 4588 apt), for repairs.
        self.rtx_payload_types: dict[int, int] = dict(rtx_payload_types or {})
        self.munger: RtpMunger = kernels.RtpMunger(
            out_ssrc,
            pt_map,
            clock_rate=clock_rate,
            initial_seq=initial_seq,
            initial_ts=initial_ts,
        )
        #: One SVC stream carries every spatial layer (the selector picks layer frames in it).
        self.svc = publication.svc
        self.selector: SimulcastSelector | None = None
        if self.svc:
            self.selector = kernels.SvcSelector(MAX_SPATIAL_LAYERS)
        elif publication.video:
            self.selector = kernels.SimulcastSelector(publication.num_layers)
        self.vp8: Vp8Munger | None = (
            kernels.Vp8Munger() if publication.codec.name.lower() == "vp8" else None
        )
        #: VP9: picture id / TL0PICIDX continuity across source switches (vp9_munger.py).
        self.vp9: Vp9Pictures | None = (
            Vp9Pictures() if publication.codec.name.lower() == "vp9" else None
        )
        self.extensions: ExtensionRewriter = kernels.ExtensionRewriter(
            publication.extensions, extensions
        )
        #: Written per forwarded packet by the data plane (compiled or this class's forward).
        self.state: RouteState = kernels.RouteState()
        self.send_stats = SendStats(out_ssrc, clock_rate, self.state)
        self.throttle = RetransmissionThrottle()
        #: The subscriber transport's send history (set by its Peer before the first packet):
        #: every packet sent takes its next transport-wide sequence number. None: no stamping.
        self.send_history: SendHistory | None = None
        self.buf = bytearray(1500)
        self.paused = False
        #: Forwarding stopped whatever the subscriber prefers (the publication is force-muted).
        self.held = False
        self.max_spatial: int | None = None
        self.max_temporal: int | None = None
        #: The subscriber pinned this track: it outranks other cameras for bandwidth.
        self.pinned = False
        self.retransmitted = 0
        self.retransmit_misses = 0
        #: NACKed packets not resent: over the transport's budget, or older than a keyframe
        #: the subscriber was already sent (it cannot use them any more).
        self.retransmit_dropped = 0
        self.retransmit_superseded = 0
        self._rtx_seq = secrets.randbits(16)  # random start, RFC 3550 §5.1
        #: SVC: the outgoing sequence numbers that got a marker the publisher's packet lacked
        #: (a ring), so that a retransmission carries it again.
        self._marked = [-1] * MARKED_HISTORY if self.svc else []
        self._marked_next = 0
        #: AV1: the Dependency Descriptor's frame numbers are rewritten by a constant offset,
        #: chosen at each source switch so that the subscriber's numbering goes on from the
        #: last frame it got (a simulcast switch changes encoder); gaps within a source stay,
        #: since frame diffs (A.8.3.3) refer across them.
        self._av1 = publication.stream_kind == AV1
        self._frame_offset = 0
        self._last_frame = -1

    @property
    def forwarded(self) -> int:
        """Packets forwarded so far."""
        return self.state.forwarded

    # -- control ------------------------------------------------------------------------------

    def set_preferences(
        self, max_spatial: int | None, max_temporal: int | None, paused: bool
    ) -> None:
        """The subscriber's caps and visibility (applied at the next keyframe for layers)."""
        self.max_spatial, self.max_temporal, self.paused = max_spatial, max_temporal, paused
        self.state.blocked = paused or self.held
        if self.selector is not None:
            self.selector.set_preferences(max_spatial, max_temporal, paused or self.held)

    def set_held(self, held: bool) -> None:
        """Stop (or resume) forwarding regardless of the subscriber's own preferences."""
        self.held = held
        self.state.blocked = self.paused or held
        if self.selector is not None:
            self.selector.set_preferences(self.max_spatial, self.max_temporal, self.paused or held)

    def request_start_keyframe(self, now: float) -> bool:
        """Ask the publisher for a keyframe to start this (video) subscription on: the layer
        its selector can start from (the lowest when nothing is decided yet). Called once its
        transport can send: a keyframe that arrives before that cannot reach the subscriber,
        and a viewer that sends no PLI of its own would wait for the next periodic one."""
        publication = self.publication
        if not publication.video:
            return False
        selector = self.selector
        spatial = None if selector is None else selector.target.spatial
        stream = None if spatial is None else publication.layers.get(spatial)
        if stream is None:
            stream = publication.layers.get(0)
        if stream is None:
            return False
        return publication.request_keyframe(stream, now)

    # -- packets ------------------------------------------------------------------------------

    def forward(
        self,
        stream: SourceStream,
        packet: bytes,
        ext_seq: int,
        timestamp: int,
        info: PacketInfo,
        now: float,
        abs_send_time: int,
    ) -> int:
        """Rewrite ``packet`` into :attr:`buf`; returns its length, or 0 to send nothing."""
        selector = self.selector
        munger = self.munger
        state = self.state
        decision = Decision.FORWARD
        if selector is None:
            if state.blocked:
                munger.drop(ext_seq)
                return 0
        elif self.svc:
            return self._forward_svc(
                cast("SvcSelector", selector),
                stream,
                packet,
                ext_seq,
                timestamp,
                info,
                now,
                abs_send_time,
            )
        else:
            temporal, layer_sync = (
                _av1_temporal(selector, info) if self._av1 else (info.temporal_id, info.layer_sync)
            )
            decision = selector.decide(
                stream.layer,
                temporal,
                info.is_keyframe,
                info.is_start_of_frame,
                now,
                layer_sync=layer_sync,
            )
            if decision == Decision.DROP:
                if selector.current.spatial == stream.layer:
                    munger.drop(ext_seq)  # a filtered temporal layer leaves no hole
                    if self.vp8 is not None and info.vp8 is not None:
                        self.vp8.drop(info.vp8)
                return 0
            if decision == Decision.FORWARD_SWITCH:
                munger.switch_source(ext_seq, timestamp, now, ssrc=stream.ssrc)
                if self.vp8 is not None:
                    self.vp8.switch_source()
                if self.vp9 is not None:
                    self.vp9.switch_source()
        buf = self.buf
        n = munger.munge(packet, ext_seq, now, buf)
        if n <= 0:
            return 0
        frame = tl0 = -1
        if info.dd_offset >= 0:
            frame = self._rewrite_frame(buf, info, decision == Decision.FORWARD_SWITCH)
        elif self.vp9 is not None:
            frame, tl0 = self._rewrite_picture(self.vp9, buf, n, info.offset)
        translation: Vp8Translation | None = None
        if self.vp8 is not None and info.vp8 is not None:
            translation = self.vp8.translate(info.vp8, stream.ssrc)
            if translation is None:
                return 0
            self.vp8.apply(buf, info.offset, translation)
        history = self.send_history
        if history is None:
            self.extensions.apply(buf, n, abs_send_time)
        elif self.extensions.apply(buf, n, abs_send_time, history.next_seq):
            history.record(n, now, -1)
        out_seq = munger.last_out_seq
        if out_seq is not None:
            ts = (buf[4] << 24) | (buf[5] << 16) | (buf[6] << 8) | buf[7]
            if translation is None:
                # AV1 keeps the outgoing frame number where VP8 keeps its picture id.
                state.record(out_seq, ext_seq, ts, stream.layer, False, frame, tl0, -1)
            else:
                state.record(
                    out_seq,
                    ext_seq,
                    ts,
                    stream.layer,
                    True,
                    -1 if translation.picture_id is None else translation.picture_id,
                    -1 if translation.tl0picidx is None else translation.tl0picidx,
                    -1 if translation.keyidx is None else translation.keyidx,
                )
            state.on_packet(ts, n, now)
        state.forwarded += 1
        return n

    def _forward_svc(
        self,
        selector: SvcSelector,
        stream: SourceStream,
        packet: bytes,
        ext_seq: int,
        timestamp: int,
        info: PacketInfo,
        now: float,
        abs_send_time: int,
    ) -> int:
        """:meth:`forward` for an SVC stream: the selector picks layer frames within the one
        stream, every packet it drops leaves no outgoing hole, and the last packet of the
        highest spatial layer forwarded carries the marker (RFC 9628 §4.1: end of picture)."""
        munger = self.munger
        temporal, layer_sync = (
            _av1_temporal(selector, info) if self._av1 else (info.temporal_id, info.layer_sync)
        )
        decision = selector.decide(
            info.spatial_id,
            temporal,
            info.is_keyframe,
            info.is_start_of_frame,
            now,
            layer_sync=layer_sync,
            switch_point=info.switch_point,
        )
        if decision == Decision.DROP:
            munger.drop(ext_seq)
            return 0
        if decision == Decision.FORWARD_SWITCH:
            munger.switch_source(ext_seq, timestamp, now, ssrc=stream.ssrc)
            if self.vp9 is not None:
                self.vp9.switch_source()
        buf = self.buf
        n = munger.munge(packet, ext_seq, now, buf)
        if n <= 0:
            return 0
        if selector.marks(info.spatial_id, info.end_of_frame) and not buf[1] & 0x80:
            buf[1] |= 0x80
            self._marked[self._marked_next] = (buf[2] << 8) | buf[3]
            self._marked_next = (self._marked_next + 1) % MARKED_HISTORY
        frame = tl0 = -1
        if info.dd_offset >= 0:
            frame = self._rewrite_frame(buf, info, decision == Decision.FORWARD_SWITCH)
        elif self.vp9 is not None:
            frame, tl0 = self._rewrite_picture(self.vp9, buf, n, info.offset)
        history = self.send_history
        if history is None:
            self.extensions.apply(buf, n, abs_send_time)
        elif self.extensions.apply(buf, n, abs_send_time, history.next_seq):
            history.record(n, now, -1)
        state = self.state
        out_seq = munger.last_out_seq
        if out_seq is not None:
            ts = (buf[4] << 24) | (buf[5] << 16) | (buf[6] << 8) | buf[7]
            state.record(out_seq, ext_seq, ts, stream.layer, False, frame, tl0, -1)
            state.on_packet(ts, n, now)
        state.forwarded += 1
        return n

    @staticmethod
    def _rewrite_picture(
        pictures: Vp9Pictures, buf: bytearray, n: int, offset: int
    ) -> tuple[int, int]:
        """Write the subscriber's VP9 picture id and TL0PICIDX into the rewritten packet
        (RFC 9628 §4.2) and return them (-1: the descriptor lacks the field). A descriptor
        that does not parse is left as it is: ingest already judged the packet."""
        try:
            desc = parse_vp9(buf, offset, n)
        except ParseError:
            return -1, -1
        pid, tl0 = pictures.translate(desc.picture_id, desc.tl0picidx, wide=desc.picture_id_15bit)
        if pictures.rewrites:
            rewrite_vp9_descriptor(buf, offset, None if pid < 0 else pid, None if tl0 < 0 else tl0)
        return pid, tl0

    def _rewrite_frame(self, buf: bytearray, info: PacketInfo, switched: bool) -> int:
        """Write the subscriber's frame number into the rewritten packet's Dependency
        Descriptor (AV1 RTP spec A.8.2, bytes 1-2 of the element) and return it. At a source
        switch (always a key frame with its structure attached, so the subscriber learns the
        new templates with it) the offset is chosen to continue from the last frame sent."""
        last = self._last_frame
        if switched and last >= 0:
            self._frame_offset = (last + 1 - info.frame_number) & 0xFFFF
        out = (info.frame_number + self._frame_offset) & 0xFFFF
        if last < 0 or 0 < (out - last) & 0xFFFF < 0x8000:
            self._last_frame = out
        if self._frame_offset:
            pos = info.dd_offset
            buf[pos + 1] = out >> 8
            buf[pos + 2] = out & 0xFF
        return out

    def skip(self, stream: SourceStream, ext_seq: int) -> None:
        """Source packet ``ext_seq`` of ``stream`` carries nothing to forward (padding only):
        if this subscription forwards that stream now, its place leaves no outgoing hole."""
        selector = self.selector
        if selector is None or self.svc or selector.current.spatial == stream.layer:
            self.munger.drop(ext_seq)

    def retransmit(
        self,
        seqs: list[int],
        now: float,
        abs_send_time: int,
        budget: RetransmissionBudget | None = None,
        tags: list[int] | None = None,
        hold: float = 0.0,
    ) -> list[bytes]:
        """Rebuild the packets a subscriber NACKed (16-bit outgoing seqs) that are still cached
        and still useful, within the transport's ``budget`` (oldest first, as NACKed: a frame
        is decodable only once its earliest packets are there). ``tags`` receives, per packet
        returned, the transport-wide number it was stamped with (-1: none), which a pacer
        restamps on release; ``hold``: how long a resend waits in that pacer before it
        leaves (repeats of the NACK meanwhile are not answered again)."""
        out: list[bytes] = []
        scratch = bytearray(1500)
        for seq in seqs:
            entry = self.state.lookup(seq)
            stream = None if entry is None else self.publication.layers.get(entry.layer)
            if entry is None or stream is None:
                self.retransmit_misses += 1
                continue
            if entry.in_ext_seq < stream.last_keyframe_seq and self.publication.video:
                self.retransmit_superseded += 1  # a newer keyframe was forwarded after it
                continue
            selector = self.selector
            if selector is not None and selector.target.spatial is None:
                # Paused for bandwidth (or by its hints): the resume's keyframe supersedes
                # it, and resending into a link that cannot carry the lowest layer takes the
                # audio down.
                self.retransmit_superseded += 1
                continue
            if selector is not None and not self.svc and selector.current.spatial != entry.layer:
                # A simulcast layer this subscription no longer forwards: it switched at a
                # keyframe of another layer (or dropped this one to start again at one), and
                # the receiver decodes from that keyframe on. After a shed under congestion
                # these resends were what the receiver NACKed most: the old layer's packets
                # lost in the overrun, useless and into the same congested link.
                self.retransmit_superseded += 1
                continue
            if not self.throttle.allow(seq, now, hold):
                continue
            cached = stream.cache.get(entry.in_ext_seq, now)
            if cached is None:
                self.retransmit_misses += 1
                continue
            rebuilt = self._rebuild(seq, entry, stream, cached, scratch)
            if rebuilt is None:
                continue
            n, offset = rebuilt
            wire_bits = (n + (2 if self.rtx_ssrc is not None else 0)) * 8
            if budget is not None and not budget.allow(wire_bits, now):
                self.retransmit_dropped += 1
                continue
            history = self.send_history
            stamped = self.extensions.apply(
                scratch, n, abs_send_time, -1 if history is None else history.next_seq
            )
            packet = self._wrap_rtx(scratch, n, offset, seq)
            tag = -1
            if stamped and history is not None:
                history.record(len(packet), now, -1)
                tag = (history.packets - 1) & 0xFFFF
            if tags is not None:
                tags.append(tag)
            out.append(packet)
            self.retransmitted += 1
        return out

    def _rebuild(
        self,
        seq: int,
        entry: HistoryEntry,
        stream: SourceStream,
        cached: memoryview,
        scratch: bytearray,
    ) -> tuple[int, int] | None:
        """Outgoing packet ``seq`` as it was first sent, rebuilt into ``scratch`` from
        ``cached`` (the source's packet it was made from) with its header, picture ids and
        frame numbers as this subscriber saw them; returns (length, payload offset), or None
        when it cannot be rewritten."""
        # The format it was first sent in (the publisher may use several, RFC 3264 §6.1).
        out_pt = self.pt_map.get(cached[1] & 0x7F, self.payload_type)
        n = _fastpath.rewrite_rtp(
            cached,
            scratch,
            self.out_ssrc,
            seq,
            entry.timestamp,
            out_pt,
            _fastpath.KEEP_MARKER,
        )
        if n <= 0:
            return None
        try:
            offset = payload_offset(scratch, n)
        except ParseError:  # pragma: no cover - the kernel validated the framing
            return None
        if self.svc and seq in self._marked:
            scratch[1] |= 0x80
        if self._av1 and entry.picture_id >= 0 and stream.dependency is not None:
            _set_frame_number(scratch, n, stream.dependency.ext_id, entry.picture_id)
        elif self.vp9 is not None and (entry.picture_id >= 0 or entry.tl0picidx >= 0):
            # The picture id and TL0PICIDX it was first sent with (its source's offset).
            try:
                rewrite_vp9_descriptor(
                    scratch,
                    offset,
                    None if entry.picture_id < 0 else entry.picture_id,
                    None if entry.tl0picidx < 0 else entry.tl0picidx,
                )
            except ParseError:  # pragma: no cover - it was rewritten when first sent
                return None
        if entry.has_vp8:
            translation = Vp8Translation(
                None if entry.picture_id < 0 else entry.picture_id,
                None if entry.tl0picidx < 0 else entry.tl0picidx,
                None if entry.keyidx < 0 else entry.keyidx,
            )
            self.kernels.Vp8Munger.apply(scratch, offset, translation)
        return n, offset

    def probe_copies(
        self, size: int, min_packets: int, abs_send_time: int, now: float, cluster: int
    ) -> list[bytes]:
        """A bandwidth probe of at least ``size`` bytes and ``min_packets`` packets made of
        copies of the media this subscriber was sent last (RFC 4588 retransmissions of them on
        the RTX stream), each stamped with the next transport-wide number and recorded in the
        send history under probe ``cluster``. Empty when there is no RTX stream, send
        history or recent media large enough: the caller pads instead.

        A copy carries up to ~1,200 bytes where a padding-only packet carries 255, so a probe
        takes a quarter of the packets (libwebrtc probes with such "payload padding" too); the
        receiver discards the duplicates, and the copies are of the newest frames, so one that
        fills a gap the network left is useful rather than late."""
        history = self.send_history
        last = self.munger.last_out_seq
        selector = self.selector
        if self.rtx_ssrc is None or history is None or last is None:
            return []
        current = None if selector is None or self.svc else selector.current.spatial
        scratch = bytearray(1500)
        copies: list[tuple[int, bytes, int]] = []  # (seq, rebuilt packet, payload offset)
        for back in range(PROBE_LOOKBACK):
            seq = (last - back) & 0xFFFF
            entry = self.state.lookup(seq)
            stream = None if entry is None else self.publication.layers.get(entry.layer)
            if entry is None or stream is None or (current is not None and entry.layer != current):
                continue
            cached = stream.cache.get(entry.in_ext_seq, now)
            rebuilt = None if cached is None else self._rebuild(seq, entry, stream, cached, scratch)
            if rebuilt is not None and rebuilt[0] >= PROBE_COPY_MIN_BYTES:
                copies.append((seq, bytes(scratch[: rebuilt[0]]), rebuilt[1]))
        if not copies:
            return []
        out: list[bytes] = []
        sent = 0
        while sent < size or len(out) < min_packets:
            # Newest first, round again when the probe needs more than they hold.
            seq, original, offset = copies[len(out) % len(copies)]
            buf = bytearray(original)
            if not self.extensions.apply(buf, len(buf), abs_send_time, history.next_seq):
                return out  # no transport-wide element to stamp: the caller pads the rest
            packet = self._wrap_rtx(buf, len(buf), offset, seq)
            history.record(len(packet), now, cluster)
            out.append(packet)
            sent += len(packet)
        return out

    def padding(self, twcc_id: int, size: int, now: float, cluster: int) -> bytes | None:
        """A padding-only packet of ``size`` (1..255) padding bytes on the RTX stream (a
        bandwidth probe, RFC 3550 §5.1 padding, RFC 4588 stream), stamped with the next
        transport-wide sequence number under ``twcc_id`` (1..14) and recorded in the send
        history under probe ``cluster``. None without an RTX stream or a send history."""
        history = self.send_history
        if (
            self.rtx_ssrc is None
            or self.rtx_payload_type is None
            or history is None
            or not 0 < twcc_id < 15
            or not 0 < size < 256
        ):
            return None
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        seq = history.next_seq
        header = bytearray(20)
        header[0] = 0xB0  # V=2, P=1, X=1
        header[1] = self.rtx_payload_type
        header[2:4] = self._rtx_seq.to_bytes(2, "big")
        header[4:8] = (self.state.last_rtp_ts & 0xFFFFFFFF).to_bytes(4, "big")
        header[8:12] = self.rtx_ssrc.to_bytes(4, "big")
        header[12:16] = b"\xbe\xde\x00\x01"  # RFC 8285 one-byte block of one word
        header[16] = (twcc_id << 4) | 1
        header[17:19] = seq.to_bytes(2, "big")
        packet = bytes(header) + bytes(size - 1) + bytes([size])
        history.record(len(packet), now, cluster)
        return packet

    def _wrap_rtx(self, buf: bytearray, n: int, offset: int, seq: int) -> bytes:
        """RFC 4588 §4: the RTX stream's header, then the original sequence number, then the
        original payload; without RTX the original packet goes out again."""
        if self.rtx_ssrc is None or self.rtx_payload_type is None:
            return bytes(buf[:n])
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        header = bytearray(buf[:offset])
        rtx_pt = self.rtx_payload_types.get(buf[1] & 0x7F, self.rtx_payload_type)
        header[1] = (buf[1] & 0x80) | rtx_pt
        header[2] = self._rtx_seq >> 8
        header[3] = self._rtx_seq & 0xFF
        header[8:12] = self.rtx_ssrc.to_bytes(4, "big")
        return bytes(header) + seq.to_bytes(2, "big") + bytes(buf[offset:n])

    def describe(self) -> dict[str, object]:
        """Current state for the room protocol and debugging (no SSRCs)."""
        current = self.selector.current if self.selector is not None else None
        return {
            "track": self.publication.id,
            "spatial": None if current is None else current.spatial,
            "paused": self.paused,
        }


def _av1_temporal(selector: SimulcastSelector, info: PacketInfo) -> tuple[int | None, bool]:
    """The temporal id and sync flag to decide an AV1 packet with: a frame that is a switch
    point (DTI SWITCH) of a decode target of a higher temporal layer ``t``, within the
    target, is decided as a sync frame of layer ``t`` (so the selector climbs to ``t`` there;
    the frame itself, of a lower layer, is forwarded either way); any other as it is."""
    tid = info.temporal_id
    if tid is None or not info.is_start_of_frame or not info.temporal_switches >> (tid + 1):
        return tid, info.layer_sync
    current = selector.current.temporal
    if current is None:
        return tid, info.layer_sync
    target = selector.target.temporal
    best = -1
    mask = info.temporal_switches
    t = tid + 1
    while mask >> t:
        if mask >> t & 1 and current < t and (target is None or t <= target):
            best = t
        t += 1
    if best < 0:
        return tid, info.layer_sync
    return best, True


def _set_frame_number(buf: bytearray, length: int, ext_id: int, frame: int) -> None:
    """Write ``frame`` into the Dependency Descriptor of the packet ``buf[:length]``."""
    try:
        pos, size = element_offset(memoryview(buf)[:length], ext_id)
    except ParseError:  # pragma: no cover - it parsed when first forwarded
        return
    if pos >= 0 and size >= 3:
        buf[pos + 1] = frame >> 8
        buf[pos + 2] = frame & 0xFF
