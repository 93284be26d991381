"""What the two lane kernels (``_lane.pyx`` and ``_lane_py.py``) and the media lane share.

The sealed media lane of a node link (:mod:`sfu.transport.media_lane` describes it whole) puts
each pipe datagram in one UDP datagram: a 9-byte header (version and key epoch, a 64-bit
counter), the AES-128-GCM ciphertext, the 16-byte tag. The header is the associated data; the
nonce is four zero bytes and the counter. These figures live here, below both the kernels that
seal in the data plane and the lane's control logic, so the two cannot disagree on the format.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "EPOCHS",
    "HEADER",
    "HEADER_BYTES",
    "KEYS_KEPT",
    "KEY_BYTES",
    "KEY_LIMIT",
    "MAX_COUNTER",
    "MAX_INPUT_FLOWS",
    "MAX_RELAY_INPUTS",
    "MAX_RELAY_OUTPUTS",
    "NONCE",
    "QUIC_FIXED_BIT",
    "RELAY_IN_SLOTS",
    "REPLAY_WINDOW",
    "TAG_BYTES",
    "VERSION",
    "VERSION_MASK",
]

#: The high nibble of a lane datagram's first byte: lane version 1. 0x40 (QUIC's fixed bit)
#: and 0x80 (QUIC's long header bit) stay clear.
VERSION: Final = 0x20
#: The first byte's bits that are the version; the rest is the key epoch.
VERSION_MASK: Final = 0xF0
#: Key epochs (the first byte's low nibble): enough to tell the current key from the last.
EPOCHS: Final = 16
#: First byte and 64-bit counter: the associated data.
HEADER_BYTES: Final = 9
#: AES-GCM's tag.
TAG_BYTES: Final = 16
#: AES-128.
KEY_BYTES: Final = 16
#: Datagrams sealed with one key after which sealing stops until the next key is in use
#: (the media lane announces one long before: its REKEY_AFTER). Well inside AES-GCM's
#: confidentiality bound for ~1,500-byte packets (RFC 9001 section 6.6 and appendix B.1).
KEY_LIMIT: Final = 1 << 26
#: Largest counter (the nonce's 64 bits).
MAX_COUNTER: Final = (1 << 64) - 1
#: Counters before the highest one received that are still accepted once (SRTP's default
#: is 64; relayed media at 10,000 packets/s reorders over far fewer than this).
REPLAY_WINDOW: Final = 1024
#: Receiving keys kept: the current one and the one before (datagrams still in flight).
KEYS_KEPT: Final = 2
#: Relay outputs one stream of the forwarder can have (a bit each in a relay log entry's
#: ``done`` mask): one per node or worker its publication is relayed to.
MAX_RELAY_OUTPUTS: Final = 32
#: Relay inputs one forwarder has (``set_relay_input``): one per peer node whose lane
#: datagrams it opens itself; a cluster larger than this leaves the rest to Python's path.
MAX_RELAY_INPUTS: Final = 64
#: Flows one relay input routes to sources (``set_relay_flows``): a pipe's own bound on the
#: flows it receives (``sfu.transport.pipe.DEFAULT_MAX_FLOWS``).
MAX_INPUT_FLOWS: Final = 4096
#: Opened lane datagrams the forwarder did not forward, held for Python between two
#: ``drain_relay_in`` calls (one link pump reads at most 512 datagrams); beyond, counted.
RELAY_IN_SLOTS: Final = 1024
#: QUIC's fixed bit (RFC 9000 section 17): set in every QUIC packet's first byte, clear in a
#: lane datagram's (``sfu.transport.media_lane.is_lane_datagram``).
QUIC_FIXED_BIT: Final = 0x40
#: The header (first byte, counter) and the AEAD nonce (four zero bytes, the counter).
HEADER: Final = struct.Struct("!BQ")
NONCE: Final = struct.Struct("!4xQ")
