"""Simulcast layer selection for one subscription to one video publication.

"Decide, then rewrite": the bandwidth allocator and the subscriber's preferences only move the
*target* layer; :class:`SimulcastSelector` switches the *current* spatial layer (the one rid/SSRC
stream being forwarded) only at a keyframe, so the subscriber's decoder never sees a frame that
references a picture it did not get. Temporal layers (VP8 TID) are filtered within the current
stream and switched at frame starts. The selector is sans-I/O: it is handed ``now``, reads no clock
and returns a small :class:`~sfu._fastpath.values.Decision` per packet that the munger
applies to the bytes.

Switching rules (after mediasoup's ``IncreaseLayer``/``ApplyLayers`` and LiveKit's forwarder):

* a spatial switch happens on the first packet of a keyframe (``is_keyframe and
  is_start_of_frame``) of a layer between the current layer (exclusive) and the target (inclusive),
  in either direction, so going up can stop at an intermediate layer whose keyframe came first and
  going down never waits for more than a keyframe of a lower layer;
* from nothing (start, resume after pause) any keyframe of a layer at or below the target starts
  the stream, so video appears quickly and climbs later;
* until the switch, the current layer keeps being forwarded; while a switch is pending
  :meth:`SimulcastSelector.keyframe_needed` asks for a keyframe of the target, rate-limited;
* a pause (allocator target ``None``, subscriber ``paused``, or no usable layer) stops forwarding
  at once; resuming needs a keyframe again.
"""

from __future__ import annotations

from sfu._fastpath.values import MAX_SPATIAL_LAYERS, Decision, LayerPair

__all__ = ["SimulcastSelector"]

# Internal "no temporal limit": larger than any temporal id a payload descriptor can carry.
_ALL_TEMPORAL = 1 << 16


def _public_temporal(value: int) -> int | None:
    """Map the internal "all temporal layers" sentinel back to None."""
    return None if value >= _ALL_TEMPORAL else value


