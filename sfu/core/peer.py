"""A participant's media endpoint: the parts that ingest, answer, report and allocate.

:class:`Peer` is the :class:`~sfu.transport.transport.TransportListener` of one participant's
transport and composes one of each: the :class:`~sfu.core.binder.Binder` (its SSRCs), the
:class:`~sfu.core.router.Router` (what it publishes, ingested and fanned out), the
:class:`~sfu.core.feedback.FeedbackHandler` (RTCP it sends), the
:class:`~sfu.core.reporter.Reporter` (RTCP it gets) and the :class:`~sfu.core.allocator.Allocator`
(layers of what it receives). Everything it sends goes through the
:class:`~sfu.core.sender.Sender` protocol. :meth:`Peer.poll` runs the work that is due, and
:meth:`Peer.next_timer` says when that is (each kind of work on its own schedule; the room
service arms one timer for the earliest of all peers').

As a subscriber's transport it also owns the send side of bandwidth adaptation, created with
its first subscription (from that subscription's kernels, so the forwarder can write it): the
:class:`SendHistory` every packet sent to it is recorded in, the
:class:`~sfu.core.estimator.BandwidthEstimator` fed by its transport-wide CC feedback (REMB
only when it negotiated no transport-cc), the :class:`~sfu.core.prober.Prober` that asks the
link for the next layer's rate, and the retransmission budget. The allocator's budget is the
estimate.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from sfu._fastpath._pacer_py import PROBE as PACED_PROBE
from sfu._fastpath._pacer_py import RETRANSMISSION as PACED_RETRANSMISSION
from sfu._fastpath._pacer_py import VIDEO as PACED_VIDEO
from sfu._fastpath.values import LogRecord
from sfu.core.allocator import (
    CONGESTION,
    PUBLISHER,
    UPGRADE,
    UPGRADE_HOLD,
    Allocation,
    Allocator,
    priority_of,
)
from sfu.core.binder import Binder
from sfu.core.counters import (
    PeerCounters,
    RouterStats,
    stream_loss,
    subscription_loss,
    subscription_switches,
)
from sfu.core.dataplane import DataPlane
from sfu.core.estimator import LOSS_SEVERE, PRIMER, BandwidthEstimator
from sfu.core.feedback import FeedbackHandler
from sfu.core.pacing import PacedSender, pacing_rate
from sfu.core.prober import (
    MIN_CLUSTER_PACKETS,
    PRIMER_BYTES,
    ProbeCluster,
    Prober,
    probe_step,
)
from sfu.core.publication import LAYER_TIMEOUT, Publication, SourceStream
from sfu.core.reporter import MAX_BYE_SOURCES, Reporter
from sfu.core.retransmission import RTX_SHARE, RetransmissionBudget
from sfu.core.router import AudioLevelSink, Router
from sfu.core.subscription import Subscription
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.extensions import (
    AUDIO_LEVEL_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
    abs_send_time_from_seconds,
)
from sfu.transport.transport import TransportState, WebRtcTransport

if TYPE_CHECKING:
    from sfu.core.kernels import Kernels, Pacer, SendHistory

__all__ = [
    "ALLOCATION_INTERVAL",
    "BUDGET_HEADROOM",
    "DOWNGRADE_TOLERANCE",
    "ESTIMATE_FALL",
    "MEDIA_SETTLE",
    "PROBE_INTERVAL",
    "SWITCH_CHECK_INTERVAL",
    "Peer",
    "StreamStateSink",
    "allocation_budget",
    "allocation_due",
    "probe_target",
]

#: The allocator runs this often: often enough to follow a falling estimate within a few
#: feedbacks, rarely enough that targets do not chase every measurement.
ALLOCATION_INTERVAL: Final = 0.5
#: A fall of the estimate by more than this share since the last allocation is acted on at
#: once (the allocator's own ESTIMATE_CHANGE hysteresis still applies to what it decides).
ESTIMATE_FALL: Final = 0.2
#: Share of the estimate the allocator may spend on media: RTCP, padding and the estimate's
#: own error need the rest (retransmissions have their own budget, RTX_SHARE).
BUDGET_HEADROOM: Final = 0.9
#: Probing decisions are taken this often (and probe results read).
PROBE_INTERVAL: Final = 0.1
#: Media that took the Python path moves the peer's TWCC/NACK deadlines; the scheduler looks
#: at them within this long (the same as the data plane's replay, which does it for the rest).
MEDIA_SETTLE: Final = 0.05
#: While a subscription waits for a keyframe to switch layers, the peer checks this often
#: whether it switched or needs another request (the selector rate-limits the requests).
SWITCH_CHECK_INTERVAL: Final = 0.1
#: The layers being forwarded stay while the budget is at least this share of what they cost:
#: one overuse signal takes the estimate to 0.85 x the acknowledged rate, which must not
#: switch a subscriber down by itself (a real shortfall keeps the estimate falling past it).
DOWNGRADE_TOLERANCE: Final = 0.8
#: A layer waiting for a switch down is forwarded until the lower layer's keyframe comes,
#: unless it costs more than this times the whole budget: then it is dropped at once and the
#: subscription starts again at the next keyframe at or below its target (the picture holds
#: meanwhile, as on a pause). A layer that far above the link only fills the pacer's queue,
#: ahead of the keyframe it waits for: at a 400 kbit/s cap the top layer (1.2 Mbit/s) went on
#: for 0.6 s after the low layer was aimed at, the queue it left delayed and broke the low
#: layer's keyframe, and the first low-layer frame showed 5.7 s after the cap. Twice the
#: budget, as KEEP_PRICE_LIMIT: a keyframe in a layer's meter may read up to that. While
#: the link loses :data:`~sfu.core.estimator.LOSS_SEVERE` or more, a layer that costs more than
#: the whole estimate (the budget before its headroom) goes too: most of what is sent is lost,
#: and that layer cannot get through. At the real-client test's 400 kbit/s cap the middle
#: layer (490 kbit/s), whose keyframe had come on the way down from the top, went on into
#: the cap for 0.5-1 s until the low layer's keyframe, and lost 24 packets more.
ABANDON_PRICE_LIMIT: Final = 2.0
#: ... and only while the link loses at least this share of what is sent (the estimator's
#: latest loss window): then the layer is not getting through anyway. An estimate that fell
#: on delay alone (a CPU stall at either end reads as queueing) keeps the layer going until
#: the keyframe, as any switch down does, rather than freezing the picture at once.
ABANDON_LOSS: Final = 0.10


#: The bandwidth decisions of every subscriber transport, one DEBUG line per allocation and
#: per probe outcome (``logging.getLogger("sfu.bwe").setLevel(logging.DEBUG)`` turns it on):
#: estimate, acknowledged rate, loss, budget, targets, probes. Mids only, no identities.
trace = logging.getLogger("sfu.bwe")


def allocation_due(
    now: float, last_at: float, estimate: float | None, last_estimate: float | None
) -> bool:
    """Whether to allocate now: every :data:`ALLOCATION_INTERVAL`, and at once when the
    estimate fell by more than :data:`ESTIMATE_FALL` since the last allocation (a queue
    building at a new bottleneck must not wait for the next tick)."""
    if now - last_at >= ALLOCATION_INTERVAL:
        return True
    return (
        estimate is not None
        and last_estimate is not None
        and estimate < (1.0 - ESTIMATE_FALL) * last_estimate
    )


def probe_target(allocation: Allocation) -> float:
    """What the prober asks the link for, with the budget's headroom (0: nothing): the next
    upgrade's total, or, with nothing to upgrade, what the allocation spends while that is
    above its budget (a layer kept through a price rise: a publisher's encoder that ramped
    after the first allocation priced its top layer low). Otherwise nothing asks the link
    whether it carries that layer, and the estimate only creeps up while the pacer holds
    the layer back."""
    step = allocation.next_step_bps
    budget = allocation.budget_bps
    if step is None and budget is not None and allocation.allocated_bps > budget:
        step = allocation.allocated_bps
    return 0.0 if step is None else step / BUDGET_HEADROOM


def allocation_budget(estimate: float, spend: float) -> float:
    """The allocator's budget from the estimate and what the current layers cost
    (``spend``): the estimate less headroom, or ``spend`` while the budget is within
    :data:`DOWNGRADE_TOLERANCE` of it."""
    budget = estimate * BUDGET_HEADROOM
    if DOWNGRADE_TOLERANCE * spend <= budget < spend:
        return spend
    return budget


#: Told when a subscription is paused for bandwidth ("paused", "bandwidth") or resumed
#: ("active", None): the room sends the subscriber a ``stream_state`` event.
StreamStateSink = Callable[[Subscription, str, str | None], None]


def _switch_pending(sub: Subscription) -> bool:
    """Whether ``sub``'s selector waits for a keyframe to switch to its target layer."""
    selector = sub.selector
    if selector is None:
        return False
    target = selector.target.spatial
    return target is not None and target != selector.current.spatial


