"""ICE-TCP (RFC 6544) connections without I/O: RFC 4571 framing, limits and timeouts.

A client behind a firewall that drops UDP reaches the server's passive TCP candidate. Each
TCP connection carries the same datagrams the UDP port does (STUN, DTLS, SRTP, SRTCP), each
preceded by a 16-bit length (RFC 4571 §2). :class:`IceTcpGate` holds what the server keeps
per connection and decides when one must be closed:

* at most ``max_unauthenticated`` connections that have not passed an ICE check yet (cheap
  for anyone to open); beyond that a new connection is refused at once;
* until a valid ICE check arrives on it, a connection may send only STUN, and must do so
  within ``handshake_timeout``; an authenticated one is closed after ``idle_timeout``
  without a frame (consent freshness, RFC 7675, would have expired by then anyway);
* a frame longer than ``max_frame`` (no WebRTC datagram is) or of length zero closes the
  connection: the stream cannot be resynchronised;
* input is never buffered beyond one partial frame, so a slow sender holds at most
  ``max_frame + 2`` bytes.

Closing reasons come from a fixed set and are counted; addresses never leave the gate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Final

from sfu.packet.demux import PacketKind, classify
from sfu.transport.ice import Address, address_key

__all__ = [
    "CLOSE_REASONS",
    "FrameDecoder",
    "FramingError",
    "IceTcpGate",
    "frame",
]

#: RFC 4571 §2: the length field is 16 bits.
MAX_RFC4571_FRAME: Final = 0xFFFF
#: Largest datagram accepted over ICE-TCP: the UDP reader's buffer size. Media and DTLS
#: datagrams stay under the path MTU (~1200-1500 bytes); a larger frame is hostile.
DEFAULT_MAX_FRAME: Final = 8192
#: Connections that have not passed an ICE check yet, held at once.
DEFAULT_MAX_UNAUTHENTICATED: Final = 64
#: Seconds a new connection has to pass a valid ICE check.
DEFAULT_HANDSHAKE_TIMEOUT_S: Final = 10.0
#: Seconds an authenticated connection may stay silent (browsers check consent every ~5 s).
DEFAULT_IDLE_TIMEOUT_S: Final = 30.0
#: Frames an unauthenticated connection may send: enough for a browser's retransmitted
#: checks, too few to use the connection as a free STUN oracle.
MAX_UNAUTHENTICATED_FRAMES: Final = 16

#: Why a connection was closed (metric label values; a fixed set).
CLOSE_REASONS: Final = (
    "refused_capacity",  # too many unauthenticated connections
    "handshake_timeout",  # no valid ICE check in time
    "idle_timeout",  # silent for too long after authenticating
    "oversized_frame",  # length field above the limit
    "empty_frame",  # length field zero
    "not_stun",  # something other than STUN before authenticating
    "too_many_frames",  # too many frames without authenticating
    "peer_closed",  # the client closed it (or the connection broke)
    "shutdown",  # the server is stopping
)


class FramingError(ValueError):
    """The byte stream is not RFC 4571 framing within our limits; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def frame(data: bytes) -> bytes:
    """``data`` with its RFC 4571 length prefix."""
    if not 0 < len(data) <= MAX_RFC4571_FRAME:
        raise ValueError(f"cannot frame {len(data)} bytes (RFC 4571: 1-65535)")
    return len(data).to_bytes(2, "big") + data


