# cython: language_level=3
"""Compiled simulcast layer selector: ``sfu.core.layers.SimulcastSelector`` with its state in a C
struct, so the forwarding engine can decide per packet without the GIL (see ``_layers.pxd``).

The Python class has the reference's exact API and behaviour (the differential tests prove it);
``Decision`` and ``LayerPair`` are the reference's own types. The only difference: temporal ids
and caps are 64-bit in C, so Python ints beyond +-2**62 are saturated to +-2**62 (no payload
descriptor carries a temporal id above 7).
"""

from libc.stdint cimport uint32_t

from sfu._fastpath.values import MAX_SPATIAL_LAYERS, Decision, LayerPair

__all__ = ["SimulcastSelector"]

assert MAX_SPATIAL_LAYERS == SELECTOR_MAX_SPATIAL, "_layers.pxd is out of date"

cdef tuple _DECISIONS = (Decision.DROP, Decision.FORWARD, Decision.FORWARD_SWITCH)
cdef object _NO_LAYERS = LayerPair(None, None)
# Python ints beyond this are saturated: far above any temporal id or spatial index.
cdef object _TEMPORAL_CAP = 1 << 62
cdef int _SPATIAL_CAP = 1 << 20


# -- the C kernel --------------------------------------------------------------------------

cdef inline void _recompute(selector_t* s) noexcept nogil:
    """Derive the effective target; pausing takes effect at once, everything else waits."""
    cdef int eff = SELECTOR_NONE
    cdef int layer
    if not s.paused and s.req_spatial >= 0:
        layer = s.req_spatial if s.req_spatial < s.max_spatial else s.max_spatial
        # Fall back downwards to the best layer the publisher still sends.
        while layer >= 0:
            if (s.available >> layer) & 1:
                eff = layer
                break
            layer -= 1
    s.eff_spatial = eff
    s.eff_temporal = s.req_temporal if s.req_temporal < s.max_temporal else s.max_temporal
    if eff < 0 and s.current_spatial >= 0:
        s.current_spatial = SELECTOR_NONE
        s.current_temporal = SELECTOR_ALL_TEMPORAL




cdef int _decide(
    selector_t* s, int spatial, long long temporal, bint has_temporal, bint is_keyframe,
    bint is_start_of_frame, double now, bint layer_sync,
) noexcept nogil:
    """The reference's ``decide`` (``has_temporal`` False: the packet carries no temporal id)."""
    cdef int current = s.current_spatial
    cdef int target
    if current >= 0 and spatial == current:
        if is_start_of_frame and s.current_temporal != s.eff_temporal:
            selector_switch_temporal(s, temporal, has_temporal, is_keyframe, layer_sync)
        if not has_temporal or temporal <= s.current_temporal:
            return SELECTOR_FORWARD
        return SELECTOR_DROP
    if not (is_keyframe and is_start_of_frame):
        return SELECTOR_DROP
    target = s.eff_spatial
    if target < 0 or spatial < 0 or target == current:
        return SELECTOR_DROP
    if current < 0 or current < target:
        if not (current < 0 or current < spatial) or spatial > target:
            return SELECTOR_DROP
    elif not (target <= spatial < current):
        return SELECTOR_DROP
    if has_temporal and temporal > s.eff_temporal:
        return SELECTOR_DROP
    s.current_spatial = spatial
    s.current_temporal = s.eff_temporal
    s.switches += 1
    s.has_last_switch_at = True
    s.last_switch_at = now
    return SELECTOR_FORWARD_SWITCH


cdef int selector_decide(selector_t* s, int spatial, int temporal, bint is_keyframe,
                         bint is_start_of_frame, double now, bint layer_sync) noexcept nogil:
    """Decide for one packet of ``spatial`` (``temporal`` < 0: no temporal id)."""
    return _decide(
        s, spatial, temporal, temporal >= 0, is_keyframe, is_start_of_frame, now, layer_sync
    )


