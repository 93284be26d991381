"""BandwidthEstimator and Prober on hand-made feedback (fake clock, both kernel kinds)."""

from __future__ import annotations

import random
import weakref
from collections import deque

import pytest
from netsim import Link, Receiver, steps

from sfu._fastpath._pacer_py import VIDEO
from sfu.core.allocator import UPGRADE_HOLD
from sfu.core.estimator import (
    ACKED_CAP_EXTRA,
    ACKED_CAP_FACTOR,
    BETA,
    DETAILED_FEEDBACK_MAX_PACKETS,
    INITIAL_BPS,
    LOSS_HIGH,
    LOSS_INTERVAL,
    LOSS_SEVERE,
    MAX_DECREASE,
    MIN_BPS,
    MIN_DECREASE_INTERVAL,
    PRIMER,
    PROBE_DELAY_HOLD,
    BandwidthEstimator,
)
from sfu.core.kernels import Kernels
from sfu.core.prober import (
    BACKOFF_BASE,
    BACKOFF_FACTOR,
    BACKOFF_MAX,
    BLAME_BACKOFF_MAX,
    BLAME_FACTOR,
    BLAME_WINDOW,
    EXPLORE_FACTORS,
    MIN_CLUSTER_PACKETS,
    PAUSED_BACKOFF,
    PROBE_FACTOR,
    SETTLE,
    Prober,
)
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.twcc import TransportFeedback

#: One receiver per estimator (its clock must not restart between calls of _feed).
_receivers: weakref.WeakKeyDictionary[BandwidthEstimator, TwccRecorder] = (
    weakref.WeakKeyDictionary()
)


def _estimator(kernels: Kernels) -> BandwidthEstimator:
    return BandwidthEstimator(kernels.SendHistory(), kernels.DelayDetector())


def _feed(
    est: BandwidthEstimator,
    *,
    start: float,
    seconds: float,
    bps: float,
    queue_growth: float = 0.0,
    lose_every: int = 0,
    random_loss: float = 0.0,
    seed: int = 1,
) -> float:
    """Send ``bps`` in 1000-byte packets for ``seconds``; the receiver sees each after 20 ms
    plus a queue growing by ``queue_growth`` s per s and reports every 50 ms."""
    recorder = _receivers.setdefault(est, TwccRecorder(1, interval=0.05))
    interval = 8000 / bps
    now = start
    queue = 0.0
    n = 0
    rng = random.Random(seed)
    while now < start + seconds:
        seq = est.history.record(1000, now, -1)
        n += 1
        queue += queue_growth * interval
        lost = (lose_every and n % lose_every == 0) or rng.random() < random_loss
        if not lost:
            recorder.on_packet(seq, 5, now + 0.02 + queue)
        for packet in recorder.poll(now):
            est.on_feedback(TransportFeedback.parse(packet), now=now)
        now += interval
    return now


def test_starts_at_the_initial_rate_and_grows_under_normal_feedback(kernels: Kernels) -> None:
    est = _estimator(kernels)
    assert est.target_bps() == INITIAL_BPS
    _feed(est, start=0.0, seconds=10.0, bps=280_000)
    assert est.twcc_seen and est.feedbacks > 100
    # Growth is capped by what got through (1.5 x the acknowledged rate + 10 kbit/s).
    assert INITIAL_BPS < est.target_bps() <= 1.7 * 280_000
    assert est.acked_bps is not None and 250_000 < est.acked_bps < 310_000


def test_a_growing_queue_backs_off_to_beta_times_what_got_through(kernels: Kernels) -> None:
    est = _estimator(kernels)
    now = _feed(est, start=0.0, seconds=5.0, bps=280_000)
    before = est.target_bps()
    _feed(est, start=now, seconds=2.0, bps=400_000, queue_growth=0.3)
    assert est.overuses >= 1 and est.decreases >= 1
    assert est.target_bps() < before
    assert est.target_bps() <= BETA * 420_000


def test_congestion_signals_are_timed_for_the_pacer(kernels: Kernels) -> None:
    """``congested_at`` follows a delay overuse and a loss window above LOSS_HIGH, and
    neither normal feedback nor light loss moves it."""
    calm = _estimator(kernels)
    _feed(calm, start=0.0, seconds=5.0, bps=280_000, lose_every=25)  # 4 %: not congestion
    assert calm.congested_at < 0.0
    queued = _estimator(kernels)
    now = _feed(queued, start=0.0, seconds=5.0, bps=280_000)
    assert queued.congested_at < 0.0
    end = _feed(queued, start=now, seconds=2.0, bps=400_000, queue_growth=0.3)
    assert queued.overuses >= 1 and now < queued.congested_at <= end
    lossy = _estimator(kernels)
    end = _feed(lossy, start=0.0, seconds=5.0, bps=280_000, lose_every=5)  # 20 %
    assert lossy.loss > LOSS_HIGH and 4.0 < lossy.congested_at <= end
    # A probe that got no more through than the estimate leaves it; one above clears it.
    lossy.on_probe_result(0.5 * lossy.target_bps(), now=end)
    assert 4.0 < lossy.congested_at <= end
    lossy.on_probe_result(2 * lossy.target_bps(), now=end)
    assert lossy.congested_at < 0.0


