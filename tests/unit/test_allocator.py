"""allocate(): targets from measured layer bitrates, caps, budget, priorities and loss."""

from __future__ import annotations

from core_parts import audio_publication, subscription, video_publication

from sfu.core.allocator import LOSS_STEP_DOWN, allocate
from sfu.core.publication import Publication

NOW = 100.0
#: Measured bitrates of the three layers in these tests (bits per second).
LAYER_BPS = (150_000, 500_000, 1_500_000)


def _measured(pub: Publication) -> Publication:
    for layer, bps in enumerate(LAYER_BPS):
        stream = pub.add_stream(0x100 + layer, layer)
        stream.meter.add(bps // 8, NOW - 0.05)
    return pub


def test_without_a_budget_every_subscription_aims_at_its_cap() -> None:
    a = subscription(_measured(video_publication()), 1)
    b = subscription(_measured(video_publication()), 2)
    b.set_preferences(1, None, False)
    audio = subscription(audio_publication(), 3)
    assert allocate([a, b, audio], budget_bps=None, now=NOW) == {a: 2, b: 1}


def test_a_budget_hands_out_layers_lowest_first() -> None:
    a = subscription(_measured(video_publication()), 1)
    b = subscription(_measured(video_publication()), 2)
    # Both low layers (300k) plus one middle upgrade (350k) fit 700k; a second does not.
    assert allocate([a, b], budget_bps=700_000, now=NOW) == {a: 1, b: 0}
    assert allocate([a, b], budget_bps=1_000_000, now=NOW) == {a: 1, b: 1}
    assert allocate([a, b], budget_bps=100_000, now=NOW) == {a: 0, b: 0}


def test_priority_decides_who_gets_the_upgrade() -> None:
    a = subscription(_measured(video_publication()), 1)
    b = subscription(_measured(video_publication()), 2)
    plan = allocate([a, b], budget_bps=700_000, now=NOW, priorities={b: 1})
    assert plan == {a: 0, b: 1}


def test_heavy_loss_holds_one_layer_below_the_current() -> None:
    sub = subscription(_measured(video_publication()), 1)
    assert sub.selector is not None
    sub.selector.set_target(2, None)
    sub.selector.decide(2, 0, True, True, NOW)  # switched to the top at a keyframe
    sub.send_stats.loss = LOSS_STEP_DOWN + 0.05
    assert allocate([sub], budget_bps=None, now=NOW) == {sub: 1}
