"""Send-side bandwidth estimation, the per-packet numeric core (reference of ``_bwe.pyx``).

Two objects, one contract with the compiled twin:

* :class:`SendHistory` belongs to one subscriber transport. Every packet the server sends on
  that transport (media, retransmission, padding/probe) takes the next transport-wide sequence
  number (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2) and is recorded here with its
  send time, size and probe cluster id, in a fixed ring (no object per packet).
* :class:`DelayDetector` reads that history in bulk for the packets one transport-wide CC
  feedback acknowledges and turns their send and arrival times into the delay signal of Google
  congestion control (draft-ietf-rmcat-gcc-02 §5): packets grouped into 5 ms bursts
  (inter-arrival), the growth of the one-way delay between groups smoothed and fitted with a
  least-squares slope over a window (trendline), and the overuse detector comparing that slope
  with an adaptive threshold (§5.4). It also sums what was acknowledged, overall and per probe
  cluster, for the acknowledged-bitrate and probe-result estimators in ``sfu.core.estimator``.

Times are float seconds; arrivals come in the receiver's clock (integer µs, only differences
matter). The compiled kernel performs the same floating-point operations in the same order,
so the two agree exactly (hypothesis checks it).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Final

__all__ = [
    "BURST_INTERVAL",
    "CLUSTER_SLOTS",
    "NORMAL",
    "OVERUSE",
    "UNDERUSE",
    "WITHDRAWN",
    "DelayDetector",
    "SendHistory",
]

#: Detector states (draft-ietf-rmcat-gcc-02 §5.4).
NORMAL: Final = 0
OVERUSE: Final = 1
UNDERUSE: Final = 2

#: Packets sent within this many seconds of a group's first one form one group: a paced
#: burst leaves the sender together, so only the group's delay growth is meaningful (§5.2).
BURST_INTERVAL: Final = 0.005
#: Weight of the previous value in the exponential smoothing of the accumulated delay
#: (libwebrtc's trendline uses 0.9: a time constant of about ten groups).
SMOOTHING: Final = 0.9
#: Groups in the least-squares window: about 100-400 ms of video groups, long enough to see
#: a queue build, short enough to react within a few feedbacks.
TREND_WINDOW: Final = 20
#: The slope is scaled by the number of deltas seen (at most this many) and a gain, so one
#: early noisy slope cannot trigger overuse (§5.3; libwebrtc's kMaxNumDeltas and gain 4).
MAX_DELTAS: Final = 60
TREND_GAIN: Final = 4.0
#: The overuse threshold (ms of modified trend) adapts between these bounds (§5.4): low enough
#: to react to a queue of a few ms, high enough not to starve against loss-based flows.
THRESHOLD_INITIAL: Final = 12.5
THRESHOLD_MIN: Final = 6.0
THRESHOLD_MAX: Final = 600.0
#: Adaptation gains (§5.4 K_u and K_d): the threshold rises slowly toward a larger trend,
#: falls faster toward a smaller one.
K_UP: Final = 0.0087
K_DOWN: Final = 0.039
#: A trend this far above the threshold is an outlier (e.g. a route change): it does not move
#: the threshold (ms).
THRESHOLD_OUTLIER: Final = 15.0
#: Longest step (ms) one threshold update integrates, so a pause does not jump it.
THRESHOLD_MAX_STEP: Final = 100.0
#: Overuse is signalled only after the trend stayed above the threshold this long (ms) and for
#: more than one group (§5.4 overuse_time_th).
OVERUSE_TIME: Final = 10.0
#: Probe clusters whose acknowledgements are summed at once (ids modulo this).
CLUSTER_SLOTS: Final = 8
#: The cluster a send history gives a packet that was numbered but never sent (probe clusters
#: are 0 and up, -1 is media, -2 a probe's primer).
WITHDRAWN: Final = -3
#: The default ring size of a send history: 2 s at 4000 packets/s (about 40 Mbit/s).
HISTORY_CAPACITY: Final = 8192


class SendHistory:
    """What was sent on one transport, by transport-wide sequence number (a fixed ring)."""

    __slots__ = ("_acked", "_cluster", "_mask", "_next", "_sent", "_size", "bytes", "withdrawn")

    def __init__(self, capacity: int = HISTORY_CAPACITY) -> None:
        if capacity < 16 or capacity & (capacity - 1) or capacity > 1 << 20:
            raise ValueError("capacity must be a power of two in 16..1048576")
        self._mask = capacity - 1
        self._next = 0
        self._sent = array("d", bytes(8 * capacity))
        self._size = array("i", bytes(4 * capacity))
        self._cluster = array("i", bytes(4 * capacity))
        self._acked = bytearray(capacity)
        #: Bytes recorded so far.
        self.bytes = 0
        #: Packets withdrawn so far (see :meth:`withdraw`).
        self.withdrawn = 0

    @property
    def capacity(self) -> int:
        """Packets remembered."""
        return self._mask + 1

    @property
    def packets(self) -> int:
        """Packets recorded so far."""
        return self._next

    @property
    def next_seq(self) -> int:
        """The 16-bit transport-wide sequence number the next packet gets."""
        return self._next & 0xFFFF

    def record(self, size: int, now: float, cluster: int) -> int:
        """Record a packet of ``size`` bytes sent at ``now`` (``cluster``: probe cluster id,
        -1 for none) under :attr:`next_seq`, which it returns."""
        seq = self._next
        slot = seq & self._mask
        self._sent[slot] = now
        self._size[slot] = size
        self._cluster[slot] = cluster
        self._acked[slot] = 0
        self._next = seq + 1
        self.bytes += size
        return seq & 0xFFFF

    def _slot(self, seq: int) -> int:
        """The ring slot of the newest packet sent with 16-bit ``seq``, or -1."""
        newest = self._next - 1
        ext = newest - ((newest - seq) & 0xFFFF)
        if ext < 0 or newest - ext > self._mask:
            return -1
        return ext & self._mask

    def lookup(self, seq: int) -> tuple[float, int, int] | None:
        """(send time, size, cluster) of the packet sent with 16-bit ``seq``, if remembered."""
        slot = self._slot(seq & 0xFFFF)
        if slot < 0:
            return None
        return (self._sent[slot], self._size[slot], self._cluster[slot])

    def restamp(self, seq: int, now: float) -> bool:
        """The packet sent with 16-bit ``seq`` left the server at ``now`` (a pacer held it
        after it was numbered): the delay detector must see when it really left, or the
        pacer's queue reads as the link's. False if it is no longer remembered."""
        slot = self._slot(seq & 0xFFFF)
        if slot < 0:
            return False
        self._sent[slot] = now
        return True

    def withdraw(self, seq: int) -> bool:
        """The packet numbered 16-bit ``seq`` never left (a pacer discarded it after it was
        numbered): its cluster becomes :data:`WITHDRAWN`, so the loss the receiver reports
        for it is not read as the link's. False if not remembered or already acknowledged."""
        slot = self._slot(seq & 0xFFFF)
        if slot < 0 or self._acked[slot]:
            return False
        self._cluster[slot] = WITHDRAWN
        self.withdrawn += 1
        return True


