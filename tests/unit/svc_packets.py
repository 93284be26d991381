"""RTP packets shaped as Chromium sends scalable video (VP9 ``L3T3_KEY``, VP8 ``L1T3``), for
the SVC unit tests and the per-codec forwarding benchmark."""

from __future__ import annotations

from sfu.codecs.vp8 import Vp8Descriptor
from sfu.codecs.vp9 import Vp9Descriptor, Vp9ScalabilityStructure

__all__ = ["PT", "SSRC", "l3t3_key", "vp8_l1t3", "vp9_packet"]

#: The VP9 payload type and the publisher's SSRC of every packet built here.
PT = 98
SSRC = 0x1234


def vp9_packet(
    seq: int,
    ts: int,
    picture_id: int,
    sid: int,
    tid: int,
    *,
    key: bool = False,
    start: bool = True,
    end: bool = True,
    marker: bool = False,
    tl0: int = 0,
    size: int = 10,
) -> bytes:
    """One RTP packet of layer frame (sid, tid) as Chromium's non-flexible L3T3_KEY sends it:
    a keyframe picture's upper layers depend on the layer below (D=1, P=0); other pictures'
    upper layers only on their own earlier frames (P=1)."""
    ss = None
    if key and sid == 0:
        ss = Vp9ScalabilityStructure(3, ((320, 180), (640, 360), (1280, 720)))
    d = Vp9Descriptor(
        picture_id=picture_id,
        picture_id_15bit=True,
        inter_picture_predicted=not key,
        is_start_of_frame=start,
        is_end_of_frame=end,
        temporal_id=tid,
        switching_up_point=tid > 0,
        spatial_id=sid,
        inter_layer_dependency=key and sid > 0,
        tl0picidx=tl0,
        scalability_structure=ss,
    )
    header = bytes([0x80, (0x80 if marker else 0) | PT]) + seq.to_bytes(2, "big")
    header += ts.to_bytes(4, "big") + SSRC.to_bytes(4, "big")
    return header + d.serialize() + bytes([0xAA]) * (size * (sid + 1))


def l3t3_key(
    pictures: int, *, key_every: int = 1000, first_seq: int = 100, size: int = 10
) -> list[bytes]:
    """``pictures`` pictures of three spatial layers, two packets per layer frame, temporal
    pattern 0-2-1-2, a keyframe picture every ``key_every`` (and first)."""
    out: list[bytes] = []
    seq = first_seq
    for p in range(pictures):
        key = p % key_every == 0
        tid = (0, 2, 1, 2)[p % 4]
        for sid in range(3):
            for part in range(2):
                out.append(
                    vp9_packet(
                        seq,
                        p * 3000,
                        p,
                        sid,
                        tid,
                        key=key,
                        start=part == 0,
                        end=part == 1,
                        marker=sid == 2 and part == 1,
                        tl0=p // 4,
                        size=size,
                    )
                )
                seq += 1
    return out


def vp8_l1t3(frames: int, first_seq: int = 500, size: int = 20) -> list[bytes]:
    """One packet per frame of a VP8 ``L1T3`` stream (TID pattern 0-2-1-2, Y set on TID 1 and
    2 frames that follow a TID 0 frame), a keyframe first."""
    out = []
    for f in range(frames):
        tid = (0, 2, 1, 2)[f % 4]
        d = Vp8Descriptor(
            extended=True,
            start_of_partition=True,
            picture_id=f & 0x7FFF,
            picture_id_15bit=True,
            tl0picidx=(f // 4) & 0xFF,
            temporal_id=tid,
            layer_sync=f % 4 in (1, 2),
        )
        header = bytes([0x80, 0x80 | 96]) + (first_seq + f).to_bytes(2, "big")
        header += (f * 4500 & 0xFFFFFFFF).to_bytes(4, "big") + SSRC.to_bytes(4, "big")
        out.append(header + d.serialize() + bytes([0x00 if f == 0 else 0x01]) + bytes(size))
    return out
