"""Value types and constants shared by the kernels and the control plane that drives them.

The compiled kernels and their pure-Python references (most of those in ``sfu.core``) agree
on these (``_forward.pyx`` repeats the flag values as C enums, the ``.pxd`` files the layer
and window sizes); the control plane reads them. This module imports only
the layers below ``_fastpath`` (packet, codecs), so every kernel and ``core`` can use it
without an import pointing up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

from sfu.codecs.vp8 import Vp8Descriptor
from sfu.packet.rtp import RTP_DEFECTS

__all__ = [
    "AUDIO",
    "AUDIO_INFO",
    "AV1",
    "CACHE_CAPACITY",
    "CACHE_MAX_AGE",
    "CACHE_MAX_SIZE",
    "DROP_DROPPED",
    "DROP_DUPLICATE",
    "DROP_PRE_SWITCH",
    "DROP_TOO_OLD",
    "FRAMED_MARK",
    "F_HEADER_BAD",
    "F_KEYFRAME",
    "F_LEVEL",
    "F_MALFORMED_EXT",
    "F_MALFORMED_PAYLOAD",
    "F_PADDING",
    "F_REASON_SHIFT",
    "F_RTX",
    "F_STRUCTURE",
    "F_TWCC",
    "F_VAD",
    "H264",
    "MAX_SPATIAL_LAYERS",
    "OTHER_VIDEO",
    "REFUSAL_REASONS",
    "REFUSED_DESCRIPTOR",
    "REFUSED_PAYLOAD_TYPE",
    "REORDER_WINDOW",
    "REWIND_LIMIT",
    "VP8",
    "VP9",
    "Decision",
    "HistoryEntry",
    "LayerPair",
    "LogRecord",
    "PacketInfo",
    "TranslationParams",
    "Vp8Translation",
    "check_power_of_two",
    "refusal",
]

#: The third element of the address of a framed peer: an ICE-TCP connection (RFC 6544), whose
#: datagrams travel as RFC 4571 frames. Such an address is ``(host, port, "tcp")``; UDP
#: addresses are asyncio's 2- or 4-tuples, so the two never compare equal.
FRAMED_MARK: Final = "tcp"

#: Stream kinds. The forwarders handle AUDIO and VP8 themselves; the others are ingested on
#: the Python slow path only (through the same :func:`sfu._fastpath.ingest.ingest`).
AUDIO: Final = 0
VP8: Final = 1
H264: Final = 2
VP9: Final = 3
#: Video whose payload descriptor the server does not read (every packet is forwardable).
OTHER_VIDEO: Final = 4
#: AV1: layers and frame boundaries come from the Dependency Descriptor header extension
#: (AV1 RTP spec, Appendix A), read against the stream's newest template structure.
AV1: Final = 5

#: Ingest record flags (one record per ingested packet, see :data:`LogRecord`).
F_HEADER_BAD: Final = 1  # not even a fixed RTP header after unprotect: nothing else was done
F_MALFORMED_EXT: Final = 2  # the header-extension block is malformed: only rtp_in/TWCC count
F_MALFORMED_PAYLOAD: Final = 4  # ingested (stats, cache) but the descriptor is malformed
F_TWCC: Final = 8  # the twcc field holds a transport-wide sequence number
F_PADDING: Final = 16  # padding only: ingested, nothing to forward
F_KEYFRAME: Final = 32  # the first packet of a keyframe
F_LEVEL: Final = 64  # the level field holds an RFC 6464 audio level
F_VAD: Final = 128  # ... with the voice activity bit set
F_RTX: Final = 256  # a repair restored from RTX (slow path only): no meter, no audio level
F_STRUCTURE: Final = 512  # carries a scalability structure (VP9 SS; slow path only)

#: A record of a packet the data plane refused (not forwarded) carries why in the flags, from
#: this bit up: 0 none, 1.. an ``sfu.packet.rtp.RTP_DEFECT_*`` code, or one of the two below.
F_REASON_SHIFT: Final = 16
#: The payload type is not the stream's (the munger would not map it to the subscriber's).
REFUSED_PAYLOAD_TYPE: Final = len(RTP_DEFECTS)
#: The payload descriptor (VP8, VP9, H.264) does not parse, or there is no payload after it.
REFUSED_DESCRIPTOR: Final = REFUSED_PAYLOAD_TYPE + 1
#: Drop-reason names (metric label values) of the refusal codes; index = code, 0 unused.
REFUSAL_REASONS: Final = (*RTP_DEFECTS, "rtp_payload_type", "rtp_payload_descriptor")


def refusal(flags: int) -> int:
    """The refusal code a record's flags carry (0: the packet was not refused)."""
    return flags >> F_REASON_SHIFT


#: (stream handle, flags, ext seq, RTP timestamp, now, size, twcc seq, audio level,
#: packets forwarded, bytes forwarded): what ingest of one packet leaves for the receive
#: bookkeeping (the forwarders log it; the slow path replays it at once).
LogRecord = tuple[int, int, int, int, float, int, int, int, int, int]


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
    #: SVC (VP9): the spatial layer of the packet's layer frame (SID, 0 without one).
    spatial_id: int = 0
    #: SVC (VP9): the packet ends its layer frame (E bit).
    end_of_frame: bool = False
    #: SVC (VP9): the layer frame is not inter-picture predicted (P=0): a switch up to its
    #: spatial layer is possible here.
    switch_point: bool = False
    #: SVC (VP9): the packet carries a scalability structure (the stream's layering).
    has_structure: bool = False
    #: AV1: the Dependency Descriptor's frame number (-1: not AV1).
    frame_number: int = -1
    #: AV1: where the Dependency Descriptor element's body starts in the packet (-1: none);
    #: extension ids are rewritten in place, so it is there in the rewritten copy too.
    dd_offset: int = -1
    #: AV1: bit ``t`` set when the frame is a switch point (DTI SWITCH) of a decode target
    #: of temporal layer ``t``: from this frame on, temporal layers up to ``t`` can be added.
    temporal_switches: int = 0


