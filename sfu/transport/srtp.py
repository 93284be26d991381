"""SRTP/SRTCP for one transport (RFC 3711; AES-GCM per RFC 7714), keyed from DTLS-SRTP.

The per-packet work is the fast-path SRTP kernel (``sfu._fastpath.SrtpContext``): OpenSSL
libcrypto from Cython when built, the pure-Python reference over ``cryptography`` with
``SFU_NO_EXTENSIONS=1``. Both are proven byte-identical to libsrtp (pylibsrtp) by the tests.
The kernel tracks the rollover counter per SSRC (RFC 3711 §3.3.1) and keeps the replay window
(RFC 3711 §3.3.2). Every unprotect failure raises one :class:`SrtpError` with a fixed reason and
is counted, so a datagram handler drops and counts with a single ``except``.

The two contexts are public (``outbound``, ``inbound``) so that the compiled data plane can
protect and unprotect with the very same per-SSRC state as this Python path: two states for
one key would repeat SRTP/SRTCP indexes, which with GCM reuses nonces.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfu._fastpath import SrtpContext, SrtpError
from sfu.transport.dtls import SrtpKeys

__all__ = ["SrtpCounters", "SrtpError", "SrtpSession"]

# The kernel's replay window bounds (its compiled ring holds 1024 indexes per SSRC).
_MIN_WINDOW = 64
_MAX_WINDOW = 1024
# SSRCs per direction of one transport: every forwarded track and its RTX, plus RTCP senders.
# The kernel's tables grow with the SSRCs actually seen; this only bounds a misbehaving peer.
MAX_STREAMS = 1024


@dataclass(slots=True)
class SrtpCounters:
    """Failures by reason, plain ints read by the metrics collector at scrape time."""

    auth: int = 0
    replay: int = 0
    malformed: int = 0
    protect_failed: int = 0


class SrtpSession:
    """Outbound (local keys) and inbound (remote keys) SRTP contexts for one transport."""

    __slots__ = (
        "_protect",
        "_protect_rtcp",
        "_unprotect",
        "_unprotect_rtcp",
        "counters",
        "inbound",
        "outbound",
        "profile",
    )

    def __init__(
        self, keys: SrtpKeys, *, replay_window: int = 1024, allow_repeat_tx: bool = True
    ) -> None:
        """Build both contexts.

        ``allow_repeat_tx`` lets us re-protect a packet with a sequence number already sent
        (a NACK retransmission without RTX). Only ever re-send byte-identical packets: with GCM
        a different payload under the same index would reuse the nonce (RFC 7714 §8.1).
        """
        if not _MIN_WINDOW <= replay_window <= _MAX_WINDOW:
            raise ValueError(f"replay_window must be in [{_MIN_WINDOW}, {_MAX_WINDOW}]")
        profile = keys.profile.value
        # The outbound window bounds how far behind the newest number a packet may still be
        # protected: a retransmission without RTX, and the numbers a munger gives again after
        # a pacer dropped them unsent (``RtpMunger.rewind``, up to REWIND_LIMIT back).
        self.outbound = SrtpContext(
            profile,
            keys.local_key,
            keys.local_salt,
            outbound=True,
            replay_window=replay_window,
            max_streams=MAX_STREAMS,
            allow_repeat_tx=allow_repeat_tx,
        )
        self.inbound = SrtpContext(
            profile,
            keys.remote_key,
            keys.remote_salt,
            outbound=False,
            replay_window=replay_window,
            max_streams=MAX_STREAMS,
        )
        self.profile = keys.profile
        self.counters = SrtpCounters()
        self._protect = self.outbound.protect_rtp
        self._protect_rtcp = self.outbound.protect_rtcp
        self._unprotect = self.inbound.unprotect_rtp
        self._unprotect_rtcp = self.inbound.unprotect_rtcp

    def protect_rtp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one RTP packet (RFC 3711 §3.3)."""
        try:
            return self._protect(packet)
        except SrtpError:
            self.counters.protect_failed += 1
            raise

    def protect_rtcp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one (compound) RTCP packet (RFC 3711 §3.4)."""
        try:
            return self._protect_rtcp(packet)
        except SrtpError:
            self.counters.protect_failed += 1
            raise

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """Authenticate, replay-check and decrypt one SRTP packet; SrtpError on any failure."""
        try:
            return self._unprotect(packet)
        except SrtpError as exc:
            self._failed(exc.reason)
            raise

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """Authenticate, replay-check and decrypt one SRTCP packet; SrtpError on any failure."""
        try:
            return self._unprotect_rtcp(packet)
        except SrtpError as exc:
            self._failed(exc.reason)
            raise

    def _failed(self, reason: str) -> None:
        if reason == "auth":
            self.counters.auth += 1
        elif reason == "replay":
            self.counters.replay += 1
        else:  # malformed, or an SSRC beyond MAX_STREAMS
            self.counters.malformed += 1
