"""VP8 payload descriptor continuity across layer switches and dropped frames (RFC 7741 §4.2).

A VP8 receiver watches three running counters in the payload descriptor: the picture id (7 or
15 bits, one per frame), TL0PICIDX (8 bits, one per temporal-layer-0 frame) and KEYIDX (5 bits,
one per keyframe). A gap in them tells it frames were lost, so an SFU that switches simulcast
layers (unrelated counters) or filters temporal layers (whole frames removed on purpose) must
rewrite them: ``Vp8Munger`` decides the outgoing values (:meth:`Vp8Munger.translate`) and
``sfu.codecs.vp8.rewrite_vp8_descriptor`` writes them in place, leaving every VP8 payload octet
alone (end-to-end encrypted payloads pass). Design after LiveKit's ``vp8munger.go``.

* Picture ids: a new source continues at the last outgoing picture id + 1; a frame dropped
  entirely (every packet given to :meth:`Vp8Munger.drop`) leaves no gap; frames lost upstream
  do (the receiver should notice them).
* TL0PICIDX and KEYIDX: a new source continues at the last outgoing value + 1 (its first frame
  is a keyframe, hence a new temporal-layer-0 frame); within a source they follow the source,
  so TL0PICIDX still moves only on TID 0 frames. Dropping TID 0 frames without a switch is a
  decoding break that only a keyframe heals, so its TL0PICIDX gap is kept on purpose.

A consumer forwarding VP8 does, per packet (``off`` from :func:`sfu.packet.rtp.payload_offset`)::

    d = parse_vp8(pkt, off, end)
    if not should_forward(d, max_tid):
        rtp.drop(seq); vp8.drop(d)                      # neither leaves a gap
    elif (t := vp8.translate(d, source=ssrc)) is None:
        rtp.drop(seq)                                   # part of a frame already dropped
    elif rtp.munge(pkt, seq, now, dst) > 0:
        vp8.apply(dst, off, t)
"""

from __future__ import annotations

from sfu._fastpath.values import Vp8Translation
from sfu.codecs.vp8 import Vp8Descriptor, parse_vp8, rewrite_vp8_descriptor
from sfu.core.skip_history import SkipHistory

__all__ = [
    "Vp8Munger",
    "should_forward",
]

_PID_BASE = 1 << 16


def should_forward(descriptor: Vp8Descriptor, max_tid: int) -> bool:
    """Whether a packet belongs to a temporal layer at or below ``max_tid`` (RFC 7741 §4.2 TID).

    Packets without a TID belong to the base layer and always pass; a negative ``max_tid``
    passes nothing with a TID. Switching *up* is only safe at a layer-sync (Y) frame: that is
    the layer selector's decision, not this helper's.
    """
    tid = descriptor.temporal_id
    return tid is None or tid <= max_tid