def _one_id(extensions: dict[int, str], uri: str) -> int:
    for ext_id, value in extensions.items():
        if value == uri:
            return ext_id
    return 0


class Peer:
    """One participant's transport listener: publications in, subscriptions out."""

    def __init__(
        self,
        participant_id: str,
        transport: WebRtcTransport,
        rtcp_ssrc: int,
        *,
        extensions: dict[int, str],
        on_audio_level: AudioLevelSink | None = None,
        on_state: Callable[[Peer, TransportState, float], None] | None = None,
        stats: RouterStats | None = None,
        dataplane: DataPlane | None = None,
        pacing: bool = True,
    ) -> None:
        self.participant_id = participant_id
        self.dataplane = dataplane
        #: Pace this transport's egress once there is an estimate (``bandwidth.pacing``);
        #: False: no pacer, media and retransmissions go straight out.
        self.pacing = pacing
        self.transport = transport
        self.rtcp_ssrc = rtcp_ssrc
        self.on_state_change = on_state
        self.subscriptions: dict[str, Subscription] = {}  # by mid
        self.counters = PeerCounters()
        self.stats = stats
        #: True once the transport ended and the counters were folded into ``stats.retired``.
        self.retired = False
        self.allocator = Allocator()
        #: Participant ids of the room's active speakers (their cameras rank higher).
        self.speakers: Collection[str] = ()
        self.on_stream_state: StreamStateSink | None = None
        twcc = TwccRecorder(rtcp_ssrc)
        self.binder = Binder(on_added=self._stream_added, on_removed=self._stream_removed)
        self.router = Router(participant_id, self.binder, twcc, self.counters, stats=stats)
        self.router.on_audio_level = on_audio_level
        self.feedback = FeedbackHandler(transport, self.binder, self.counters)
        self.reporter = Reporter(rtcp_ssrc, transport, twcc, self.counters)
        self._last_allocation = -1e9
        self._last_probe = -1e9
        self._last_switch_check = -1e9
        #: When an allocation last changed a target (its upgrade hold makes later ones matter).
        self._last_target_change = -math.inf
        #: An event asked for an allocation (it is not skipped as unchanged).
        self._force_allocation = False
        #: The layers each subscription's publisher sent at the last allocation.
        self._allocated_for: dict[Subscription, frozenset[int]] = {}
        #: Subscriptions waiting for a keyframe to switch to their target layer.
        self._switching: set[Subscription] = set()
        #: Told when the spatial layers one of this peer's video publications is sending
        #: changed (a layer started or stopped): its subscribers re-allocate at once.
        self.on_layers_changed: Callable[[Publication], None] | None = None
        #: The layers each watched publication was last seen sending, and when.
        self._layers_seen: dict[Publication, tuple[frozenset[int], float]] = {}
        #: Tells the scheduler (the room service) to recompute :meth:`next_timer` by the
        #: given time (-inf: at once) because an event may have moved it.
        self.on_wake: Callable[[Peer, float], None] | None = None
        #: What the cheapest next upgrade needs in total (bps): the prober's target.
        self._desired = 0.0
        #: What every subscription at its top would need (bps): the most probes ask for.
        self._wanted = 0.0
        #: The rungs the subscriptions' hints allow (its rise starts exploratory probes).
        self._reach = 0
        #: The estimate the last allocation acted on.
        self._allocated_on: float | None = None
        #: Send-side bandwidth adaptation (created with the first subscription).
        self.send_history: SendHistory | None = None
        self.estimator: BandwidthEstimator | None = None
        self.prober = Prober()
        self.rtx_budget = RetransmissionBudget()
        #: Egress pacer (created with the estimator; it paces once an estimate exists and the
        #: data plane queues this transport's media in it).
        self.pacer: Pacer | None = None
        #: The SSRCs of the last subscriptions that ended (a publisher that left ends its
        #: viewers' subscriptions): a :meth:`goodbye` names them too, as the client may
        #: still hold a receiver for each. Bounded: one BYE's worth.
        self._ended_sources: deque[int] = deque(maxlen=MAX_BYE_SOURCES)
        #: The Python paths' senders through the pacer while paced: retransmissions, probes.
        self._paced_rtx: PacedSender | None = None
        self._paced_probe: PacedSender | None = None
        #: When the pacer releases its next packet (None: empty or unpaced).
        self._pacer_due: float | None = None
        #: The pacer's drop counters when last folded into ``counters``.
        self._pacer_seen = (0, 0, 0)
        self.set_extensions(extensions)

    @property
    def publications(self) -> dict[str, Publication]:
        """What this participant publishes, by mid."""
        return self.binder.publications

    @property
    def remb_bps(self) -> int | None:
        """The subscriber's latest REMB estimate."""
        return self.feedback.latest_remb

    @property
    def estimate_bps(self) -> float | None:
        """What this subscriber's transport can take now (None: nothing to go by yet)."""
        estimator = self.estimator
        if estimator is None or self.send_history is None:
            return None
        if estimator.twcc_seen or self.send_history.packets or estimator.remb_bps is not None:
            return estimator.target_bps()
        return None

    @property
    def on_audio_level(self) -> AudioLevelSink | None:
        """Where RFC 6464 audio levels of this participant's audio go."""
        return self.router.on_audio_level

    @on_audio_level.setter
    def on_audio_level(self, sink: AudioLevelSink | None) -> None:
        self.router.on_audio_level = sink

    def set_extensions(self, extensions: dict[int, str]) -> None:
        """The BUNDLE-wide extension ids (RFC 8843 §9.2: one id space per transport)."""
        self.binder.set_extension_ids(
            mid=_one_id(extensions, MID_URI),
            rid=_one_id(extensions, RID_URI),
            repaired_rid=_one_id(extensions, REPAIRED_RID_URI),
        )
        router = self.router
        router.twcc_id = _one_id(extensions, TRANSPORT_CC_URI)
        router.level_id = _one_id(extensions, AUDIO_LEVEL_URI)
        if self.dataplane is not None:
            self.dataplane.claim(self.transport, self, router.twcc_id, router.level_id)

    # -- membership (called by the room on offers) -------------------------------------------

    def add_publication(
        self, publication: Publication, declared: list[tuple[int, int | None]]
    ) -> None:
        """Track ``publication`` on its mid; ``declared`` are (ssrc, rtx ssrc) from the SDP."""
        if self.dataplane is not None:
            publication.on_fanout = self.dataplane.routes_changed
        self.binder.add_publication(publication, declared)

    def remove_publication(self, mid: str) -> Publication | None:
        """Stop ingesting the publication on ``mid``; returns it (its subscriptions end too)."""
        publication = self.binder.remove_publication(mid)
        if publication is not None:
            publication.on_fanout = None
            self._fold_publication(publication)
        return publication

    def add_subscription(self, subscription: Subscription) -> None:
        """Send ``subscription`` on its mid; NACK/PLI/RR for its SSRCs come back here."""
        self._start_estimation(subscription.kernels)
        subscription.send_history = self.send_history
        self.subscriptions[subscription.mid] = subscription
        self.feedback.add_subscription(subscription)
        self._force_allocation = True

    def _start_estimation(self, kernels: Kernels) -> None:
        if self.send_history is not None:
            return
        self.send_history = kernels.SendHistory()
        self.estimator = BandwidthEstimator(self.send_history, kernels.DelayDetector())
        self.feedback.estimator = self.estimator
        if self.pacing:
            self.pacer = kernels.Pacer()

    def _pace(self, estimate: float, now: float) -> None:
        """Pace at a factor of ``estimate`` (``pacing_rate``: lower after congestion); the first
        time, ask the data plane to queue this transport's media in the pacer (without a data
        plane nothing is paced)."""
        pacer = self.pacer
        estimator = self.estimator
        if pacer is None or estimator is None:
            return
        pacer.set_rate(pacing_rate(estimate, congested_at=estimator.congested_at, now=now), now)
        if self._paced_rtx is not None or self.dataplane is None:
            return
        if self.dataplane.pace(self.transport, pacer, self.send_history, self.release_paced):
            self._paced_rtx = PacedSender(
                self.transport, pacer, self.send_history, PACED_RETRANSMISSION, self._queued
            )
            self._paced_probe = PacedSender(
                self.transport, pacer, self.send_history, PACED_PROBE, self._queued
            )
            self.feedback.sender = self._paced_rtx

    def _queued(self) -> None:
        """A Python path queued a packet: release at the next run (now, usually)."""
        self._pacer_due = -math.inf

    def release_paced(self, now: float) -> None:
        """Send what the pacer lets go at ``now`` (restamping the send history: through the
        forwarder when it holds the transport), and, unless the data plane times the pacers
        itself, tell the scheduler when it lets go of more."""
        pacer = self.pacer
        if pacer is None:
            return
        leftover = None
        dataplane = self.dataplane
        if self._paced_rtx is not None and dataplane is not None:
            # The forwarder holds the transport: it sends what is due itself.
            leftover = dataplane.send_paced(self.transport, now)
        timed = leftover is not None and dataplane is not None and dataplane.times_pacers
        if leftover is None:
            leftover = [wire for wire, _tag in pacer.pop(now, self.send_history)]
        if leftover:
            send = self.transport.send_protected
            for wire in leftover:
                send(wire)
        self._count_paced(pacer)
        if timed:
            self._pacer_due = None  # the data plane's pacer timer releases the rest
            return
        due = pacer.next_deadline(now)
        self._pacer_due = due
        if due is not None and self.on_wake is not None:
            self.on_wake(self, due)

    def _count_paced(self, pacer: Any) -> None:
        """Fold what the pacer counted since the last look into this peer's counters (the
        forwarder releases most packets with its batches, without this peer)."""
        counters = self.counters
        count, total, _longest = pacer.take_delays()
        counters.paced_packets += count
        counters.paced_queue_delay_us += round(total * 1e6)
        counters.pacer_dropped += pacer.dropped - self._pacer_seen[0]
        counters.pacer_evicted += pacer.evicted - self._pacer_seen[1]
        counters.pacer_expired += pacer.expired - self._pacer_seen[2]
        self._pacer_seen = (pacer.dropped, pacer.evicted, pacer.expired)

    def remove_subscription(self, mid: str) -> Subscription | None:
        """Forget the subscription on ``mid``; the caller unhooks it from the publication."""
        subscription = self.subscriptions.pop(mid, None)
        if subscription is not None:
            self._ended_sources.append(subscription.out_ssrc)
            if subscription.rtx_ssrc is not None:
                self._ended_sources.append(subscription.rtx_ssrc)
            self.feedback.remove_subscription(subscription)
            self._fold_subscription(subscription)
            self._switching.discard(subscription)
            self._allocated_for.pop(subscription, None)
            self._force_allocation = True
        return subscription

    def _stream_added(self, publication: Publication, stream: SourceStream) -> None:
        if self.dataplane is not None:
            self.dataplane.add_stream(self, publication, stream)

    def _stream_removed(self, stream: SourceStream) -> None:
        if self.dataplane is not None:
            self.dataplane.remove_stream(stream)

    def _fold_publication(self, publication: Publication) -> None:
        counters = self.counters
        for stream in publication.layers.values():
            expected, lost = stream_loss(stream)
            counters.ingress_expected += expected
            counters.ingress_lost += lost

    def _fold_subscription(self, subscription: Subscription) -> None:
        counters = self.counters
        sent, lost = subscription_loss(subscription)
        counters.egress_sent += sent
        counters.egress_lost += lost
        counters.layer_switches += subscription_switches(subscription)

    # -- TransportListener --------------------------------------------------------------------

    def on_rtp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        """One decrypted RTP packet from this participant (never raises on bad input)."""
        self.router.on_rtp(packet, now=now)
        if self.on_wake is not None:
            # Its TWCC and NACK deadlines may have moved: looked at with the next replay.
            self.on_wake(self, now + MEDIA_SETTLE)

    def on_rtcp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        """RTCP from this participant: feedback about what it receives and reports."""
        paced = self._paced_rtx
        if paced is not None:
            paced.now = now
        self.feedback.on_rtcp(packet, now=now)
        if paced is not None and self._pacer_due == -math.inf:
            self.release_paced(now)  # retransmissions: what the budget allows goes now
        if self.subscriptions:
            estimate = self.estimate_bps
            if estimate is not None and (
                self._allocated_on is None
                or allocation_due(now, self._last_allocation, estimate, self._allocated_on)
            ):
                # The first estimate, one that fell, or the interval passed: allocate now.
                self.wake()

    def on_state(self, transport: WebRtcTransport, state: TransportState, now: float) -> None:
        """Report transport state changes to the room (it frees everything on close)."""
        if self.on_state_change is not None:
            self.on_state_change(self, state, now)
        if self.dataplane is not None:
            self.dataplane.sync(transport)
        if state is TransportState.CONNECTED:
            # Keys arrived: only now can a keyframe reach this participant, so every
            # subscription it already has asks for one (issue 18, a first keyframe lost).
            for subscription in self.subscriptions.values():
                subscription.request_start_keyframe(now)
        if transport.finished:
            self.retire()
        elif self.on_wake is not None:
            self.on_wake(self, now)  # SRTP keys: its timers start

    def replay_records(
        self,
        records: Sequence[LogRecord],
        streams: Mapping[int, tuple[Any, Publication, SourceStream]],
    ) -> None:
        """The data plane forwarded these packets of this peer's streams (``streams`` maps
        each record's handle to its publication and stream): their receive bookkeeping."""
        self.router.replay_records(records, streams)

    def retire(self) -> None:
        """Fold this peer's counters (and its live streams') into ``stats.retired``, once."""
        if self.retired:
            return
        self.retired = True
        if self.pacer is not None:
            self._count_paced(self.pacer)
            self.pacer.clear()
            self._pacer_due = None
        for publication in self.publications.values():
            self._fold_publication(publication)
        for subscription in self.subscriptions.values():
            self._fold_subscription(subscription)
        if self.stats is not None:
            self.stats.retired.add(self.counters)

    def goodbye(self, reason: bytes) -> bool:
        """Tell the participant that every source this transport sends has left (an RTCP
        BYE, RFC 3550 §6.6): the server ends the session on its own and the client has no
        other channel to learn it (WHIP, WHEP). False when the transport is not connected."""
        ssrcs = [*self._ended_sources]
        for sub in self.subscriptions.values():
            ssrcs.append(sub.out_ssrc)
            if sub.rtx_ssrc is not None:
                ssrcs.append(sub.rtx_ssrc)
        return self.reporter.goodbye(ssrcs, reason)

    # -- periodic work ------------------------------------------------------------------------

    def request_keyframe(self, stream: SourceStream, now: float) -> bool:
        """Send a PLI for ``stream`` to this (publishing) peer, at most once per interval
        (longer on a slow path: the round trip measured on what this peer receives)."""
        rtts = [s.send_stats.rtt for s in self.subscriptions.values() if s.send_stats.rtt]
        return self.reporter.request_keyframe(stream, now=now, rtt=min(rtts) if rtts else None)

    def next_timer(self) -> float | None:
        """The earliest time :meth:`poll` has work (None: nothing until an event wakes it).

        Each kind of work has its own schedule: feedback (TWCC, NACK) when the recorders say
        so, keyframe requests while a layer switch waits, probing every
        :data:`PROBE_INTERVAL` while video is sent on an estimate, allocation every
        :data:`ALLOCATION_INTERVAL` (sooner on events: :meth:`wake`), and SR/RR on the
        reporter's randomised interval. A peer with nothing published or subscribed is never
        due."""
        if self.retired or not self.transport.has_srtp:
            return None
        publications = self.publications
        subscriptions = self.subscriptions
        if not publications and not subscriptions:
            return None
        due = self.reporter.next_report
        feedback = self.reporter.next_feedback(publications.values())
        if feedback is not None and feedback < due:
            due = feedback
        layers = self._next_layer_change()
        if layers is not None and layers < due:
            due = layers
        pacer_due = self._pacer_due
        if pacer_due is not None and pacer_due < due:
            due = pacer_due
        if subscriptions and self._allocation_watched():
            due = min(due, self._last_allocation + ALLOCATION_INTERVAL)
            if self._switching:
                due = min(due, self._last_switch_check + SWITCH_CHECK_INTERVAL)
            if self._probing():
                due = min(due, self._last_probe + PROBE_INTERVAL)
        return due

    def _watched(self) -> list[Publication]:
        """Video publications with subscribers: their layers coming and going matters."""
        if self.on_layers_changed is None:
            return []
        return [p for p in self.publications.values() if p.video and p.fanout]

    def _next_layer_change(self) -> float | None:
        """When a layer of a watched publication stops counting as sent (its last packet
        plus :data:`LAYER_TIMEOUT`); -inf when one started since it was last looked at."""
        due: float | None = None
        for pub in self._watched():
            seen, checked_at = self._layers_seen.get(pub, (frozenset(), -math.inf))
            for layer, stream in pub.layers.items():
                last = stream.last_packet_at
                if last is None:
                    continue
                if layer not in seen:
                    if last > checked_at:
                        return -math.inf  # it (re)started since the last look: look now
                    continue
                end = last + LAYER_TIMEOUT
                if due is None or end < due:
                    due = end
        return due

    def _check_layers(self, now: float) -> None:
        """Tell :attr:`on_layers_changed` of each watched publication whose layers changed."""
        sink = self.on_layers_changed
        watched = self._watched()
        for pub in [p for p in self._layers_seen if p not in watched]:
            del self._layers_seen[pub]
        for pub in watched:
            active = pub.active_layers(now)
            before = self._layers_seen.get(pub)
            self._layers_seen[pub] = (active, now)
            previous = frozenset() if before is None else before[0]
            if previous != active and sink is not None:
                sink(pub)

    def wake(self) -> None:
        """Something happened that needs allocation soon (a subscription, a layer change,
        feedback that moved the estimate): allocate at the next :meth:`poll`, and ask the
        scheduler (:attr:`on_wake`) for one now."""
        self._last_allocation = -1e9
        self._force_allocation = True
        if self.on_wake is not None:
            self.on_wake(self, -math.inf)

    def _allocation_watched(self) -> bool:
        """Whether allocation needs its periodic schedule: an estimate to follow, a pause
        to lift, video whose layers may come and go, or an event waiting for it. Audio
        without an estimate is allocated on events only."""
        return (
            self._force_allocation
            or self._allocated_on is not None
            or bool(self.allocator.paused_count)
            or any(s.selector is not None for s in self.subscriptions.values())
        )

    def _probing(self) -> bool:
        """Whether probing runs: video is sent and there is an estimate (it pads on RTX)."""
        return self.estimate_bps is not None and any(
            s.selector is not None for s in self.subscriptions.values()
        )

    def poll(self, now: float, wallclock: float) -> None:
        """Run what is due at ``now``: TWCC and NACKs, pending-switch keyframes, allocation,
        probing and reports (each on its own schedule; see :meth:`next_timer`)."""
        if not self.transport.has_srtp:
            return
        publications = self.publications.values()
        subscriptions = self.subscriptions.values()
        feedback = self.reporter.next_feedback(publications)
        if feedback is not None and feedback <= now:
            self.reporter.poll_feedback(publications, subscriptions, now=now)
        if self.on_layers_changed is not None:
            self._check_layers(now)
        if not subscriptions:
            self.reporter.poll_reports(publications, subscriptions, now=now, wallclock=wallclock)
            return
        estimate = self.estimate_bps
        if estimate is not None:
            # Retransmissions count against the estimate once there is one (before, as
            # without any estimate, they are only throttled per sequence number).
            self.rtx_budget.set_rate(RTX_SHARE * estimate, now)
            self.feedback.budget = self.rtx_budget
            self._pace(estimate, now)
        if allocation_due(now, self._last_allocation, estimate, self._allocated_on):
            available = self._availability(now)
            if (
                estimate is None
                and self._allocated_on is None
                and not self._force_allocation
                and available == self._allocated_for
                and not self.allocator.paused_count
                and now - self._last_target_change > UPGRADE_HOLD + 2 * ALLOCATION_INTERVAL
            ):
                # Nothing an allocation without a budget reads has changed (events such as
                # subscriptions and preferences force one through wake()), and no upgrade
                # hold of a recent change is still to run out: skip it.
                self._last_allocation = now
            else:
                self._allocate(estimate, available, now)
        if self._switching and now - self._last_switch_check >= SWITCH_CHECK_INTERVAL:
            self._last_switch_check = now
            self._request_switch_keyframes(now)
        if estimate is not None and now - self._last_probe >= PROBE_INTERVAL and self._probing():
            self._last_probe = now
            self._probe(now)
        if self._pacer_due is not None and self._pacer_due <= now:
            self.release_paced(now)
        elif self.pacer is not None:
            self._count_paced(self.pacer)  # what the forwarder released with its batches
        self.reporter.poll_reports(publications, subscriptions, now=now, wallclock=wallclock)

    def _availability(self, now: float) -> dict[Subscription, frozenset[int]]:
        """The spatial layers each video subscription's publisher sends now."""
        return {
            sub: sub.publication.active_layers(now) or frozenset({0})
            for sub in self.subscriptions.values()
            if sub.selector is not None
        }

    def _allocate(
        self, estimate: float | None, available: dict[Subscription, frozenset[int]], now: float
    ) -> None:
        """Allocate on ``estimate`` with the layers ``available``, and start keyframe
        requests for the subscriptions that now wait to switch."""
        for sub, layers in available.items():
            assert sub.selector is not None
            sub.selector.set_available(layers)
        self._allocated_on = estimate
        self._allocated_for = available
        self._force_allocation = False
        subscriptions = self.subscriptions.values()
        budget = None if estimate is None else self._budget(estimate, now)
        allocation = self.allocate(budget_bps=budget, now=now)
        if allocation.changes or allocation.paused or allocation.resumed:
            self._last_target_change = now  # the allocator's holds run from here
        self._desired = probe_target(allocation)
        self._wanted = allocation.wanted_bps / BUDGET_HEADROOM if budget is not None else 0.0
        self._reach = allocation.reach
        if allocation.targets and trace.isEnabledFor(logging.DEBUG):
            self._trace_allocation(allocation, estimate, now)
        self._switching = {
            sub for sub in subscriptions if sub.selector is not None and _switch_pending(sub)
        }
        self._last_switch_check = -1e9

    def _request_switch_keyframes(self, now: float) -> None:
        """A keyframe of the target layer for each subscription waiting to switch (the
        selector rate-limits them); those that switched leave the set."""
        for sub in list(self._switching):
            if sub.selector is None or not _switch_pending(sub):
                self._switching.discard(sub)
                continue
            layer = sub.selector.keyframe_needed(now)
            wanted = sub.publication.stream_for(layer) if layer is not None else None
            if wanted is not None:
                sub.publication.request_keyframe(wanted, now)

    def allocate(self, *, budget_bps: float | None, now: float) -> Allocation:
        """Share ``budget_bps`` (None: no limit) over the subscriptions and apply the targets;
        the subscriber hears of pauses and resumes through :attr:`on_stream_state`."""
        self._last_allocation = now
        subscriptions = list(self.subscriptions.values())
        speakers = self.speakers
        priorities = {sub: int(priority_of(sub, speakers)) for sub in subscriptions}
        allocation = self.allocator.update(
            subscriptions, budget_bps=budget_bps, now=now, priorities=priorities
        )
        for sub, target in allocation.targets.items():
            assert sub.selector is not None
            sub.selector.set_target(target.spatial, target.temporal)
        abandoned = self._abandon_overruns(allocation, now)
        if allocation.changes or allocation.resumed:
            self.prober.on_target_change(now=now)
        counters = self.counters
        for _sub, reason in allocation.changes:
            if reason == CONGESTION:
                counters.target_changes_congestion += 1
            elif reason == UPGRADE:
                counters.target_changes_upgrade += 1
            elif reason == PUBLISHER:
                counters.target_changes_publisher += 1
            else:
                counters.target_changes_hint += 1
        counters.bandwidth_pauses += len(allocation.paused)
        counters.bandwidth_resumes += len(allocation.resumed)
        pacer = self.pacer
        if (
            (allocation.paused or abandoned)
            and pacer is not None
            and all(
                sub.selector.current.spatial is None
                for sub in allocation.targets
                if sub.selector is not None
            )
        ):
            # No video is forwarded now (none fits, or what was forwarded was far above the
            # link): what is queued of it (and its retransmissions) would leave late into a
            # link that cannot carry it, the audio behind it lost with it, and the keyframe
            # the subscriptions wait for behind it; the receiver decodes from that keyframe.
            self._flush_video(pacer)
        sink = self.on_stream_state
        if sink is not None:
            for sub in allocation.paused:
                sink(sub, "paused", "bandwidth")
            for sub in allocation.resumed:
                sink(sub, "active", None)
        return allocation

    def _flush_video(self, pacer: Pacer) -> None:
        """Drop what the pacer holds of video, retransmissions and probes, and give the
        dropped video's sequence numbers again (``RtpMunger.rewind``): numbered when forwarded, they
        never left, and the receiver would count each as lost (97 packets at the real-client
        test's 400 kbit/s cap, a fifth of the phase's video)."""
        queued = pacer.queued_seqs(PACED_VIDEO)
        # Probes go too: a probe copies the newest media numbers (``probe_copies``), queued
        # ones included, and a copy left to go out after the rewind would carry a number the
        # next keyframe is given (the receiver would keep the stale copy, drop the keyframe's
        # packet as a duplicate). Audio stays.
        self.counters.pacer_flushed += pacer.clear(PACED_PROBE)
        if not queued:
            return
        for sub in self.subscriptions.values():
            seqs = queued.get(sub.munger.out_ssrc)
            if seqs:
                self.counters.pacer_rewound += sub.munger.rewind(seqs)

    def _abandon_overruns(self, allocation: Allocation, now: float) -> bool:
        """Stop forwarding the current layer of each subscription waiting to switch down
        while that layer costs over ABANDON_PRICE_LIMIT x the budget and the link loses at
        least ABANDON_LOSS, or over the estimate and the link loses LOSS_SEVERE (it restarts
        at a keyframe at or below its target); True if any was stopped."""
        budget = allocation.budget_bps
        estimator = self.estimator
        if budget is None or estimator is None or estimator.loss < ABANDON_LOSS:
            return False
        limit = ABANDON_PRICE_LIMIT * budget
        if estimator.loss >= LOSS_SEVERE:
            limit = min(limit, budget / BUDGET_HEADROOM)
        abandoned = False
        for sub, target in allocation.targets.items():
            selector = sub.selector
            if selector is None or target.spatial is None:
                continue
            current = selector.current.spatial
            if current is None or current <= target.spatial:
                continue
            if sub.publication.layer_bps(current, now) <= limit:
                continue
            # A pause drops the current layer at once; the target back makes any keyframe
            # at or below it start the stream again (the selector's "from nothing" rule).
            selector.set_target(None, target.temporal)
            selector.set_target(target.spatial, target.temporal)
            self.counters.layers_abandoned += 1
            abandoned = True
        return abandoned

    # -- bandwidth ----------------------------------------------------------------------------

    def _budget(self, estimate: float, now: float) -> float:
        """The allocator's budget (audio included: the allocator reserves audio first): the
        estimate less headroom, or what is being forwarded while it is within
        :data:`DOWNGRADE_TOLERANCE` of that (one overuse signal is not congestion)."""
        spend = 0.0
        for sub in self.subscriptions.values():
            if sub.paused or sub.held:
                continue
            selector = sub.selector
            if selector is None:
                spend += sub.publication.layer_bps(0, now)
                continue
            current = selector.current
            if current.spatial is None:
                continue
            # At the allocator's own price of what is forwarded (its sampled, peak-floored
            # rates), not the meter's reading of the moment: the two differ, and a layer the
            # meter read under the budget got no tolerance while the allocator, at its price,
            # found it over the budget and dropped it.
            pub = sub.publication
            cumulative = pub.rates.measure(pub, now).get(current.spatial)
            if cumulative:
                t = current.temporal
                spend += cumulative[-1 if t is None else min(t, len(cumulative) - 1)]
            else:
                spend += pub.layer_bps(current.spatial, now)
        return allocation_budget(estimate, spend)

    def _trace_allocation(self, allocation: Allocation, estimate: float | None, now: float) -> None:
        """One DEBUG line of :data:`trace`: what the allocation acted on and decided."""
        estimator = self.estimator
        targets = " ".join(
            f"{sub.mid}:{pair.spatial}/{sub.selector.current.spatial if sub.selector else None}"
            for sub, pair in allocation.targets.items()
        )
        if estimator is None:
            trace.debug("alloc t=%.2f estimate=None targets=%s", now, targets)
            return
        acked = estimator.acked_bps
        trace.debug(
            "alloc t=%.2f estimate=%.0f acked=%s sent=%.0f loss=%.3f state=%d decreases=%d"
            " budget=%s allocated=%.0f next=%s desired=%.0f targets(target/current)=%s"
            " probes=%d/%d/%d backoff=%.1f probe_lost=%d pacer=%d/%d/%d/%d/%d abandoned=%d"
            " pacing=%.0f",
            now,
            estimate if estimate is not None else -1,
            None if acked is None else round(acked),
            estimator.sent_bps(now),
            estimator.loss,
            estimator.state,
            estimator.decreases,
            None if allocation.budget_bps is None else round(allocation.budget_bps),
            allocation.allocated_bps,
            None if allocation.next_step_bps is None else round(allocation.next_step_bps),
            self._desired,
            targets,
            self.prober.started,
            self.prober.succeeded,
            self.prober.failed,
            self.prober.backoff(),
            estimator.probe_packets_lost,
            self.counters.pacer_dropped,
            self.counters.pacer_evicted,
            self.counters.pacer_expired,
            self.counters.pacer_flushed,
            self.counters.pacer_rewound,
            self.counters.layers_abandoned,
            -1 if self.pacer is None else self.pacer.rate_bps,
        )

    def _probe(self, now: float) -> None:
        """Read a probe's result, and send the next cluster when one is due."""
        estimator = self.estimator
        if estimator is None:
            return
        succeeded, failed = self.prober.succeeded, self.prober.failed
        pending = self.prober.pending
        cluster = probe_step(
            self.prober,
            estimator,
            desired_bps=self._desired,
            now=now,
            wanted_bps=self._wanted,
            reach=self._reach,
            paused=self.allocator.all_paused,
        )
        if self.prober.succeeded > succeeded:
            # The link took the next step: no congestion hold keeps it back, and the
            # allocator acts on the raised estimate at the next poll.
            self.allocator.end_congestion_holds()
            self._last_allocation = -1e9
            self._force_allocation = True
        self.counters.probes_succeeded += self.prober.succeeded - succeeded
        self.counters.probes_failed += self.prober.failed - failed
        if trace.isEnabledFor(logging.DEBUG):
            if pending is not None and self.prober.pending is not pending:
                trace.debug(
                    "probe t=%.2f cluster=%d aimed=%.0f acked=%d ok=%s estimate=%.0f",
                    now,
                    pending.id,
                    pending.bps,
                    estimator.detector.cluster(pending.id)[0],
                    self.prober.succeeded > succeeded,
                    estimator.target_bps(),
                )
            if cluster is not None:
                trace.debug(
                    "probe t=%.2f start cluster=%d bps=%.0f packets=%d desired=%.0f",
                    now,
                    cluster.id,
                    cluster.bps,
                    cluster.packets,
                    self._desired,
                )
        if cluster is not None:
            self._send_probe(cluster, now)

    def _send_probe(self, cluster: ProbeCluster, now: float) -> None:
        """The cluster (its primer first) on the RTX stream of a video subscription, at once:
        copies of the newest media where there are any, padding-only packets otherwise.
        Spread on the peer's timer they left in 20 ms timer slots (``TIMER_SLOT_S``), read as
        a fraction of their rate on loopback and every probe of the real-client test's
        uncapped start failed (bench/RESULTS.md)."""
        twcc_id = self.router.twcc_id
        carrier = next(
            (
                s
                for s in self.subscriptions.values()
                if s.rtx_ssrc is not None and s.selector is not None
            ),
            None,
        )
        if carrier is None or not twcc_id:
            return
        sender: PacedSender | WebRtcTransport = self.transport
        if self._paced_probe is not None:
            sender = self._paced_probe  # in the pacer's order, without its budget
            sender.now = now
        abs_time = abs_send_time_from_seconds(now)
        try:
            primer = carrier.probe_copies(PRIMER_BYTES, 1, abs_time, now, PRIMER)
            packets = carrier.probe_copies(
                cluster.size, MIN_CLUSTER_PACKETS, abs_time, now, cluster.id
            )
            if packets:
                self.prober.sent(len(packets))
            else:  # no media to copy (none sent yet, or too small): padding
                if not primer:
                    primer = _padding(
                        carrier, twcc_id, cluster.primer, cluster.padding, PRIMER, now
                    )
                packets = _padding(
                    carrier, twcc_id, cluster.packets, cluster.padding, cluster.id, now
                )
            for packet in (*primer, *packets):
                if sender.send_rtp(packet):
                    self.counters.probe_packets += 1
        finally:
            if self.estimator is not None:
                # Until their feedback is in, the probe's losses are told apart from the media's.
                self.estimator.on_probe_sent(now=now)


def _padding(
    carrier: Subscription, twcc_id: int, count: int, size: int, tag: int, now: float
) -> list[bytes]:
    """``count`` padding-only probe packets of ``size`` padding bytes, recorded under ``tag``
    (a cluster id, or the primer's)."""
    out: list[bytes] = []
    for _ in range(count):
        packet = carrier.padding(twcc_id, size, now, tag)
        if packet is None:
            break
        out.append(packet)
    return out
