"""Every label value the metrics can carry, as fixed sets: nothing a peer or user chose.

Room names, identities, display names, addresses and tokens never become label values; the
collector maps anything outside these sets to ``other`` (a test scrapes a busy server and
checks every value against :data:`ALLOWED`).
"""

from __future__ import annotations

from typing import Final

from sfu._fastpath.values import REFUSAL_REASONS
from sfu.cluster.placement import FORWARD_RESULTS, LOOKUP_RESULTS
from sfu.core.allocator import REASONS
from sfu.io.http_limits import REASONS as HTTP_REFUSALS
from sfu.packet.demux import PacketKind
from sfu.room.chat import REFUSAL_REASONS as CHAT_REFUSALS
from sfu.transport import ice
from sfu.transport.counters import CANDIDATE_TYPES
from sfu.transport.datachannel import DROP_REASONS as DATA_CHANNEL_DROPS
from sfu.transport.port import REFUSAL_REASONS as TRANSPORT_REFUSALS
from sfu.transport.tcp import CLOSE_REASONS as TCP_CLOSE_REASONS
from sfu.transport.transport import HandshakeFailure

__all__ = [
    "ALLOCATION_REASONS",
    "ALLOCATION_STATES",
    "ALLOWED",
    "DROP_REASONS",
    "HANDSHAKE_FAILURES",
    "KINDS",
    "drop_reason",
]

#: Datagram kinds on the media port (RFC 7983 demultiplexing).
KINDS: Final = frozenset(kind.name.lower() for kind in PacketKind)

_ICE_DROPS: Final = (
    ice.DROP_NOT_BINDING_REQUEST,
    ice.DROP_BAD_FINGERPRINT,
    ice.DROP_BAD_REQUEST,
    ice.DROP_WRONG_USERNAME,
    ice.DROP_BAD_INTEGRITY,
    ice.DROP_UNKNOWN_ATTRIBUTE,
    ice.DROP_ROLE_CONFLICT,
    ice.DROP_UNANSWERABLE,
)

#: Why a datagram or packet was dropped: the port's, the transports' and the router's reasons.
DROP_REASONS: Final = frozenset(
    {f"{kind}_unknown_source" for kind in KINDS}
    | {f"{kind}_unsupported" for kind in KINDS}
    | {"stun_" + reason.replace(" ", "_") for reason in _ICE_DROPS}
    | {
        "stun_malformed",
        "stun_not_binding_request",
        "stun_unknown_username",
        "dtls_unvalidated_source",
        "srtp_before_dtls",
        "srtp_unvalidated_source",
        "srtp_auth",
        "srtp_replay",
        "srtp_malformed",
        "srtp_streams",
        "srtp_protect_failed",
        "no_listener",
        "rtp_unknown_ssrc",
        "media_malformed",
        "other",
    }
    | {reason for reason in REFUSAL_REASONS if reason}
)


def drop_reason(reason: str) -> str:
    """``reason`` if it is a known drop reason, else ``other`` (labels stay a fixed set)."""
    return reason if reason in DROP_REASONS else "other"


#: Why the allocator changed a subscription's target layer (sfu.core.allocator.REASONS).
ALLOCATION_REASONS: Final = REASONS
#: A subscriber's allocation: everything it wants fits (stable) or not (deficient).
ALLOCATION_STATES: Final = ("stable", "deficient")

#: (stage, reason) of a transport that failed to connect (:class:`HandshakeFailure` values).
HANDSHAKE_FAILURES: Final = tuple(failure.value for failure in HandshakeFailure)

#: Allowed values per label name, across every ``sfu_*`` metric.
ALLOWED: Final[dict[str, frozenset[str]]] = {
    "kind": KINDS | {"websocket", "whip", "whep", "transport_cc", "remb"},
    "media": frozenset({"audio", "video"}),
    "direction": frozenset({"ingress", "egress"}),
    "reason": DROP_REASONS
    | frozenset(reason for _, reason in HANDSHAKE_FAILURES)
    | frozenset(TRANSPORT_REFUSALS)
    | frozenset(HTTP_REFUSALS)
    | frozenset(ALLOCATION_REASONS)
    | frozenset(CHAT_REFUSALS)
    | frozenset(DATA_CHANNEL_DROPS)
    | frozenset({"budget", "superseded"})  # retransmissions skipped
    | frozenset({"queue_full", "evicted", "expired", "paused"}),  # egress pacer drops
    "listener": frozenset({"http", "ops"}),
    "outcome": frozenset({"succeeded", "failed"}),  # probe clusters
    "stage": frozenset({"ice", "dtls"}),
    "state": frozenset({"new", "connecting", "connected", "waiting", "joined"})
    | frozenset(ALLOCATION_STATES),
    "event": frozenset({"paused", "resumed", "relayed", "delivered"})
    | frozenset({"published", "received", "dropped"}),  # the cluster bus
    "type": frozenset({"pli", "fir"}),
    "implementation": frozenset({"cython", "python"}),
    "le": frozenset(),  # bucket bounds: numbers, checked separately
    "generation": frozenset({"0", "1", "2"}),  # python_gc_* from prometheus-client
    "path": frozenset({"fast", "slow", "relayed", "relay_out", "relay_in"}),
    "stat": frozenset({"min", "max"}),  # node link round trips
    "error": frozenset(
        {
            "protect",
            "send",
            "relay_send",
            "log_overflow",
            "relay_overflow",
            "relay_in_overflow",
            "link_handler",
            "relay_in_orphan",
        }
    ),
    "candidate_type": frozenset(CANDIDATE_TYPES),
    "tcp_close_reason": frozenset(TCP_CLOSE_REASONS),
    # Cluster directory reads for joins sent on, and WHIP/WHEP POSTs forwarded to a node.
    "result": frozenset(LOOKUP_RESULTS) | frozenset(FORWARD_RESULTS),
}