class Vp8Munger:
    """Keeps one subscription's VP8 picture id, TL0PICIDX and KEYIDX continuous.

    Sources change explicitly (:meth:`switch_source`, at the first packet translated after
    it) or implicitly when :meth:`translate` is given a different ``source`` key (the SSRC).
    """

    __slots__ = (
        "_first_pid",
        "_hi_dropped",
        "_hi_pid",
        "_key_offset",
        "_last_keyidx",
        "_last_pid",
        "_last_tl0",
        "_pending",
        "_pid_half",
        "_pid_mask",
        "_pid_offset",
        "_skips",
        "_source",
        "_tl0_offset",
        "dropped_pictures",
        "rejected",
        "switches",
    )

    def __init__(self, history: int = 64) -> None:
        """``history`` bounds the runs of dropped pictures kept for placing late packets."""
        self._skips = SkipHistory(history)
        self._pending = True
        self._source: int | None = None
        self._pid_offset: int | None = None
        self._pid_mask = 0x7FFF
        self._pid_half = 0x4000
        self._first_pid = 0
        self._hi_pid = 0
        self._hi_dropped = False
        self._tl0_offset: int | None = None
        self._key_offset: int | None = None
        self._last_pid: int | None = None
        self._last_tl0: int | None = None
        self._last_keyidx: int | None = None
        self.switches = 0
        """Sources started (the first one included)."""
        self.dropped_pictures = 0
        """Whole pictures removed from the outgoing picture id sequence."""
        self.rejected = 0
        """Packets refused: from before a switch, too old, or part of a dropped picture."""

    @property
    def last_picture_id(self) -> int | None:
        """Extended picture id of the newest outgoing picture (None before the first)."""
        return self._last_pid

    @property
    def last_tl0picidx(self) -> int | None:
        """TL0PICIDX of the newest outgoing packet that carried one."""
        return self._last_tl0

    @property
    def last_keyidx(self) -> int | None:
        """KEYIDX of the newest outgoing packet that carried one."""
        return self._last_keyidx

    def switch_source(self) -> None:
        """The next packet given to :meth:`translate` starts a new source (a keyframe)."""
        self._pending = True

    def _start(self, source: int | None) -> None:
        self._pending = False
        self._source = source
        self._pid_offset = None
        self._tl0_offset = None
        self._key_offset = None
        self._hi_dropped = False
        self.switches += 1

    def _pid_start(self, pid: int, wide: bool) -> None:
        self._pid_mask = 0x7FFF if wide else 0x7F
        self._pid_half = 0x4000 if wide else 0x40
        last = self._last_pid
        out = _PID_BASE + pid if last is None else last + 1
        self._pid_offset = out - pid
        self._first_pid = pid
        self._hi_pid = pid - 1
        self._hi_dropped = False
        self._skips.reset(pid)

    def translate(self, desc: Vp8Descriptor, source: int | None = None) -> Vp8Translation | None:
        """Outgoing picture id / TL0PICIDX / KEYIDX for a packet about to be forwarded.

        Returns None when the packet must not be forwarded: its picture is older than the
        switch or than the known history, or the picture was already dropped.
        """
        if self._pending:
            self._start(source)
        elif source is not None and source != self._source:
            if self._source is None:
                self._source = source
            else:
                self._start(source)
        out_pid: int | None = None
        newest = True  # an older picture's packet must not move the "last" counters
        pid = desc.picture_id
        if pid is not None:
            if self._pid_offset is None:
                self._pid_start(pid, desc.picture_id_15bit)
            hi = self._hi_pid
            half = self._pid_half
            p = hi + ((pid - hi + half) & self._pid_mask) - half
            d = p - hi
            offset = self._pid_offset
            assert offset is not None
            if d > 0:
                self._hi_pid = p
                self._hi_dropped = False
                out_pid = p + offset
                self._last_pid = out_pid
            elif d == 0:
                if self._hi_dropped:
                    self.rejected += 1
                    return None
                out_pid = p + offset
            else:
                extra = None if p < self._first_pid else self._skips.offset_after(p)
                if extra is None:
                    self.rejected += 1
                    return None
                out_pid = p + offset + extra
                newest = False
        out_tl0: int | None = None
        tl0 = desc.tl0picidx
        if tl0 is not None:
            tl0_offset = self._tl0_offset
            if tl0_offset is None:
                last = self._last_tl0
                tl0_offset = self._tl0_offset = 0 if last is None else (last + 1 - tl0) & 0xFF
            out_tl0 = (tl0 + tl0_offset) & 0xFF
            if newest:
                self._last_tl0 = out_tl0
        out_key: int | None = None
        key = desc.keyidx
        if key is not None:
            key_offset = self._key_offset
            if key_offset is None:
                last = self._last_keyidx
                key_offset = self._key_offset = 0 if last is None else (last + 1 - key) & 0x1F
            out_key = (key + key_offset) & 0x1F
            if newest:
                self._last_keyidx = out_key
        return Vp8Translation(out_pid, out_tl0, out_key)

    def drop(self, desc: Vp8Descriptor) -> None:
        """A packet deliberately not forwarded (e.g. its temporal layer is filtered).

        The first dropped packet of a new picture removes that picture from the outgoing
        picture ids; a packet of a picture already (partly) forwarded changes nothing.
        """
        pid = desc.picture_id
        offset = self._pid_offset
        if self._pending or pid is None or offset is None:
            return
        hi = self._hi_pid
        half = self._pid_half
        p = hi + ((pid - hi + half) & self._pid_mask) - half
        if p > hi:
            self._hi_pid = p
            self._hi_dropped = True
            self._skips.skip(p)
            self._pid_offset = offset - 1
            self.dropped_pictures += 1

    @staticmethod
    def apply(buf: bytearray | memoryview, offset: int, t: Vp8Translation) -> None:
        """Write ``t`` into the descriptor at ``buf[offset]`` in place (its length is kept)."""
        rewrite_vp8_descriptor(buf, offset, t.picture_id, t.tl0picidx, t.keyidx)

    def munge(
        self,
        buf: bytearray | memoryview,
        offset: int = 0,
        end: int | None = None,
        desc: Vp8Descriptor | None = None,
        source: int | None = None,
    ) -> bool:
        """Parse (unless ``desc`` is given), translate and rewrite the descriptor at
        ``buf[offset:end]`` in place; False when the packet must not be forwarded.
        Raises ParseError on a malformed descriptor."""
        if desc is None:
            desc = parse_vp8(buf, offset, end)
        t = self.translate(desc, source)
        if t is None:
            return False
        rewrite_vp8_descriptor(buf, offset, t.picture_id, t.tl0picidx, t.keyidx)
        return True