#: Audio has no descriptor: every packet starts a frame and none is a keyframe.
AUDIO_INFO: Final = PacketInfo(False, True)


# -- layer selection (sfu.core.layers and _layers.pyx) ------------------------------------

#: Most spatial layers a selector accepts (Chromium sends at most 3 simulcast streams).
MAX_SPATIAL_LAYERS: Final = 8


class Decision(IntEnum):
    """What to do with one packet; a plain int so the fast path can carry it cheaply."""

    DROP = 0
    FORWARD = 1
    #: Forward, and this is the first packet of a new current spatial layer: the munger must
    #: switch its source stream (new SSRC/sequence/timestamp base) before rewriting it.
    FORWARD_SWITCH = 2


class LayerPair(NamedTuple):
    """A spatial/temporal layer pair; ``spatial`` None = nothing, ``temporal`` None = all."""

    spatial: int | None
    temporal: int | None


# -- the munger's decisions (sfu.core.munger and _munger.pyx) -----------------------------

#: How far behind the newest sequence number a late packet may be and still be forwarded
#: (also the width of the duplicate-detection bitmap).
REORDER_WINDOW: Final = 512
#: ``RtpMunger.rewind`` takes back at most this many outgoing numbers: more than an egress
#: pacer holds (256 packets), and inside the outbound SRTP context's replay window (1024,
#: ``SrtpSession``), which refuses to protect a number further behind the newest.
REWIND_LIMIT: Final = 512


class TranslationParams:
    """What to do with one packet: drop it, or send it with ``out_seq`` / ``out_ts``.

    ``out_seq`` and ``out_ts`` are extended values (the kernel truncates them); they are -1 when
    ``drop`` is set, and ``reason`` then says why ("duplicate", "too_old", "pre_switch",
    "dropped"). ``switched`` marks the first packet of a new source (a codec munger such as
    ``Vp8Munger`` continues its own counters there).
    """

    __slots__ = ("drop", "out_seq", "out_ts", "reason", "switched")

    def __init__(
        self,
        out_seq: int,
        out_ts: int,
        drop: bool = False,
        switched: bool = False,
        reason: str | None = None,
    ) -> None:
        self.out_seq = out_seq
        self.out_ts = out_ts
        self.drop = drop
        self.switched = switched
        self.reason = reason

    def __repr__(self) -> str:
        if self.drop:
            return f"TranslationParams(drop, reason={self.reason!r})"
        return (
            f"TranslationParams(out_seq={self.out_seq}, out_ts={self.out_ts}, "
            f"switched={self.switched})"
        )


# Shared, never-mutated answers for dropped packets, so a drop allocates nothing.
DROP_DUPLICATE = TranslationParams(-1, -1, True, reason="duplicate")
DROP_TOO_OLD = TranslationParams(-1, -1, True, reason="too_old")
DROP_PRE_SWITCH = TranslationParams(-1, -1, True, reason="pre_switch")
DROP_DROPPED = TranslationParams(-1, -1, True, reason="dropped")


class Vp8Translation:
    """Outgoing descriptor values for one packet; None leaves a field as it is.

    ``picture_id`` is extended (``rewrite_vp8_descriptor`` truncates it to the field's 7 or 15
    bits); ``tl0picidx`` is 0-255 and ``keyidx`` 0-31.
    """

    __slots__ = ("keyidx", "picture_id", "tl0picidx")

    def __init__(self, picture_id: int | None, tl0picidx: int | None, keyidx: int | None) -> None:
        self.picture_id = picture_id
        self.tl0picidx = tl0picidx
        self.keyidx = keyidx

    def __repr__(self) -> str:
        return (
            f"Vp8Translation(picture_id={self.picture_id}, tl0picidx={self.tl0picidx}, "
            f"keyidx={self.keyidx})"
        )


# -- forwarding history (sfu.core.route_state and _forward.pyx) ---------------------------


class HistoryEntry(NamedTuple):
    """What one outgoing packet was made from (VP8 fields -1 when absent)."""

    in_ext_seq: int
    timestamp: int
    layer: int
    has_vp8: bool
    picture_id: int
    tl0picidx: int
    keyidx: int


# -- the retransmission cache (sfu.core.retransmission and _cache.pyx) --------------------

CACHE_CAPACITY: Final = 1024  # packets; ~1 s of 8 Mbit/s video at 1000-byte packets
CACHE_MAX_SIZE: Final = 1500  # bytes per slot: an Ethernet MTU holds any RTP packet we forward
CACHE_MAX_AGE: Final = 1.0  # seconds; older packets are useless to a receiver's jitter buffer


def check_power_of_two(name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is a positive power of two (ring sizes are masked)."""
    if value <= 0 or value & (value - 1):
        raise ValueError(f"{name} must be a positive power of two, got {value}")
