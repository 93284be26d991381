"""What the forwarding core needs of a transport to send: two methods, no concrete class."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Sender"]


class Sender(Protocol):
    """Sends protected RTP/RTCP to one participant (``WebRtcTransport`` in production, a
    recording fake in tests)."""

    @property
    def has_srtp(self) -> bool:
        """Whether SRTP keys exist (before that nothing can be sent)."""
        ...

    def send_rtp(self, packet: bytes) -> bool:
        """Protect and send one RTP packet; False if it could not go out."""
        ...

    def send_rtcp(self, packet: bytes) -> bool:
        """Protect and send one RTCP compound; False if it could not go out."""
        ...
