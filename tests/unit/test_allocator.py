"""The allocator: audio first, priority classes, hints, temporal trade, hysteresis, pauses."""

from __future__ import annotations

import pytest
from core_parts import audio_publication, subscription, video_publication
from room_fixtures import vp8_packet

from sfu._fastpath.values import LayerPair
from sfu.core.allocator import (
    CONGESTION,
    CONGESTION_HOLD,
    ESTIMATE_CHANGE,
    HINT,
    LOWEST_RUNG_ALLOWANCE,
    PUBLISHER,
    UPGRADE,
    UPGRADE_HOLD,
    Allocation,
    Allocator,
    Priority,
    allocate,
    ladder,
    priority_of,
)
from sfu.core.layer_rates import (
    PEAK_FLOOR,
    PEAK_HALF_LIFE,
    SAMPLE_INTERVAL,
    SAMPLE_PACKETS,
    SHARES_INTERVAL,
    LayerRates,
    temporal_shares,
)
from sfu.core.peer import BUDGET_HEADROOM, probe_target
from sfu.core.publication import Publication
from sfu.core.subscription import Subscription

NOW = 100.0
#: Measured bitrates of the three layers in these tests (bits per second).
LAYER_BPS = (150_000, 500_000, 1_500_000)
AUDIO_BPS = 40_000
#: Bytes per frame of each VP8 temporal layer in a 4-frame cycle (TID 0, 2, 1, 2): libwebrtc's
#: 40 / 20 / 40 % split.
TL_CYCLE = ((0, 400), (2, 200), (1, 200), (2, 200))

TOP = LayerPair(2, None)
MID = LayerPair(1, None)
LOW = LayerPair(0, None)
PAUSED = LayerPair(None, None)


def _measured(
    pub: Publication, rates: tuple[int, ...] = LAYER_BPS, *, temporal: bool = False
) -> Publication:
    """Give each layer of ``pub`` a measured bitrate at NOW (and, with ``temporal``, cached
    packets with VP8 TIDs 0/1/2 in libwebrtc's proportions)."""
    for layer in range(len(rates)):
        pub.add_stream(0x100 + layer, layer)
    _FEEDS[pub] = (rates, temporal)
    _feed(pub, NOW)
    return pub


#: What each measured publication keeps sending: its layer rates and whether it has TIDs.
_FEEDS: dict[Publication, tuple[tuple[int, ...], bool]] = {}