def test_heavy_loss_bounds_the_estimate_and_light_loss_does_not(kernels: Kernels) -> None:
    heavy = _estimator(kernels)
    _feed(heavy, start=0.0, seconds=5.0, bps=280_000, lose_every=5)  # 20 %
    assert heavy.loss > LOSS_HIGH
    assert heavy.target_bps() < INITIAL_BPS
    light = _estimator(kernels)
    _feed(light, start=0.0, seconds=5.0, bps=280_000, lose_every=25)  # 4 %
    assert light.target_bps() >= INITIAL_BPS


def test_random_loss_without_congestion_never_backs_off(kernels: Kernels) -> None:
    # 5 % random loss on an uncongested link: 20-packet windows see over 10 % often, but not
    # significantly so (LOSS_CONFIDENCE), so nothing backs off a subscriber on its top layer.
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    _feed(est, start=0.0, seconds=20.0, bps=1_500_000, random_loss=0.05, seed=3)
    assert 0.02 < est.loss <= LOSS_HIGH
    assert est.target_bps() >= 1_500_000


def test_heavy_loss_falls_to_what_got_through_at_most_halving_per_step(
    kernels: Kernels,
) -> None:
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)  # the estimate of an uncapped link
    # A policer: one packet of three lost, no delay growth; 600 kbit/s gets through.
    _feed(est, start=0.0, seconds=0.45, bps=900_000, lose_every=3)
    first = est.target_bps()
    # Half the loss fraction would leave 2.5M x 0.83; what got through pulls it down, by half
    # at most in one step.
    assert first == pytest.approx(MAX_DECREASE * 2_500_000)
    _feed(est, start=0.45, seconds=1.6, bps=900_000, lose_every=3)
    acked = est.acked_bps
    assert acked is not None
    assert est.target_bps() <= 1.05 * acked < 700_000


def test_remb_drives_the_estimate_only_without_transport_cc(kernels: Kernels) -> None:
    est = _estimator(kernels)
    est.on_remb(750_000, now=0.0)
    assert est.target_bps() == 750_000
    est.on_report_loss(0.3, now=1.0)  # receiver reports bound it too
    assert est.target_bps() < 750_000
    _feed(est, start=2.0, seconds=1.0, bps=200_000)
    assert est.twcc_seen and est.target_bps() != est.remb_bps  # feedback wins from now on
    est.on_remb(10, now=4.0)
    assert est.target_bps() >= MIN_BPS


def test_probe_result_lifts_the_estimate(kernels: Kernels) -> None:
    est = _estimator(kernels)
    recorder = TwccRecorder(1)
    # Ten 1000-byte packets sent together, spaced 8 ms apart by a 1 Mbit/s bottleneck.
    seqs = [est.history.record(1000, 1.0, 7) for _ in range(10)]
    for i, seq in enumerate(seqs):
        recorder.on_packet(seq, 5, 1.02 + i * 0.008)
    for packet in recorder.poll(1.2):
        est.on_feedback(TransportFeedback.parse(packet), now=1.2)
    result = est.probe_bps(7)
    assert result is not None and abs(result - 1_000_000) < 1000
    assert est.probe_bps(8) is None
    est.on_probe_result(result, now=1.2)
    assert est.target_bps() == result


def test_prober_asks_only_for_more_and_backs_off_on_failure() -> None:
    prober = Prober()
    assert prober.poll(estimate_bps=500_000, desired_bps=400_000, rtt=0.05, now=0.0) is None
    cluster = prober.poll(estimate_bps=500_000, desired_bps=1_000_000, rtt=0.05, now=0.0)
    assert cluster is not None and cluster.bps == PROBE_FACTOR * 1_000_000
    assert cluster.packets >= MIN_CLUSTER_PACKETS
    assert prober.poll(estimate_bps=500_000, desired_bps=1_000_000, rtt=0.05, now=0.1) is None
    assert prober.due(acknowledged=cluster.packets, rtt=0.05, now=0.2)
    assert not prober.finish(600_000, desired_bps=1_000_000, now=0.2)
    assert prober.backoff() == BACKOFF_BASE
    assert prober.poll(estimate_bps=600_000, desired_bps=1_000_000, rtt=0.05, now=3.0) is None
    second = prober.poll(estimate_bps=600_000, desired_bps=1_000_000, rtt=0.05, now=3.3)
    assert second is not None and second.id == cluster.id + 1
    assert prober.due(acknowledged=0, rtt=0.05, now=4.0)  # timed out
    assert not prober.finish(None, desired_bps=1_000_000, now=4.0)
    assert prober.backoff() == BACKOFF_BASE * BACKOFF_FACTOR
    third = prober.poll(estimate_bps=600_000, desired_bps=1_000_000, rtt=0.05, now=8.6)
    assert third is not None
    assert prober.finish(1_300_000, desired_bps=1_000_000, now=8.8)
    assert (prober.started, prober.succeeded, prober.failed) == (3, 1, 2)


