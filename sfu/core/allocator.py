"""The bandwidth allocator: one subscriber's budget shared over its subscriptions' layers.

Every update (a new estimate, or the periodic tick) redistributes the budget:

1. audio first: each audio subscription's measured rate is reserved, and audio is never paused;
2. every enabled video subscription, in priority order (screen share > pinned > active speaker
   > the rest), gets the lowest rung of its *ladder* if it fits (within
   ``LOWEST_RUNG_ALLOWANCE`` of the budget), else it is **paused** for
   bandwidth (the selector's target spatial None: nothing is forwarded, never a frozen
   picture) and the client is told (``stream_state``);
3. the rest goes in upgrades one rung at a time, class by class (all of a higher class's
   upgrades before a lower class's), round robin within a class.

A ladder is the subscription's (spatial, temporal) layers in order of cost, each priced from
its publication's measured rates (:mod:`sfu.core.layer_rates`) and capped by the subscriber's
hints (``max_spatial`` / ``max_temporal`` from its tile size and frame rate; a disabled or
invisible tile gets nothing). A camera's lowest spatial layer steps through its temporal layers
(7.5, 15, 30 fps for VP8's usual three) before anything is paused; its higher spatial layers
come at full frame rate only (a larger picture at a quarter of the frames is a poor trade for
faces, as Jitsi also judges). A screen share steps through every (spatial, temporal) pair:
legible text matters more than motion.

Hysteresis (after mediasoup's and Jitsi's allocators): an estimate within ``ESTIMATE_CHANGE``
of the one last acted on is ignored unless the current plan no longer fits it; a subscription
is upgraded only after holding its target for ``UPGRADE_HOLD`` seconds, and not within
``CONGESTION_HOLD`` seconds of a congestion downgrade unless a probe has since shown the link
takes the next step (:meth:`Allocator.end_congestion_holds`); a paused subscription resumes
(to its lowest rung) once that fits again and it has been paused for ``UPGRADE_HOLD``.

The allocator is sans-I/O: :meth:`Allocator.update` takes ``now`` and returns an
:class:`Allocation` (targets, pause/resume changes, whether the subscriber is deficient and
the rate its next upgrade needs: what a prober should aim at). The caller applies targets to
the selectors, which switch at keyframes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from sfu._fastpath.values import LayerPair
from sfu.core.subscription import Subscription

__all__ = [
    "CONGESTION",
    "CONGESTION_HOLD",
    "ESTIMATE_CHANGE",
    "HINT",
    "KEEP_PRICE_LIMIT",
    "LOWEST_RUNG_ALLOWANCE",
    "PUBLISHER",
    "REASONS",
    "UPGRADE",
    "UPGRADE_HOLD",
    "Allocation",
    "Allocator",
    "Priority",
    "Rung",
    "allocate",
    "ladder",
    "priority_of",
]

#: Relative estimate change below which the allocation is left alone (Jitsi uses 15 %,
#: LiveKit ~10 %): an estimator's noise must not move layers.
ESTIMATE_CHANGE: Final = 0.12
#: Seconds a subscription holds its target before it may be upgraded (mediasoup's 2 s guard).
UPGRADE_HOLD: Final = 2.0
#: Seconds after a congestion downgrade during which that subscription is not upgraded
#: (mediasoup: no spatial upgrade within 10 s of a downgrade for bandwidth).
CONGESTION_HOLD: Final = 10.0
#: A target kept while the budget has not fallen may cost at most this times the budget: a
#: keyframe in a layer's one-second meter reads up to about twice its rate, a spike to ride
#: out. A layer that costs more is a price the link must really carry: a publisher's top
#: layer priced at 170 kbit/s when its encoder had just started (so it fitted a 270 kbit/s
#: budget) was kept at 900 kbit/s against a 300-400 kbit/s estimate; the pacer held it back
#: and expired it (frozen video), and nothing probed, as nothing was above the top.
KEEP_PRICE_LIMIT: Final = 2.0

#: The lowest rung of a subscription is given while everything up to it costs at most this
#: times the budget; the budget is the estimate less its headroom (the peer's 0.9), so the
#: lowest layer may use that headroom, never more than the estimate itself. A pause costs a
#: keyframe and UPGRADE_HOLD before the video may come back: at a 400 kbit/s cap the
#: estimate's first reading (the rate acknowledged in the overrun, 207 kbit/s) left a
#: 187 kbit/s budget against the 203 kbit/s of audio and the low layer, and the low layer
#: showed 4.8 s after the cap instead of about 1.5 s. Upgrades stay within the budget.
LOWEST_RUNG_ALLOWANCE: Final = 1.1

#: Why a target changed (the layer-switch metric's ``reason`` label).
CONGESTION: Final = "congestion"
UPGRADE: Final = "upgrade"
HINT: Final = "hint"
#: The publisher stopped sending the layer aimed at (its encoder dropped it for bandwidth or
#: CPU): no congestion of this subscriber's, so no cooldown either.
PUBLISHER: Final = "publisher"
REASONS: Final = (CONGESTION, UPGRADE, HINT, PUBLISHER)


class Priority(IntEnum):
    """Who gets bandwidth first; higher first."""

    OTHER = 0
    SPEAKER = 1
    PINNED = 2
    SCREEN = 3


def priority_of(sub: Subscription, speakers: Collection[str] = ()) -> Priority:
    """A subscription's class: its publication's source, the subscriber's pin, the speakers."""
    if sub.publication.source == "screen":
        return Priority.SCREEN
    if sub.pinned:
        return Priority.PINNED
    if sub.publication.participant_id in speakers:
        return Priority.SPEAKER
    return Priority.OTHER


