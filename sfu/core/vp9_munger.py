"""VP9 picture id and TL0PICIDX continuity across source switches (RFC 9628 §4.2).

A VP9 receiver reads the picture id (7 or 15 bits) and, in non-flexible mode, TL0PICIDX (8
bits) as running counters: a jump tells it pictures were lost. A simulcast switch changes
encoder (unrelated counters), and an SVC stream that was paused and resumed skips pictures,
so the subscriber's counters would jump at every switch. ``Vp9Pictures`` rewrites both by an
offset chosen at each switch so that they go on from the last values sent.

Between switches the offset is constant, so gaps the source leaves (pictures of a temporal
layer the selector filters) stay: in flexible mode a picture names its references by
picture id differences (P_DIFF), which a compacted numbering would point at the wrong
pictures. A switch always happens at a keyframe, whose picture refers to nothing earlier.
"""

from __future__ import annotations

from typing import Final

__all__ = ["Vp9Pictures"]

#: TL0PICIDX is 8 bits; picture ids are 7 or 15 bits (the M bit), counted modulo their width.
_TL0_MASK: Final = 0xFF
_TL0_HALF: Final = 0x80


class Vp9Pictures:
    """One subscription's outgoing VP9 picture id and TL0PICIDX."""

    __slots__ = ("_last_pid", "_last_tl0", "_pending", "_pid_offset", "_tl0_offset", "switches")

    def __init__(self) -> None:
        self._pending = True
        self._pid_offset = 0
        self._tl0_offset = 0
        #: The newest values sent (None: nothing sent yet).
        self._last_pid: int | None = None
        self._last_tl0: int | None = None
        self.switches = 0

    def switch_source(self) -> None:
        """The next picture translated starts a new source (it is a keyframe)."""
        self._pending = True

    def translate(
        self, picture_id: int | None, tl0picidx: int | None, *, wide: bool = True
    ) -> tuple[int, int]:
        """The outgoing (picture id, TL0PICIDX) of a packet about to be sent, -1 for a field
        the packet lacks; ``wide``: the picture id field is 15 bits (else 7)."""
        mask = 0x7FFF if wide else 0x7F
        if self._pending:
            self._pending = False
            self.switches += 1
            last = self._last_pid
            self._pid_offset = (
                0 if last is None or picture_id is None else (last + 1 - picture_id) & 0x7FFF
            )
            last = self._last_tl0
            self._tl0_offset = (
                0 if last is None or tl0picidx is None else (last + 1 - tl0picidx) & _TL0_MASK
            )
        out_pid = -1
        if picture_id is not None:
            out_pid = (picture_id + self._pid_offset) & mask
            last = self._last_pid
            # Only a newer picture moves "last" (a late packet of an older one must not).
            if last is None or 0 < (out_pid - last) & mask < (mask + 1) >> 1:
                self._last_pid = out_pid
        out_tl0 = -1
        if tl0picidx is not None:
            out_tl0 = (tl0picidx + self._tl0_offset) & _TL0_MASK
            last = self._last_tl0
            if last is None or 0 < (out_tl0 - last) & _TL0_MASK < _TL0_HALF:
                self._last_tl0 = out_tl0
        return out_pid, out_tl0

    @property
    def rewrites(self) -> bool:
        """Whether the current source's values differ from what the publisher sends."""
        return bool(self._pid_offset or self._tl0_offset)
