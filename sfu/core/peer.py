"""A participant's media endpoint: the parts that ingest, answer, report and allocate.

:class:`Peer` is the :class:`~sfu.transport.transport.TransportListener` of one participant's
transport and composes one of each: the :class:`~sfu.core.binder.Binder` (its SSRCs), the
:class:`~sfu.core.router.Router` (what it publishes, ingested and fanned out), the
:class:`~sfu.core.feedback.FeedbackHandler` (RTCP it sends), the
:class:`~sfu.core.reporter.Reporter` (RTCP it gets) and the :class:`~sfu.core.allocator.Allocator`
(layers of what it receives). Everything it sends goes through the
:class:`~sfu.core.sender.Sender` protocol. :meth:`Peer.poll` runs the periodic work.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Final

from sfu._fastpath.values import LogRecord
from sfu.core.allocator import (
    CONGESTION,
    PUBLISHER,
    UPGRADE,
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
from sfu.core.feedback import FeedbackHandler
from sfu.core.publication import Publication, SourceStream
from sfu.core.remb import RembHistory
from sfu.core.reporter import Reporter
from sfu.core.router import AudioLevelSink, Router
from sfu.core.subscription import Subscription
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.extensions import (
    AUDIO_LEVEL_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
)
from sfu.transport.transport import TransportState, WebRtcTransport

__all__ = ["ALLOCATION_INTERVAL", "Peer", "StreamStateSink"]

#: The allocator runs this often: often enough to follow a falling estimate within a few
#: REMBs, rarely enough that targets do not chase every measurement.
ALLOCATION_INTERVAL: Final = 0.5


#: Told when a subscription is paused for bandwidth ("paused", "bandwidth") or resumed
#: ("active", None): the room sends the subscriber a ``stream_state`` event.
StreamStateSink = Callable[[Subscription, str, str | None], None]


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
    ) -> None:
        self.participant_id = participant_id
        self.dataplane = dataplane
        self.transport = transport
        self.rtcp_ssrc = rtcp_ssrc
        self.on_state_change = on_state
        self.subscriptions: dict[str, Subscription] = {}  # by mid
        self.counters = PeerCounters()
        self.stats = stats
        #: True once the transport ended and the counters were folded into ``stats.retired``.
        self.retired = False
        self.remb = RembHistory()
        self.allocator = Allocator()
        #: Participant ids of the room's active speakers (their cameras rank higher).
        self.speakers: Collection[str] = ()
        self.on_stream_state: StreamStateSink | None = None
        twcc = TwccRecorder(rtcp_ssrc)
        self.binder = Binder(on_added=self._stream_added, on_removed=self._stream_removed)
        self.router = Router(participant_id, self.binder, twcc, self.counters, stats=stats)
        self.router.on_audio_level = on_audio_level
        self.feedback = FeedbackHandler(transport, self.binder, self.remb, self.counters)
        self.reporter = Reporter(rtcp_ssrc, transport, twcc, self.counters)
        self._last_allocation = -1e9
        self.set_extensions(extensions)

    @property
    def publications(self) -> dict[str, Publication]:
        """What this participant publishes, by mid."""
        return self.binder.publications

    @property
    def remb_bps(self) -> int | None:
        """The subscriber's latest REMB estimate."""
        return self.remb.latest

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
        self.subscriptions[subscription.mid] = subscription
        self.feedback.add_subscription(subscription)

    def remove_subscription(self, mid: str) -> Subscription | None:
        """Forget the subscription on ``mid``; the caller unhooks it from the publication."""
        subscription = self.subscriptions.pop(mid, None)
        if subscription is not None:
            self.feedback.remove_subscription(subscription)
            self._fold_subscription(subscription)
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

    def on_rtcp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        """RTCP from this participant: feedback about what it receives and reports."""
        self.feedback.on_rtcp(packet, now=now)

    def on_state(self, transport: WebRtcTransport, state: TransportState, now: float) -> None:
        """Report transport state changes to the room (it frees everything on close)."""
        if self.on_state_change is not None:
            self.on_state_change(self, state, now)
        if self.dataplane is not None:
            self.dataplane.sync(transport)
        if transport.finished:
            self.retire()

    def replay(self, pub: Publication, stream: SourceStream, record: LogRecord) -> None:
        """The data plane forwarded a packet of ``stream``: do its receive bookkeeping."""
        self.router.replay(pub, stream, record)

    def retire(self) -> None:
        """Fold this peer's counters (and its live streams') into ``stats.retired``, once."""
        if self.retired:
            return
        self.retired = True
        for publication in self.publications.values():
            self._fold_publication(publication)
        for subscription in self.subscriptions.values():
            self._fold_subscription(subscription)
        if self.stats is not None:
            self.stats.retired.add(self.counters)

    # -- periodic work ------------------------------------------------------------------------

    def request_keyframe(self, stream: SourceStream, now: float) -> bool:
        """Send a PLI for ``stream`` to this (publishing) peer, at most once per interval."""
        return self.reporter.request_keyframe(stream, now=now)

    def poll(self, now: float, wallclock: float) -> None:
        """Timers: TWCC, NACKs, pending-switch keyframes, allocation and reports."""
        if not self.transport.has_srtp:
            return
        publications = self.publications.values()
        subscriptions = self.subscriptions.values()
        self.reporter.poll_feedback(publications, subscriptions, now=now)
        for sub in subscriptions:
            selector = sub.selector
            if selector is None:
                continue
            selector.set_available(sub.publication.active_layers(now) or frozenset({0}))
            layer = selector.keyframe_needed(now)
            wanted = sub.publication.layers.get(layer) if layer is not None else None
            if wanted is not None:
                sub.publication.request_keyframe(wanted, now)
        if now - self._last_allocation >= ALLOCATION_INTERVAL:
            self.allocate(budget_bps=self.remb.budget(now=now), now=now)
        self.reporter.poll_reports(publications, subscriptions, now=now, wallclock=wallclock)

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
        sink = self.on_stream_state
        if sink is not None:
            for sub in allocation.paused:
                sink(sub, "paused", "bandwidth")
            for sub in allocation.resumed:
                sink(sub, "active", None)
        return allocation
