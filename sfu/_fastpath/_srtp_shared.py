"""What the two SRTP kernels (``_srtp.pyx`` and ``_srtp_py.py``) share: profiles, codes, the error.

Kept in one place so the compiled kernel and the pure-Python reference cannot drift apart on
anything but the code that does the work. The compiled kernel mirrors the numeric codes in its
``.pxd``; a test checks that they agree.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = [
    "ERR_AUTH",
    "ERR_DIRECTION",
    "ERR_MALFORMED",
    "ERR_NO_ROOM",
    "ERR_REPLAY",
    "ERR_STREAMS",
    "MAX_PACKET",
    "MAX_TRAILER",
    "PROFILES",
    "REASONS",
    "SrtpError",
    "SrtpProfileParams",
    "check_context_args",
    "reason_for",
]


class SrtpProfileParams(NamedTuple):
    """Lengths in bytes for one protection profile (RFC 5764 §4.1.2, RFC 7714 §14.2)."""

    key_len: int
    salt_len: int
    auth_key_len: int  # 0 for AEAD
    tag_len: int
    aead: bool


#: Profiles by their DTLS-SRTP name (``sfu.transport.dtls.SrtpProfile`` values).
PROFILES: Final[dict[str, SrtpProfileParams]] = {
    "SRTP_AES128_CM_SHA1_80": SrtpProfileParams(16, 14, 20, 10, False),
    "SRTP_AEAD_AES_128_GCM": SrtpProfileParams(16, 12, 0, 16, True),
}

# Result codes of the in-place operations: a non-negative result is the new packet length.
#: Authentication failed (wrong key, tampered packet, wrong rollover counter guess).
ERR_AUTH: Final = -1
#: The packet index was seen already or is older than the replay window.
ERR_REPLAY: Final = -2
#: The packet is too short for its header, CSRCs, extension block and tag, or its SRTCP
#: E flag is clear (we always encrypt, as libsrtp's policy does).
ERR_MALFORMED: Final = -3
#: A new SSRC arrived while the context already tracks ``max_streams`` of them.
ERR_STREAMS: Final = -4
#: (in-place protect only) the buffer has no room for the trailer.
ERR_NO_ROOM: Final = -5
#: (C level only) protect on an inbound context or unprotect on an outbound one.
ERR_DIRECTION: Final = -6

#: ``SrtpError.reason`` for each code.
REASONS: Final[dict[int, str]] = {
    ERR_AUTH: "auth",
    ERR_REPLAY: "replay",
    ERR_MALFORMED: "malformed",
    ERR_STREAMS: "streams",
    ERR_NO_ROOM: "no_room",
    ERR_DIRECTION: "direction",
}

#: Longest packet either kernel accepts as input (a UDP datagram cannot be longer).
MAX_PACKET: Final = 0xFFFF
#: Most bytes protect adds: the SRTCP index word plus the longest tag (GCM).
MAX_TRAILER: Final = 4 + 16

#: Replay window bounds in packets (the compiled kernel keeps a 1024-bit ring per stream).
MIN_WINDOW: Final = 64
MAX_WINDOW: Final = 1024
#: Bounds for ``max_streams``.
MAX_STREAMS_LIMIT: Final = 4096


class SrtpError(ValueError):
    """A packet could not be protected or unprotected.

    ``reason`` is one of ``auth``, ``replay``, ``malformed`` or ``streams`` (``REASONS``), the
    same reasons ``sfu.transport.srtp.SrtpError`` counts.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def reason_for(code: int) -> str:
    """The ``SrtpError`` reason for a negative result code."""
    return REASONS.get(code, "malformed")


def check_context_args(
    profile: str,
    key: bytes,
    salt: bytes,
    auth_key: bytes | None,
    replay_window: int,
    max_streams: int,
) -> SrtpProfileParams:
    """Validate constructor arguments identically for both kernels; ValueError if wrong.

    ``auth_key`` is None for master keys (nothing to check) or the session authentication key.
    """
    for value in (key, salt, auth_key):
        if value is not None and not isinstance(value, bytes):
            raise TypeError("SRTP keys and salts must be bytes")
    params = PROFILES.get(profile)
    if params is None:
        raise ValueError(f"unknown SRTP profile {profile!r}")
    if len(key) != params.key_len:
        raise ValueError(f"{profile} needs a {params.key_len}-byte key")
    if len(salt) != params.salt_len:
        raise ValueError(f"{profile} needs a {params.salt_len}-byte salt")
    if auth_key is not None and len(auth_key) != params.auth_key_len:
        raise ValueError(f"{profile} needs a {params.auth_key_len}-byte authentication key")
    if not MIN_WINDOW <= replay_window <= MAX_WINDOW:
        raise ValueError(f"replay_window must be in [{MIN_WINDOW}, {MAX_WINDOW}]")
    if not 1 <= max_streams <= MAX_STREAMS_LIMIT:
        raise ValueError(f"max_streams must be in [1, {MAX_STREAMS_LIMIT}]")
    return params
