"""Which spatial layer each of a subscriber's video subscriptions should aim at.

:func:`allocate` is a pure function of the subscriptions (their publications' measured layer
bitrates, the subscriber's caps, reported loss, the layer each is on), the bandwidth budget,
the subscriptions' priorities and ``now``; it returns a plan that the caller applies as
selector targets (switches then happen at keyframes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from sfu.core.subscription import Subscription

__all__ = ["LOSS_STEP_DOWN", "allocate"]

#: Loss above this in a subscriber's report holds its subscription one layer below what it has.
LOSS_STEP_DOWN: Final = 0.10


def _top(sub: Subscription) -> int:
    top = sub.publication.num_layers - 1
    return top if sub.max_spatial is None else min(top, sub.max_spatial)


def _layer_bps(sub: Subscription, layer: int, now: float) -> int:
    stream = sub.publication.layers.get(layer)
    return stream.meter.bps(now) if stream is not None else 0


def allocate(
    subscriptions: Sequence[Subscription],
    *,
    budget_bps: float | None,
    now: float,
    priorities: Mapping[Subscription, int] | None = None,
) -> dict[Subscription, int]:
    """Target spatial layer of each video subscription.

    Without a budget every subscription aims at the best layer its caps allow. Under a budget,
    every one gets its lowest layer, then upgrades are handed out one step at a time, higher
    priority first, while the measured layer bitrates fit. A subscription whose receiver
    reports heavy loss is held one layer below what it has.
    """
    video = [s for s in subscriptions if s.selector is not None]
    if priorities:
        video.sort(key=lambda s: -priorities.get(s, 0))
    if budget_bps is None:
        plan = {sub: _top(sub) for sub in video}
    else:
        plan = dict.fromkeys(video, 0)
        spent = sum(_layer_bps(s, 0, now) for s in video)
        upgraded = True
        while upgraded:
            upgraded = False
            for sub in video:
                layer = plan[sub]
                if layer >= _top(sub):
                    continue
                extra = _layer_bps(sub, layer + 1, now) - _layer_bps(sub, layer, now)
                if spent + extra <= budget_bps:
                    plan[sub] = layer + 1
                    spent += extra
                    upgraded = True
    for sub, layer in plan.items():
        assert sub.selector is not None
        current = sub.selector.current.spatial
        if sub.send_stats.loss > LOSS_STEP_DOWN and current is not None:
            plan[sub] = min(layer, max(0, current - 1))
    return plan