cdef int selector_current_spatial(const selector_t* s) noexcept nogil:
    """The spatial layer being forwarded now, -1 when none."""
    return s.current_spatial


cdef inline long long _saturate(object value):
    """A Python int as a C temporal value, saturated to +-2**62."""
    if value > _TEMPORAL_CAP:
        return <long long>_TEMPORAL_CAP
    if value < -_TEMPORAL_CAP:
        return -<long long>_TEMPORAL_CAP
    return value


cdef inline object _public_temporal(long long value):
    """Map the internal "all temporal layers" sentinel back to None."""
    return None if value >= SELECTOR_ALL_TEMPORAL else value


# -- the Python class ----------------------------------------------------------------------

cdef class SimulcastSelector:
    """Chooses, per packet, whether one subscriber gets it, switching layers only at keyframes.

    Same contract as ``sfu.core.layers.SimulcastSelector``; the state lives in ``self.s``.
    """

    def __init__(self, num_spatial, *, keyframe_request_interval=0.5):
        if not 1 <= num_spatial <= MAX_SPATIAL_LAYERS:
            raise ValueError(f"num_spatial must be in 1..{MAX_SPATIAL_LAYERS}")
        if keyframe_request_interval < 0:
            raise ValueError("keyframe_request_interval must not be negative")
        cdef selector_t* s = &self.s
        s.num_spatial = num_spatial
        s.kf_interval = keyframe_request_interval
        s.req_spatial = 0
        s.req_temporal = SELECTOR_ALL_TEMPORAL
        s.max_spatial = num_spatial - 1
        s.max_temporal = SELECTOR_ALL_TEMPORAL
        s.paused = False
        s.available = (1u << s.num_spatial) - 1
        self.available_set = frozenset(range(num_spatial))
        s.eff_spatial = 0
        s.eff_temporal = SELECTOR_ALL_TEMPORAL
        s.current_spatial = SELECTOR_NONE
        s.current_temporal = SELECTOR_ALL_TEMPORAL
        s.has_last_kf_request = False
        s.last_kf_request = 0.0
        s.kf_requested = 0
        s.switches = 0
        s.temporal_switches = 0
        s.keyframe_requests = 0
        s.has_last_switch_at = False
        s.last_switch_at = 0.0

    # -- inputs from the control plane ----------------------------------------------------

    def set_target(self, spatial, temporal):
        """Set the allocator's target (``spatial`` None pauses; ``temporal`` None means all)."""
        cdef int num = self.s.num_spatial
        if spatial is not None and not 0 <= spatial < num:
            raise ValueError(f"spatial layer {spatial} out of range 0..{num - 1}")
        if temporal is not None and temporal < 0:
            raise ValueError("temporal layer must not be negative")
        self.s.req_spatial = SELECTOR_NONE if spatial is None else spatial
        self.s.req_temporal = SELECTOR_ALL_TEMPORAL if temporal is None else _saturate(temporal)
        _recompute(&self.s)

    def set_preferences(self, max_spatial=None, max_temporal=None, paused=False):
        """Apply the subscriber's caps (None = no cap) and its pause switch to the target."""
        if max_spatial is not None and max_spatial < 0:
            raise ValueError("max_spatial must not be negative")
        if max_temporal is not None and max_temporal < 0:
            raise ValueError("max_temporal must not be negative")
        cdef int top = self.s.num_spatial - 1
        self.s.max_spatial = top if max_spatial is None else min(max_spatial, top)
        self.s.max_temporal = (
            SELECTOR_ALL_TEMPORAL if max_temporal is None else _saturate(max_temporal)
        )
        self.s.paused = True if paused else False
        _recompute(&self.s)

    def set_available(self, spatial_layers):
        """Record which spatial layers the publisher sends now; a missing target falls down."""
        cdef int num = self.s.num_spatial
        cdef int layer
        cdef uint32_t mask = 0
        layers = frozenset([s for s in spatial_layers if 0 <= s < num])
        if len(layers) != len(spatial_layers):
            raise ValueError(f"spatial layers must be in 0..{num - 1}")
        for layer in range(num):
            if layer in layers:
                mask |= 1u << layer
        self.available_set = layers
        self.s.available = mask
        _recompute(&self.s)

    # -- the per-packet decision ----------------------------------------------------------

    def decide(
        self, spatial, temporal, is_keyframe, is_start_of_frame, double now, *, layer_sync=True
    ):
        """Decide for one packet of spatial layer ``spatial`` (``temporal`` None: no TID)."""
        cdef int sp
        cdef long long tid = 0
        cdef bint has_temporal = temporal is not None
        # Every negative index, and every index past the last layer, behaves the same.
        if spatial < 0:
            sp = -1
        elif spatial > _SPATIAL_CAP:
            sp = _SPATIAL_CAP
        else:
            sp = spatial
        if has_temporal:
            tid = _saturate(temporal)
        return _DECISIONS[
            _decide(
                &self.s, sp, tid, has_temporal, bool(is_keyframe), bool(is_start_of_frame), now,
                bool(layer_sync),
            )
        ]

    # -- outputs to the control plane -----------------------------------------------------

    def keyframe_needed(self, double now):
        """The spatial layer to request a keyframe (PLI) for, or None; rate-limited."""
        cdef selector_t* s = &self.s
        cdef int target = s.eff_spatial
        if target < 0 or target == s.current_spatial:
            return None
        if (s.kf_requested >> target) & 1 and now - s.last_kf_at[target] < s.kf_interval:
            return None
        s.kf_requested |= 1u << target
        s.last_kf_at[target] = now
        s.keyframe_requests += 1
        return target

    @property
    def num_spatial(self):
        """How many spatial layers the publication has."""
        return self.s.num_spatial

    @property
    def current(self):
        """The layers being forwarded now (spatial None: nothing is forwarded)."""
        if self.s.current_spatial < 0:
            return _NO_LAYERS
        return LayerPair(self.s.current_spatial, _public_temporal(self.s.current_temporal))

    @property
    def target(self):
        """The effective target: the allocator's request capped by preferences and availability."""
        if self.s.eff_spatial < 0:
            return _NO_LAYERS
        return LayerPair(self.s.eff_spatial, _public_temporal(self.s.eff_temporal))

    @property
    def requested(self):
        """The allocator's own target, before preferences and availability are applied."""
        spatial = None if self.s.req_spatial < 0 else self.s.req_spatial
        return LayerPair(spatial, _public_temporal(self.s.req_temporal))

    @property
    def available(self):
        """The spatial layers the publisher is known to send."""
        return self.available_set

    @property
    def switch_pending(self):
        """True while the current spatial layer differs from a non-paused target."""
        return self.s.eff_spatial >= 0 and self.s.eff_spatial != self.s.current_spatial

    @property
    def switches(self):
        """Spatial switches made (including the start and every resume), for metrics."""
        return self.s.switches

    @switches.setter
    def switches(self, long long value):
        self.s.switches = value

    @property
    def temporal_switches(self):
        """Temporal limit changes made within the current spatial layer, for metrics."""
        return self.s.temporal_switches

    @temporal_switches.setter
    def temporal_switches(self, long long value):
        self.s.temporal_switches = value

    @property
    def keyframe_requests(self):
        """Keyframe requests handed out by :meth:`keyframe_needed`, for metrics."""
        return self.s.keyframe_requests

    @keyframe_requests.setter
    def keyframe_requests(self, long long value):
        self.s.keyframe_requests = value

    @property
    def last_switch_at(self):
        """``now`` of the last spatial switch, or None before the first."""
        return self.s.last_switch_at if self.s.has_last_switch_at else None

    @last_switch_at.setter
    def last_switch_at(self, value):
        self.s.has_last_switch_at = value is not None
        self.s.last_switch_at = 0.0 if value is None else value
