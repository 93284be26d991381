"""The sealed media lane of a node link: relayed media as plain UDP, sealed with AES-128-GCM.

aioquic costs tens of microseconds per DATAGRAM frame each way and paces them (issue 15,
bench/RESULTS.md), so relayed media leaves QUIC once the link is up and keyed; QUIC keeps the
mutual-TLS handshake and the control stream, which carries this lane's keys. Each datagram of
a media flow (a pipe datagram: flow id varint, then RTP/RTCP) becomes one UDP datagram::

    0      1                       9
    +------+-----------------------+---------------------------------------+-----------+
    | 0x2E | counter (64 bits, BE) | AES-128-GCM(pipe datagram)            | tag (16)  |
    +------+-----------------------+---------------------------------------+-----------+

The first byte is the lane's version (the high nibble, 0b0010) and the key's epoch (the low
nibble). Its 0x40 bit is clear, which no QUIC packet's is (the fixed bit, RFC 9000 sections
17.2 and 17.3; aioquic never greases it, RFC 9287), so the lane shares the link's UDP port:
the first byte alone tells the two apart. The 9-byte header is the AEAD's associated data
and the counter is the nonce (four zero bytes, then the counter): one key per direction, a
counter that never repeats under it, so a nonce is never reused (RFC 5116 section 3).

Keys: each side draws a fresh random key for its own direction when the link comes up (a
reconnection is a new link, hence new keys) and sends it on the control stream (KEY); the
peer answers KEY_ACK. A side seals only once its key is acknowledged and it holds the peer's
(:attr:`MediaLane.up`); until then the link sends media as QUIC DATAGRAMs, so nothing is lost
while keying. After :data:`REKEY_AFTER` datagrams a side announces a new key (the next epoch)
and switches to it on its KEY_ACK; at :data:`KEY_LIMIT` without one it stops sealing
(DATAGRAM fallback again), well inside AES-GCM's confidentiality limit (RFC 9001 section 6.6).

Receiving: a datagram from any address but the link peer's is dropped before any decryption,
then a malformed header, an unknown epoch, a counter the replay window (RFC 3711 section 3.3.2:
the highest counter and a bitmap of :data:`REPLAY_WINDOW` before it) saw or left behind, and
a failed tag, each counted by reason. Nothing raises. Sans-I/O: the link owns one lane and the
socket; randomness is injected for the tests.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sfu.packet.errors import ParseError

__all__ = [
    "HEADER_BYTES",
    "KEY_BYTES",
    "KEY_LIMIT",
    "LANE_DROP_REASONS",
    "MESSAGE_KEY",
    "MESSAGE_KEY_ACK",
    "OVERHEAD",
    "QUIC_FIXED_BIT",
    "REKEY_AFTER",
    "REPLAY_WINDOW",
    "TAG_BYTES",
    "VERSION",
    "MediaLane",
    "is_lane_datagram",
    "is_lane_message",
    "parse_header",
]

#: The high nibble of a lane datagram's first byte: lane version 1. 0x40 (QUIC's fixed bit)
#: and 0x80 (QUIC's long header bit) stay clear.
VERSION: Final = 0x20
#: The first byte's bits that are the version; the rest is the key epoch.
VERSION_MASK: Final = 0xF0
#: Key epochs (the first byte's low nibble): enough to tell the current key from the last.
EPOCHS: Final = 16
#: Set in the first byte of every QUIC packet (RFC 9000 section 17): clear means the lane.
QUIC_FIXED_BIT: Final = 0x40
#: First byte and 64-bit counter: the associated data.
HEADER_BYTES: Final = 9
#: AES-GCM's tag.
TAG_BYTES: Final = 16
#: What sealing adds to a pipe datagram (25 bytes, against ~40 for a QUIC DATAGRAM frame).
OVERHEAD: Final = HEADER_BYTES + TAG_BYTES
#: AES-128.
KEY_BYTES: Final = 16
#: Counters before the highest one received that are still accepted once (SRTP's default
#: is 64; relayed media at 10,000 packets/s reorders over far fewer than this).
REPLAY_WINDOW: Final = 1024
#: Datagrams sealed with one key before the next is announced. AES-GCM's confidentiality
#: bound for ~1,500-byte packets is about 2^28 packets at an attacker advantage of 2^-57
#: (RFC 9001 section 6.6 and appendix B.1, scaled to our packet size); 2^24 leaves room.
REKEY_AFTER: Final = 1 << 24
#: Datagrams sealed with one key after which sealing stops (media goes back to QUIC
#: DATAGRAMs) while the peer has not acknowledged the next key.
KEY_LIMIT: Final = 1 << 26
#: Largest counter (the nonce's 64 bits).
MAX_COUNTER: Final = (1 << 64) - 1
#: Control message types of the node link that belong to the lane (their first byte). A pipe
#: control message starts with 0x00 (flow 0), so these never collide with one.
MESSAGE_KEY: Final = 0xE1
MESSAGE_KEY_ACK: Final = 0xE2
#: Sizes of the two messages: type, epoch, key / type, epoch.
KEY_MESSAGE_BYTES: Final = 2 + KEY_BYTES
KEY_ACK_MESSAGE_BYTES: Final = 2
#: Receiving keys kept: the current one and the one before (datagrams still in flight).
KEYS_KEPT: Final = 2
#: Why a received lane datagram was dropped (a fixed set: the metric's labels).
LANE_DROP_REASONS: Final = ("not_peer", "malformed", "unknown_key", "replayed", "auth_failed")
#: The header (first byte, counter) and the AEAD nonce (four zero bytes, the counter).
_HEADER: Final = struct.Struct("!BQ")
_NONCE: Final = struct.Struct("!4xQ")
_WINDOW_MASK: Final = (1 << REPLAY_WINDOW) - 1

Random = Callable[[int], bytes]


def is_lane_datagram(data: bytes) -> bool:
    """Whether a UDP datagram on the link's port is the lane's (not QUIC's): by its first
    byte's fixed bit alone."""
    return bool(data) and not data[0] & QUIC_FIXED_BIT


def is_lane_message(message: bytes) -> bool:
    """Whether a control message of the node link is one of the lane's (KEY, KEY_ACK)."""
    return bool(message) and message[0] in (MESSAGE_KEY, MESSAGE_KEY_ACK)


def parse_header(data: bytes) -> tuple[int, int]:
    """(epoch, counter) of a lane datagram; ParseError when it is not one (too short for a
    header and a tag, or another version)."""
    if len(data) < HEADER_BYTES + TAG_BYTES:
        raise ParseError(f"media lane: {len(data)} bytes, at least {HEADER_BYTES + TAG_BYTES}")
    first = data[0]
    if first & VERSION_MASK != VERSION:
        raise ParseError(f"media lane: version byte {first:#04x}")
    _, counter = _HEADER.unpack_from(data)
    return first & (EPOCHS - 1), int(counter)


def _same_address(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    # asyncio gives IPv6 sources as 4-tuples (host, port, flowinfo, scope id).
    return a[:2] == b[:2]


class MediaLane:
    """Both directions of one node link's sealed lane: our key, the peer's, the counters."""

    __slots__ = (
        "_acked",
        "_counter",
        "_epoch",
        "_highest",
        "_keys",
        "_messages",
        "_next",
        "_random",
        "_sealer",
        "_used",
        "_window",
        "drops",
        "peer_address",
        "received",
        "sealed",
    )

    def __init__(self, peer_address: tuple[Any, ...], *, random: Random | None = None) -> None:
        #: The only address lane datagrams are accepted from (the link peer's).
        self.peer_address = peer_address
        if random is None:
            random = os.urandom
        self._random = random
        self._epoch = random(1)[0] % EPOCHS
        key = random(KEY_BYTES)
        self._sealer = AESGCM(key)
        self._acked = False
        #: The next key, announced and not yet acknowledged: (epoch, sealer).
        self._next: tuple[int, AESGCM] | None = None
        self._counter = 0
        self._used = 0  # datagrams sealed with the current key
        #: The peer's keys by epoch, oldest first (at most KEYS_KEPT).
        self._keys: dict[int, AESGCM] = {}
        self._highest = -1
        self._window = 0  # bit i: counter highest - i was received
        #: Control messages for the peer (KEY, KEY_ACK), taken by the link.
        self._messages: list[bytes] = []
        self._messages.append(self._key_message(self._epoch, key))
        #: Datagrams sealed and opened, and drops by reason (LANE_DROP_REASONS).
        self.sealed = 0
        self.received = 0
        self.drops: dict[str, int] = dict.fromkeys(LANE_DROP_REASONS, 0)

    @property
    def up(self) -> bool:
        """Whether media goes sealed: the peer acknowledged our key and we hold its."""
        return self._acked and bool(self._keys) and self._used < KEY_LIMIT

    @property
    def has_messages(self) -> bool:
        """Whether control messages wait for :meth:`take_messages`."""
        return bool(self._messages)

    def take_messages(self) -> list[bytes]:
        """Control messages for the peer (our key first), to send on the control stream."""
        out, self._messages = self._messages, []
        return out

    # -- sending -----------------------------------------------------------------------------

    def seal(self, datagram: bytes) -> bytes | None:
        """The lane datagram of one pipe datagram; None while the lane is not up (the link
        sends it as a QUIC DATAGRAM instead)."""
        if not self.up or self._counter > MAX_COUNTER:
            return None
        counter = self._counter
        header = _HEADER.pack(VERSION | self._epoch, counter)
        sealed = header + self._sealer.encrypt(_NONCE.pack(counter), datagram, header)
        self._counter = counter + 1
        self._used += 1
        self.sealed += 1
        if self._used == REKEY_AFTER and self._next is None:
            self._announce_next()
        return sealed

    def _announce_next(self) -> None:
        epoch = (self._epoch + 1) % EPOCHS
        key = self._random(KEY_BYTES)
        self._next = (epoch, AESGCM(key))
        self._messages.append(self._key_message(epoch, key))

    @staticmethod
    def _key_message(epoch: int, key: bytes) -> bytes:
        return bytes((MESSAGE_KEY, epoch)) + key

    # -- control -----------------------------------------------------------------------------

    def receive_message(self, message: bytes) -> bool:
        """One of the lane's control messages from the peer (reliable, in order); False
        when malformed (counted), never raised."""
        kind = message[0] if message else -1
        if kind == MESSAGE_KEY and len(message) == KEY_MESSAGE_BYTES and message[1] < EPOCHS:
            epoch = message[1]
            self._keys.pop(epoch, None)
            self._keys[epoch] = AESGCM(message[2:])
            while len(self._keys) > KEYS_KEPT:
                del self._keys[next(iter(self._keys))]
            self._messages.append(bytes((MESSAGE_KEY_ACK, epoch)))
            return True
        if kind == MESSAGE_KEY_ACK and len(message) == KEY_ACK_MESSAGE_BYTES:
            epoch = message[1]
            if epoch == self._epoch:
                self._acked = True
            elif self._next is not None and epoch == self._next[0]:
                self._epoch, self._sealer = self._next
                self._next = None
                self._used = 0
            return True
        self.drops["malformed"] += 1
        return False

    # -- receiving ---------------------------------------------------------------------------

    def open(self, data: bytes, addr: tuple[Any, ...]) -> bytes | None:
        """The pipe datagram a lane datagram from ``addr`` seals; None (counted) when it is
        dropped: another address, malformed, unknown key, replayed, or forged."""
        if not _same_address(addr, self.peer_address):
            self.drops["not_peer"] += 1
            return None
        try:
            epoch, counter = parse_header(data)
        except ParseError:
            self.drops["malformed"] += 1
            return None
        opener = self._keys.get(epoch)
        if opener is None:
            self.drops["unknown_key"] += 1
            return None
        behind = self._highest - counter
        if behind >= REPLAY_WINDOW or (behind >= 0 and self._window >> behind & 1):
            self.drops["replayed"] += 1
            return None
        try:
            plain = opener.decrypt(_NONCE.pack(counter), data[HEADER_BYTES:], data[:HEADER_BYTES])
        except InvalidTag:
            self.drops["auth_failed"] += 1
            return None
        # Only an authentic datagram moves the window (RFC 3711 section 3.3.2).
        if behind < 0:
            shift = -behind
            if shift >= REPLAY_WINDOW:
                self._window = 1
            else:
                self._window = ((self._window << shift) | 1) & _WINDOW_MASK
            self._highest = counter
        else:
            self._window |= 1 << behind
        self.received += 1
        return plain
