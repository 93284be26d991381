"""Wire formats (RTP, RTCP, STUN, SDP, demux): stdlib only, no I/O, no clocks."""

from sfu.packet.errors import ParseError

__all__ = ["ParseError"]
