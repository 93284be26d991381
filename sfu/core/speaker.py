"""Active speaker detection from RFC 6464 audio levels (the ssrc-audio-level header extension).

Each audio packet carries the sender's level in -dBov (0 = loudest, 127 = silence) and, from
Chromium, a voice-activity flag. The detector turns those into, per participant, how loud and how
long they spoke over the last ``window`` seconds, and reports the ordered list of active speakers
(loudest first) only when it changes meaningfully.

Per participant it keeps a ring of ``buckets`` time slots covering the window, each holding the
time spent speaking and the time-weighted loudness (dB above the silence floor) in that slot.
``observe`` is O(1) and memory is fixed per participant; a participant whose packets stop (DTX,
mute, gone) simply ages out of the window. Packets are weighted by the time since the previous
one (capped), so 10, 20 or 60 ms packetization and DTX gaps count the same speech time.

Flapping is avoided three ways: a participant joins the active set at ``min_active`` of the window
spoken and leaves only below half of it; neighbours in the list swap only when the one behind is
louder by a relative ``margin``; and the first place (the dominant speaker) passes to a challenger
only after it has led for ``switch_hysteresis`` seconds, unless the dominant speaker fell silent.
"""

from __future__ import annotations

import math

__all__ = ["ActiveSpeakerDetector"]

# Time credited to a participant's first packet, and the most one packet can be credited with
# (Opus packets are at most 120 ms; longer gaps are DTX or loss and carry no speech).
_FIRST_PACKET_WEIGHT = 0.02
_MAX_PACKET_WEIGHT = 0.12


class _Track:
    """One participant's ring of per-slot speech time and loudness integrals."""

    __slots__ = ("epoch", "last_time", "loudness", "speech")

    def __init__(self, buckets: int, epoch: int) -> None:
        self.speech = [0.0] * buckets
        self.loudness = [0.0] * buckets
        self.epoch = epoch
        self.last_time: float | None = None

    def advance(self, epoch: int) -> None:
        """Move the ring head to ``epoch``, clearing the slots that fell out of the window."""
        gap = epoch - self.epoch
        if gap <= 0:
            return
        n = len(self.speech)
        if gap >= n:
            for i in range(n):
                self.speech[i] = 0.0
                self.loudness[i] = 0.0
        else:
            for k in range(1, gap + 1):
                i = (self.epoch + k) % n
                self.speech[i] = 0.0
                self.loudness[i] = 0.0
        self.epoch = epoch

    def totals(self, epoch: int) -> tuple[float, float]:
        """Speech time and loudness integral over the window ending in slot ``epoch``."""
        n = len(self.speech)
        stale = epoch - self.epoch
        if stale >= n:
            return 0.0, 0.0
        speech = 0.0
        loudness = 0.0
        # Slots newer than ``epoch`` (observed with a later time) are still counted.
        for k in range(n - max(stale, 0)):
            i = (self.epoch - k) % n
            speech += self.speech[i]
            loudness += self.loudness[i]
        return speech, loudness