@dataclass(frozen=True, slots=True)
class Rung:
    """One step of a ladder: the layers to forward and what they cost (bits per second)."""

    spatial: int
    #: Highest temporal layer forwarded; None: all of them.
    temporal: int | None
    bps: float

    @property
    def pair(self) -> LayerPair:
        """The selector target."""
        return LayerPair(self.spatial, self.temporal)


def _order(pair: LayerPair) -> tuple[int, int]:
    spatial = -1 if pair.spatial is None else pair.spatial
    temporal = 1 << 16 if pair.temporal is None else pair.temporal
    return spatial, temporal


def ladder(sub: Subscription, now: float) -> list[Rung]:
    """The rungs ``sub`` may use, cheapest first, within its hints; empty when its subscriber
    disabled it (or a host holds it). Unmeasured publications cost nothing (no media yet)."""
    if sub.selector is None or sub.paused or sub.held:
        return []
    pub = sub.publication
    top = (
        pub.num_layers - 1 if sub.max_spatial is None else min(sub.max_spatial, pub.num_layers - 1)
    )
    cap_t = sub.max_temporal
    rates = pub.rates.measure(pub, now)
    screen = pub.source == "screen"
    rungs: list[Rung] = []
    for spatial in sorted(s for s in rates if s <= top):
        cumulative = rates[spatial]
        last = len(cumulative) - 1
        highest = last if cap_t is None else min(cap_t, last)
        # Every frame rate for a screen share and a camera's lowest layer; full rate above.
        lowest = 0 if screen or not rungs else highest
        for t in range(lowest, highest + 1):
            temporal = None if t == last else t
            bps = cumulative[t]
            if rungs and bps < rungs[-1].bps:
                bps = rungs[-1].bps  # meter noise: an upgrade never counts as a saving
            rungs.append(Rung(spatial, temporal, bps))
    if not rungs:
        # Nothing measured yet: aim at the cap; the selector starts on whatever arrives.
        rungs.append(Rung(top, cap_t, 0.0))
    return rungs


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one update decided."""

    #: Selector target of every video subscription (spatial None: forward nothing).
    targets: dict[Subscription, LayerPair]
    #: Subscriptions paused for bandwidth by this update, and those resumed.
    paused: tuple[Subscription, ...] = ()
    resumed: tuple[Subscription, ...] = ()
    #: Target changes of this update and why: (subscription, reason) with reason in REASONS.
    changes: tuple[tuple[Subscription, str], ...] = ()
    #: Some enabled video subscription gets less than its hints allow.
    deficient: bool = False
    #: Bits per second the targets (audio included) are expected to use.
    allocated_bps: float = 0.0
    #: The total rate (allocated plus the increment) the next upgrade in priority order
    #: needs, or None when nothing is deficient: what a prober should aim at.
    next_step_bps: float | None = None
    #: The budget this update acted on (after hysteresis), None without a budget.
    budget_bps: float | None = None
    #: What every subscription at the top its hints allow would need (audio included): the
    #: most a prober should ever ask the link for.
    wanted_bps: float = 0.0
    #: How many rungs the video subscriptions' ladders have in all (what their hints allow
    #: of what is measured): its rise (a new subscription, a larger tile, layers measured for
    #: the first time) is what exploratory probing starts on, not a rate's noise.
    reach: int = 0


@dataclass(slots=True)
class _State:
    """What the allocator remembers of one subscription."""

    target: LayerPair
    since: float
    congested_at: float = float("-inf")
    paused_for_bandwidth: bool = False
    caps: tuple[int | None, int | None, bool] = (None, None, False)
    #: The caps changed but the hold deferred the target change they call for.
    hint_pending: bool = False
    #: The budget the target was set under (None: none known).
    budget: float | None = None


def _caps(sub: Subscription) -> tuple[int | None, int | None, bool]:
    return sub.max_spatial, sub.max_temporal, sub.paused or sub.held


def _choose(
    video: Sequence[Subscription],
    ladders: Mapping[Subscription, list[Rung]],
    limits: Mapping[Subscription, int],
    prio: Mapping[Subscription, int],
    audio_bps: float,
    budget: float | None,
) -> tuple[dict[Subscription, int], float]:
    """Each subscription's rung (-1: paused) within ``budget``, and what they cost."""
    chosen: dict[Subscription, int] = {}
    spent = audio_bps
    if budget is None:
        # No known limit: the best each may reach now (the hysteresis still holds, so a
        # budget source that goes quiet does not bring a congested layer straight back).
        for sub in video:
            rungs = ladders[sub]
            chosen[sub] = min(len(rungs) - 1, limits[sub])
            spent += rungs[chosen[sub]].bps if chosen[sub] >= 0 else 0.0
    else:
        for sub in video:
            rungs = ladders[sub]
            if not rungs:
                chosen[sub] = -1
            elif limits[sub] >= 0 and spent + rungs[0].bps <= LOWEST_RUNG_ALLOWANCE * budget:
                chosen[sub] = 0
                spent += rungs[0].bps
            else:
                chosen[sub] = -1
        for cls in sorted({prio.get(s, 0) for s in video}, reverse=True):
            members = [s for s in video if prio.get(s, 0) == cls and chosen[s] >= 0]
            upgraded = True
            while upgraded:
                upgraded = False
                for sub in members:
                    i = chosen[sub]
                    if i >= limits[sub]:
                        continue
                    rungs = ladders[sub]
                    extra = rungs[i + 1].bps - rungs[i].bps
                    if spent + extra <= budget:
                        chosen[sub] = i + 1
                        spent += extra
                        upgraded = True
    return chosen, spent


