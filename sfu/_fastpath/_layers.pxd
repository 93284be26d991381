# cython: language_level=3
# C-level interface of the compiled simulcast layer selector, for the forwarding engine:
#
#     from sfu._fastpath._layers cimport SimulcastSelector, selector_t, selector_decide
#
#     cdef selector_t* s = &(<SimulcastSelector>sel).s    # keep a reference to sel
#     with nogil:
#         decision = selector_decide(s, layer, tid, keyframe, start_of_frame, now, sync)
#
# The functions never raise, never touch Python objects and may run without the GIL; one
# selector must not be used by two threads at once. The Python contract (and the switching
# rules) are those of the reference, sfu.core.layers.SimulcastSelector.

from libc.stdint cimport uint32_t

cdef enum:
    SELECTOR_DROP = 0              # same ints as sfu._fastpath.values.Decision
    SELECTOR_FORWARD = 1
    SELECTOR_FORWARD_SWITCH = 2
    SELECTOR_NONE = -1             # "no spatial layer" (None in the reference)
    SELECTOR_MAX_SPATIAL = 8       # sfu._fastpath.values.MAX_SPATIAL_LAYERS
    SELECTOR_ALL_TEMPORAL = 65536  # "all temporal layers": the reference's _ALL_TEMPORAL (1 << 16)


ctypedef struct selector_t:
    int num_spatial
    double kf_interval
    int req_spatial                # the allocator's request; -1 = paused by the allocator
    long long req_temporal         # SELECTOR_ALL_TEMPORAL (or above) = all
    int max_spatial                # the subscriber's cap, already capped to num_spatial - 1
    long long max_temporal
    bint paused
    uint32_t available             # bit i set: the publisher sends spatial layer i
    int eff_spatial                # the effective target; -1 = none (paused)
    long long eff_temporal
    int current_spatial            # the layer being forwarded; -1 = none
    long long current_temporal
    bint has_last_kf_request
    double last_kf_request
    uint32_t kf_requested          # simulcast: bit i set once layer i's keyframe was requested
    double last_kf_at[SELECTOR_MAX_SPATIAL]  # ... and when last (each layer is its own stream)
    long long switches
    long long temporal_switches
    long long keyframe_requests
    bint has_last_switch_at
    double last_switch_at


cdef class SimulcastSelector:
    cdef selector_t s
    cdef object available_set      # the frozenset handed to set_available, as the reference keeps it


# Returns 0 DROP, 1 FORWARD, 2 FORWARD_SWITCH (same ints as sfu._fastpath.values.Decision).
# temporal < 0 means "no temporal id" (None).
cdef int selector_decide(selector_t* s, int spatial, int temporal, bint is_keyframe,
                         bint is_start_of_frame, double now, bint layer_sync) noexcept nogil
cdef int selector_current_spatial(const selector_t* s) noexcept nogil   # -1 = None

cdef inline void selector_switch_temporal(
    selector_t* s, long long temporal, bint has_temporal, bint is_keyframe, bint layer_sync
) noexcept nogil:
    """At a frame start of the current layer, move the temporal limit towards the target
    (shared by the simulcast and the SVC selector)."""
    cdef long long target = s.eff_temporal
    cdef long long current = s.current_temporal
    cdef long long new
    if target < current or is_keyframe or not has_temporal:
        # Down at once; up at a keyframe, or when the stream carries no temporal ids.
        new = target
    elif layer_sync and current < temporal <= target:
        new = temporal
    else:
        return
    s.current_temporal = new
    s.temporal_switches += 1