class DelayDetector:
    """Inter-arrival grouping, trendline slope and overuse detection of one transport."""

    __slots__ = (
        "_acc",
        "_c_bytes",
        "_c_first_arrival",
        "_c_first_send",
        "_c_first_size",
        "_c_id",
        "_c_last_arrival",
        "_c_last_send",
        "_c_last_size",
        "_c_packets",
        "_cur",
        "_first_arrival",
        "_has_cur",
        "_has_first",
        "_has_prev",
        "_last_update",
        "_num_deltas",
        "_overuse_count",
        "_prev",
        "_prev_trend",
        "_smoothed",
        "_time_over",
        "_wn",
        "_wpos",
        "_wx",
        "_wy",
        "state",
        "threshold",
        "trend",
    )

    def __init__(self) -> None:
        # Groups: [first send, last send, first arrival, last arrival] (seconds).
        self._cur = [0.0, 0.0, 0.0, 0.0]
        self._prev = [0.0, 0.0, 0.0, 0.0]
        self._has_cur = False
        self._has_prev = False
        self._num_deltas = 0
        self._has_first = False
        self._first_arrival = 0.0
        self._acc = 0.0
        self._smoothed = 0.0
        self._wx = [0.0] * TREND_WINDOW
        self._wy = [0.0] * TREND_WINDOW
        self._wpos = 0
        self._wn = 0
        self._time_over = -1.0
        self._overuse_count = 0
        self._prev_trend = 0.0
        self._last_update = -1.0
        #: The latest detector state (:data:`NORMAL`, :data:`OVERUSE`, :data:`UNDERUSE`).
        self.state = NORMAL
        #: The latest trendline slope (ms of delay growth per ms) and adaptive threshold.
        self.trend = 0.0
        self.threshold = THRESHOLD_INITIAL
        self._c_id = [-1] * CLUSTER_SLOTS
        self._c_packets = [0] * CLUSTER_SLOTS
        self._c_bytes = [0] * CLUSTER_SLOTS
        self._c_first_size = [0] * CLUSTER_SLOTS
        self._c_last_size = [0] * CLUSTER_SLOTS
        self._c_first_send = [0.0] * CLUSTER_SLOTS
        self._c_last_send = [0.0] * CLUSTER_SLOTS
        self._c_first_arrival = [0.0] * CLUSTER_SLOTS
        self._c_last_arrival = [0.0] * CLUSTER_SLOTS

    def cluster(self, cluster: int) -> tuple[int, int, int, int, float, float, float, float]:
        """What was acknowledged of probe ``cluster``: (packets, bytes, first size, last size,
        first send, last send, first arrival, last arrival); zeros if nothing (yet)."""
        slot = cluster % CLUSTER_SLOTS if cluster >= 0 else 0
        if cluster < 0 or self._c_id[slot] != cluster:
            return (0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)
        return (
            self._c_packets[slot],
            self._c_bytes[slot],
            self._c_first_size[slot],
            self._c_last_size[slot],
            self._c_first_send[slot],
            self._c_last_send[slot],
            self._c_first_arrival[slot],
            self._c_last_arrival[slot],
        )

    def on_feedback(
        self, history: SendHistory, seqs: Sequence[int], arrivals_us: Sequence[int]
    ) -> tuple[int, int, float, float, float, float]:
        """Process the packets one feedback reports received (16-bit ``seqs``, in feedback
        order, with their arrival times in µs); each packet counts once.

        Returns (packets, bytes, first send, last send, first arrival, last arrival) of the
        newly acknowledged packets (arrivals in seconds of the receiver's clock); the detector
        state is then in :attr:`state`.
        """
        n = min(len(seqs), len(arrivals_us))
        packets = 0
        total = 0
        first_send = 0.0
        last_send = 0.0
        first_arrival = 0.0
        last_arrival = 0.0
        for i in range(n):
            slot = history._slot(seqs[i] & 0xFFFF)
            if slot < 0 or history._acked[slot]:
                continue
            history._acked[slot] = 1
            send = history._sent[slot]
            size = history._size[slot]
            arrival = arrivals_us[i] / 1000000.0
            if packets == 0:
                first_send = send
                first_arrival = arrival
            else:
                if send < first_send:
                    first_send = send
                if arrival < first_arrival:
                    first_arrival = arrival
            if send > last_send or packets == 0:
                last_send = send
            if arrival > last_arrival or packets == 0:
                last_arrival = arrival
            packets += 1
            total += size
            cluster = history._cluster[slot]
            if cluster >= 0:
                self._cluster_ack(cluster, size, send, arrival)
            self._packet(send, arrival)
        return (packets, total, first_send, last_send, first_arrival, last_arrival)

    def _cluster_ack(self, cluster: int, size: int, send: float, arrival: float) -> None:
        slot = cluster % CLUSTER_SLOTS
        if self._c_id[slot] != cluster:
            self._c_id[slot] = cluster
            self._c_packets[slot] = 0
            self._c_bytes[slot] = 0
            self._c_first_size[slot] = size
            self._c_first_send[slot] = send
            self._c_first_arrival[slot] = arrival
            self._c_last_send[slot] = send
            self._c_last_arrival[slot] = arrival
        self._c_packets[slot] += 1
        self._c_bytes[slot] += size
        if send < self._c_first_send[slot]:
            self._c_first_send[slot] = send
        if send >= self._c_last_send[slot]:
            self._c_last_send[slot] = send
            self._c_last_size[slot] = size
        if arrival < self._c_first_arrival[slot]:
            self._c_first_arrival[slot] = arrival
            self._c_first_size[slot] = size
        if arrival > self._c_last_arrival[slot]:
            self._c_last_arrival[slot] = arrival

    def _packet(self, send: float, arrival: float) -> None:
        """Inter-arrival grouping (§5.2): a completed group yields one delay delta."""
        cur = self._cur
        if not self._has_cur:
            cur[0] = cur[1] = send
            cur[2] = cur[3] = arrival
            self._has_cur = True
            return
        if send < cur[0]:
            return  # reordered from an earlier group: its delta is already accounted
        arrival_gap = arrival - cur[3]
        burst = arrival_gap - (send - cur[1]) < 0.0 and arrival_gap <= BURST_INTERVAL
        if send - cur[0] <= BURST_INTERVAL or burst:
            if send > cur[1]:
                cur[1] = send
            if arrival > cur[3]:
                cur[3] = arrival
            return
        prev = self._prev
        if self._has_prev:
            send_delta = cur[1] - prev[1]
            arrival_delta = cur[3] - prev[3]
            self._trendline(arrival_delta * 1000.0, send_delta * 1000.0, cur[3] * 1000.0)
        prev[0], prev[1], prev[2], prev[3] = cur[0], cur[1], cur[2], cur[3]
        self._has_prev = True
        cur[0] = cur[1] = send
        cur[2] = cur[3] = arrival

    def _trendline(self, arrival_delta: float, send_delta: float, arrival_ms: float) -> None:
        """Trendline filter (§5.3 as libwebrtc does it): the slope of the smoothed
        accumulated delay growth over the last :data:`TREND_WINDOW` groups."""
        if self._num_deltas < 1000:
            self._num_deltas += 1
        if not self._has_first:
            self._first_arrival = arrival_ms
            self._has_first = True
        self._acc += arrival_delta - send_delta
        self._smoothed = SMOOTHING * self._smoothed + (1.0 - SMOOTHING) * self._acc
        self._wx[self._wpos] = arrival_ms - self._first_arrival
        self._wy[self._wpos] = self._smoothed
        self._wpos = (self._wpos + 1) % TREND_WINDOW
        if self._wn < TREND_WINDOW:
            self._wn += 1
        if self._wn == TREND_WINDOW:
            self.trend = self._slope()
        self._detect(send_delta, arrival_ms)

    def _slope(self) -> float:
        """Least-squares slope of the window, oldest point first; the last one if flat."""
        start = self._wpos  # the window is full: the oldest point is the next to overwrite
        sx = 0.0
        sy = 0.0
        for k in range(TREND_WINDOW):
            j = (start + k) % TREND_WINDOW
            sx += self._wx[j]
            sy += self._wy[j]
        mx = sx / TREND_WINDOW
        my = sy / TREND_WINDOW
        num = 0.0
        den = 0.0
        for k in range(TREND_WINDOW):
            j = (start + k) % TREND_WINDOW
            dx = self._wx[j] - mx
            num += dx * (self._wy[j] - my)
            den += dx * dx
        if den == 0.0:
            return self.trend
        return num / den

    def _detect(self, send_delta: float, now_ms: float) -> None:
        """Overuse detector with the adaptive threshold (§5.4)."""
        if self._num_deltas < 2:
            self.state = NORMAL
            return
        trend = self.trend
        scaled = (self._num_deltas if self._num_deltas < MAX_DELTAS else MAX_DELTAS) * trend
        modified = scaled * TREND_GAIN
        threshold = self.threshold
        if modified > threshold:
            if self._time_over < 0.0:
                self._time_over = send_delta / 2.0
            else:
                self._time_over += send_delta
            self._overuse_count += 1
            if (
                self._time_over > OVERUSE_TIME
                and self._overuse_count > 1
                and trend >= self._prev_trend
            ):
                self._time_over = 0.0
                self._overuse_count = 0
                self.state = OVERUSE
        elif modified < -threshold:
            self._time_over = -1.0
            self._overuse_count = 0
            self.state = UNDERUSE
        else:
            self._time_over = -1.0
            self._overuse_count = 0
            self.state = NORMAL
        self._prev_trend = trend
        self._adapt(modified, now_ms)

    def _adapt(self, modified: float, now_ms: float) -> None:
        if self._last_update < 0.0:
            self._last_update = now_ms
        magnitude = modified if modified >= 0.0 else -modified
        if magnitude > self.threshold + THRESHOLD_OUTLIER:
            self._last_update = now_ms
            return
        k = K_DOWN if magnitude < self.threshold else K_UP
        step = now_ms - self._last_update
        if step > THRESHOLD_MAX_STEP:
            step = THRESHOLD_MAX_STEP
        threshold = self.threshold + k * (magnitude - self.threshold) * step
        if threshold < THRESHOLD_MIN:
            threshold = THRESHOLD_MIN
        elif threshold > THRESHOLD_MAX:
            threshold = THRESHOLD_MAX
        self.threshold = threshold
        self._last_update = now_ms
