"""Value types and constants shared by the kernels and the control plane that drives them.

The compiled kernels and their pure-Python references agree on these (``_forward.pyx``
repeats the flag values as C enums); the control plane reads them. This module imports only
the layers below ``_fastpath`` (packet, codecs), so every kernel and ``core`` can use it
without an import pointing up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sfu.codecs.vp8 import Vp8Descriptor

__all__ = [
    "AUDIO",
    "AUDIO_INFO",
    "F_HEADER_BAD",
    "F_KEYFRAME",
    "F_LEVEL",
    "F_MALFORMED_EXT",
    "F_MALFORMED_PAYLOAD",
    "F_PADDING",
    "F_RTX",
    "F_TWCC",
    "F_VAD",
    "H264",
    "OTHER_VIDEO",
    "VP8",
    "VP9",
    "LogRecord",
    "PacketInfo",
]

#: Stream kinds. The forwarders handle AUDIO and VP8 themselves; the others are ingested on
#: the Python slow path only (through the same :func:`sfu._fastpath.ingest.ingest`).
AUDIO: Final = 0
VP8: Final = 1
H264: Final = 2
VP9: Final = 3
#: Video whose payload descriptor the server does not read (every packet is forwardable).
OTHER_VIDEO: Final = 4

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


#: Audio has no descriptor: every packet starts a frame and none is a keyframe.
AUDIO_INFO: Final = PacketInfo(False, True)
