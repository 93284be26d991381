"""The Prometheus collector: reads the server's plain counters at scrape time.

Nothing on the packet path touches prometheus-client (no locks, no ``inc()``): the media port,
transports and peers bump plain integers, and :class:`SfuCollector` sums them into metric
families when Prometheus scrapes. Counters of peers that ended are folded into
``RoomService.stats.retired`` so totals never go backwards when people leave; a high-water mark
per series guards the few sums that could dip (a receiver's cumulative-lost may shrink on
duplicates, RFC 3550 §6.4.1).

Label values come only from the fixed sets of :mod:`sfu.metrics.labels`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sfu._fastpath.values import REFUSAL_REASONS
from sfu.core.counters import (
    PeerCounters,
    stream_loss,
    subscription_loss,
    subscription_switches,
)
from sfu.core.kernels import Forwarder
from sfu.histogram import BANDWIDTH_BUCKETS_BPS, PlainHistogram
from sfu.io.http_limits import HttpLimitCounters
from sfu.metrics.labels import (
    ALLOCATION_REASONS,
    ALLOCATION_STATES,
    DROP_REASONS,
    HANDSHAKE_FAILURES,
    KINDS,
    drop_reason,
)
from sfu.metrics.loop_lag import LoopLagMonitor
from sfu.room.chat import REFUSAL_REASONS as CHAT_REFUSAL_REASONS
from sfu.room.room import ParticipantState
from sfu.room.service import RoomService
from sfu.transport.counters import CANDIDATE_TYPES
from sfu.transport.datachannel import DROP_REASONS as DATA_CHANNEL_DROPS
from sfu.transport.port import MediaPort
from sfu.transport.tcp import CLOSE_REASONS as TCP_CLOSE_REASONS
from sfu.transport.tcp import IceTcpGate

__all__ = ["MetricSources", "SfuCollector"]


@dataclass
class MetricSources:
    """Where the collector reads from (callables so it can be built before the server starts)."""

    port: MediaPort
    #: The data plane's forwarder: its own RTP counters never pass through the port.
    forwarder: Forwarder
    rooms: Callable[[], RoomService | None]
    loop_lag: LoopLagMonitor
    implementation: str
    version: str
    ready: Callable[[], bool]
    draining: Callable[[], bool]
    signaling_connections: Callable[[], int]
    #: The HTTP listeners' connection limits (None: not measured, as in tools and tests).
    http_limits: Callable[[], HttpLimitCounters | None] = lambda: None
    #: The ICE-TCP connections' gate (None: no ICE-TCP in this process).
    tcp_gate: Callable[[], IceTcpGate | None] = lambda: None
    #: The data plane's node link reader: datagrams whose handler raised, and opened relay
    #: datagrams whose input closed within their batch (both lost).
    link_drops: Callable[[], tuple[int, int]] = lambda: (0, 0)


@dataclass
class _RouterSnapshot:
    counters: PeerCounters
    rooms: int
    participants: dict[tuple[str, str], int]
    publications: dict[str, int]
    subscriptions: dict[str, int]
    estimates: PlainHistogram
    #: Subscribers (with video subscriptions) by allocation state, and the video
    #: subscriptions paused for bandwidth now.
    allocation: dict[str, int] = field(default_factory=dict)
    paused: int = 0


def _histogram(name: str, doc: str, hist: PlainHistogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], hist.cumulative(), sum_value=hist.sum)
    return family


class SfuCollector(Collector):
    """Yields every ``sfu_*`` metric family from plain counters, computed per scrape."""

    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources
        self._high: dict[tuple[str, tuple[str, ...]], float] = {}

    def describe(self) -> list[Metric]:
        """Nothing up front: families are built per scrape (no pre-registration checks)."""
        return []

    # -- helpers ------------------------------------------------------------------------------

    def _counter(
        self, name: str, doc: str, labels: list[str], samples: dict[tuple[str, ...], float]
    ) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=labels)
        for values, value in sorted(samples.items()):
            key = (name, values)
            value = max(value, self._high.get(key, 0.0))
            self._high[key] = value
            family.add_metric(list(values), value)
        return family

    def _router(self) -> _RouterSnapshot:
        total = PeerCounters()
        participants: dict[tuple[str, str], int] = defaultdict(int)
        publications: dict[str, int] = {"audio": 0, "video": 0}
        subscriptions: dict[str, int] = {"audio": 0, "video": 0}
        estimates = PlainHistogram(BANDWIDTH_BUCKETS_BPS)
        allocation = dict.fromkeys(ALLOCATION_STATES, 0)
        paused = 0
        service = self.sources.rooms()
        if service is None:
            return _RouterSnapshot(total, 0, participants, publications, subscriptions, estimates)
        total.add(service.stats.retired)
        for room in service.rooms.values():
            for participant in (*room.participants.values(), *room.waiting.values()):
                if participant.state is ParticipantState.LEFT:
                    continue
                kind = participant.kind if participant.kind in ("whip", "whep") else "websocket"
                participants[(participant.state.value, kind)] += 1
                peer = participant.peer
                if peer is None or peer.retired:
                    continue
                total.add(peer.counters)
                for pub in peer.publications.values():
                    publications["video" if pub.video else "audio"] += 1
                    for stream in pub.layers.values():
                        expected, lost = stream_loss(stream)
                        total.ingress_expected += expected
                        total.ingress_lost += lost
                for sub in peer.subscriptions.values():
                    subscriptions["video" if sub.publication.video else "audio"] += 1
                    sent, lost = subscription_loss(sub)
                    total.egress_sent += sent
                    total.egress_lost += lost
                    total.layer_switches += subscription_switches(sub)
                estimate = peer.estimate_bps if peer.subscriptions else None
                if estimate is not None:
                    estimates.observe(estimate)
                last = peer.allocator.last
                if last is not None and last.targets:
                    state = "deficient" if last.deficient else "stable"
                    allocation[state] += 1
                    paused += peer.allocator.paused_count
        return _RouterSnapshot(
            total,
            len(service.rooms),
            participants,
            publications,
            subscriptions,
            estimates,
            allocation,
            paused,
        )

    def _chat(self) -> Iterator[Metric]:
        """The chat relay's counts (no room, no participant: a fixed reason set)."""
        service = self.sources.rooms()
        relayed = delivered = 0.0
        refused: dict[tuple[str, ...], float] = {(r,): 0.0 for r in CHAT_REFUSAL_REASONS}
        if service is not None:
            chat = service.chat
            relayed, delivered = float(chat.relayed), float(chat.delivered)
            for reason, n in chat.refused.items():
                refused[(reason,)] += n
        yield self._counter(
            "sfu_chat_messages",
            "Chat messages relayed (accepted) and copies delivered to participants.",
            ["event"],
            {("relayed",): relayed, ("delivered",): delivered},
        )
        yield self._counter(
            "sfu_chat_refused", "Chat messages the relay refused, by reason.", ["reason"], refused
        )
        drops: dict[tuple[str, ...], float] = {(r,): 0.0 for r in DATA_CHANNEL_DROPS}
        if service is not None:
            for reason, n in service.chat.channel_drops.items():
                drops[(reason,)] += n
        yield self._counter(
            "sfu_datachannel_drops",
            "Data channel input dropped or sends refused (SCTP, DCEP), by reason.",
            ["reason"],
            drops,
        )

    # -- the scrape ---------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """One consistent read of every counter, as metric families."""
        src = self.sources
        port = src.port.counters
        router = self._router()
        c = router.counters

        yield from self._traffic(src.port, src.forwarder, c, src.link_drops())
        # Every known reason is exposed, at 0 until it happens, so dashboards and alerts
        # never query a series that does not exist yet.
        drops: dict[tuple[str, ...], float] = {(reason,): 0.0 for reason in DROP_REASONS}
        for reason, n in port.drops.items():
            drops[(drop_reason(reason),)] += n
        drops[("rtp_unknown_ssrc",)] += c.unknown_ssrc
        drops[("media_malformed",)] += c.malformed
        for code, n in enumerate(c.rtp_refused):
            if code:
                drops[(REFUSAL_REASONS[code],)] += n
        yield self._counter(
            "sfu_packets_dropped", "Datagrams and packets dropped, by reason.", ["reason"], drops
        )
        yield from self._chat()
        yield self._counter(
            "sfu_srtp_auth_failures",
            "SRTP/SRTCP packets whose authentication tag did not verify.",
            [],
            {(): port.drops.get("srtp_auth", 0)},
        )
        yield self._counter(
            "sfu_nacks_received", "Generic NACKs received from subscribers.", [], {(): c.nacks_in}
        )
        yield self._counter(
            "sfu_nacks_sent", "Generic NACKs sent to publishers.", [], {(): c.nacks_out}
        )
        yield self._counter(
            "sfu_retransmitted_packets",
            "Packets retransmitted to subscribers in answer to NACKs.",
            [],
            {(): c.retransmits},
        )
        yield self._counter(
            "sfu_retransmissions_skipped",
            "NACKed packets not resent: over the transport's bandwidth budget, or older than a "
            "keyframe already forwarded.",
            ["reason"],
            {("budget",): c.retransmits_dropped, ("superseded",): c.retransmits_superseded},
        )
        yield self._counter(
            "sfu_probe_clusters",
            "Bandwidth probe clusters sent to subscribers, by outcome.",
            ["outcome"],
            {("succeeded",): c.probes_succeeded, ("failed",): c.probes_failed},
        )
        yield self._counter(
            "sfu_probe_packets",
            "Padding-only probe packets sent to subscribers.",
            [],
            {(): c.probe_packets},
        )
        yield self._counter(
            "sfu_paced_packets",
            "Packets the subscribers' egress pacers released.",
            [],
            {(): c.paced_packets},
        )
        yield self._counter(
            "sfu_pacer_queue_delay_seconds",
            "Total time released packets waited in the egress pacers (over sfu_paced_packets: "
            "the mean queue delay).",
            [],
            {(): c.paced_queue_delay_us / 1e6},
        )
        yield self._counter(
            "sfu_pacer_drops",
            "Packets the egress pacers dropped, by reason: queue_full (the arriving packet), "
            "evicted (a queued packet of a lower class, for a higher one), expired (video "
            "that waited past the queue time limit) or paused (queued video, retransmissions "
            "and probes of a transport none of whose video is forwarded any more: paused, "
            "or its layers abandoned).",
            ["reason"],
            {
                ("queue_full",): c.pacer_dropped,
                ("evicted",): c.pacer_evicted,
                ("expired",): c.pacer_expired,
                ("paused",): c.pacer_flushed,
            },
        )
        yield self._counter(
            "sfu_pacer_sequence_rewound",
            "Sequence numbers of video dropped from an egress pacer (reason paused) that were "
            "given again to the packets forwarded next, so the subscriber saw no gap.",
            [],
            {(): c.pacer_rewound},
        )
        yield self._counter(
            "sfu_transport_feedback_received",
            "Subscriber feedback driving the bandwidth estimate, by kind.",
            ["kind"],
            {("transport_cc",): c.twcc_in, ("remb",): c.remb_in},
        )
        yield self._counter(
            "sfu_keyframe_requests_received",
            "Keyframe requests from subscribers, by message.",
            ["type"],
            {("pli",): c.pli_in, ("fir",): c.fir_in},
        )
        yield self._counter(
            "sfu_keyframe_requests_sent",
            "PLIs sent to publishers (layer switches and subscriber requests, de-duplicated).",
            [],
            {(): c.keyframe_requests_out},
        )
        yield self._counter(
            "sfu_layer_switches",
            "Simulcast spatial layer switches made for subscribers.",
            [],
            {(): c.layer_switches},
        )
        yield self._counter(
            "sfu_layer_target_changes",
            "Target layer changes made by the bandwidth allocator, by reason.",
            ["reason"],
            {(r,): getattr(c, f"target_changes_{r}") for r in ALLOCATION_REASONS},
        )
        yield self._counter(
            "sfu_layers_abandoned",
            "Layers dropped at once while waiting to switch down, being far above the "
            "subscriber's budget (the subscription restarts at a lower layer's keyframe).",
            [],
            {(): c.layers_abandoned},
        )
        yield self._counter(
            "sfu_bandwidth_pauses",
            "Video subscriptions paused because not even their lowest layer fit, and resumed.",
            ["event"],
            {("paused",): c.bandwidth_pauses, ("resumed",): c.bandwidth_resumes},
        )
        yield self._counter(
            "sfu_rtp_packets_expected",
            "RTP packets expected: from publishers (by sequence number) and sent to subscribers.",
            ["direction"],
            {("ingress",): c.ingress_expected, ("egress",): c.egress_sent},
        )
        yield self._counter(
            "sfu_rtp_packets_lost",
            "RTP packets lost: missing from publishers, and reported lost by subscribers.",
            ["direction"],
            {("ingress",): c.ingress_lost, ("egress",): c.egress_lost},
        )
        failures: dict[tuple[str, ...], float] = dict.fromkeys(HANDSHAKE_FAILURES, 0.0)
        for key, n in port.handshake_failures.items():
            failures[key] = failures.get(key, 0.0) + n
        yield self._counter(
            "sfu_handshake_failures",
            "Transports that failed to connect, by stage and reason.",
            ["stage", "reason"],
            failures,
        )
        yield self._counter(
            "sfu_transports_connected",
            "Transports that connected, by how the client reached us (udp, tcp, relay).",
            ["candidate_type"],
            {(t,): float(port.connected_by_type.get(t, 0)) for t in CANDIDATE_TYPES},
        )
        yield self._counter(
            "sfu_transport_failures_by_candidate",
            "Transports that failed to connect, by the candidate type last selected (none: "
            "no valid ICE check ever arrived).",
            ["candidate_type"],
            {(t,): float(port.failed_by_type.get(t, 0)) for t in CANDIDATE_TYPES},
        )
        gate = self.sources.tcp_gate()
        if gate is not None:
            yield self._counter(
                "sfu_ice_tcp_connections_opened",
                "ICE-TCP connections accepted.",
                [],
                {(): float(gate.opened)},
            )
            yield self._counter(
                "sfu_ice_tcp_connections_closed",
                "ICE-TCP connections closed, by reason (hostile ones included).",
                ["tcp_close_reason"],
                {(r,): float(gate.closed.get(r, 0)) for r in TCP_CLOSE_REASONS},
            )
            yield GaugeMetricFamily(
                "sfu_ice_tcp_connections",
                "ICE-TCP connections held now.",
                gate.connection_count,
            )
        yield _histogram(
            "sfu_ice_handshake_duration_seconds",
            "From the answer to the first valid ICE connectivity check.",
            port.ice_handshake,
        )
        yield _histogram(
            "sfu_dtls_handshake_duration_seconds",
            "From the first valid ICE check to DTLS-SRTP keys.",
            port.dtls_handshake,
        )
        service = src.rooms()
        if service is not None:
            yield _histogram(
                "sfu_forwarding_latency_seconds",
                "Sampled time from receiving an RTP packet to its last forwarded copy.",
                service.stats.forward_latency,
            )
        yield _histogram(
            "sfu_event_loop_lag_seconds",
            "How late a periodic event-loop timer fired.",
            src.loop_lag.histogram,
        )
        estimates = GaugeHistogramMetricFamily(
            "sfu_subscriber_estimated_bandwidth_bits_per_second",
            "Current downlink bandwidth estimates of subscribers' transports (send-side, from "
            "transport-wide CC feedback; REMB where transport-cc is not negotiated).",
        )
        estimates.add_metric([], router.estimates.cumulative(), gsum_value=router.estimates.sum)
        yield estimates
        yield from self._gauges(router)
        info = InfoMetricFamily("sfu_build", "Version and active data-plane implementation.")
        info.add_metric([], {"version": src.version, "implementation": src.implementation})
        yield info

    def _traffic(
        self,
        port: MediaPort,
        forwarder: Forwarder,
        c: PeerCounters,
        link_drops: tuple[int, int],
    ) -> Iterator[Metric]:
        counters = port.counters
        # The data plane's own RTP (never seen by the port's Python code) is added to its kind.
        for direction, packets, octets, fast, fast_bytes in (
            (
                "received",
                counters.received,
                counters.received_bytes,
                forwarder.fast_packets,
                forwarder.fast_bytes,
            ),
            (
                "sent",
                counters.sent,
                counters.sent_bytes,
                forwarder.sent_packets,
                forwarder.sent_bytes,
            ),
        ):
            yield self._counter(
                f"sfu_datagrams_{direction}",
                f"Datagrams {direction} on the media port, by kind.",
                ["kind"],
                {(k,): packets.get(k, 0) + (fast if k == "rtp" else 0) for k in sorted(KINDS)},
            )
            yield self._counter(
                f"sfu_datagram_bytes_{direction}",
                f"UDP payload bytes {direction} on the media port, by kind.",
                ["kind"],
                {(k,): octets.get(k, 0) + (fast_bytes if k == "rtp" else 0) for k in sorted(KINDS)},
            )
        yield self._counter(
            "sfu_dataplane_datagrams",
            "Datagrams the data plane forwarded itself (fast), handed to Python (slow), "
            "took decrypted from a relay pipe and forwarded itself (relayed), sealed and "
            "sent itself to another node's relay pipe (relay_out), or opened from another "
            "node's media lane and forwarded itself (relay_in).",
            ["path"],
            {
                ("fast",): forwarder.fast_packets,
                ("slow",): forwarder.slow_packets,
                ("relayed",): forwarder.ingested_packets,
                ("relay_out",): forwarder.relay_sent,
                ("relay_in",): forwarder.relay_in_packets,
            },
        )
        yield self._counter(
            "sfu_dataplane_errors",
            "Data-plane failures: SRTP protect, sends the kernel refused (media, and relay "
            "datagrams to other nodes), ingress log overflow, relay log overflow (packets of "
            "relayed publications not handed to the pipes), relay input overflow (lane "
            "datagrams the data plane opened and Python did not take in time), node link "
            "datagrams whose handler failed, opened lane datagrams whose link closed within "
            "their batch.",
            ["error"],
            {
                ("protect",): forwarder.protect_errors,
                ("send",): forwarder.send_errors,
                ("relay_send",): forwarder.relay_send_errors,
                ("log_overflow",): forwarder.log_overflow,
                ("relay_overflow",): forwarder.relay_overflow,
                ("relay_in_overflow",): forwarder.relay_in_overflow,
                ("link_handler",): link_drops[0],
                ("relay_in_orphan",): link_drops[1],
            },
        )
        yield self._counter(
            "sfu_rtp_packets_received",
            "Decrypted RTP media packets ingested from publishers (RTX repairs included).",
            ["media"],
            {("audio",): c.audio_in, ("video",): c.video_in},
        )
        yield self._counter(
            "sfu_rtp_bytes_received",
            "RTP bytes ingested from publishers.",
            ["media"],
            {("audio",): c.audio_in_bytes, ("video",): c.video_in_bytes},
        )
        yield self._counter(
            "sfu_rtp_packets_forwarded",
            "RTP packets forwarded to subscribers (one per subscriber copy).",
            ["media"],
            {("audio",): c.audio_out, ("video",): c.video_out},
        )
        yield self._counter(
            "sfu_rtp_bytes_forwarded",
            "RTP bytes forwarded to subscribers, before SRTP.",
            ["media"],
            {("audio",): c.audio_out_bytes, ("video",): c.video_out_bytes},
        )

    def _gauges(self, router: _RouterSnapshot) -> Iterator[Metric]:
        src = self.sources
        yield GaugeMetricFamily("sfu_rooms", "Rooms with at least one participant.", router.rooms)
        participants = GaugeMetricFamily(
            "sfu_participants",
            "Participants by state and signaling kind.",
            labels=["state", "kind"],
        )
        for state in ("waiting", "joined"):
            for kind in ("websocket", "whip", "whep"):
                participants.add_metric([state, kind], router.participants.get((state, kind), 0))
        yield participants
        for name, doc, table in (
            ("sfu_publications", "Published tracks, by media.", router.publications),
            ("sfu_subscriptions", "Forwarded tracks, by media.", router.subscriptions),
        ):
            family = GaugeMetricFamily(name, doc, labels=["media"])
            for media in ("audio", "video"):
                family.add_metric([media], table[media])
            yield family
        transports = GaugeMetricFamily(
            "sfu_transports", "WebRTC transports held, by state.", labels=["state"]
        )
        states: dict[str, int] = {"new": 0, "connecting": 0, "connected": 0}
        for transport in src.port:
            if transport.state.value in states:
                states[transport.state.value] += 1
        for state, n in states.items():
            transports.add_metric([state], n)
        yield transports
        yield self._counter(
            "sfu_transports_refused",
            "Offers refused a transport, by the cap they met.",
            ["reason"],
            {(reason,): n for reason, n in src.port.refused.items()},
        )
        http = src.http_limits()
        if http is not None:
            yield self._counter(
                "sfu_http_connections_refused",
                "HTTP connections refused or closed by a limit, by reason.",
                ["reason"],
                {(reason,): n for reason, n in http.refused.items()},
            )
            open_now = GaugeMetricFamily(
                "sfu_http_connections",
                "Open TCP connections on the HTTP listeners, by listener.",
                labels=["listener"],
            )
            for listener, n in http.open_connections().items():
                open_now.add_metric([listener], n)
            yield open_now
        states_family = GaugeMetricFamily(
            "sfu_subscriber_allocation",
            "Subscribers by allocation state: everything wanted fits (stable) or not (deficient).",
            labels=["state"],
        )
        for state in ALLOCATION_STATES:
            states_family.add_metric([state], router.allocation.get(state, 0))
        yield states_family
        yield GaugeMetricFamily(
            "sfu_subscriptions_paused",
            "Video subscriptions paused for bandwidth now.",
            router.paused,
        )
        yield GaugeMetricFamily(
            "sfu_signaling_connections",
            "Open room-protocol WebSocket connections.",
            src.signaling_connections(),
        )
        yield GaugeMetricFamily(
            "sfu_ready", "1 while the server accepts new sessions (see /readyz).", src.ready()
        )
        yield GaugeMetricFamily(
            "sfu_draining", "1 once shutdown began and sessions are draining.", src.draining()
        )
        yield GaugeMetricFamily(
            "sfu_event_loop_lag_last_seconds",
            "The most recent event-loop lag measurement.",
            src.loop_lag.last,
        )
