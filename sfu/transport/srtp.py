"""SRTP/SRTCP contexts (RFC 3711; AES-GCM per RFC 7714) over libsrtp, keyed from DTLS-SRTP.

This is the per-packet reference path: each call is one libsrtp call plus a zero-cost ``try``.
libsrtp tracks the rollover counter per SSRC (RFC 3711 §3.3.1) and keeps the replay window
(RFC 3711 §3.3.2). Every unprotect failure raises one :class:`SrtpError` with a fixed reason and
is counted, so a datagram handler drops and counts with a single ``except``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pylibsrtp

from sfu.transport.dtls import SrtpKeys

__all__ = ["SrtpCounters", "SrtpError", "SrtpSession"]

# libsrtp's window must hold at least 64 packets and fit in 15 bits (srtp_rdbx_init).
_MIN_WINDOW = 64
_MAX_WINDOW = 0x7FFF

# pylibsrtp error messages (libsrtp srtp_err_status_t) -> our reason.
_AUTH = frozenset({"authentication failure", "cipher failure"})
_REPLAY = frozenset(
    {
        "replay check failed (bad index)",
        "replay check failed (index too old)",
        "packet index is too old to consider",
        "packet index advanced, reset needed",
    }
)


class SrtpError(ValueError):
    """An SRTP packet could not be protected or unprotected; ``reason`` is auth/replay/malformed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class SrtpCounters:
    """Failures by reason, plain ints read by the metrics collector at scrape time."""

    auth: int = 0
    replay: int = 0
    malformed: int = 0
    protect_failed: int = 0


def _reason(exc: Exception) -> str:
    message = str(exc)
    if message in _AUTH:
        return "auth"
    if message in _REPLAY:
        return "replay"
    return "malformed"


class SrtpSession:
    """Outbound (local keys) and inbound (remote keys) SRTP contexts for one transport."""

    __slots__ = (
        "_protect",
        "_protect_rtcp",
        "_unprotect",
        "_unprotect_rtcp",
        "counters",
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
        libsrtp_profile = keys.profile.libsrtp_profile
        outbound = pylibsrtp.Policy(
            key=keys.local_key + keys.local_salt,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=libsrtp_profile,
        )
        outbound.allow_repeat_tx = allow_repeat_tx
        inbound = pylibsrtp.Policy(
            key=keys.remote_key + keys.remote_salt,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=libsrtp_profile,
        )
        inbound.window_size = replay_window
        tx = pylibsrtp.Session(policy=outbound)
        rx = pylibsrtp.Session(policy=inbound)
        self.profile = keys.profile
        self.counters = SrtpCounters()
        self._protect = tx.protect
        self._protect_rtcp = tx.protect_rtcp
        self._unprotect = rx.unprotect
        self._unprotect_rtcp = rx.unprotect_rtcp

    def protect_rtp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one RTP packet (RFC 3711 §3.3)."""
        try:
            result: bytes = self._protect(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            self.counters.protect_failed += 1
            raise SrtpError(_reason(exc)) from None
        return result

    def protect_rtcp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one (compound) RTCP packet (RFC 3711 §3.4)."""
        try:
            result: bytes = self._protect_rtcp(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            self.counters.protect_failed += 1
            raise SrtpError(_reason(exc)) from None
        return result

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """Authenticate, replay-check and decrypt one SRTP packet; SrtpError on any failure."""
        try:
            result: bytes = self._unprotect(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise self._failed(exc) from None
        return result

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """Authenticate, replay-check and decrypt one SRTCP packet; SrtpError on any failure."""
        try:
            result: bytes = self._unprotect_rtcp(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise self._failed(exc) from None
        return result

    def _failed(self, exc: Exception) -> SrtpError:
        reason = _reason(exc)
        if reason == "auth":
            self.counters.auth += 1
        elif reason == "replay":
            self.counters.replay += 1
        else:
            self.counters.malformed += 1
        return SrtpError(reason)
