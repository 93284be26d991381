"""The adaptation lab's measurement (bench.adaptation): per-phase figures from getStats samples."""

from __future__ import annotations

import pytest

from bench.__main__ import main
from bench.adaptation import (
    LOW,
    MID,
    PHASES,
    TARGETS,
    TOP,
    AdaptationConfig,
    Sample,
    figures,
    verdicts,
)


def _series(
    heights: list[int], *, stalled: set[int] = frozenset(), paused: set[int] = frozenset()
) -> list[Sample]:
    """Samples 0.5 s apart: ``heights`` per sample, no new frames at ``stalled`` indices."""
    out: list[Sample] = []
    frames = lost = received = rtx = 0
    for i, height in enumerate(heights):
        if i and i not in stalled and i not in paused:
            frames += 15
        received += 40
        lost += 2
        rtx += 4
        out.append(
            Sample(
                t=i * 0.5,
                height=height,
                frames=frames,
                freezes_s=0.0,
                lost=lost,
                received=received,
                rtx=rtx,
                state="paused" if i in paused else "active",
                audio_lost=0,
                audio_received=50 * i,
            )
        )
    return out


def test_a_shed_to_the_low_layer_is_timed_and_stalls_count_as_frozen() -> None:
    samples = _series([TOP, TOP, TOP, LOW, LOW, LOW, LOW], stalled={5})
    p = figures("cap400", 400, samples)
    assert p.time_to_low_s == 1.5
    assert p.frozen_s == 0.5  # one half-second without a new frame
    assert p.heights[5] == 0  # a stalled sample shows no layer
    assert p.loss == pytest.approx(12 / (12 + 240), abs=1e-3)
    assert p.rtx_per_packet == pytest.approx(24 / (240 - 24), abs=1e-3)
    assert p.top_after_shed == 0


def test_pauses_are_not_freezes_and_climbing_through_the_middle_is_seen() -> None:
    below = figures("below", 100, _series([LOW, 0, 0, 0, 0], paused={1, 2, 3, 4}))
    assert below.paused_s == 2.0 and below.frozen_s == 0.0 and below.paused_share == 1.0
    up = figures("uncapped", None, _series([LOW, LOW, MID, MID, TOP, TOP]))
    assert up.time_to_top_s == 2.0 and up.saw_mid_before_top
    assert up.mid_share == pytest.approx(0.4)


def test_every_target_gets_a_verdict() -> None:
    phases = {
        name: figures(name, cap, _series([TOP, LOW, LOW, MID, TOP])) for name, cap, _ in PHASES
    }
    met = verdicts(phases)
    assert set(met) == set(TARGETS)
    assert met["uncapped.via_middle"] and not met["below.paused"]


def test_the_scenario_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="impaired"):
        AdaptationConfig(impaired=0)
    assert main(["adaptation", "--impaired", "0", "--quiet"]) == 2
    assert main(["adaptation", "--vs", "janus", "--quiet"]) == 2