@dataclass(slots=True)
class Allocator:
    """One subscriber's allocator; it keeps what hysteresis needs between updates."""

    _states: dict[Subscription, _State] = field(default_factory=dict)
    _budget: float | None = None
    _allocated: float = 0.0
    #: Target changes by reason, and pauses / resumes for bandwidth, for metrics.
    switches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    pauses: int = 0
    resumes: int = 0
    #: The last update's outcome (for metrics: deficient, paused count).
    last: Allocation | None = None

    @property
    def paused_count(self) -> int:
        """Video subscriptions paused for bandwidth now."""
        return sum(1 for s in self._states.values() if s.paused_for_bandwidth)

    @property
    def all_paused(self) -> bool:
        """Whether every video subscription is paused for bandwidth (only audio goes out)."""
        states = self._states
        return bool(states) and all(s.paused_for_bandwidth for s in states.values())

    def _effective_budget(self, budget: float | None) -> float | None:
        held = self._budget
        if budget is None or held is None or held <= 0:
            return budget
        if abs(budget - held) > ESTIMATE_CHANGE * held or budget < self._allocated:
            return budget
        return held

    def end_congestion_holds(self) -> None:
        """A probe just showed the link takes the next upgrade: the holds after congestion
        downgrades (and pauses) end, so recovery is not delayed by :data:`CONGESTION_HOLD`
        (the prober's backoff, not this hold, keeps a probe from being retried too soon)."""
        for state in self._states.values():
            state.congested_at = float("-inf")

    def update(
        self,
        subscriptions: Iterable[Subscription],
        *,
        budget_bps: float | None,
        now: float,
        priorities: Mapping[Subscription, int] | None = None,
    ) -> Allocation:
        """Redistribute ``budget_bps`` (None: no limit) over ``subscriptions``."""
        subs = list(subscriptions)
        budget = self._effective_budget(budget_bps)
        self._budget = budget
        audio_bps = 0.0
        video: list[Subscription] = []
        for sub in subs:
            if sub.selector is None:
                stream = sub.publication.layers.get(0)
                if stream is not None and not (sub.paused or sub.held):
                    audio_bps += stream.meter.bps(now)
            else:
                video.append(sub)
        prio = priorities or {}
        video.sort(key=lambda s: -prio.get(s, 0))  # stable: ties keep subscription order
        ladders = {sub: ladder(sub, now) for sub in video}
        states = self._states
        for gone in [s for s in states if s not in ladders]:
            del states[gone]
        # Per subscription: the highest rung it may reach this update (hysteresis).
        limits: dict[Subscription, int] = {}
        for sub in video:
            rungs = ladders[sub]
            state = states.get(sub)
            limits[sub] = len(rungs) - 1
            if state is None or not rungs:
                continue
            if state.paused_for_bandwidth:
                if now - state.since < UPGRADE_HOLD:
                    limits[sub] = -1
                elif now - state.congested_at < CONGESTION_HOLD:
                    limits[sub] = 0
                continue
            if now - state.since < UPGRADE_HOLD or now - state.congested_at < CONGESTION_HOLD:
                current = _order(state.target)
                held = max((i for i, r in enumerate(rungs) if _order(r.pair) <= current), default=0)
                limits[sub] = min(limits[sub], held)
        chosen, spent = _choose(video, ladders, limits, prio, audio_bps, budget)
        if budget_bps is not None and budget is not None and budget_bps > budget:
            # The held budget was set against older prices: when a layer's measured rate rose
            # (a keyframe, the publisher's own ramp), it must not downgrade a subscription the
            # estimate itself still covers.
            for sub in video:
                state = states.get(sub)
                i = chosen[sub]
                rungs = ladders[sub]
                pair = rungs[i].pair if i >= 0 else LayerPair(None, None)
                if state is not None and _order(pair) < _order(state.target):
                    budget = self._budget = budget_bps
                    chosen, spent = _choose(video, ladders, limits, prio, audio_bps, budget)
                    break
        if budget is not None:
            spent = self._keep_unless_the_budget_fell(video, ladders, chosen, spent, budget)
        self._allocated = spent
        wanted = audio_bps + sum(rungs[-1].bps for rungs in ladders.values() if rungs)
        reach = sum(len(rungs) for rungs in ladders.values())
        return self._apply(video, ladders, chosen, prio, spent, budget, now, wanted, reach)

    def _keep_unless_the_budget_fell(
        self,
        video: Sequence[Subscription],
        ladders: Mapping[Subscription, list[Rung]],
        chosen: dict[Subscription, int],
        spent: float,
        budget: float,
    ) -> float:
        """A subscription keeps its current target while the budget has not fallen below the
        one it was set under and the allocation stays within :data:`KEEP_PRICE_LIMIT` x the
        budget: a downgrade then would answer a price spike (a keyframe in the layer's
        one-second meter reads up to twice its rate), not congestion, and its CONGESTION_HOLD
        kept the top layer away for 10 s on a free link. A link that is really congested
        brings the estimate, and so the budget, down. Returns the new spend."""
        for sub in video:
            state = self._states.get(sub)
            if state is None or state.paused_for_bandwidth or state.budget is None:
                continue
            if budget < state.budget:
                continue
            rungs = ladders[sub]
            i = chosen[sub]
            keep = next((k for k, r in enumerate(rungs) if r.pair == state.target), None)
            if keep is not None and keep > i:
                kept = spent + rungs[keep].bps - (rungs[i].bps if i >= 0 else 0.0)
                if kept > KEEP_PRICE_LIMIT * budget:
                    continue  # not a spike: more than the link is known to carry
                spent = kept
                chosen[sub] = keep
        return spent

    def _apply(
        self,
        video: Sequence[Subscription],
        ladders: Mapping[Subscription, list[Rung]],
        chosen: Mapping[Subscription, int],
        prio: Mapping[Subscription, int],
        spent: float,
        budget: float | None,
        now: float,
        wanted: float,
        reach: int,
    ) -> Allocation:
        """Record the new targets, classify the changes, find the next upgrade."""
        targets: dict[Subscription, LayerPair] = {}
        paused: list[Subscription] = []
        resumed: list[Subscription] = []
        changes: list[tuple[Subscription, str]] = []
        deficient = False
        next_step: float | None = None
        for sub in video:
            rungs = ladders[sub]
            i = chosen[sub]
            target = rungs[i].pair if i >= 0 else LayerPair(None, None)
            targets[sub] = target
            enabled = bool(rungs)
            bandwidth_pause = enabled and i < 0
            if enabled and i < len(rungs) - 1:
                deficient = True
                if next_step is None:
                    base = rungs[i].bps if i >= 0 else 0.0
                    next_step = spent + rungs[i + 1].bps - base
            caps = _caps(sub)
            state = self._states.get(sub)
            if state is None:
                self._states[sub] = _State(
                    target, now, paused_for_bandwidth=bandwidth_pause, caps=caps, budget=budget
                )
                if bandwidth_pause:
                    paused.append(sub)
                    self.pauses += 1
                continue
            if bandwidth_pause != state.paused_for_bandwidth:
                (paused if bandwidth_pause else resumed).append(sub)
                if bandwidth_pause:
                    self.pauses += 1
                else:
                    self.resumes += 1
                state.paused_for_bandwidth = bandwidth_pause
            hinted = caps != state.caps
            if target != state.target:
                if hinted:
                    reason = HINT
                elif _order(target) < _order(state.target):
                    if any(r.pair == state.target for r in rungs):
                        reason = CONGESTION
                        if state.budget is None or budget is None or budget < state.budget:
                            state.congested_at = now
                        # (else the budget did not fall: the layer's price rose past what
                        # it covers, which says nothing new about the link, so no hold
                        # waits for a probe that nothing asks for while the estimate
                        # covers the next step)
                    else:
                        reason = PUBLISHER  # what it aimed at is no longer sent
                else:
                    # A raised cap whose upgrade the hold deferred is still the hint's doing.
                    reason = HINT if state.hint_pending else UPGRADE
                changes.append((sub, reason))
                self.switches[reason] += 1
                state.target = target
                state.budget = budget
                state.since = now
                state.hint_pending = False
            elif hinted:
                state.hint_pending = True
            state.caps = caps
        allocation = Allocation(
            targets,
            tuple(paused),
            tuple(resumed),
            tuple(changes),
            deficient and budget is not None,
            spent,
            next_step if budget is not None else None,
            budget,
            wanted,
            reach,
        )
        self.last = allocation
        return allocation


def allocate(
    subscriptions: Sequence[Subscription],
    *,
    budget_bps: float | None,
    now: float,
    priorities: Mapping[Subscription, int] | None = None,
) -> dict[Subscription, LayerPair]:
    """Targets of one allocation without memory (no hysteresis): a fresh :class:`Allocator`."""
    return (
        Allocator()
        .update(subscriptions, budget_bps=budget_bps, now=now, priorities=priorities)
        .targets
    )