def test_a_new_reach_explores_at_three_and_six_times_the_estimate() -> None:
    prober = Prober()
    wanted = 2_000_000.0
    first = prober.poll(
        estimate_bps=300_000, desired_bps=600_000, rtt=0.05, now=0.0, wanted_bps=wanted, reach=3
    )
    assert first is not None and first.bps == EXPLORE_FACTORS[0] * 300_000
    assert prober.finish(first.bps, desired_bps=600_000, now=0.1)
    # The next exploratory cluster at once (no success pause), capped by what is wanted.
    second = prober.poll(
        estimate_bps=900_000, desired_bps=1_700_000, rtt=0.05, now=0.2, wanted_bps=wanted, reach=3
    )
    assert second is not None
    assert second.bps == min(EXPLORE_FACTORS[1] * 300_000, wanted * PROBE_FACTOR)
    assert prober.finish(1_800_000, desired_bps=1_700_000, now=0.3)
    # Nothing more to explore: a higher rate wanted (a keyframe) at the same reach is no news.
    again = prober.poll(
        estimate_bps=1_800_000, desired_bps=0, rtt=0.05, now=1.5, wanted_bps=3 * wanted, reach=3
    )
    assert again is None


def test_a_failed_exploration_ends_the_run_without_a_backoff() -> None:
    prober = Prober()
    first = prober.poll(
        estimate_bps=300_000, desired_bps=600_000, rtt=0.05, now=0.0, wanted_bps=2e6, reach=3
    )
    assert first is not None
    assert not prober.finish(400_000, desired_bps=600_000, now=0.1)  # 44 % of its rate
    assert prober.backoff() == 0.0
    # No second exploratory cluster: the ordinary probe for the next step, at once.
    ordinary = prober.poll(
        estimate_bps=400_000, desired_bps=600_000, rtt=0.05, now=0.2, wanted_bps=2e6, reach=3
    )
    assert ordinary is not None and ordinary.bps == PROBE_FACTOR * 600_000


def test_exploration_starts_again_when_the_reach_rises() -> None:
    prober = Prober()
    small = prober.poll(
        estimate_bps=300_000, desired_bps=0, rtt=0.05, now=0.0, wanted_bps=200_000, reach=1
    )
    assert small is None  # everything fits
    rise = prober.poll(
        estimate_bps=300_000, desired_bps=600_000, rtt=0.05, now=5.0, wanted_bps=1.7e6, reach=3
    )
    assert rise is not None and rise.bps == EXPLORE_FACTORS[0] * 300_000


def test_a_probe_is_judged_on_the_step_it_was_sent_for() -> None:
    """The next step's price rose while the probe was out: what it got through is what it
    was sent to show, so it succeeded (no failure backoff), though the step now needs more."""
    prober = Prober()
    cluster = prober.poll(estimate_bps=300_000, desired_bps=500_000, rtt=0.05, now=0.0)
    assert cluster is not None and cluster.bps == PROBE_FACTOR * 500_000
    assert prober.finish(520_000, desired_bps=550_000, now=0.2)
    assert prober.backoff() == 0.0 and prober.failed == 0
    again = prober.poll(estimate_bps=520_000, desired_bps=550_000, rtt=0.05, now=0.2 + SETTLE)
    assert again is not None and again.bps == PROBE_FACTOR * 550_000
    assert not prober.finish(480_000, desired_bps=550_000, now=0.4 + SETTLE)  # short of both
    assert prober.backoff() == BACKOFF_BASE


def test_a_failure_while_all_video_is_paused_waits_less() -> None:
    """Paused for bandwidth, a failed probe cost no video and the wait is a wait without any
    picture: after a run of failures the next probe comes PAUSED_BACKOFF later, where with
    video going it comes BACKOFF_MAX later."""
    waits = {}
    for paused in (False, True):
        prober = Prober()
        now, failed_at = 0.0, 0.0
        for _ in range(5):  # five probes, each failing: the backoff reaches its cap
            while prober.poll(estimate_bps=70_000, desired_bps=200_000, rtt=0.05, now=now) is None:
                now += 0.05
            waits[paused] = now - failed_at
            now += 0.2
            assert not prober.finish(None, desired_bps=200_000, now=now, paused=paused)
            failed_at = now
    assert prober.backoff() == BACKOFF_MAX
    assert waits[False] >= BACKOFF_MAX
    assert PAUSED_BACKOFF <= waits[True] < PAUSED_BACKOFF + 0.1 < BACKOFF_MAX


