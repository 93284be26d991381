"""SVC layer selection for one subscription to a VP9 publication sent as one scalable stream.

A VP9 SVC stream (``L3T3_KEY``, ``L2T2``, ...) carries every spatial and temporal layer on one
SSRC; each packet's payload descriptor names its layer frame (RFC 9628 §4.2: SID, TID, the
switching-up bit U, P for inter-picture prediction, B/E for the layer frame's first and last
packet). :class:`SvcSelector` keeps :class:`~sfu.core.layers.SimulcastSelector`'s control
contract (target, preferences, availability, keyframe requests), so the allocator treats the
spatial layers of one SVC stream as it treats simulcast streams; only the per-packet rules
differ, because lower spatial layers never depend on higher ones:

* start (and resume after a pause) at a keyframe: the base layer's intra-only frame;
* switch *down* at the start of any picture (SID 0, B=1): higher layers are simply dropped;
* switch *up* one spatial layer at a time at a layer frame that is not inter-picture
  predicted (P=0, a keyframe picture's upper layers in ``L3T3_KEY``): it needs only the
  lower layers of the same picture, which are being forwarded; otherwise a keyframe is asked
  for (:meth:`SvcSelector.keyframe_needed` names the one stream, layer 0);
* temporal layers move at picture starts: down at once, up at a switching-up point (U=1).

The subscriber's decoder needs the RTP marker on the last packet of each picture it gets; when
higher spatial layers are dropped that is the last packet (E=1) of the highest forwarded
layer: :meth:`SvcSelector.marks` says when the rewritten packet must carry it.
"""

from __future__ import annotations

from sfu._fastpath.values import Decision
from sfu.core.layers import SimulcastSelector

__all__ = ["SvcSelector"]


class SvcSelector(SimulcastSelector):
    """Chooses, per packet of one SVC stream, whether one subscriber gets it.

    ``num_spatial`` bounds the spatial layers the stream may carry; which of them the
    publisher sends is told through :meth:`set_available`, as for simulcast.
    """

    __slots__ = ("_key_picture",)

    def __init__(self, num_spatial: int, *, keyframe_request_interval: float = 0.5) -> None:
        super().__init__(num_spatial, keyframe_request_interval=keyframe_request_interval)
        #: The picture being forwarded began with a keyframe: its upper layers are switch
        #: points, so the selector climbs through them towards the target.
        self._key_picture = False

    def decide(
        self,
        spatial: int,
        temporal: int | None,
        is_keyframe: bool,
        is_start_of_frame: bool,
        now: float,
        *,
        layer_sync: bool = True,
        switch_point: bool = False,
    ) -> Decision:
        """Decide for one packet of layer frame (``spatial``, ``temporal``).

        ``layer_sync`` is the U bit (a temporal switch-up point), ``switch_point`` that the
        layer frame is not inter-picture predicted (P=0): a spatial switch-up point.
        """
        current = self._current_spatial
        target = self._eff_spatial
        if current is None:
            if not (is_keyframe and is_start_of_frame) or target is None or spatial != 0:
                return Decision.DROP
            if temporal is not None and temporal > self._eff_temporal:
                return Decision.DROP
            self._current_spatial = 0
            self._current_temporal = self._eff_temporal
            self._key_picture = True
            self.switches += 1
            self.last_switch_at = now
            return Decision.FORWARD_SWITCH
        if spatial == 0 and is_start_of_frame:
            # A new picture: the place to go down, and to move the temporal limit.
            self._key_picture = is_keyframe
            if target is not None and target < current:
                self._current_spatial = current = target
                self.switches += 1
                self.last_switch_at = now
            if self._current_temporal != self._eff_temporal:
                self._switch_temporal(temporal, is_keyframe, layer_sync)
        if temporal is not None and temporal > self._current_temporal:
            return Decision.DROP
        if spatial <= current:
            return Decision.DROP if spatial < 0 else Decision.FORWARD
        if (
            is_start_of_frame
            and switch_point
            and spatial == current + 1
            and target is not None
            and spatial <= target
        ):
            self._current_spatial = spatial
            self.switches += 1
            self.last_switch_at = now
            return Decision.FORWARD
        return Decision.DROP

    def marks(self, spatial: int, end_of_frame: bool) -> bool:
        """Whether a forwarded packet of layer ``spatial`` must carry the RTP marker: it ends
        (E=1) a frame of the highest spatial layer forwarded, so it ends the picture. In a
        keyframe picture the selector is about to climb above a current layer below the
        target, so that layer does not end it."""
        current = self._current_spatial
        if not end_of_frame or current is None or spatial != current:
            return False
        target = self._eff_spatial
        return not (self._key_picture and target is not None and current < target)

    def keyframe_needed(self, now: float) -> int | None:
        """0 (the one stream) when a start or a switch up waits for a keyframe, else None;
        rate-limited. Going down needs none."""
        target = self._eff_spatial
        current = self._current_spatial
        if target is None or (current is not None and target <= current):
            return None
        last = self._last_kf_request
        if last is not None and now - last < self._kf_interval:
            return None
        self._last_kf_request = now
        self.keyframe_requests += 1
        return 0