class SimulcastSelector:
    """Chooses, per packet, whether one subscriber gets it, switching layers only at keyframes.

    ``num_spatial`` is how many simulcast streams the publication has (index 0 = lowest
    resolution). Initially the target is layer 0 with all temporal layers, every layer is
    available and no layer is current: forwarding starts at the first keyframe.
    """

    __slots__ = (
        "_available",
        "_current_spatial",
        "_current_temporal",
        "_eff_spatial",
        "_eff_temporal",
        "_kf_interval",
        "_last_kf_at",
        "_last_kf_request",
        "_max_spatial",
        "_max_temporal",
        "_num_spatial",
        "_paused",
        "_req_spatial",
        "_req_temporal",
        "keyframe_requests",
        "last_switch_at",
        "switches",
        "temporal_switches",
    )

    def __init__(self, num_spatial: int, *, keyframe_request_interval: float = 0.5) -> None:
        if not 1 <= num_spatial <= MAX_SPATIAL_LAYERS:
            raise ValueError(f"num_spatial must be in 1..{MAX_SPATIAL_LAYERS}")
        if keyframe_request_interval < 0:
            raise ValueError("keyframe_request_interval must not be negative")
        self._num_spatial = num_spatial
        self._kf_interval = keyframe_request_interval
        # What the allocator asked for.
        self._req_spatial: int | None = 0
        self._req_temporal = _ALL_TEMPORAL
        # What the subscriber allows.
        self._max_spatial = num_spatial - 1
        self._max_temporal = _ALL_TEMPORAL
        self._paused = False
        # What the publisher sends.
        self._available = frozenset(range(num_spatial))
        # The effective target: the request capped by preferences and availability.
        self._eff_spatial: int | None = 0
        self._eff_temporal = _ALL_TEMPORAL
        # What is being forwarded now.
        self._current_spatial: int | None = None
        self._current_temporal = _ALL_TEMPORAL
        #: When each layer's keyframe was last requested (the SVC selector's one stream:
        #: ``_last_kf_request``).
        self._last_kf_at: dict[int, float] = {}
        self._last_kf_request: float | None = None
        #: Spatial switches made (including the start and every resume), for metrics.
        self.switches = 0
        #: Temporal limit changes made within the current spatial layer, for metrics.
        self.temporal_switches = 0
        #: Keyframe requests handed out by :meth:`keyframe_needed`, for metrics.
        self.keyframe_requests = 0
        #: ``now`` of the last spatial switch, or None before the first.
        self.last_switch_at: float | None = None

    # -- inputs from the control plane ------------------------------------------------------

    def set_target(self, spatial: int | None, temporal: int | None) -> None:
        """Set the allocator's target (``spatial`` None pauses; ``temporal`` None means all)."""
        if spatial is not None and not 0 <= spatial < self._num_spatial:
            raise ValueError(f"spatial layer {spatial} out of range 0..{self._num_spatial - 1}")
        if temporal is not None and temporal < 0:
            raise ValueError("temporal layer must not be negative")
        self._req_spatial = spatial
        self._req_temporal = _ALL_TEMPORAL if temporal is None else temporal
        self._recompute()

    def set_preferences(
        self,
        max_spatial: int | None = None,
        max_temporal: int | None = None,
        paused: bool = False,
    ) -> None:
        """Apply the subscriber's caps (None = no cap) and its pause switch to the target."""
        if max_spatial is not None and max_spatial < 0:
            raise ValueError("max_spatial must not be negative")
        if max_temporal is not None and max_temporal < 0:
            raise ValueError("max_temporal must not be negative")
        top = self._num_spatial - 1
        self._max_spatial = top if max_spatial is None else min(max_spatial, top)
        self._max_temporal = _ALL_TEMPORAL if max_temporal is None else max_temporal
        self._paused = paused
        self._recompute()

    def set_available(self, spatial_layers: set[int] | frozenset[int]) -> None:
        """Record which spatial layers the publisher sends now; a missing target falls down."""
        layers = frozenset(s for s in spatial_layers if 0 <= s < self._num_spatial)
        if len(layers) != len(spatial_layers):
            raise ValueError(f"spatial layers must be in 0..{self._num_spatial - 1}")
        self._available = layers
        self._recompute()

    def _recompute(self) -> None:
        """Derive the effective target; pausing takes effect at once, everything else waits."""
        eff: int | None = None
        if not self._paused and self._req_spatial is not None:
            cap = min(self._req_spatial, self._max_spatial)
            # Fall back downwards to the best layer the publisher still sends.
            for layer in range(cap, -1, -1):
                if layer in self._available:
                    eff = layer
                    break
        self._eff_spatial = eff
        self._eff_temporal = min(self._req_temporal, self._max_temporal)
        if eff is None and self._current_spatial is not None:
            self._current_spatial = None
            self._current_temporal = _ALL_TEMPORAL

    # -- the per-packet decision ------------------------------------------------------------

    def decide(
        self,
        spatial: int,
        temporal: int | None,
        is_keyframe: bool,
        is_start_of_frame: bool,
        now: float,
        *,
        layer_sync: bool = True,
    ) -> Decision:
        """Decide for one packet of spatial layer ``spatial`` (``temporal`` None: no TID).

        ``layer_sync`` is the VP8 Y bit (the frame depends only on TL0): a temporal switch-up
        happens only at a frame start with it set. Callers without that information leave the
        default and any frame start is taken as a sync point.
        """
        current = self._current_spatial
        if spatial == current:
            if is_start_of_frame and self._current_temporal != self._eff_temporal:
                self._switch_temporal(temporal, is_keyframe, layer_sync)
            if temporal is None or temporal <= self._current_temporal:
                return Decision.FORWARD
            return Decision.DROP
        if not (is_keyframe and is_start_of_frame):
            return Decision.DROP
        target = self._eff_spatial
        if target is None or spatial < 0 or target == current:
            return Decision.DROP
        if current is None or current < target:
            if not (current is None or current < spatial) or spatial > target:
                return Decision.DROP
        elif not target <= spatial < current:
            return Decision.DROP
        if temporal is not None and temporal > self._eff_temporal:
            return Decision.DROP
        self._current_spatial = spatial
        self._current_temporal = self._eff_temporal
        self.switches += 1
        self.last_switch_at = now
        return Decision.FORWARD_SWITCH

    def _switch_temporal(self, temporal: int | None, is_keyframe: bool, layer_sync: bool) -> None:
        """At a frame start of the current layer, move the temporal limit towards the target."""
        target = self._eff_temporal
        current = self._current_temporal
        if target < current or is_keyframe or temporal is None:
            # Down at once; up at a keyframe, or when the stream carries no temporal ids.
            new = target
        elif layer_sync and current < temporal <= target:
            new = temporal
        else:
            return
        self._current_temporal = new
        self.temporal_switches += 1

    # -- outputs to the control plane -------------------------------------------------------

    def keyframe_needed(self, now: float) -> int | None:
        """The spatial layer to request a keyframe (PLI) for, or None; rate-limited."""
        target = self._eff_spatial
        if target is None or target == self._current_spatial:
            return None
        # Rate-limited per layer: each is its own stream, and a request for another layer is
        # no repeat (at a cap, the low layer's request waited out the middle one's interval
        # while the middle layer went on into the cap).
        last = self._last_kf_at.get(target)
        if last is not None and now - last < self._kf_interval:
            return None
        self._last_kf_at[target] = now
        self.keyframe_requests += 1
        return target

    @property
    def num_spatial(self) -> int:
        """How many spatial layers the publication has."""
        return self._num_spatial

    @property
    def current(self) -> LayerPair:
        """The layers being forwarded now (spatial None: nothing is forwarded)."""
        if self._current_spatial is None:
            return LayerPair(None, None)
        return LayerPair(self._current_spatial, _public_temporal(self._current_temporal))

    @property
    def target(self) -> LayerPair:
        """The effective target: the allocator's request capped by preferences and availability."""
        if self._eff_spatial is None:
            return LayerPair(None, None)
        return LayerPair(self._eff_spatial, _public_temporal(self._eff_temporal))

    @property
    def requested(self) -> LayerPair:
        """The allocator's own target, before preferences and availability are applied."""
        return LayerPair(self._req_spatial, _public_temporal(self._req_temporal))

    @property
    def available(self) -> frozenset[int]:
        """The spatial layers the publisher is known to send."""
        return self._available

    @property
    def switch_pending(self) -> bool:
        """True while the current spatial layer differs from a non-paused target."""
        return self._eff_spatial is not None and self._eff_spatial != self._current_spatial