def test_a_target_change_delays_the_next_probe_for_a_step() -> None:
    """Until the allocator may upgrade again: a success it cannot take is wasted."""
    prober = Prober()
    prober.on_target_change(now=10.0)
    for at in (11.0, 10.0 + UPGRADE_HOLD - 0.01):
        assert prober.poll(estimate_bps=600_000, desired_bps=1_700_000, rtt=0.05, now=at) is None
    later = prober.poll(estimate_bps=600_000, desired_bps=1_700_000, rtt=0.05, now=10.0 + SETTLE)
    assert later is not None and later.bps == PROBE_FACTOR * 1_700_000


def test_a_train_faster_than_the_feedback_resolution_counts_at_the_probes_rate(
    kernels: Kernels,
) -> None:
    """On a fast path (loopback) a probe burst arrives within one 250 µs feedback tick: the
    link took it faster than measurable, so the probe succeeds at the rate it aimed at."""
    from sfu.core.prober import probe_step

    est = _estimator(kernels)
    prober = Prober()
    cluster = probe_step(prober, est, desired_bps=1_000_000, now=1.0)
    assert cluster is not None
    recorder = TwccRecorder(1)
    for _ in range(cluster.packets):
        seq = est.history.record(cluster.padding + 20, 1.0, cluster.id)
        recorder.on_packet(seq, 5, 1.0001)
    for packet in recorder.poll(1.1):
        est.on_feedback(TransportFeedback.parse(packet), now=1.1)
    assert probe_step(prober, est, desired_bps=1_000_000, now=1.1) is None
    assert prober.succeeded == 1
    assert est.target_bps() == cluster.bps  # capped at what the probe aimed at


def test_a_probes_losses_stay_out_of_the_loss_based_bound(kernels: Kernels) -> None:
    """A probe that overran the link (most of its primer and cluster dropped) failed, and its
    result says so; its losses must not pull the estimate under what the media got through,
    which arrived whole."""
    est = _estimator(kernels)
    recorder = TwccRecorder(1, interval=0.05)
    _receivers[est] = recorder
    now = _feed(est, start=0.0, seconds=3.0, bps=280_000)
    before = est.target_bps()
    acked = est.acked_bps
    assert acked is not None and before >= acked
    # A 4 kB primer and a 3 kB cluster at once, then the media goes on: 3 of 4 probe packets
    # are dropped by the bottleneck, every media packet arrives.
    for i in range(28):
        seq = est.history.record(275, now, 7 if i >= 16 else PRIMER)
        if i % 4 == 0:
            recorder.on_packet(seq, 5, now + 0.02 + i * 0.002)
    est.on_probe_sent(now=now)
    _feed(est, start=now + 0.001, seconds=2.0, bps=280_000)
    assert est.loss == 0.0
    assert est.target_bps() >= before
    assert est.probe_packets_lost == 21


def test_the_loss_bound_grows_no_further_than_what_got_through_vouches_for(
    kernels: Kernels,
) -> None:
    """Paused below the lowest layer only audio goes out: loss-free, but 40 kbit/s says
    nothing about 150 kbit/s. The bound must not grow past the link on its own (it did, 8 %
    a second, until the layer resumed into the link and was shed again)."""
    est = _estimator(kernels)
    now = _feed(est, start=0.0, seconds=3.0, bps=280_000, lose_every=3)  # a cap: 33 % lost
    bound = est.target_bps()
    assert bound < INITIAL_BPS
    now = _feed(est, start=now, seconds=5.0, bps=40_000)
    settled = est.target_bps()
    # (the acknowledged rate still held some of the 280 kbit/s when the loss cleared)
    assert settled <= 1.1 * max(bound, ACKED_CAP_FACTOR * 40_000 + ACKED_CAP_EXTRA)
    _feed(est, start=now, seconds=10.0, bps=40_000)
    assert est.loss == 0.0
    assert est.target_bps() == pytest.approx(settled)


