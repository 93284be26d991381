# cython: language_level=3
"""Compiled SVC layer selector: ``sfu.core.svc.SvcSelector`` over the compiled simulcast
selector's C state (``_layers.pxd``), so the per-packet rules run without the GIL.

The Python class has the reference's exact API and behaviour (the differential tests prove it);
it inherits the control contract (targets, preferences, availability, properties) from the
compiled ``SimulcastSelector`` and replaces the per-packet decision and the keyframe request.
"""

from sfu._fastpath._layers cimport (
    SELECTOR_DROP,
    SELECTOR_FORWARD,
    SELECTOR_FORWARD_SWITCH,
    SimulcastSelector,
    selector_switch_temporal,
    selector_t,
)

from sfu._fastpath.values import Decision

__all__ = ["SvcSelector"]

cdef tuple _DECISIONS = (Decision.DROP, Decision.FORWARD, Decision.FORWARD_SWITCH)
# Python ints beyond these are saturated: far above any temporal id or spatial index.
cdef object _TEMPORAL_CAP = 1 << 62
cdef int _SPATIAL_CAP = 1 << 20




cdef inline void _switched(selector_t* s, int spatial, double now) noexcept nogil:
    s.current_spatial = spatial
    s.switches += 1
    s.has_last_switch_at = True
    s.last_switch_at = now


cdef int svc_decide(
    selector_t* s, bint* key_picture, int spatial, long long temporal, bint has_temporal, bint is_keyframe,
    bint is_start_of_frame, double now, bint layer_sync, bint switch_point,
) noexcept nogil:
    """The reference's ``decide`` (``has_temporal`` False: the packet carries no temporal id)."""
    cdef int current = s.current_spatial
    cdef int target = s.eff_spatial
    if current < 0:
        if not (is_keyframe and is_start_of_frame) or target < 0 or spatial != 0:
            return SELECTOR_DROP
        if has_temporal and temporal > s.eff_temporal:
            return SELECTOR_DROP
        s.current_temporal = s.eff_temporal
        key_picture[0] = True
        _switched(s, 0, now)
        return SELECTOR_FORWARD_SWITCH
    if spatial == 0 and is_start_of_frame:
        key_picture[0] = is_keyframe
        if target >= 0 and target < current:
            _switched(s, target, now)
            current = target
        if s.current_temporal != s.eff_temporal:
            selector_switch_temporal(s, temporal, has_temporal, is_keyframe, layer_sync)
    if has_temporal and temporal > s.current_temporal:
        return SELECTOR_DROP
    if spatial <= current:
        return SELECTOR_DROP if spatial < 0 else SELECTOR_FORWARD
    if (
        is_start_of_frame
        and switch_point
        and spatial == current + 1
        and target >= 0
        and spatial <= target
    ):
        _switched(s, spatial, now)
        return SELECTOR_FORWARD
    return SELECTOR_DROP


cdef inline long long _saturate(object value):
    """A Python int as a C temporal value, saturated to +-2**62."""
    if value > _TEMPORAL_CAP:
        return <long long>_TEMPORAL_CAP
    if value < -_TEMPORAL_CAP:
        return -<long long>_TEMPORAL_CAP
    return value


cdef class SvcSelector(SimulcastSelector):
    """Chooses, per packet of one SVC stream, whether one subscriber gets it.

    Same contract as ``sfu.core.svc.SvcSelector``; the state lives in ``self.s``.
    """

    cdef bint key_picture  # the picture being forwarded began with a keyframe

    def __init__(self, num_spatial, *, keyframe_request_interval=0.5):
        super().__init__(num_spatial, keyframe_request_interval=keyframe_request_interval)
        self.key_picture = False

    def decide(
        self, spatial, temporal, is_keyframe, is_start_of_frame, double now, *,
        layer_sync=True, switch_point=False,
    ):
        """Decide for one packet of layer frame (``spatial``, ``temporal``)."""
        cdef int sp
        cdef long long tid = 0
        cdef bint has_temporal = temporal is not None
        if spatial < 0:
            sp = -1
        elif spatial > _SPATIAL_CAP:
            sp = _SPATIAL_CAP
        else:
            sp = spatial
        if has_temporal:
            tid = _saturate(temporal)
        return _DECISIONS[
            svc_decide(
                &self.s, &self.key_picture, sp, tid, has_temporal, bool(is_keyframe), bool(is_start_of_frame), now,
                bool(layer_sync), bool(switch_point),
            )
        ]

    def marks(self, spatial, end_of_frame):
        """Whether a forwarded packet of layer ``spatial`` must carry the RTP marker."""
        cdef int current = self.s.current_spatial
        cdef int target = self.s.eff_spatial
        if not end_of_frame or current < 0 or spatial != current:
            return False
        return not (self.key_picture and target >= 0 and current < target)

    def keyframe_needed(self, double now):
        """0 (the one stream) when a start or a switch up waits for a keyframe, else None."""
        cdef selector_t* s = &self.s
        cdef int target = s.eff_spatial
        if target < 0 or (s.current_spatial >= 0 and target <= s.current_spatial):
            return None
        if s.has_last_kf_request and now - s.last_kf_request < s.kf_interval:
            return None
        s.has_last_kf_request = True
        s.last_kf_request = now
        s.keyframe_requests += 1
        return 0