def _feed(pub: Publication, now: float) -> None:
    """The publisher kept sending up to ``now``: meters, activity and cached packets."""
    rates, temporal = _FEEDS[pub]
    for layer, bps in enumerate(rates):
        stream = pub.layers[layer]
        if stream.meter.bps(now) == 0:  # one second's bytes per meter window
            stream.meter.add(bps // 8, now - 0.05)
        stream.last_packet_at = now
        if temporal:
            for seq in range(64):
                tid, size = TL_CYCLE[seq % 4]
                packet = vp8_packet(
                    stream.ssrc, seq, seq * 3000, keyframe=False, tid=tid, payload=bytes(size)
                )
                stream.cache.put(packet, seq, now - 0.5)


def _audio() -> Subscription:
    return subscription(_measured(audio_publication(), (AUDIO_BPS,)), 0x51)


def _video(n: int = 1, **kwargs: bool) -> Subscription:
    return subscription(_measured(video_publication(mid=str(n)), **kwargs), 0x9000 + n)


class _Clocked:
    """An allocator stepped through time on frozen measurements (rates sampled at NOW)."""

    def __init__(self, *subs: Subscription, priorities: dict[Subscription, int] | None = None):
        self.subs = subs
        self.priorities = priorities
        self.allocator = Allocator()

    def at(self, t: float, budget: float | None) -> Allocation:
        for sub in self.subs:
            if sub.publication in _FEEDS:
                _feed(sub.publication, t)
        return self.allocator.update(
            self.subs, budget_bps=budget, now=t, priorities=self.priorities
        )


def test_without_a_budget_every_subscription_aims_at_its_cap() -> None:
    a, b = _video(1), _video(2)
    b.set_preferences(1, None, False)
    plan = allocate([a, b, _audio()], budget_bps=None, now=NOW)
    assert plan == {a: TOP, b: MID}


def test_a_budget_hands_out_layers_lowest_first() -> None:
    a, b = _video(1), _video(2)
    # Both low layers (300k) plus one middle upgrade (350k) fit 700k; a second does not.
    assert allocate([a, b], budget_bps=700_000, now=NOW) == {a: MID, b: LOW}
    assert allocate([a, b], budget_bps=1_000_000, now=NOW) == {a: MID, b: MID}
    assert allocate([a, b], budget_bps=310_000, now=NOW) == {a: LOW, b: LOW}


def test_audio_is_reserved_first_and_never_paused() -> None:
    audio, video = _audio(), _video()
    # 170k: the low layer (150k) would fit alone, not after audio's 40k.
    allocation = Allocator().update([audio, video], budget_bps=170_000, now=NOW)
    assert allocation.targets == {video: PAUSED}
    assert audio not in allocation.targets
    assert allocation.paused == (video,)
    allocation = Allocator().update([audio, video], budget_bps=200_000, now=NOW)
    assert allocation.targets == {video: LOW}
    assert allocation.allocated_bps == AUDIO_BPS + LAYER_BPS[0]


def test_priority_classes_screen_then_pinned_then_speaker_then_the_rest() -> None:
    rest, speaker, pinned = _video(1), _video(2), _video(3)
    screen_pub = _measured(video_publication(mid="4"))
    screen_pub.source = "screen"
    screen = subscription(screen_pub, 0x9004)
    pinned.pinned = True
    speaker.publication.participant_id = "talker"
    subs = [rest, speaker, pinned, screen]
    prio = {s: int(priority_of(s, speakers={"talker"})) for s in subs}
    assert [prio[s] for s in subs] == [
        Priority.OTHER,
        Priority.SPEAKER,
        Priority.PINNED,
        Priority.SCREEN,
    ]
    # 4 x 150k base = 600k; the next 1.35M goes to the screen share's top layer first.
    plan = allocate(subs, budget_bps=1_950_000, now=NOW, priorities=prio)
    assert plan == {rest: LOW, speaker: LOW, pinned: LOW, screen: TOP}
    # 350k more buys the pinned tile's middle layer, not the speaker's.
    plan = allocate(subs, budget_bps=2_300_000, now=NOW, priorities=prio)
    assert plan == {rest: LOW, speaker: LOW, pinned: MID, screen: TOP}
    # Too little for every base layer: the lowest class is paused first.
    plan = allocate(subs, budget_bps=500_000, now=NOW, priorities=prio)
    assert plan == {rest: PAUSED, speaker: LOW, pinned: LOW, screen: LOW}


def test_hints_cap_the_layers_and_a_disabled_tile_gets_nothing() -> None:
    small, hidden, slow = _video(1, temporal=True), _video(2), _video(3, temporal=True)
    small.set_preferences(0, None, False)  # a thumbnail: the low layer is enough
    hidden.set_preferences(None, None, True)  # scrolled out of view
    slow.set_preferences(None, 1, False)  # the page asked for 15 fps
    allocation = Allocator().update([small, hidden, slow], budget_bps=10_000_000, now=NOW)
    assert allocation.targets == {small: LOW, hidden: PAUSED, slow: LayerPair(2, 1)}
    # The hidden tile is disabled by its subscriber, not paused for bandwidth.
    assert allocation.paused == ()
    assert not allocation.deficient
    assert ladder(hidden, NOW) == []


def test_temporal_layers_of_the_lowest_layer_are_traded_before_a_pause() -> None:
    sub = _video(temporal=True)
    shares = temporal_shares(sub.publication.layers[0], sub.publication.stream_kind, NOW)
    # Packet bytes (headers included) in the 40 / 20 / 40 % split.
    assert shares == pytest.approx((0.4, 0.6, 1.0), abs=0.03)
    rungs = ladder(sub, NOW)
    # The low layer at 7.5, 15, 30 fps; the upper layers only at full frame rate.
    assert [r.pair for r in rungs] == [(0, 0), (0, 1), (0, None), (1, None), (2, None)]
    assert [r.bps for r in rungs[:3]] == pytest.approx([150_000 * x for x in shares])
    t0, t1 = rungs[0].bps, rungs[1].bps
    assert allocate([sub], budget_bps=t1 + 1, now=NOW) == {sub: LayerPair(0, 1)}
    assert allocate([sub], budget_bps=t1 - 1, now=NOW) == {sub: LayerPair(0, 0)}
    # The lowest rung may use the budget's headroom (LOWEST_RUNG_ALLOWANCE), no more.
    low = t0 / LOWEST_RUNG_ALLOWANCE
    assert allocate([sub], budget_bps=low + 1, now=NOW) == {sub: LayerPair(0, 0)}
    assert allocate([sub], budget_bps=low - 1, now=NOW) == {sub: PAUSED}


def test_a_screen_share_keeps_its_resolution_and_sheds_frame_rate() -> None:
    pub = _measured(video_publication(rids=("f",), mid="5"), (1_000_000,), temporal=True)
    pub.source = "screen"
    sub = subscription(pub, 0x9005)
    rungs = [(r.spatial, r.temporal) for r in ladder(sub, NOW)]
    assert rungs == [(0, 0), (0, 1), (0, None)]
    assert allocate([sub], budget_bps=ladder(sub, NOW)[1].bps, now=NOW) == {sub: LayerPair(0, 1)}


def test_sampling_temporal_shares_leaves_the_cache_counters_alone() -> None:
    sub = _video(temporal=True)
    cache = sub.publication.layers[2].cache
    hits, misses = cache.hits, cache.misses
    LayerRates().measure(sub.publication, NOW)
    assert (cache.hits, cache.misses) == (hits, misses)


def test_measured_rates_are_sampled_once_per_interval() -> None:
    sub = _video()
    rates = sub.publication.rates
    first = rates.measure(sub.publication, NOW)
    sub.publication.layers[0].meter.add(100_000, NOW)
    assert rates.measure(sub.publication, NOW + SAMPLE_INTERVAL / 2) is first
    assert rates.measure(sub.publication, NOW + SAMPLE_INTERVAL)[0] != first[0]


def test_small_estimate_changes_are_ignored() -> None:
    sub = _video()
    clock = _Clocked(sub)
    assert clock.at(NOW, 490_000).targets == {sub: LOW}  # the middle layer needs 500k
    # Up by less than ESTIMATE_CHANGE: the plan stands although the middle layer would fit.
    small = 490_000 * (1 + ESTIMATE_CHANGE * 0.9)
    held = clock.at(NOW + 5, small)
    assert held.targets == {sub: LOW}
    assert held.budget_bps == 490_000
    # A larger rise is acted on.
    big = 490_000 * (1 + ESTIMATE_CHANGE * 1.1)
    moved = clock.at(NOW + 6, big)
    assert moved.budget_bps == big
    assert moved.targets == {sub: MID}


def test_a_small_drop_that_no_longer_fits_is_acted_on() -> None:
    sub = _video()
    clock = _Clocked(sub)
    assert clock.at(NOW, 520_000).targets == {sub: MID}
    assert clock.at(NOW + 5, 495_000).targets == {sub: LOW}  # -5 %, but 500k no longer fits


def test_an_upgrade_waits_for_the_hold_and_the_congestion_cooldown() -> None:
    sub = _video()
    clock = _Clocked(sub)
    assert clock.at(NOW, 3_000_000).targets == {sub: TOP}
    down = clock.at(NOW + 1, 700_000)
    assert down.targets == {sub: MID}
    assert down.changes == ((sub, CONGESTION),)
    # Capacity is back at once, but the subscription was just downgraded for congestion.
    for t in (2.0, UPGRADE_HOLD + 1.5, CONGESTION_HOLD):
        held = clock.at(NOW + t, 3_000_000)
        assert held.targets == {sub: MID}
        assert (
            held.deficient and held.next_step_bps == LAYER_BPS[2]
        )  # the top layer in place of the middle
    up = clock.at(NOW + 1 + CONGESTION_HOLD, 3_000_000)
    assert up.targets == {sub: TOP}
    assert up.changes == ((sub, UPGRADE),)
    assert clock.allocator.switches == {CONGESTION: 1, UPGRADE: 1, HINT: 0, PUBLISHER: 0}


def test_a_new_layer_is_held_before_the_next_upgrade() -> None:
    sub = _video()
    clock = _Clocked(sub)
    assert clock.at(NOW, 200_000).targets == {sub: LOW}
    # Capacity for the top, but a rung is climbed only after UPGRADE_HOLD on the one below.
    assert clock.at(NOW + 0.5, 3_000_000).targets == {sub: LOW}
    assert clock.at(NOW + UPGRADE_HOLD, 3_000_000).targets == {sub: TOP}


def test_pause_when_the_lowest_layer_does_not_fit_and_resume_when_it_does() -> None:
    audio, sub = _audio(), _video(temporal=True)
    clock = _Clocked(audio, sub)
    assert clock.at(NOW, 2_000_000).targets == {sub: TOP}
    paused = clock.at(NOW + 1, 80_000)  # audio 40k + 7.5 fps of the low layer (~58k) > 80k
    assert paused.targets == {sub: PAUSED}
    assert paused.paused == (sub,) and paused.resumed == ()
    assert paused.deficient
    assert paused.next_step_bps == AUDIO_BPS + ladder(sub, NOW + 1)[0].bps  # what resuming needs
    assert clock.allocator.paused_count == 1 and clock.allocator.all_paused
    # Still paused while the cap stays; no repeated event.
    assert clock.at(NOW + 5, 80_000).paused == ()
    resumed = clock.at(NOW + 20, 2_000_000)
    assert resumed.resumed == (sub,)
    assert resumed.targets[sub] != PAUSED
    assert clock.allocator.paused_count == 0 and not clock.allocator.all_paused
    assert (clock.allocator.pauses, clock.allocator.resumes) == (1, 1)


def test_all_paused_only_when_no_video_goes_out() -> None:
    """What the prober's shorter wait while paused (``PAUSED_BACKOFF``) reads: true only
    while every video subscription is paused for bandwidth."""
    first, second = _video(1), _video(2)
    clock = _Clocked(first, second)
    assert not clock.allocator.all_paused  # nothing allocated yet
    clock.at(NOW, 2_000_000)
    assert not clock.allocator.all_paused
    one = clock.at(NOW + 1, 200_000)  # room for one low layer
    assert sorted(t == PAUSED for t in one.targets.values()) == [False, True]
    assert clock.allocator.paused_count == 1 and not clock.allocator.all_paused
    clock.at(NOW + 2, 50_000)
    assert clock.allocator.paused_count == 2 and clock.allocator.all_paused


def test_a_paused_subscription_resumes_at_its_lowest_rung_inside_the_cooldown() -> None:
    sub = _video()
    clock = _Clocked(sub)
    clock.at(NOW, 2_000_000)
    assert clock.at(NOW + 1, 100_000).targets == {sub: PAUSED}
    # Within UPGRADE_HOLD of the pause: stays paused even if the base layer fits.
    assert clock.at(NOW + 1.5, 2_000_000).targets == {sub: PAUSED}
    resumed = clock.at(NOW + 1 + UPGRADE_HOLD, 2_000_000)
    assert resumed.targets == {sub: LOW}  # not further until the congestion cooldown ends
    assert resumed.resumed == (sub,)


def test_a_hint_change_is_counted_as_a_hint_not_congestion() -> None:
    sub = _video()
    clock = _Clocked(sub)
    clock.at(NOW, 3_000_000)
    sub.set_preferences(0, None, False)
    changed = clock.at(NOW + 1, 3_000_000)
    assert changed.targets == {sub: LOW}
    assert changed.changes == ((sub, HINT),)
    # No congestion cooldown from a hint: the tile grows again and the layer follows once held.
    sub.set_preferences(None, None, False)
    assert clock.at(NOW + 1.5, 3_000_000).targets == {sub: LOW}  # the hold defers it
    grown = clock.at(NOW + 1 + UPGRADE_HOLD, 3_000_000)
    assert grown.targets == {sub: TOP}
    assert grown.changes == ((sub, HINT),)  # still the hint's doing
    assert clock.allocator.switches == {CONGESTION: 0, UPGRADE: 0, HINT: 2, PUBLISHER: 0}


def test_stable_without_deficit_when_everything_fits() -> None:
    sub = _video()
    allocation = Allocator().update([sub], budget_bps=5_000_000, now=NOW)
    assert not allocation.deficient
    assert allocation.next_step_bps is None


def test_the_cooldown_holds_when_the_budget_goes_quiet() -> None:
    sub = _video()
    clock = _Clocked(sub)
    clock.at(NOW, 3_000_000)
    assert clock.at(NOW + 1, 400_000).targets == {sub: LOW}
    # The estimate stops signalling a limit (None): still no upgrade during the cooldown.
    assert clock.at(NOW + 5, None).targets == {sub: LOW}
    assert clock.at(NOW + 1 + CONGESTION_HOLD, None).targets == {sub: TOP}


def test_temporal_shares_are_resampled_only_every_few_seconds() -> None:
    sub = _video(temporal=True)
    rates = LayerRates()
    first = rates.measure(sub.publication, NOW)[0]
    assert len(first) == 3
    # The stream's temporal pattern changes (only TL0 now): the shares follow after the interval.
    stream = sub.publication.layers[0]
    for seq in range(64, 64 + SAMPLE_PACKETS):
        packet = vp8_packet(stream.ssrc, seq, seq * 3000, keyframe=False, tid=0, payload=bytes(300))
        stream.cache.put(packet, seq, NOW)
    for t, layers in ((NOW + SAMPLE_INTERVAL, 3), (NOW + SHARES_INTERVAL, 1)):
        _feed(sub.publication, t)  # still sending
        assert len(rates.measure(sub.publication, t)[0]) == layers


def test_a_successful_probe_ends_the_congestion_hold() -> None:
    sub = _video()
    clock = _Clocked(sub)
    clock.at(NOW, 2_000_000)
    assert clock.at(NOW + 1, 100_000).targets == {sub: PAUSED}
    assert clock.at(NOW + 1 + UPGRADE_HOLD, 2_000_000).targets == {sub: LOW}
    # The cooldown holds the low layer although the budget takes the top...
    assert clock.at(NOW + 1 + 2 * UPGRADE_HOLD, 2_000_000).targets == {sub: LOW}
    # ... until a probe shows the link takes the next step: then the usual hold only.
    clock.allocator.end_congestion_holds()
    up = clock.at(NOW + 1 + 2 * UPGRADE_HOLD + 0.5, 2_000_000)
    assert up.targets == {sub: TOP}
    assert up.changes == ((sub, UPGRADE),)


def test_wanted_is_everything_at_the_top_its_hints_allow() -> None:
    audio, sub = _audio(), _video()
    clock = _Clocked(audio, sub)
    first = clock.at(NOW, 200_000)
    assert first.wanted_bps == AUDIO_BPS + LAYER_BPS[2]
    assert first.reach == 3
    sub.set_preferences(1, None, False)  # the tile shrank: the middle layer is its top
    shrunk = clock.at(NOW + 0.5, 200_000)
    assert shrunk.wanted_bps == AUDIO_BPS + LAYER_BPS[1]
    assert shrunk.reach == 2


def test_a_price_rise_does_not_downgrade_what_the_estimate_covers() -> None:
    sub = _video()
    clock = _Clocked(sub)
    assert clock.at(NOW, 1_600_000).targets == {sub: TOP}
    # The estimate rose by less than ESTIMATE_CHANGE, so the held budget (1.6M) stays...
    # ... but the top layer's measured rate rose above it (a keyframe): the new budget is used.
    _FEEDS[sub.publication] = ((150_000, 500_000, 1_700_000), False)
    for layer in sub.publication.layers.values():
        layer.meter = type(layer.meter)()
    later = clock.at(NOW + 5, 1_750_000)
    assert later.targets == {sub: TOP}
    assert later.budget_bps == 1_750_000
    assert later.changes == ()


def test_a_stalled_encoder_does_not_make_its_layers_cheap() -> None:
    sub = _video()
    clock = _Clocked(sub)
    assert clock.at(NOW, 500_000).targets == {sub: MID}
    # The publisher's encoder stalls: its meters read almost nothing for a moment.
    _FEEDS[sub.publication] = ((10_000, 20_000, 30_000), False)
    for layer in sub.publication.layers.values():
        layer.meter = type(layer.meter)()
    later = NOW + UPGRADE_HOLD + 0.5
    stalled = clock.at(later, 500_000)
    # Priced at half their recent peaks (decayed), the top layer still does not fit.
    assert stalled.targets == {sub: MID}
    decay = 0.5 ** ((later - NOW) / PEAK_HALF_LIFE)
    assert ladder(sub, later)[-1].bps == pytest.approx(PEAK_FLOOR * LAYER_BPS[2] * decay, rel=0.01)


def test_a_keyframe_in_the_meter_is_not_congestion() -> None:
    sub = _video()
    clock = _Clocked(sub)
    assert clock.at(NOW, 1_700_000).targets == {sub: TOP}
    # The top layer's one-second meter holds a keyframe: it reads twice its rate.
    _FEEDS[sub.publication] = ((150_000, 500_000, 3_000_000), False)
    for layer in sub.publication.layers.values():
        layer.meter = type(layer.meter)()
    spike = clock.at(NOW + 1, 1_700_000)
    assert spike.targets == {sub: TOP}  # the budget did not fall: no downgrade, no hold
    assert spike.changes == ()
    # A budget that falls below the one the target was set under is acted on.
    fell = clock.at(NOW + 2, 1_400_000)
    assert fell.targets == {sub: MID}
    assert fell.changes == ((sub, CONGESTION),)


def test_a_layer_whose_price_rose_far_past_the_budget_is_not_kept() -> None:
    """A publisher's encoder that had just started priced its top layer low enough to fit;
    once it costs more than twice what the budget covers, keeping it is no spike to ride
    out: the subscriber gets the rung that fits (and a probe may then show more fits)."""
    sub = _video()
    _FEEDS[sub.publication] = ((20_000, 60_000, 170_000), False)
    for layer in sub.publication.layers.values():
        layer.meter = type(layer.meter)()
    clock = _Clocked(sub)
    assert clock.at(NOW, 270_000).targets == {sub: TOP}
    _FEEDS[sub.publication] = ((150_000, 500_000, 900_000), False)
    for layer in sub.publication.layers.values():
        layer.meter = type(layer.meter)()
    # Within twice the budget the top layer is still ridden out as a spike...
    assert clock.at(NOW + 1, 460_000).targets == {sub: TOP}
    # ... past it, it is shed for the rung the budget covers.
    ramped = clock.at(NOW + 2, 420_000)
    assert ramped.targets == {sub: LOW}
    assert ramped.allocated_bps <= 420_000
    assert ramped.changes == ((sub, CONGESTION),)
    # The link did not get worse (the budget never fell): no congestion hold keeps the
    # middle layer away once the estimate covers it.
    assert clock.at(NOW + 2 + UPGRADE_HOLD, 600_000).targets == {sub: MID}


def test_a_layer_the_publisher_stopped_is_no_congestion() -> None:
    sub = _video()
    clock = _Clocked(sub)
    assert clock.at(NOW, 3_000_000).targets == {sub: TOP}
    # The publisher's encoder drops its top layer (no packet for a while): not the subscriber's
    # congestion, so no cooldown keeps the layer away once it is sent again.
    top = sub.publication.layers[2]
    later = NOW + 2
    for layer in (0, 1):
        stream = sub.publication.layers[layer]
        stream.meter.add(LAYER_BPS[layer] // 8, later - 0.05)
        stream.last_packet_at = later
    top.last_packet_at = NOW - 5
    dropped = clock.allocator.update([sub], budget_bps=3_000_000, now=later)
    assert dropped.targets == {sub: MID}
    assert dropped.changes == ((sub, PUBLISHER),)
    back = clock.at(later + UPGRADE_HOLD, 3_000_000)  # the top layer is sent again
    assert back.targets == {sub: TOP}
    assert clock.allocator.switches[CONGESTION] == 0


def test_the_prober_is_asked_to_confirm_a_layer_kept_above_the_budget() -> None:
    """At the top there is no next step; a top layer kept through a price rise still needs
    the link's answer, or the estimate only creeps up while the pacer holds the layer back."""
    sub = _video()
    _FEEDS[sub.publication] = ((20_000, 60_000, 170_000), False)
    for layer in sub.publication.layers.values():
        layer.meter = type(layer.meter)()
    clock = _Clocked(sub)
    fits = clock.at(NOW, 270_000)
    assert fits.targets == {sub: TOP} and fits.next_step_bps is None
    assert probe_target(fits) == 0.0  # nothing more is wanted
    _FEEDS[sub.publication] = ((100_000, 250_000, 460_000), False)
    for layer in sub.publication.layers.values():
        layer.meter = type(layer.meter)()
    kept = clock.at(NOW + 1, 300_000)
    assert kept.targets == {sub: TOP} and kept.allocated_bps > 300_000
    assert probe_target(kept) == pytest.approx(kept.allocated_bps / BUDGET_HEADROOM)
    # Below the top the next step is the target, as before.
    below = Allocator().update([_video(2)], budget_bps=700_000, now=NOW)
    assert below.targets != {} and below.next_step_bps is not None
    assert probe_target(below) == pytest.approx(below.next_step_bps / BUDGET_HEADROOM)