def test_severe_loss_falls_to_what_got_through_at_once(kernels: Kernels) -> None:
    """Most of what is sent lost (a cap at a fraction of the rate): the bound falls to the
    acknowledged rate in one step, where halving steps spent a second above the link and
    the audio sent meanwhile was lost with the video."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    _feed(est, start=0.0, seconds=0.45, bps=900_000, random_loss=0.7, seed=5)
    acked = est.acked_bps
    assert acked is not None and est.loss >= LOSS_SEVERE
    assert est.target_bps() < MAX_DECREASE * 2_500_000
    assert est.target_bps() <= 1.2 * acked  # the acknowledged rate of the step, or less


def test_packets_the_pacer_discarded_stay_out_of_the_loss(kernels: Kernels) -> None:
    """Media numbered when forwarded, then expired in the pacer's queue, never left: the
    receiver reports their numbers lost, and reading that as the link's loss let the pacer's
    expiries lower the estimate, which expired more (a 5 %-loss Chromium subscriber froze)."""
    est = _estimator(kernels)
    recorder = TwccRecorder(1, interval=0.05)
    _receivers[est] = recorder
    now = _feed(est, start=0.0, seconds=3.0, bps=280_000)
    before = est.target_bps()
    pacer = kernels.Pacer()
    pacer.set_rate(80_000.0, now)  # 10 kB/s, far under the 30 packets queued at once
    for _ in range(30):
        pacer.push(bytes(1000), VIDEO, est.history.record(1000, now, -1), now)
    released: list[tuple[bytes, int]] = []
    t = now
    while pacer.queued_packets:
        for _, seq in pacer.pop(t, est.history):
            released.append((b"", seq))
            recorder.on_packet(seq, 5, t + 0.02)
        t += 0.01
    assert pacer.expired > 10 and len(released) + pacer.expired == 30
    assert est.history.withdrawn == pacer.expired
    # The media goes on (loss-free); feedback reports the expired numbers as lost.
    _feed(est, start=t, seconds=2.0, bps=280_000)
    assert est.loss == 0.0
    assert est.withdrawn_lost == pacer.expired
    assert est.target_bps() >= before


@pytest.mark.parametrize("claimed", [64, DETAILED_FEEDBACK_MAX_PACKETS + 1, 0xFFFF])
def test_feedback_claiming_too_many_packets_is_not_read_packet_by_packet(
    kernels: Kernels, claimed: int
) -> None:
    """Within a probe's hold, feedback is read packet by packet (a history look-up each) to
    tell probe losses apart; a feedback claiming more packets than any receiver reports at
    once (one 60-byte packet may claim 65,535 lost) is read the common way instead."""
    est = _estimator(kernels)
    now = _feed(est, start=0.0, seconds=1.0, bps=280_000)
    first = est.history.next_seq & 0xFFFF
    for _ in range(64):
        est.history.record(275, now, 7)  # a probe cluster, all of it lost
    est.on_probe_sent(now=now)
    lost_run = [min(8191, claimed - done) for done in range(0, claimed, 8191)]
    feedback = TransportFeedback(1, 2, first, claimed, 0, 0, chunks=lost_run, deltas=[])
    est.on_feedback(feedback, now=now + 0.05)
    if claimed <= DETAILED_FEEDBACK_MAX_PACKETS:
        assert est.probe_packets_lost == 64  # told apart: the probe's result
    else:
        assert est.probe_packets_lost == 0  # every claimed packet is the link's loss


def test_severe_loss_soon_after_a_loss_step_falls_at_once(kernels: Kernels) -> None:
    """A cap that first reads as moderate loss, then as most of what is sent lost: the bound
    falls to what got through at each severe window, not once per LOSS_INTERVAL (the
    real-client test's 400 kbit/s cap: the hold kept the top layer going into it 0.3 s more)."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    now = _feed(est, start=0.0, seconds=1.0, bps=2_000_000)
    start = est.target_bps()
    steps: list[tuple[float, float]] = []
    for i in range(12):
        loss = 0.45 if i < 5 else 0.85
        now = _feed(est, start=now, seconds=0.05, bps=2_000_000, random_loss=loss, seed=i)
        steps.append((now, est.target_bps()))
    first = next(t for t, bps in steps if bps < start)
    hold = [bps for t, bps in steps if first <= t < first + LOSS_INTERVAL + est.rtt]
    # The moderate window's step, then severe ones inside the old hold.
    assert hold[-1] < 0.5 * hold[0]
    assert est.loss >= LOSS_SEVERE


def _video_through(
    est: BandwidthEstimator, link: Link, *, until: float, bps: float = 1_480_000
) -> list[tuple[float, float]]:
    """Send a camera's layer of ``bps`` through ``link`` until ``until`` (30 frames a second,
    each six packets 2.5 ms apart, from t = 0), fed back every 62 ms as Chromium does; the
    estimate after each decrease by a tenth or more, with when it came."""
    receiver = Receiver(interval=0.062)
    packet = round(bps / 30 / 8 / 6)
    sends = deque(
        (frame / 30 + k * 0.0025, packet) for frame in range(round(until * 30)) for k in range(6)
    )
    steps: list[tuple[float, float]] = []
    last = est.target_bps()
    now = 0.0
    while now < until:
        while sends and sends[0][0] <= now:
            at, size = sends.popleft()
            seq = est.history.record(size, at, -1)
            arrival = link.send(size, at)
            if arrival is not None:
                receiver.on_packet(seq, arrival)
        for feedback in receiver.poll(now):
            est.on_feedback(TransportFeedback.parse(feedback), now=now)
        if est.target_bps() < 0.9 * last:
            steps.append((now, est.target_bps()))
        last = est.target_bps()
        now += 0.001
    return steps


#: The real-client test's shaped link (``tc tbf``: 32 kbit of burst, 50 ms of queue at the
#: rate, which ``tc`` adds to the burst).
_TBF_BURST = 4000
_TBF_QUEUE = 4000 + 2500


@pytest.mark.parametrize("offset", [0.0, 0.007, 0.021, 0.036, 0.05, 0.071])
def test_a_cap_at_a_fraction_of_the_rate_is_shed_in_one_step(
    kernels: Kernels, offset: float
) -> None:
    """A 1.5 Mbit/s layer capped at 400 kbit/s by a short drop-tail queue (the real-client
    test's link), the cap starting anywhere in a feedback interval: the estimate falls once,
    to about the cap, within a few feedbacks. The queue's growth reads as a delay overuse
    first, whose usual step (at most half the estimate: the middle layer, whose keyframe
    then went into the cap) is bounded by the rate the newest arrivals came at; the loss
    that follows, of packets sent before that step, is not counted a second time."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    cap = 3.0 + offset
    link = Link(
        steps((0.0, 2_500_000), (cap, 400_000)),
        queue_bytes=_TBF_QUEUE,
        delay=0.01,
        burst_bytes=_TBF_BURST,
    )
    taken = _video_through(est, link, until=cap + 1.0)
    assert [at for at, _ in taken if at < cap] == []
    first_at, first = taken[0]
    assert first_at - cap < 0.15
    assert 300_000 < first < 450_000  # BETA x about 400 kbit/s, not the acknowledged 1.2 Mbit/s
    assert est.collapses >= 1
    assert len(taken) == 1 and est.target_bps() > 300_000  # the losses that followed: no step


def test_a_collapse_follows_a_decrease_that_was_not_one_at_once(kernels: Kernels) -> None:
    """A queue that first grows slowly (a decrease by the usual rule: AIMD's, at most half)
    and then at three times real time (the link carries a quarter of what is sent): the
    collapse is read within MIN_DECREASE_INTERVAL of the first decrease, where the interval
    held it back (at a cap whose bucket's burst was still in the newest arrivals of the first
    overuse, the middle layer was aimed at)."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    now = _feed(est, start=0.0, seconds=2.0, bps=1_500_000)
    recorder = _receivers[est]
    interval = 8000 / 1_500_000
    queue, first_at = 0.0, None
    while now < 3.0 and est.collapses == 0:
        seq = est.history.record(1000, now, -1)
        queue += (0.6 if first_at is None else 3.0) * interval
        if first_at is None or seq % 4:  # the fast growth overflows the queue: a quarter lost
            recorder.on_packet(seq, 5, now + 0.02 + queue)
        for packet in recorder.poll(now):
            est.on_feedback(TransportFeedback.parse(packet), now=now)
            if first_at is None and est.decreases:
                first_at, first = now, est.target_bps()
        now += interval
    assert first_at is not None and est.collapses == 1 and est.decreases == 2
    assert now - first_at < MIN_DECREASE_INTERVAL
    assert est.target_bps() < 0.5 * first


@pytest.mark.parametrize("fade", [0.1, 0.15, 0.2])
def test_a_fade_on_a_link_that_carries_most_of_the_rate_is_no_collapse(
    kernels: Kernels, fade: float
) -> None:
    """1 Mbit/s into a link that carries about three quarters of it (a queue growing 0.3 s a
    second: AIMD's to handle), and one fade of 100-200 ms with everything lost: the gap in
    the arrivals is no link time, and the packets lost in it were sent in it, so no collapse
    is read (taken for one, the estimate fell to 160-250 kbit/s)."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    now = _feed(est, start=0.0, seconds=2.0, bps=1_000_000)
    recorder = _receivers[est]
    interval, queue, start = 0.008, 0.0, now
    while now < start + 1.5:
        seq = est.history.record(1000, now, -1)
        queue += 0.3 * interval
        if not start + 0.5 <= now < start + 0.5 + fade:
            recorder.on_packet(seq, 5, now + 0.02 + queue)
        for packet in recorder.poll(now):
            est.on_feedback(TransportFeedback.parse(packet), now=now)
        now += interval
    assert est.decreases >= 1 and est.collapses == 0
    assert est.target_bps() > 300_000  # AIMD's steps under a queue that never stops growing


def test_a_policers_cap_falls_to_what_arrived_in_its_loss_window(kernels: Kernels) -> None:
    """A policer (a token bucket without a queue) caps a 1.5 Mbit/s layer at 300 kbit/s: no
    delay grows, so the loss-based bound alone reads it, from a severe window's own arrivals,
    where the half-second acknowledged rate still holds the traffic from before the cap (at
    the real-client test's 400 kbit/s cap it read 784 kbit/s and the middle layer was chosen
    into the cap); and once, not again for the losses of the packets sent before the step."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    cap = 2.0
    link = Link(
        steps((0.0, 10_000_000), (cap, 300_000)), queue_bytes=0, burst_bytes=1100, delay=0.01
    )
    taken = _video_through(est, link, until=cap + 0.8)
    acked = est.acked_bps
    assert acked is not None and est.loss >= LOSS_SEVERE
    assert est.overuses == 0 and est.collapses == 0  # the loss-based bound's doing
    assert len(taken) == 1 and taken[0][0] - cap < 0.2
    assert 200_000 < taken[0][1] < 320_000  # what got through: a packet a frame, 250 kbit/s


def _settled(kernels: Kernels) -> tuple[BandwidthEstimator, float, float]:
    """An estimator after 2 s of a 1.5 Mbit/s layer on a link that took 2.5 Mbit/s: it, the
    time, and its estimate then."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    now = _feed(est, start=0.0, seconds=2.0, bps=1_500_000)
    return est, now, est.target_bps()


def test_a_lull_under_a_growing_queue_is_no_collapse(kernels: Kernels) -> None:
    """A queue growing while the sender sends little (an application-limited lull): what
    arrives is about what was sent, so the delay overuse decreases as AIMD says, to BETA x
    the acknowledged rate and by at most MAX_DECREASE, not to the few packets' rate."""
    est, now, before = _settled(kernels)
    _feed(est, start=now, seconds=0.6, bps=150_000, queue_growth=0.3)
    assert est.decreases >= 1 and est.collapses == 0
    assert est.target_bps() >= MAX_DECREASE**est.decreases * before > 2 * 150_000


def test_a_queue_growing_three_times_faster_than_time_is_a_collapse(kernels: Kernels) -> None:
    """Sent at four times what arrives (a queue growing 3 s a second) and a quarter of it lost
    (the queue overflows): the decrease goes to BETA x the delivered rate at once, below
    MAX_DECREASE of the estimate."""
    est, now, before = _settled(kernels)
    _feed(est, start=now, seconds=0.3, bps=1_500_000, queue_growth=3.0, lose_every=4)
    assert est.collapses >= 1
    assert est.target_bps() < MAX_DECREASE * before
    assert 0.5 * BETA * 280_000 < est.target_bps() <= 1.1 * BETA * 375_000


def test_arrivals_stretched_without_loss_are_no_collapse(kernels: Kernels) -> None:
    """The same stretch with nothing lost: a receiver short of CPU reading its socket slowly
    (or a deep queue) rather than a link at a fraction of the rate; AIMD's step, at most
    MAX_DECREASE (read as a collapse, the three-node Chromium test's pages froze 3.3 s)."""
    est, now, before = _settled(kernels)
    _feed(est, start=now, seconds=0.3, bps=1_500_000, queue_growth=3.0)
    assert est.decreases >= 1 and est.collapses == 0
    assert est.target_bps() >= MAX_DECREASE**est.decreases * before


def test_a_cap_mid_window_is_read_from_its_first_loss(kernels: Kernels) -> None:
    """A cap that starts 0.6 s into a loss-free window: the loss since the first lost packet
    is read on its own, so the bound falls to what gets through within a few feedbacks,
    where the whole window read 20 % loss 0.4 s in (the real-client test's 400 kbit/s cap).
    Most of ten packets lost is read at once, with the rate they arrived at."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    now = _feed(est, start=0.0, seconds=1.0, bps=1_500_000)
    now = _feed(est, start=now, seconds=0.6, bps=1_500_000)  # a new window, 0.6 s of it
    start = est.target_bps()
    cap = now
    while est.target_bps() >= start and now < cap + 1.0:
        seed = round(now * 1000)
        now = _feed(est, start=now, seconds=0.02, bps=1_500_000, random_loss=0.75, seed=seed)
    # A dozen packets past the first loss, most of them lost, and a feedback interval
    # (without the onset and the early read: 0.23 s, to 1.35 Mbit/s; the onset alone: 0.19 s).
    assert now - cap < 0.15
    assert est.loss >= LOSS_SEVERE  # the onset's own fraction, not the window's
    assert 200_000 < est.target_bps() < 600_000  # about what got through: 375 kbit/s


def test_random_loss_opens_no_significant_onset(kernels: Kernels) -> None:
    """5 % random loss on a loss-free link's top layer, for a minute: the part of a window
    after its first loss is read on its own, and never reads significant loss."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    for seed in range(6):
        _feed(est, start=10.0 * seed, seconds=10.0, bps=1_500_000, random_loss=0.05, seed=seed)
    assert 0.0 < est.loss <= LOSS_HIGH
    assert est.congested_at == -1e9  # no loss window (or delay overuse) read as congestion
    assert est.target_bps() >= 1_500_000


def test_probe_packets_before_the_first_loss_do_not_shorten_the_onset(
    kernels: Kernels,
) -> None:
    """Within a probe's hold, feedback also lists received probe packets, which count in no
    loss window: the onset starts after the first lost media packet, whatever probe packets
    arrived before it (counting them read 3 of 3 lost, and an early severe step followed)."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    recorder = _receivers.setdefault(est, TwccRecorder(1, interval=0.05))
    now = _feed(est, start=0.0, seconds=1.3, bps=1_500_000)
    before, feedbacks = est.target_bps(), est.feedbacks
    est.on_probe_sent(now=now)

    def send(cluster: int, lose: bool) -> None:
        seq = est.history.record(1000, now, cluster)
        if not lose:
            recorder.on_packet(seq, 5, now + 0.02)

    for _ in range(20):  # a received probe cluster
        send(7, False)
    for i in range(15):  # media, 4 of 15 lost, from the fifth packet on
        send(-1, i in (4, 8, 11, 14))
    for packet in recorder.poll(now + 0.05):
        est.on_feedback(TransportFeedback.parse(packet), now=now + 0.05)
    now += 0.05
    for i in range(7):  # 3 of 7 lost
        send(-1, i in (1, 3, 5))
    for packet in recorder.poll(now + 0.05):
        est.on_feedback(TransportFeedback.parse(packet), now=now + 0.05)
    assert est.feedbacks == feedbacks + 2
    # 7 of 22 media packets lost (32 %): no severe step; at most a moderate one.
    assert est.target_bps() > MAX_DECREASE * before
    assert est.loss < LOSS_SEVERE


def _blamed_success(prober: Prober, decreases: int, now: float) -> int:
    """A probe that succeeds at ``now``, then a congestion decrease 1 s later."""
    cluster = prober.poll(estimate_bps=600_000, desired_bps=1_000_000, rtt=0.05, now=now)
    assert cluster is not None
    assert prober.finish(1_300_000, desired_bps=1_000_000, now=now + 0.1)
    prober.on_decreases(decreases + 1, now=now + 1.0)
    return decreases + 1


def test_successes_blamed_for_congestion_back_off_longer_each_time() -> None:
    """An upgrade a probe allowed that congested the link costs a keyframe and a congestion
    episode, far more than a failed cluster: the wait after each such success doubles (two
    subscribers one top layer short of their link took turns upgrading every 5 s), and a
    success that holds ends the run."""
    prober = Prober()
    decreases, now, waits = 0, 0.0, []
    for _ in range(6):
        decreases = _blamed_success(prober, decreases, now)
        waits.append(prober.blame_backoff())
        blamed_at = now + 1.0
        # No probe until the wait is over.
        late = blamed_at + waits[-1] - 0.1
        assert prober.poll(estimate_bps=6e5, desired_bps=1e6, rtt=0.05, now=late) is None
        now = blamed_at + waits[-1]
        prober.on_decreases(decreases, now=now)
    assert waits == [min(BACKOFF_BASE * BLAME_FACTOR**i, BLAME_BACKOFF_MAX) for i in range(6)]
    assert waits[-1] == BLAME_BACKOFF_MAX
    # A success that holds through its blame window: the next blame starts over.
    cluster = prober.poll(estimate_bps=600_000, desired_bps=1_000_000, rtt=0.05, now=now)
    assert cluster is not None
    assert prober.finish(1_300_000, desired_bps=1_000_000, now=now)
    prober.on_decreases(decreases, now=now + BLAME_WINDOW + 1.0)
    assert prober.blame_backoff() == 0.0
    _blamed_success(prober, decreases, now + BLAME_WINDOW + 2.0)
    assert prober.blame_backoff() == BACKOFF_BASE


def test_a_probes_own_queue_decreases_nothing(kernels: Kernels) -> None:
    """A delay overuse within PROBE_DELAY_HOLD of probe packets is the probe's queue: its result
    speaks for the link, and the estimate does not fall (at the real-client test's 900 kbit/s
    cap the decrease took the middle layer away for 7 s); one that outlasts it decreases."""
    probed, plain = _estimator(kernels), _estimator(kernels)
    for est in (probed, plain):
        est.on_probe_result(1_000_000, now=0.0)
        now = _feed(est, start=0.0, seconds=2.0, bps=600_000)
    probed.on_probe_sent(now=now)
    plain_before, probed_before = plain.target_bps(), probed.target_bps()
    for est in (probed, plain):
        _feed(est, start=now, seconds=0.4, bps=600_000, queue_growth=0.3)
    assert plain.decreases >= 1 and plain.target_bps() < plain_before
    assert probed.decreases == 0 and probed.probe_overuses >= 1
    assert probed.target_bps() >= probed_before
    # The queue goes on growing past the hold: the link's, not the probe's.
    _feed(probed, start=now + 0.4, seconds=PROBE_DELAY_HOLD, bps=600_000, queue_growth=0.3)
    assert probed.decreases >= 1 and probed.target_bps() < probed_before


@pytest.mark.parametrize("lost_for", [0.07, 0.1])
def test_an_outage_mid_window_is_not_read_as_a_cap(kernels: Kernels, lost_for: float) -> None:
    """A run of lost packets (a receiver or a server stalled for a moment) and then nothing:
    the onset and the early read want losses between arrivals, as a cap drops them, so an
    outage of 13 or 19 packets half a second into a window moves nothing, as before the
    onset (a longer one is significant in the whole window: 28 lost of 140 reported)."""
    est = _estimator(kernels)
    est.on_probe_result(2_500_000, now=0.0)
    now = _feed(est, start=0.0, seconds=1.0, bps=1_500_000)
    now = _feed(est, start=now, seconds=0.6, bps=1_500_000)  # a new window, 0.6 s of it
    before = est.target_bps()
    now = _feed(est, start=now, seconds=lost_for, bps=1_500_000, random_loss=1.0)
    _feed(est, start=now, seconds=0.3, bps=1_500_000)
    assert est.target_bps() >= before