class ActiveSpeakerDetector:
    """Ranks participants by recent speech and reports the active-speaker list on change.

    ``min_level`` is the silence floor in -dBov: a packet quieter than it (a larger value), or one
    whose voice-activity flag is False, is silence. Everything else is speech with a loudness of
    ``min_level + 1 - level`` dB. Time is only what callers pass in as ``now`` (seconds).
    """

    __slots__ = (
        "_bucket_len",
        "_buckets",
        "_challenger",
        "_challenger_since",
        "_enter",
        "_exit",
        "_margin",
        "_min_level",
        "_reported",
        "_switch_hysteresis",
        "_tracks",
        "_window",
    )

    def __init__(
        self,
        *,
        window: float = 1.5,
        min_level: int = 60,
        switch_hysteresis: float = 0.5,
        min_active: float = 0.1,
        margin: float = 0.2,
        buckets: int = 10,
    ) -> None:
        if not window > 0:
            raise ValueError("window must be positive")
        if not 0 <= min_level <= 127:
            raise ValueError("min_level must be in 0..127")
        if switch_hysteresis < 0:
            raise ValueError("switch_hysteresis must not be negative")
        if not 0 < min_active <= 1:
            raise ValueError("min_active must be in (0, 1]")
        if margin < 0:
            raise ValueError("margin must not be negative")
        if not 1 <= buckets <= 100:
            raise ValueError("buckets must be in 1..100")
        self._window = window
        self._min_level = min_level
        self._switch_hysteresis = switch_hysteresis
        self._enter = min_active * window
        self._exit = min_active * window / 2
        self._margin = margin
        self._buckets = buckets
        self._bucket_len = window / buckets
        self._tracks: dict[str, _Track] = {}
        self._reported: list[str] = []
        self._challenger: str | None = None
        self._challenger_since = 0.0

    def _epoch(self, now: float) -> int:
        """The ring slot index for time ``now``."""
        return math.floor(now / self._bucket_len)

    def observe(
        self, participant_id: str, level: int, voice_activity: bool | None, now: float
    ) -> None:
        """Account one audio packet's level (0..127 -dBov) and voice-activity flag (None: none)."""
        epoch = self._epoch(now)
        track = self._tracks.get(participant_id)
        if track is None:
            track = self._tracks[participant_id] = _Track(self._buckets, epoch)
        elif epoch != track.epoch:
            track.advance(epoch)
        last = track.last_time
        if last is None:
            weight = _FIRST_PACKET_WEIGHT
        else:
            weight = min(max(now - last, 0.0), _MAX_PACKET_WEIGHT)
        if last is None or now > last:
            track.last_time = now
        if level > self._min_level or voice_activity is False:
            return
        i = track.epoch % self._buckets
        track.speech[i] += weight
        track.loudness[i] += weight * (self._min_level + 1 - level)

    def remove(self, participant_id: str) -> None:
        """Forget a participant; it leaves the active list at the next :meth:`poll`."""
        self._tracks.pop(participant_id, None)
        if self._challenger == participant_id:
            self._challenger = None

    def scores(self, now: float) -> dict[str, tuple[float, float]]:
        """Per participant: (fraction of the window spoken, mean loudness in dB over it)."""
        epoch = self._epoch(now)
        out: dict[str, tuple[float, float]] = {}
        for pid, track in self._tracks.items():
            speech, loudness = track.totals(epoch)
            out[pid] = (speech / self._window, loudness / self._window)
        return out

    def poll(self, now: float) -> list[str] | None:
        """The new ordered list of active speakers if it changed meaningfully, else None."""
        epoch = self._epoch(now)
        loud: dict[str, float] = {}
        previous = set(self._reported)
        for pid, track in self._tracks.items():
            speech, loudness = track.totals(epoch)
            if speech >= (self._exit if pid in previous else self._enter) and speech > 0:
                loud[pid] = loudness
        # Keep the last order for those still active; newcomers go behind, loudest first.
        order = [pid for pid in self._reported if pid in loud]
        kept = set(order)
        order += sorted((p for p in loud if p not in kept), key=lambda p: (-loud[p], p))
        self._settle(order, loud)
        order = self._hold_dominant(order, now)
        if order == self._reported:
            return None
        self._reported = order
        return list(order)

    def _settle(self, order: list[str], loud: dict[str, float]) -> None:
        """Bubble louder speakers forward, swapping neighbours only past the relative margin."""
        factor = 1.0 + self._margin
        swapped = True
        while swapped:
            swapped = False
            for i in range(len(order) - 1):
                if loud[order[i + 1]] > loud[order[i]] * factor:
                    order[i], order[i + 1] = order[i + 1], order[i]
                    swapped = True

    def _hold_dominant(self, order: list[str], now: float) -> list[str]:
        """Keep the active dominant speaker first until a challenger has led long enough."""
        dominant = self._reported[0] if self._reported else None
        if not order or dominant is None or order[0] == dominant or dominant not in order:
            self._challenger = None
            return order
        leader = order[0]
        if self._challenger != leader:
            self._challenger = leader
            self._challenger_since = now
        if now - self._challenger_since >= self._switch_hysteresis:
            self._challenger = None
            return order
        return [dominant, *(p for p in order if p != dominant)]

    @property
    def active(self) -> list[str]:
        """The active-speaker list last returned by :meth:`poll` (loudest first)."""
        return list(self._reported)

    @property
    def participants(self) -> int:
        """How many participants the detector keeps state for."""
        return len(self._tracks)
