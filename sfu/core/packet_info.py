"""What ingest learns about one packet from its codec payload descriptor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sfu.codecs.vp8 import Vp8Descriptor

__all__ = ["AUDIO_INFO", "PacketInfo"]


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