class FrameDecoder:
    """Splits an RFC 4571 byte stream into frames, holding at most one partial frame."""

    __slots__ = ("_buf", "_max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 1 <= max_frame <= MAX_RFC4571_FRAME:
            raise ValueError("max_frame must be 1-65535")
        self._max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held of the frame not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The frames ``data`` completes, in order; raises :class:`FramingError` at the first
        bad length field (frames before it are yielded first)."""
        buf = self._buf
        buf += data
        start = 0
        end = len(buf)
        try:
            while end - start >= 2:
                length = (buf[start] << 8) | buf[start + 1]
                if length == 0:
                    raise FramingError("empty_frame")
                if length > self._max_frame:
                    raise FramingError("oversized_frame")
                if end - start - 2 < length:
                    break
                yield bytes(buf[start + 2 : start + 2 + length])
                start += 2 + length
        finally:
            del buf[:start]


class _Connection:
    __slots__ = ("authenticated", "deadline", "decoder", "frames")

    def __init__(self, decoder: FrameDecoder, deadline: float) -> None:
        self.decoder = decoder
        self.deadline = deadline
        self.authenticated = False
        self.frames = 0


class IceTcpGate:
    """The server's ICE-TCP connections: framing, limits and timeouts (sans-I/O).

    ``is_authenticated(address)`` tells whether a valid ICE check has come from ``address``
    (the media port knows); the gate asks it after each frame it delivers.
    """

    def __init__(
        self,
        is_authenticated: Callable[[Address], bool],
        *,
        max_unauthenticated: int = DEFAULT_MAX_UNAUTHENTICATED,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self._is_authenticated = is_authenticated
        self._max_unauthenticated = max_unauthenticated
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._max_frame = max_frame
        self._connections: dict[tuple[str, int] | tuple[str, int, str], _Connection] = {}
        #: Connections accepted since start.
        self.opened = 0
        #: Connections closed, by reason (from :data:`CLOSE_REASONS`).
        self.closed: defaultdict[str, int] = defaultdict(int)
        #: Frames delivered to the media port, and their bytes.
        self.frames_in = 0
        self.bytes_in = 0

    @property
    def connection_count(self) -> int:
        """Connections held, authenticated or not."""
        return len(self._connections)

    @property
    def unauthenticated_count(self) -> int:
        """Connections that have not passed an ICE check yet."""
        return sum(1 for c in self._connections.values() if not c.authenticated)

    @property
    def buffered_bytes(self) -> int:
        """Input bytes held in partial frames over all connections."""
        return sum(c.decoder.buffered for c in self._connections.values())

    def open(self, address: Address, now: float) -> bool:
        """A connection from ``address`` was accepted; False: close it now (over the cap)."""
        if self.unauthenticated_count >= self._max_unauthenticated:
            self.closed["refused_capacity"] += 1
            return False
        self._connections[address_key(address)] = _Connection(
            FrameDecoder(self._max_frame), now + self._handshake_timeout
        )
        self.opened += 1
        return True

    def received(
        self, address: Address, data: bytes, now: float, deliver: Callable[[bytes], None]
    ) -> str | None:
        """Bytes from ``address``: ``deliver`` each complete frame in order; returns a close
        reason (the connection is forgotten then) or None to keep it."""
        conn = self._connections.get(address_key(address))
        if conn is None:
            return "peer_closed"  # already forgotten; the adapter closes what is left
        reason: str | None = None
        try:
            for payload in conn.decoder.feed(data):
                if not conn.authenticated:
                    conn.frames += 1
                    if classify(payload) is not PacketKind.STUN:
                        reason = "not_stun"
                        break
                    if conn.frames > MAX_UNAUTHENTICATED_FRAMES:
                        reason = "too_many_frames"
                        break
                self.frames_in += 1
                self.bytes_in += len(payload)
                deliver(payload)
                if not conn.authenticated and self._is_authenticated(address):
                    conn.authenticated = True
                if conn.authenticated:
                    conn.deadline = now + self._idle_timeout
        except FramingError as exc:
            reason = exc.reason
        if reason is not None:
            self._close(address, reason)
        return reason

    def lost(self, address: Address, reason: str = "peer_closed") -> bool:
        """The connection ended outside the gate's decision; False if it was not held."""
        if address_key(address) not in self._connections:
            return False
        self._close(address, reason)
        return True

    def next_timer(self) -> float | None:
        """The earliest handshake or idle deadline."""
        return min((c.deadline for c in self._connections.values()), default=None)

    def expire(self, now: float) -> list[tuple[Address, str]]:
        """Close every connection past its deadline; returns (address key, reason) of each."""
        out: list[tuple[Address, str]] = []
        for key, conn in list(self._connections.items()):
            if now >= conn.deadline:
                reason = "idle_timeout" if conn.authenticated else "handshake_timeout"
                self._close(key, reason)
                out.append((key, reason))
        return out

    def _close(self, address: Address, reason: str) -> None:
        if self._connections.pop(address_key(address), None) is not None:
            self.closed[reason] += 1
