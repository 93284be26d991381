"""RTX retransmission payloads (RFC 4588): restoring the original packet from a repair."""

from __future__ import annotations

from sfu.packet.rtp import payload_offset

__all__ = ["restore_rtx"]

#: An RTX payload starts with the original sequence number (RFC 4588 §4).
OSN_SIZE = 2


def restore_rtx(packet: bytes, ssrc: int, payload_type: int) -> bytes | None:
    """The original packet of an RTX repair: OSN, primary SSRC and payload type restored
    (RFC 4588 §4), padding dropped with the RTX framing.

    Returns None for an RTX packet that carries no original (padding only, as bandwidth
    probes are); raises ParseError when the header does not fit.
    """
    offset = payload_offset(packet)
    end = len(packet)
    if packet[0] & 0x20:
        end -= packet[-1]
    if end - offset < OSN_SIZE:
        return None
    original = bytearray(packet[:offset])
    original[0] &= ~0x20 & 0xFF
    original[1] = (packet[1] & 0x80) | payload_type
    original[2:4] = packet[offset : offset + OSN_SIZE]
    original[8:12] = ssrc.to_bytes(4, "big")
    return bytes(original) + packet[offset + OSN_SIZE : end]
