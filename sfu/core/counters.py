"""Plain counters of the forwarding core, read by metrics at scrape time and by tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

from sfu._fastpath.values import REFUSAL_REASONS
from sfu.core.publication import SourceStream
from sfu.core.subscription import Subscription
from sfu.histogram import LATENCY_BUCKETS_S, PlainHistogram

__all__ = [
    "PeerCounters",
    "RouterStats",
    "stream_loss",
    "subscription_loss",
    "subscription_switches",
]


def _refusals() -> list[int]:
    return [0] * len(REFUSAL_REASONS)


@dataclass(slots=True)
class PeerCounters:
    """Plain counters of one peer (every part of it adds to the same object)."""

    rtp_in: int = 0
    rtp_forwarded: int = 0
    unknown_ssrc: int = 0
    malformed: int = 0
    rtx_in: int = 0
    padding_in: int = 0
    nacks_in: int = 0
    nacks_out: int = 0
    retransmits: int = 0
    keyframe_requests_in: int = 0
    keyframe_requests_out: int = 0
    twcc_out: int = 0
    reports_out: int = 0
    #: Transport-wide CC feedback and REMBs this peer sent about what it receives.
    twcc_in: int = 0
    remb_in: int = 0
    #: NACKed packets not resent: over the transport's retransmission budget, or superseded
    #: by a newer keyframe.
    retransmits_dropped: int = 0
    retransmits_superseded: int = 0
    #: Bandwidth probe clusters sent to this peer, by outcome, and their padding packets.
    probes_succeeded: int = 0
    probes_failed: int = 0
    probe_packets: int = 0
    #: Egress pacer (sfu.core.pacing): packets it released, their total wait in its queue
    #: (µs), and packets it dropped: its queue was full (the arriving one, or a queued one of
    #: a lower class evicted for it), or video that waited past its queue time limit.
    paced_packets: int = 0
    paced_queue_delay_us: int = 0
    pacer_dropped: int = 0
    pacer_evicted: int = 0
    pacer_expired: int = 0
    pacer_flushed: int = 0
    #: Sequence numbers of flushed video given again to the next packets (``RtpMunger.rewind``),
    #: so the subscriber does not count the flushed packets as lost.
    pacer_rewound: int = 0
    #: Layers dropped at once while waiting to switch down, being far above the budget
    #: (``ABANDON_PRICE_LIMIT`` in sfu.core.peer).
    layers_abandoned: int = 0
    #: Media ingested (including RTX repairs) and forwarded, by kind; bytes are RTP bytes.
    audio_in: int = 0
    audio_in_bytes: int = 0
    video_in: int = 0
    video_in_bytes: int = 0
    audio_out: int = 0
    audio_out_bytes: int = 0
    video_out: int = 0
    video_out_bytes: int = 0
    #: Keyframe requests from this peer's receivers, by message (RFC 4585 PLI, RFC 5104 FIR).
    pli_in: int = 0
    fir_in: int = 0
    #: The allocator's target changes by reason (sfu.core.allocator.REASONS) and its pauses
    #: and resumes of video subscriptions for bandwidth.
    target_changes_congestion: int = 0
    target_changes_upgrade: int = 0
    target_changes_hint: int = 0
    target_changes_publisher: int = 0
    bandwidth_pauses: int = 0
    bandwidth_resumes: int = 0
    #: Folded in when a publication or subscription ends (live ones are read at scrape time).
    layer_switches: int = 0
    ingress_expected: int = 0
    ingress_lost: int = 0
    egress_sent: int = 0
    egress_lost: int = 0
    #: RTP packets the data plane refused (never forwarded), by refusal code: the index into
    #: ``sfu._fastpath.values.REFUSAL_REASONS`` (a header defect, payload type, descriptor).
    rtp_refused: list[int] = field(default_factory=_refusals)

    def add(self, other: PeerCounters) -> None:
        """Add every counter of ``other`` into this one."""
        for f in fields(self):
            mine = getattr(self, f.name)
            if isinstance(mine, list):
                for i, n in enumerate(getattr(other, f.name)):
                    mine[i] += n
            else:
                setattr(self, f.name, mine + getattr(other, f.name))

    def refuse(self, code: int) -> None:
        """Count one RTP packet refused for reason ``code`` (out of range: the last)."""
        refused = self.rtp_refused
        refused[code if 0 < code < len(refused) else len(refused) - 1] += 1


def _latency_histogram() -> PlainHistogram:
    return PlainHistogram(LATENCY_BUCKETS_S)


@dataclass(slots=True)
class RouterStats:
    """Figures that outlive peers: the counters of peers that ended, folded together, and the
    sampled forwarding latency (receive to last send of one packet)."""

    retired: PeerCounters = field(default_factory=PeerCounters)
    forward_latency: PlainHistogram = field(default_factory=_latency_histogram)
    #: The clock ``now`` came from; None disables latency sampling (tests on manual time).
    clock: Callable[[], float] | None = None
    #: Sample one forwarded packet in this many per source stream (a power of two, minus one).
    sample_mask: int = 63


def stream_loss(stream: SourceStream) -> tuple[int, int]:
    """(expected, lost) so far on one incoming stream (RFC 3550 §A.3)."""
    return stream.stats.packets_expected, max(0, stream.stats.packets_lost)


def subscription_loss(sub: Subscription) -> tuple[int, int]:
    """(sent, lost as the receiver reports it) so far on one outgoing stream."""
    return sub.send_stats.packets_sent, max(0, sub.send_stats.cumulative_lost)


def subscription_switches(sub: Subscription) -> int:
    """Spatial layer switches made for one subscription (0 for audio)."""
    return sub.selector.switches if sub.selector is not None else 0
