"""Sealing relayed media in the data plane: the contract of ``_lane.pyx``, in pure Python.

A relayed publication's packets used to reach the node link through Python for each packet:
the tap framed it, the link sealed it for the media lane (:mod:`sfu.transport.media_lane`), a
``sendto`` sent it. Here the forwarder does it for the packets it forwards anyway:

- :class:`LaneSealer` is the sending half of one lane: the key in use and its epoch, the
  64-bit counter that is the nonce, and counts. The media lane (keys, acknowledgements,
  liveness, the datagrams it seals itself) and the forwarder seal through the same object, so
  a counter is never used twice under one key whoever seals. ``active`` is the lane's
  verdict (keyed both ways, not in fallback); while it is False nothing is sealed.
- :class:`RelayOutput` is one relay tap in the forwarder: the flow's prefix (its varint id),
  the spatial layers the far side demands, the sealer (None: a plain pipe between workers of
  one node), the socket and address to send to, and what it sent, filtered and handed back.

A packet an output cannot take (its sealer not active, or too large) is handed back to the
Python taps through the forwarder's relay log, which then relays it the slow way (as a QUIC
DATAGRAM until the lane is up, counting what it drops): nothing is lost by the fast path.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sfu._fastpath._lane_shared import (
    EPOCHS,
    HEADER,
    HEADER_BYTES,
    KEY_BYTES,
    KEY_LIMIT,
    KEYS_KEPT,
    MAX_COUNTER,
    NONCE,
    REPLAY_WINDOW,
    TAG_BYTES,
    VERSION,
    VERSION_MASK,
)

__all__ = ["LaneOpener", "LaneSealer", "RelayOutput", "normalize_address"]


def normalize_address(address: tuple[Any, ...]) -> tuple[str, int]:
    """(host, port) of an IP literal address; an IPv6 scope (a 4-tuple's scope id, as
    ``recvfrom`` gives a link-local peer's) is kept in the host, as ``fe80::1%2``. Raises
    ValueError for anything but an IP literal."""
    host = str(address[0])
    if len(address) >= 4 and address[3] and "%" not in host:
        host = f"{host}%{int(address[3])}"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("address must be an IP literal") from None
    return host, int(address[1])


def _check_key(epoch: int, key: bytes) -> None:
    if not 0 <= epoch < EPOCHS:
        raise ValueError(f"epoch must be in 0..{EPOCHS - 1}")
    if len(key) != KEY_BYTES:
        raise ValueError(f"a lane key has {KEY_BYTES} bytes")


class LaneSealer:
    """The sending half of one sealed media lane: one key at a time, one counter for all."""

    __slots__ = ("_aead", "_counter", "active", "epoch", "limit", "sealed", "used")

    def __init__(self, epoch: int, key: bytes, *, limit: int = KEY_LIMIT) -> None:
        _check_key(epoch, key)
        if limit <= 0:
            raise ValueError("limit must be positive")
        self._aead = AESGCM(key)
        #: The key's epoch (the first byte's low nibble).
        self.epoch = epoch
        self._counter = 0
        #: Datagrams sealed with the current key, and with any.
        self.used = 0
        self.sealed = 0
        #: Datagrams one key may seal (KEY_LIMIT; tests lower it).
        self.limit = limit
        #: Whether sealing is allowed: the lane's owner sets it (keyed both ways, no fallback).
        self.active = False

    @property
    def counter(self) -> int:
        """The next datagram's counter (the nonce), never reused."""
        return self._counter

    @counter.setter
    def counter(self, value: int) -> None:
        # Forward only (tests skip ahead): a counter moved back would reuse a nonce.
        if not self._counter <= value <= MAX_COUNTER + 1:
            raise ValueError("the counter only moves forward, up to 2**64")
        self._counter = value

    def rekey(self, epoch: int, key: bytes) -> None:
        """Seal with a new key from now on (the counter goes on: nonces are per key anyway)."""
        _check_key(epoch, key)
        self._aead = AESGCM(key)
        self.epoch = epoch
        self.used = 0

    def seal(self, datagram: bytes | bytearray | memoryview) -> bytes | None:
        """The lane datagram of one pipe datagram; None when sealing is not allowed now
        (not active, the key's limit reached, the counter spent)."""
        if not self.active or self.used >= self.limit or self._counter > MAX_COUNTER:
            return None
        counter = self._counter
        header = HEADER.pack(VERSION | self.epoch, counter)
        sealed = header + self._aead.encrypt(NONCE.pack(counter), bytes(datagram), header)
        self._counter = counter + 1
        self.used += 1
        self.sealed += 1
        return sealed


class LaneOpener:
    """The receiving half of one sealed media lane: the peer's keys by epoch (the newest
    :data:`KEYS_KEPT`), the replay window, and counts of what was opened and dropped."""

    __slots__ = ("_highest", "_keys", "_window", "auth_failed", "malformed", "received",
                 "replayed", "unknown_key")  # fmt: skip

    def __init__(self) -> None:
        self._keys: dict[int, AESGCM] = {}
        self._highest = -1
        self._window = 0  # bit i: counter highest - i was received
        #: Datagrams opened, and dropped by reason (the media lane's LANE_DROP_REASONS).
        self.received = 0
        self.malformed = 0
        self.unknown_key = 0
        self.replayed = 0
        self.auth_failed = 0

    @property
    def has_keys(self) -> bool:
        """Whether the peer's key is known (it may seal)."""
        return bool(self._keys)

    def add_key(self, epoch: int, key: bytes) -> None:
        """The peer's key of ``epoch`` (the newest; the oldest beyond KEYS_KEPT goes)."""
        _check_key(epoch, key)
        self._keys.pop(epoch, None)
        self._keys[epoch] = AESGCM(key)
        while len(self._keys) > KEYS_KEPT:
            del self._keys[next(iter(self._keys))]

    def open(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """The pipe datagram a lane datagram seals; None (counted) when it is malformed, of an
        unknown key, replayed (RFC 3711 section 3.3.2: the highest counter and a window of
        REPLAY_WINDOW before it, moved only by authentic datagrams) or forged."""
        data = bytes(data)
        if len(data) < HEADER_BYTES + TAG_BYTES or data[0] & VERSION_MASK != VERSION:
            self.malformed += 1
            return None
        first, counter = HEADER.unpack_from(data)
        opener = self._keys.get(first & (EPOCHS - 1))
        if opener is None:
            self.unknown_key += 1
            return None
        behind = self._highest - counter
        if behind >= REPLAY_WINDOW or (behind >= 0 and self._window >> behind & 1):
            self.replayed += 1
            return None
        try:
            plain = opener.decrypt(NONCE.pack(counter), data[HEADER_BYTES:], data[:HEADER_BYTES])
        except InvalidTag:
            self.auth_failed += 1
            return None
        if behind < 0:
            shift = -behind
            if shift >= REPLAY_WINDOW:
                self._window = 1
            else:
                self._window = ((self._window << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self._highest = counter
        else:
            self._window |= 1 << behind
        self.received += 1
        return plain


class RelayOutput:
    """One relay tap as the forwarder runs it: a flow of one pipe, to one address."""

    __slots__ = (
        "address",
        "bytes",
        "failed",
        "filtered",
        "max_datagram",
        "packets",
        "prefix",
        "sealer",
        "sock",
        "spatial_mask",
    )

    def __init__(
        self,
        sealer: LaneSealer | None,
        sock: socket.socket | None,
        address: tuple[Any, ...],
        prefix: bytes,
        *,
        max_datagram: int,
        spatial_mask: int = 0,
    ) -> None:
        if sealer is not None and not isinstance(sealer, LaneSealer):
            raise TypeError("the sealer must be the reference kernels' LaneSealer")
        if not 1 <= len(prefix) <= 8:
            raise ValueError("a flow prefix is a QUIC varint: 1 to 8 bytes")
        if max_datagram <= len(prefix):
            raise ValueError("max_datagram must leave room for a packet")
        self.sealer = sealer
        #: Where datagrams go; None: kept for the forwarder's drain_relay_sent() (tests).
        self.sock = sock
        self.address = normalize_address(address)
        self.prefix = bytes(prefix)
        #: Largest pipe datagram (prefix and packet) the carrier takes, before sealing.
        self.max_datagram = max_datagram
        #: Bit n: the far side wants spatial layer n (its DEMAND).
        self.spatial_mask = spatial_mask
        #: Packets relayed (and their RTP bytes), not demanded, and handed back (not sealed).
        self.packets = 0
        self.bytes = 0
        self.filtered = 0
        self.failed = 0

    def take(self, packet: bytes, layer: int) -> bytes | None:
        """The datagram relaying ``packet`` (of spatial layer ``layer``); empty when the
        layer is not demanded (nothing to send, handled); None when this output cannot take
        it (handed back to the Python taps)."""
        if not (self.spatial_mask >> layer) & 1:
            self.filtered += 1
            return b""
        datagram = self.prefix + packet
        if len(datagram) > self.max_datagram:
            self.failed += 1
            return None
        if self.sealer is not None:
            sealed = self.sealer.seal(datagram)
            if sealed is None:
                self.failed += 1
                return None
            datagram = sealed
        self.packets += 1
        self.bytes += len(packet)
        return datagram
