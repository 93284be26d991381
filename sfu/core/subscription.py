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
from dataclasses import dataclass
from typing import Final

from sfu import _fastpath
from sfu.codecs.vp8 import Vp8Descriptor
from sfu.core.header_extensions import ExtensionRewriter
from sfu.core.layers import Decision, SimulcastSelector
from sfu.core.munger import RtpMunger
from sfu.core.publication import Publication, SourceStream
from sfu.core.retransmission import RetransmissionThrottle
from sfu.core.rtcp_stats import SendStats
from sfu.core.vp8_munger import Vp8Munger, Vp8Translation
from sfu.packet.errors import ParseError
from sfu.packet.rtp import payload_offset

__all__ = ["HISTORY", "PacketInfo", "Subscription"]

#: Outgoing packets remembered for NACKs (a power of two).
HISTORY: Final = 1024
_MASK: Final = HISTORY - 1


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """What ingest learned about one video packet from its payload descriptor."""

    is_keyframe: bool
    is_start_of_frame: bool
    temporal_id: int | None = None
    layer_sync: bool = True
    vp8: Vp8Descriptor | None = None
    #: Where the payload starts; the rewritten copy has the same header layout.
    offset: int = 0


AUDIO_INFO: Final = PacketInfo(False, True)


class Subscription:
    """Forwards one publication to one subscriber."""

    __slots__ = (
        "_h_in",
        "_h_out",
        "_h_stream",
        "_h_ts",
        "_h_vp8",
        "_rtx_seq",
        "buf",
        "extensions",
        "forwarded",
        "held",
        "id",
        "max_spatial",
        "max_temporal",
        "mid",
        "munger",
        "out_ssrc",
        "paused",
        "payload_type",
        "publication",
        "retransmit_misses",
        "retransmitted",
        "rtx_payload_type",
        "rtx_ssrc",
        "selector",
        "send_stats",
        "subscriber_id",
        "throttle",
        "vp8",
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
    ) -> None:
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
        self.munger = RtpMunger(out_ssrc, pt_map, clock_rate=clock_rate)
        self.selector = SimulcastSelector(publication.num_layers) if publication.video else None
        self.vp8 = Vp8Munger() if publication.codec.name.lower() == "vp8" else None
        self.extensions = ExtensionRewriter(publication.extensions, extensions)
        self.send_stats = SendStats(out_ssrc, clock_rate)
        self.throttle = RetransmissionThrottle()
        self.buf = bytearray(1500)
        self.paused = False
        #: Forwarding stopped whatever the subscriber prefers (the publication is force-muted).
        self.held = False
        self.max_spatial: int | None = None
        self.max_temporal: int | None = None
        self.forwarded = 0
        self.retransmitted = 0
        self.retransmit_misses = 0
        self._rtx_seq = secrets.randbits(16)  # random start, RFC 3550 §5.1
        self._h_out: list[int] = [-1] * HISTORY
        self._h_in: list[int] = [0] * HISTORY
        self._h_ts: list[int] = [0] * HISTORY
        self._h_stream: list[SourceStream | None] = [None] * HISTORY
        self._h_vp8: list[Vp8Translation | None] = [None] * HISTORY

    # -- control ------------------------------------------------------------------------------

    def set_preferences(
        self, max_spatial: int | None, max_temporal: int | None, paused: bool
    ) -> None:
        """The subscriber's caps and visibility (applied at the next keyframe for layers)."""
        self.max_spatial, self.max_temporal, self.paused = max_spatial, max_temporal, paused
        if self.selector is not None:
            self.selector.set_preferences(max_spatial, max_temporal, paused or self.held)

    def set_held(self, held: bool) -> None:
        """Stop (or resume) forwarding regardless of the subscriber's own preferences."""
        self.held = held
        if self.selector is not None:
            self.selector.set_preferences(self.max_spatial, self.max_temporal, self.paused or held)

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
        if selector is None:
            if self.paused or self.held:
                munger.drop(ext_seq)
                return 0
        else:
            decision = selector.decide(
                stream.layer,
                info.temporal_id,
                info.is_keyframe,
                info.is_start_of_frame,
                now,
                layer_sync=info.layer_sync,
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
        buf = self.buf
        n = munger.munge(packet, ext_seq, now, buf)
        if n <= 0:
            return 0
        translation: Vp8Translation | None = None
        if self.vp8 is not None and info.vp8 is not None:
            translation = self.vp8.translate(info.vp8, stream.ssrc)
            if translation is None:
                return 0
            Vp8Munger.apply(buf, info.offset, translation)
        self.extensions.apply(buf, n, abs_send_time)
        out_seq = munger.last_out_seq
        if out_seq is not None:
            slot = out_seq & _MASK
            self._h_out[slot] = out_seq & 0xFFFF
            self._h_in[slot] = ext_seq
            self._h_ts[slot] = (buf[4] << 24) | (buf[5] << 16) | (buf[6] << 8) | buf[7]
            self._h_stream[slot] = stream
            self._h_vp8[slot] = translation
            self.send_stats.on_packet(self._h_ts[slot], n, now)
        self.forwarded += 1
        return n

    def retransmit(self, seqs: list[int], now: float, abs_send_time: int) -> list[bytes]:
        """Rebuild the packets a subscriber NACKed (16-bit outgoing seqs) that are still cached."""
        out: list[bytes] = []
        scratch = bytearray(1500)
        for seq in seqs:
            slot = seq & _MASK
            stream = self._h_stream[slot]
            if self._h_out[slot] != seq or stream is None:
                self.retransmit_misses += 1
                continue
            if not self.throttle.allow(seq, now):
                continue
            cached = stream.cache.get(self._h_in[slot], now)
            if cached is None:
                self.retransmit_misses += 1
                continue
            n = _fastpath.rewrite_rtp(
                cached,
                scratch,
                self.out_ssrc,
                seq,
                self._h_ts[slot],
                self.payload_type,
                _fastpath.KEEP_MARKER,
            )
            if n <= 0:
                continue
            try:
                offset = payload_offset(scratch, n)
            except ParseError:  # pragma: no cover - the kernel validated the framing
                continue
            translation = self._h_vp8[slot]
            if translation is not None:
                Vp8Munger.apply(scratch, offset, translation)
            self.extensions.apply(scratch, n, abs_send_time)
            out.append(self._wrap_rtx(scratch, n, offset, seq))
            self.retransmitted += 1
        return out

    def _wrap_rtx(self, buf: bytearray, n: int, offset: int, seq: int) -> bytes:
        """RFC 4588 §4: the RTX stream's header, then the original sequence number, then the
        original payload; without RTX the original packet goes out again."""
        if self.rtx_ssrc is None or self.rtx_payload_type is None:
            return bytes(buf[:n])
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        header = bytearray(buf[:offset])
        header[1] = (buf[1] & 0x80) | self.rtx_payload_type
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
