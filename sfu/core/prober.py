"""Bandwidth probing for one subscriber transport (sans-I/O).

A send-side estimate cannot see capacity above what is sent: a subscriber on the low layer
would stay there forever. :class:`Prober` asks the link, only when an upgrade is wanted: when
the caller's ``desired_bps`` (what the next layer step needs in total) is above the estimate,
it starts a short **cluster** of padding-only packets (on an RTX stream, so receivers drop
them) carrying :data:`PROBE_FACTOR` x ``desired_bps`` worth of bytes over
:data:`CLUSTER_DURATION`. Every packet of the cluster is recorded in the send history under the
cluster's id; the estimator's probe-bitrate reading of the transport-wide feedback for those
packets (the receive rate of the train) says what got through, and it lifts the estimate when
it is higher. A probe that does not reach ``desired_bps`` backs the next one off
(:data:`BACKOFF_BASE` x :data:`BACKOFF_FACTOR` per failure, at most :data:`BACKOFF_MAX`), as
LiveKit does, so a capped link is not probed into loss every few seconds; a success whose
upgrade then congested the link backs off longer each time (:data:`BLAME_BACKOFF_MAX`). The
probe rate is
never above what the subscriber wants (``desired_bps`` x :data:`PROBE_FACTOR`).

**Exploratory probes** (libwebrtc's initial probing, and its probing when the allocation's
maximum rises): when what the subscriber would take with nothing holding it back
(``wanted_bps``: every subscription at the top its hints allow) is above the estimate and the
allocation's ``reach`` (the rungs those hints allow) rises, as when a transport starts, a
subscription is added or a tile grows, clusters at :data:`EXPLORE_FACTORS` x the estimate
(capped at ``wanted_bps`` x :data:`PROBE_FACTOR`) go out one after the other, each only while
the last got at least :data:`EXPLORE_CONTINUE` of its rate through, so a new subscriber reaches
the layer its link allows in a second or two instead of climbing from the start estimate one
layer per probe. They ignore the failure backoff (the situation is new) and a failed one
ends the run without backing off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from sfu.core.allocator import UPGRADE_HOLD
from sfu.core.estimator import BandwidthEstimator

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_FACTOR",
    "BACKOFF_MAX",
    "CLUSTER_DURATION",
    "EXPLORE_CONTINUE",
    "EXPLORE_FACTORS",
    "MIN_CLUSTER_BYTES",
    "MIN_CLUSTER_PACKETS",
    "MIN_RECEIVED",
    "PAUSED_BACKOFF",
    "PRIMER_BYTES",
    "PROBE_FACTOR",
    "SETTLE",
    "ProbeCluster",
    "Prober",
    "probe_step",
]

#: A probe aims this far above what the next layer needs: a link that takes 1.2x the layer's
#: measured rate takes the layer with room for its bitrate swings.
PROBE_FACTOR: Final = 1.2
#: Bytes of a cluster: the probe rate over this long (s), 15-30 ms in libwebrtc: long enough
#: for the bottleneck to space the packets out, short enough to hurt nobody when it fails.
CLUSTER_DURATION: Final = 0.025
#: A cluster has at least this many packets (fewer say nothing about a rate).
MIN_CLUSTER_PACKETS: Final = 5
#: Every cluster is preceded by this many padding bytes outside it (its *primer*, recorded
#: under no cluster): a token-bucket policer (``tc tbf``, a cellular shaper) passes its burst
#: at line rate, so the first bytes of a train say nothing about the rate. The primer drains
#: the bucket and the cluster behind it arrives at the link's rate. The real-client test's
#: shaping holds 4 kB of burst and 50 ms of queue: without a primer a 25 ms cluster for the
#: middle layer (2.2 kB) passed a 400 kbit/s link at once and lifted the estimate to 1 Mbit/s.
PRIMER_BYTES: Final = 4_000
#: ... and a cluster carries at least this many padding bytes (fewer arrive within a few
#: milliseconds at any rate worth measuring).
MIN_CLUSTER_BYTES: Final = 3_000
#: A cluster of which less than this share was received failed, whatever its rate (libwebrtc
#: wants 80 %): the bottleneck dropped the rest.
MIN_RECEIVED: Final = 0.8
#: Padding bytes of one probe packet: RFC 3550 §5.1 padding counts to 255 in one octet.
PADDING_SIZE: Final = 255
#: Wait between a failed probe and the next: 3 s, times 1.5 per consecutive failure, at most
#: 4.5 s (a failed 25 ms cluster costs a capped link a few kilobytes, while a longer wait keeps
#: a freed link on a low layer past the 8 s the issue allows).
BACKOFF_BASE: Final = 3.0
BACKOFF_FACTOR: Final = 1.5
BACKOFF_MAX: Final = 4.5
#: ... except while all video is paused for bandwidth: then a failed probe costs no video
#: (only audio goes out) and every second waited is a second without any picture, so the
#: wait stays this long. Climbing from a pause to the top layer takes three probes and two
#: settles (``SETTLE``, 2 s each) after it; a freed link waited up to 4.5 s for the first,
#: and the top layer came 9.4-10.4 s after the real-client test's cap was removed.
PAUSED_BACKOFF: Final = 2.0
#: A successful probe whose upgrade then congested the link (a decrease within BLAME_WINDOW)
#: costs far more than a failed cluster: a keyframe, a congestion episode with loss for every
#: flow on the link, and a switch back down. The wait after one doubles per consecutive blame
#: from BACKOFF_BASE up to this (s), until a success is not blamed: two subscribers sharing a
#: link one top layer short of both took turns upgrading into it every 5 s (the lab). The
#: price: a link freed after such a run is used again only after the wait (up to this long),
#: where after failed probes alone it is within BACKOFF_MAX. Raising the bar instead (a probe
#: must show more than the step needs) did not help: a short burst passes a shared link's
#: queue at the bottleneck's full rate whatever it aims at.
BLAME_BACKOFF_MAX: Final = 30.0
BLAME_FACTOR: Final = 2.0
#: Wait after a successful probe before the next one (the allocator needs a moment to use it).
SUCCESS_PAUSE: Final = 1.0
#: No probe for the next step this soon (s) after a target change: the new layer's keyframe
#: burst and its rate must show in the acknowledged bitrate first (a probe on top of them
#: queues, reads as overuse, and the decrease it causes undoes the upgrade); and the
#: allocator takes no upgrade sooner (its ``UPGRADE_HOLD``). A success within that hold was
#: wasted: the allocation it caused could not upgrade, and by the next one, half a second
#: later, a keyframe in the next layer's one-second meter had priced it over the budget again
#: (the real-client test's climb after the cap, twice: a probe and 1.2 s more per step).
SETTLE: Final = UPGRADE_HOLD
#: A cluster's result is read once all its packets were acknowledged or lost, or after this
#: long (s) plus the round trip.
RESULT_TIMEOUT: Final = 0.5
#: A congestion decrease this soon (s) after a successful probe is blamed on it: the probe's
#: burst passed, the upgrade it allowed did not, and the next probe backs off as after a
#: failure. Decreases at other times (a link that changed) do not delay probing.
BLAME_WINDOW: Final = 5.0
#: Failures (and congestion after a successful probe) are forgotten after this long without a
#: congestion decrease (s): a link that stayed calm this long may have changed.
CALM_RESET: Final = 20.0
#: Exploratory clusters aim at these multiples of the estimate (libwebrtc's first probes of a
#: connection go at 3x and 6x its start rate).
EXPLORE_FACTORS: Final = (3.0, 6.0)
#: The next exploratory cluster goes out only if the last got this share of its rate through
#: (libwebrtc continues exponential probing above 70 %).
EXPLORE_CONTINUE: Final = 0.7
#: Cluster ids run modulo this (the history keeps them as small ints).
_MAX_CLUSTER_ID: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class ProbeCluster:
    """One cluster to send now: :data:`PRIMER_BYTES` outside the cluster, then ``size`` bytes
    of the cluster. Sent as padding, that is ``primer`` packets then ``packets`` packets of
    ``padding`` bytes; a sender that probes with copies of media tells :meth:`Prober.sent`
    how many packets the cluster took instead."""

    id: int
    bps: float
    packets: int
    padding: int
    sent_at: float
    primer: int = 0
    size: int = 0


class Prober:
    """When to probe, how much, and what came of it."""

    def __init__(self) -> None:
        self._next_id = 0
        self._pending: ProbeCluster | None = None
        self._failures = 0
        #: Consecutive successes blamed for a congestion decrease (see BLAME_BACKOFF_MAX), and
        #: whether the last success was.
        self._blames = 0
        self._success_blamed = False
        self._not_before = 0.0
        self._decreases = 0
        self._last_decrease = 0.0
        self._last_success = -1e9
        self._reach = 0
        #: Exploratory rates still to try (bps), and whether the pending cluster is one.
        self._explore: list[float] = []
        self._exploring = False
        #: Clusters by outcome (read at scrape time).
        self.succeeded = 0
        self.failed = 0
        self.started = 0

    @property
    def pending(self) -> ProbeCluster | None:
        """The cluster whose result is awaited."""
        return self._pending

    def backoff(self) -> float:
        """The wait after the current run of failures (s)."""
        if not self._failures:
            return 0.0
        wait = BACKOFF_BASE * BACKOFF_FACTOR ** (self._failures - 1)
        return min(wait, BACKOFF_MAX)

    def blame_backoff(self) -> float:
        """The wait after the current run of blamed successes (s)."""
        if not self._blames:
            return 0.0
        return min(BACKOFF_BASE * BLAME_FACTOR ** (self._blames - 1), BLAME_BACKOFF_MAX)

    def poll(
        self,
        *,
        estimate_bps: float,
        desired_bps: float,
        rtt: float,
        now: float,
        wanted_bps: float = 0.0,
        reach: int = 0,
    ) -> ProbeCluster | None:
        """A cluster to send now, or None. ``desired_bps``: what the next upgrade needs in
        total (0 when nothing more is wanted); ``wanted_bps``: what every subscription at its
        top would need (0: unknown); ``reach``: how many rungs the subscriptions' hints allow
        (:attr:`~sfu.core.allocator.Allocation.reach`), whose rise starts exploratory probes
        (a rate would rise with every keyframe)."""
        if reach > self._reach and wanted_bps > estimate_bps:
            cap = wanted_bps * PROBE_FACTOR
            rates = sorted({min(f * estimate_bps, cap) for f in EXPLORE_FACTORS})
            self._explore = [r for r in rates if r > estimate_bps]
        self._reach = reach
        if self._pending is not None:
            return None
        if self._explore:
            bps = self._explore.pop(0)
            self._exploring = True
            return self._start(bps, now)
        if desired_bps <= estimate_bps or now < self._not_before:
            return None
        self._exploring = False
        return self._start(desired_bps * PROBE_FACTOR, now)

    def _start(self, bps: float, now: float) -> ProbeCluster:
        size = max(bps * CLUSTER_DURATION / 8, MIN_CLUSTER_BYTES)
        packets = max(MIN_CLUSTER_PACKETS, round(size / PADDING_SIZE))
        primer = -(-PRIMER_BYTES // PADDING_SIZE)
        cluster = ProbeCluster(
            self._next_id, bps, packets, PADDING_SIZE, now, primer, int(packets * PADDING_SIZE)
        )
        self._next_id = (self._next_id + 1) % _MAX_CLUSTER_ID
        self._pending = cluster
        self.started += 1
        return cluster

    def sent(self, packets: int) -> None:
        """The pending cluster went out as ``packets`` packets (copies of media rather than
        padding): its result is due, and counts as received, by that many."""
        pending = self._pending
        if pending is not None and packets > 0:
            self._pending = replace(pending, packets=packets)

    def on_target_change(self, *, now: float) -> None:
        """The allocator changed a target: the next probe for a step waits :data:`SETTLE`."""
        self._not_before = max(self._not_before, now + SETTLE)

    def due(self, *, acknowledged: int, rtt: float, now: float) -> bool:
        """Whether the pending cluster's result should be read now (``acknowledged``: its
        packets the feedback has accounted so far)."""
        cluster = self._pending
        if cluster is None:
            return False
        return acknowledged >= cluster.packets or now - cluster.sent_at > RESULT_TIMEOUT + rtt

    def on_decreases(self, decreases: int, *, now: float) -> None:
        """The estimator's count of congestion decreases: a new one soon after a successful
        probe means the upgrade it allowed overloads the link, so the next probe waits as
        after a failure (a probe must not undo what congestion just taught)."""
        if decreases != self._decreases:
            self._decreases = decreases
            self._last_decrease = now
            if now - self._last_success <= BLAME_WINDOW:
                self._failures += 1
                if not self._success_blamed:
                    self._success_blamed = True
                    self._blames += 1
                wait = max(self.backoff(), self.blame_backoff())
                self._not_before = max(self._not_before, now + wait)
            return
        if self._blames and not self._success_blamed and now - self._last_success > BLAME_WINDOW:
            self._blames = 0  # the last success held: the link carries that upgrade now
        if self._failures and now - self._last_decrease > CALM_RESET:
            self._failures = 0
            self._last_decrease = now

    def finish(
        self, result_bps: float | None, *, desired_bps: float, now: float, paused: bool = False
    ) -> bool:
        """Close the pending cluster with what it got through; True on success (the link
        took what the upgrade needs). ``paused``: all video is paused for bandwidth (a failure
        then waits :data:`PAUSED_BACKOFF`)."""
        pending, self._pending = self._pending, None
        if self._exploring:
            self._exploring = False
            if result_bps is None or pending is None or result_bps < EXPLORE_CONTINUE * pending.bps:
                self._explore.clear()
            if result_bps is not None and result_bps >= desired_bps:
                self.succeeded += 1
                self._last_success = now
                self._success_blamed = False
                return True
            self.failed += 1
            return False
        # Judged on the step it was sent for: when the step's price rose while the probe was
        # out, what it got through still lifted the estimate (the real-client test's climb:
        # the middle layer came on it), and a failure's 4.5 s wait held the next step back.
        needed = desired_bps if pending is None else min(desired_bps, pending.bps / PROBE_FACTOR)
        if result_bps is not None and result_bps >= needed:
            # Failures are not forgotten here: a probe's burst can pass a link that the
            # layer's steady rate then congests (a decrease soon after says so).
            self.succeeded += 1
            self._last_success = now
            self._success_blamed = False
            self._not_before = now + SUCCESS_PAUSE
            return True
        self.failed += 1
        self._failures += 1
        # A blame read in the same step (on_decreases runs first) may have set a longer wait.
        wait = min(self.backoff(), PAUSED_BACKOFF) if paused else self.backoff()
        self._not_before = max(self._not_before, now + wait)
        return False


def probe_step(
    prober: Prober,
    estimator: BandwidthEstimator,
    *,
    desired_bps: float,
    now: float,
    wanted_bps: float = 0.0,
    reach: int = 0,
    paused: bool = False,
) -> ProbeCluster | None:
    """One periodic step of probing on a transport: read the pending cluster's result into the
    estimate when it is due, then say whether to start a new cluster (the caller sends it,
    recording its packets under the cluster's id). ``paused``: all its video is paused for
    bandwidth."""
    pending = prober.pending
    rtt = estimator.rtt
    prober.on_decreases(estimator.decreases, now=now)
    if pending is not None:
        acknowledged = estimator.detector.cluster(pending.id)[0]
        if prober.due(acknowledged=acknowledged, rtt=rtt, now=now):
            result = estimator.probe_bps(pending.id)
            if acknowledged < MIN_RECEIVED * pending.packets:
                result = None  # the bottleneck dropped part of it: a failure
            if result is not None:
                result = min(result, pending.bps)  # never above what the probe aimed at
                estimator.on_probe_result(result, now=now)
            prober.finish(result, desired_bps=desired_bps, now=now, paused=paused)
    return prober.poll(
        estimate_bps=estimator.target_bps(),
        desired_bps=desired_bps,
        rtt=rtt,
        now=now,
        wanted_bps=wanted_bps,
        reach=reach,
    )
