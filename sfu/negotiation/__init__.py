"""Offer/answer negotiation for an ICE-lite SFU (JSEP, RFC 8829; BUNDLE, RFC 9143).

:func:`negotiate` reads a client's offer and decides what the server accepts: one BUNDLE
transport (ICE credentials, DTLS fingerprint and role) and, per m= section, the codecs with the
offer's payload types, the header-extension ids, the offerer's SSRCs and simulcast rids.
Sections the server cannot serve (no common codec, not bundled; data channels unless the caller
serves them, ``data_channels=True``) are rejected
with port 0 in the answer (RFC 8829 §5.3.1) instead of failing the whole offer.
:func:`build_answer` turns that decision into the answer SDP. Pure functions: no I/O, no clock.

Every problem with the offer raises :class:`NegotiationError`, whose message is precise and
safe to return to the client (it echoes at most short, clipped identifiers).
"""

from sfu.negotiation.answer import HostCandidate, build_answer, candidate_priority
from sfu.negotiation.offer import negotiate
from sfu.negotiation.policy import (
    DEFAULT_HEADER_EXTENSIONS,
    DEFAULT_RTCP_FEEDBACK,
    CodecPreferences,
    NegotiationError,
    forwardable,
)
from sfu.negotiation.result import (
    NegotiatedCodec,
    NegotiatedDataChannel,
    NegotiatedMedia,
    NegotiatedSession,
    RejectedMedia,
    SendStream,
)

__all__ = [
    "DEFAULT_HEADER_EXTENSIONS",
    "DEFAULT_RTCP_FEEDBACK",
    "CodecPreferences",
    "HostCandidate",
    "NegotiatedCodec",
    "NegotiatedDataChannel",
    "NegotiatedMedia",
    "NegotiatedSession",
    "NegotiationError",
    "RejectedMedia",
    "SendStream",
    "build_answer",
    "candidate_priority",
    "forwardable",
    "negotiate",
]
