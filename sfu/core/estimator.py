"""Send-side bandwidth estimation for one subscriber transport (sans-I/O).

:class:`BandwidthEstimator` follows Google congestion control (draft-ietf-rmcat-gcc-02) as
libwebrtc's goog_cc structures it, written from the draft and the published design:

* the **delay-based** part: the compiled (or reference) :class:`DelayDetector` kernel reads
  the transport's :class:`SendHistory` for the packets each transport-wide CC feedback
  acknowledges, groups them into 5 ms bursts, fits the trend of the one-way delay growth and
  says overuse / normal / underuse against an adaptive threshold;
* **AIMD rate control** (§6): on overuse the rate drops to :data:`BETA` x the acknowledged
  bitrate (what actually got through), or x the newest arrivals' rate when they came at
  under :data:`COLLAPSE_SHARE` of the rate they were sent at with :data:`COLLAPSE_LOSS` of
  them lost (a link carrying a fraction of it), on underuse it holds, on normal it grows:
  multiplicatively (:data:`MULTIPLICATIVE_GROWTH` per second) while far from the last
  congestion point, additively (about one packet per response time) near it; growth is
  capped at :data:`ACKED_CAP_FACTOR` x the acknowledged bitrate, so an application-limited
  sender (ALR) cannot talk itself into an estimate nothing has tested;
* a **loss-based bound** (§7): above :data:`LOSS_HIGH` loss it backs off by half the loss
  fraction (and to the acknowledged bitrate when that is lower, by at most half per step),
  between :data:`LOSS_LOW` and :data:`LOSS_HIGH` it holds, below it grows;
* **probe results**: the bitrate a probe cluster got through (its receive rate, capped by
  the caller at the rate it aimed at: the cluster leaves at once, so the send side has no
  rate of its own) lifts the estimate at once. Probe packets (a
  cluster and its primer) count in no loss fraction: a probe that overran the link
  already failed (it says "no capacity" through its result), and its losses in the loss-based
  bound pulled the estimate under what the media itself got through (the real-client test's
  900 kbit/s phase: a probe for the top layer lost 15 % of a window and undid the middle one).
  Nor do packets the egress pacer numbered and then discarded (withdrawn from the history):
  they never left, and counting them let the pacer's expiries lower the estimate further.

The estimate only ever hears about this transport's own packets, so loss on a publisher's
uplink (packets that never reached the server) cannot pull a subscriber's estimate down.
REMB is the fallback input when transport-cc is not negotiated: then the estimate is the
receiver's REMB (capped by the loss-based bound fed from receiver reports).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from typing import TYPE_CHECKING, Final

from sfu._fastpath._bwe_py import NORMAL, OVERUSE, UNDERUSE, WITHDRAWN
from sfu.packet.twcc import DELTA_TICK_US, REFERENCE_TICK_US, TransportFeedback

if TYPE_CHECKING:
    from sfu.core.kernels import DelayDetector, SendHistory

__all__ = [
    "ACKED_CAP_FACTOR",
    "BETA",
    "COLLAPSE_LOSS",
    "COLLAPSE_SHARE",
    "INITIAL_BPS",
    "LOSS_CONFIDENCE",
    "LOSS_EARLY_PACKETS",
    "LOSS_EARLY_RUNS",
    "LOSS_EARLY_SHARE",
    "LOSS_HIGH",
    "LOSS_LOW",
    "LOSS_SEVERE",
    "LOSS_WINDOW_PACKETS",
    "LOSS_WINDOW_S",
    "MAX_BPS",
    "MIN_BPS",
    "NO_CLUSTER",
    "PRIMER",
    "PROBE_DELAY_HOLD",
    "PROBE_LOSS_HOLD",
    "WITHDRAWN_HOLD",
    "BandwidthEstimator",
]

#: Where a new transport starts (bps): the low layer plus audio fit, the middle does not, so
#: a subscriber climbs by probing instead of starting above a link it has not measured.
INITIAL_BPS: Final = 300_000
#: Never estimate below this (audio and RTCP must still get through) or above this.
MIN_BPS: Final = 30_000
MAX_BPS: Final = 50_000_000
#: Multiplicative decrease on overuse: the acknowledged bitrate times this (§6: 0.85), so the
#: queue that caused the overuse drains.
BETA: Final = 0.85
#: One decrease never cuts the estimate below this share of itself: the acknowledged bitrate
#: lags a layer switch by its window, so an overuse right after an upgrade (the new layer's
#: keyframe burst) would otherwise fall back to the old layer's rate times BETA and skip a
#: layer on the way down.
MAX_DECREASE: Final = 0.5
#: A delay overuse whose newest arrivals came at under this share of the rate they were sent
#: at (lost ones included) decreases to BETA x that delivered rate, however far below the
#: acknowledged rate and MAX_DECREASE it is: the link carries a fraction of what is sent (the
#: real-client test's 400 kbit/s cap under a 1.5 Mbit/s layer: 0.13-0.27), and a step of at
#: most half the estimate chose the middle layer, whose keyframe went into the cap. A link
#: that carries more than this share is left to AIMD (the 900 kbit/s cap: about 0.6).
COLLAPSE_SHARE: Final = 0.5
#: ... and only while those feedbacks report at least this share of their packets lost: a
#: queue at a fraction of the rate overflows at once, while a receiver short of CPU reads its
#: socket slowly, stretching the arrivals, and loses nothing (the three-node Chromium test's
#: pages, under the reference kernels on two busy cores, froze for 3.3 s when such a reading
#: cut their estimate to the rate they read at).
COLLAPSE_LOSS: Final = 0.1
#: Multiplicative growth per second while far from the last congestion point (§6: 8 %).
MULTIPLICATIVE_GROWTH: Final = 0.08
#: Growth is capped at this multiple of the acknowledged bitrate plus a constant, as
#: libwebrtc does: the estimate may lead what gets through, never run away from it.
ACKED_CAP_FACTOR: Final = 1.5
ACKED_CAP_EXTRA: Final = 10_000
#: Additive growth near the congestion point: about one packet of this size per response
#: time (RTT + :data:`RESPONSE_EXTRA`), at least :data:`MIN_ADDITIVE` bps per second.
ADDITIVE_PACKET_BITS: Final = 1200 * 8
RESPONSE_EXTRA: Final = 0.1
MIN_ADDITIVE: Final = 4_000
#: Near the congestion point means below this multiple of the link capacity measured at the
#: last overuse; above it the capacity is forgotten and growth is multiplicative again.
CAPACITY_MARGIN: Final = 1.5
#: Smoothing of the link capacity estimate (weight of a new overuse measurement).
CAPACITY_WEIGHT: Final = 0.05
#: Two decreases at least this far apart (s), or one RTT when longer: the first decrease
#: must show in feedback before a second one is justified (a collapse after a decrease that
#: was not one excepted: it measures the link).
MIN_DECREASE_INTERVAL: Final = 0.2
#: Acknowledged bitrate: bytes acknowledged over this much receiver time (s).
ACKED_WINDOW: Final = 0.5
#: Loss thresholds of the loss-based bound (§7: back off above 10 %, grow below 2 %).
LOSS_HIGH: Final = 0.10
LOSS_LOW: Final = 0.02
#: Above this loss the bound falls to the acknowledged rate at once, not by at most half a
#: step: most of what is sent is lost, so the link is a fraction of the rate and every step
#: spent above it is lost, audio included (the real-client test's cap from 900 to 100 kbit/s
#: took three halving steps, a second at 88-90 % loss, and 8.7 % of the phase's audio).
LOSS_SEVERE: Final = 0.5
#: The rate delivered during a loss window counts with at least this many packets received,
#: over at least this long (s): fewer, or a shorter span, say little about a rate.
DELIVERED_MIN_PACKETS: Final = 4
DELIVERED_MIN_SPAN: Final = 0.05
#: Feedbacks whose arrivals are kept for the latest delivered rate (the newest of them that
#: span :data:`DELIVERED_MIN_SPAN` count): a browser reports every 50-250 ms, so a few suffice.
RECENT_FEEDBACKS: Final = 8
#: ... parted where the arrivals leave a gap: one over this many times the spacing of the
#: newer arrivals (and over DELIVERED_MIN_SPAN), or over GAP_ALONE when only one is newer.
GAP_SPACINGS: Final = 3.0
GAP_ALONE: Final = 0.1
#: Loss is measured over at least this many reported packets, and the bound moves at most
#: once per :data:`LOSS_INTERVAL` (s) so one feedback of a burst does not count many times.
LOSS_MIN_PACKETS: Final = 20
#: ... except that a window of at least this many packets, :data:`LOSS_EARLY_SHARE` or more of
#: them lost, is read at once: a cap at a quarter of the rate loses about 40 packets a second
#: of the top layer while the window fills to 20 (the real-client test's 400 kbit/s cap lost
#: 33 packets before its first step, 7 % of the phase's video). 6 of 10 lost happens in
#: about 1.5 x 10^-4 of windows under 10 % random loss, 3 x 10^-6 under 5 %.
LOSS_EARLY_PACKETS: Final = 10
LOSS_EARLY_SHARE: Final = 0.6
#: ... and only with its losses in at least this many separate runs, as is an onset's closing:
#: a link at a fraction of the rate drops packets between the ones it carries, while an outage
#: (a receiver or a server stalled for a moment, a radio fade) loses one run and then nothing.
#: Read as a cap, a run of ten lost packets mid-window took a subscriber's estimate down to
#: what arrived after it, where the whole window's test ignores it.
LOSS_EARLY_RUNS: Final = 3
LOSS_INTERVAL: Final = 0.3
#: Loss is "above LOSS_HIGH" only when the window's lost count is this many binomial standard
#: deviations above LOSS_HIGH of its packets. With 5 % random loss a 20-packet window shows
#: over 10 % one time in 13 (several times a second at a camera's top layer), and backing off on
#: each took a loss-free link's subscriber from 1280 to 640 wide (the 5 %-loss Chromium test);
#: at 3 deviations that happens about once in 10^5 windows, while loss from a cap far below the
#: rate (30 % and more) is still significant in the first 20-packet window.
LOSS_CONFIDENCE: Final = 3.0
#: Otherwise a window closes after this many reported packets or seconds (GCC reads loss over
#: receiver-report intervals of about a second), and its fraction drives the bound (§7): with
#: 5 % random loss a 200-packet window shows over 10 % about once in 300.
LOSS_WINDOW_PACKETS: Final = 200
LOSS_WINDOW_S: Final = 1.0
#: Growth per second of the loss-based bound below :data:`LOSS_LOW` loss.
LOSS_GROWTH: Final = 0.08
#: A probe cluster's result counts with at least this many packets acknowledged.
PROBE_MIN_PACKETS: Final = 4
#: Transport-wide CC reports arrivals in 250 µs ticks (draft-holmer §3.1.5): a probe train
#: that arrived within one tick came faster than can be measured, so its receive span is
#: taken as one tick (and the result capped by the caller at the probe's own rate).
MIN_ARRIVAL_SPAN: Final = DELTA_TICK_US / 1_000_000
#: The send history's cluster id of a packet that is no probe's (media, retransmissions), and
#: of a probe's primer (padding that drains a policer's bucket ahead of the cluster: part of
#: the probe, part of no cluster's result).
NO_CLUSTER: Final = -1
PRIMER: Final = -2
#: Seconds after the pacer last withdrew a packet during which feedback is read packet by
#: packet to leave withdrawn ones out of the loss (a receiver reports a number within a round
#: trip and a feedback interval of the next arrival; probes use the same margin).
WITHDRAWN_HOLD: Final = 2.0
#: Probe packets are told apart in feedback (by their send history entry) for this long after
#: the last was sent (s): their feedback comes within a round trip and a feedback interval;
#: later feedback then costs no per-packet look-up.
PROBE_LOSS_HOLD: Final = 2.0
#: A delay overuse this soon (s, plus the RTT) after probe packets went out is the probe's own
#: queue, and decreases nothing: a probe aims above the estimate by design, and its burst (a
#: primer and a cluster, about 10 kB for the top layer) queues for tens of milliseconds at a
#: link it overruns. The decrease that followed (to 0.85 x the acknowledged rate, itself
#: swollen by the probe's bytes) took the middle layer away at the real-client test's
#: 900 kbit/s cap, where the probe's result said the link carried 850 kbit/s: an estimate
#: that fell before the result came was allocated on at once, and the congestion hold kept
#: the layer away for 7 s. The probe's result (or its failure) is what it says about the link;
#: an overuse that outlasts the hold is the link's and decreases as ever. About the prober's
#: wait for a result (``RESULT_TIMEOUT``).
PROBE_DELAY_HOLD: Final = 0.5
#: Feedback covering more packets than this is never read packet by packet (probes and
#: withdrawn numbers): a browser reports every 50-250 ms, a few hundred packets at 10 Mbit/s,
#: while one 60-byte feedback may claim 65,535 lost packets, each a history look-up in
#: Python. Beyond it every lost packet counts as the link's loss (the common path).
DETAILED_FEEDBACK_MAX_PACKETS: Final = 2048
#: Application-limited region: sending less than this share of the estimate.
ALR_SHARE: Final = 0.65
#: RTT used until a receiver report gives one (s).
DEFAULT_RTT: Final = 0.1

_REF_WRAP: Final = 1 << 24


class _LossWindow:
    """Packets reported in transport-wide CC feedback since a loss window opened: how many
    were reported and lost, and what arrived (bytes, packets, first and last arrival, s)."""

    __slots__ = ("bytes", "ends_lost", "first", "last", "lost", "packets", "reported", "runs")

    def __init__(self) -> None:
        self.reported = 0
        self.lost = 0
        self.bytes = 0
        self.packets = 0
        self.first = 0.0
        self.last = 0.0
        #: Separate runs of lost packets, and whether the last packet reported was lost.
        self.runs = 0
        self.ends_lost = False

    def add(
        self,
        reported: int,
        lost: int,
        packets: int,
        size: int,
        first: float,
        last: float,
        runs: tuple[int, bool, bool] = (0, False, False),
    ) -> None:
        """One feedback's share: ``reported`` packets, ``lost`` of them, ``packets``
        acknowledged with ``size`` bytes arriving from ``first`` to ``last``; ``runs``: its
        runs of lost packets, whether it starts with one and whether it ends with one."""
        self.reported += reported
        self.lost += lost
        count, starts_lost, ends_lost = runs
        if starts_lost and self.ends_lost:
            count -= 1  # the previous feedback's last run goes on
        self.runs += count
        if reported:
            self.ends_lost = ends_lost
        if packets:
            if self.packets == 0:
                self.first, self.last = first, last
            else:
                self.first = min(self.first, first)
                self.last = max(self.last, last)
            self.packets += packets
            self.bytes += size

    def fraction(self) -> float:
        """The share of the reported packets that were lost."""
        return self.lost / self.reported if self.reported else 0.0

    def significant(self) -> bool:
        """Whether the loss is :data:`LOSS_CONFIDENCE` binomial deviations above
        :data:`LOSS_HIGH`, over at least :data:`LOSS_MIN_PACKETS` packets (or most of at
        least :data:`LOSS_EARLY_PACKETS` was lost)."""
        n = self.reported
        if n < LOSS_MIN_PACKETS:
            # Read early only when it also says what got through: the acknowledged rate
            # then still holds the traffic from before the cap (and the latest arrivals may
            # too: read early on them, a policer's cap first fell to 660 kbit/s, not 250).
            return (
                n >= LOSS_EARLY_PACKETS
                and self.lost >= LOSS_EARLY_SHARE * n
                and self.runs >= LOSS_EARLY_RUNS
                and self.delivered_bps(self.lost / n) is not None
            )
        spread = math.sqrt(n * LOSS_HIGH * (1.0 - LOSS_HIGH))
        return self.lost > LOSS_HIGH * n + LOSS_CONFIDENCE * spread

    def delivered_bps(self, fraction: float) -> float | None:
        """What arrived in the window, as a rate (None with too few packets): with most of
        what is sent lost, the bottleneck was full throughout, so this is its capacity, where
        the acknowledged rate's half second still holds what went before. It counts with what
        a shortest window (:data:`LOSS_EARLY_PACKETS`) at ``fraction`` loss delivers,
        :data:`DELIVERED_MIN_PACKETS` at least."""
        need = max(DELIVERED_MIN_PACKETS, LOSS_EARLY_PACKETS * (1.0 - fraction))
        span = self.last - self.first
        if self.packets < need or span < DELIVERED_MIN_SPAN:
            return None
        # n arrivals span n - 1 intervals: the first packet's bytes came before the span.
        n = self.packets
        return self.bytes * (n - 1) / n * 8 / span


class BandwidthEstimator:
    """What one subscriber transport can take, from its TWCC feedback (or REMB)."""

    def __init__(
        self,
        history: SendHistory,
        detector: DelayDetector,
        *,
        initial_bps: float = INITIAL_BPS,
        min_bps: float = MIN_BPS,
        max_bps: float = MAX_BPS,
    ) -> None:
        self.history = history
        self.detector = detector
        self.min_bps = min_bps
        self.max_bps = max_bps
        self._delay_bps = float(initial_bps)
        self._loss_bps: float | None = None
        self._capacity: float | None = None
        self._state = NORMAL
        self._last_update: float | None = None
        self._last_decrease = -1e9
        self._acked: deque[tuple[float, float, int]] = deque()  # (first, last arrival, bytes)
        # The latest feedbacks' arrivals: (packets, bytes, packets sent over the range they
        # report, first and last send, first and last arrival).
        self._recent: deque[tuple[int, int, int, float, float, float, float]] = deque(
            maxlen=RECENT_FEEDBACKS
        )
        self._loss_at = -1e9
        self._loss_window_at = 0.0
        #: The open loss window, and its part since its first loss (None before one).
        self._window = _LossWindow()
        self._onset: _LossWindow | None = None
        self._ref_last: int | None = None
        self._ref_unwrapped = 0
        self._sent: deque[tuple[float, int]] = deque()  # (now, history bytes)
        #: Until when feedback may report probe packets (see :data:`PROBE_LOSS_HOLD`), and
        #: when probe packets last went out (see :data:`PROBE_DELAY_HOLD`).
        self._probes_until = -1e9
        self._probe_sent_at = -1e9
        #: Delay overuses within a probe's hold, left to the probe (read at scrape time).
        self.probe_overuses = 0
        #: Probe packets left out of the loss fraction (read at scrape time or in tests).
        self.probe_packets_lost = 0
        #: The history's withdrawn count when last seen, and until when feedback may report
        #: withdrawn packets (see :data:`WITHDRAWN_HOLD`).
        self._withdrawn_seen = 0
        self._withdrawn_until = -1e9
        #: Withdrawn packets (the pacer discarded them) reported lost, left out of the loss.
        self.withdrawn_lost = 0
        self.rtt = DEFAULT_RTT
        #: When the link last showed congestion: a delay overuse, or a loss window above
        #: LOSS_HIGH (-1e9: never, or a probe has since got more through than the estimate).
        #: The pacer reads it (``sfu.core.pacing.pacing_rate``).
        self.congested_at = -1e9
        #: The latest loss fraction measured from feedback (or receiver reports).
        self.loss = 0.0
        #: Whether transport-wide CC feedback has been seen (else REMB drives the estimate).
        self.twcc_seen = False
        self.remb_bps: float | None = None
        #: Counters read at scrape time.
        self.feedbacks = 0
        self.overuses = 0
        #: Overuses read as a collapse (see :data:`COLLAPSE_SHARE`; the decrease is to the
        #: delivered rate when that is the lower), and whether the last decrease was one.
        self.collapses = 0
        self._collapsed = False
        self.decreases = 0
        self.probe_results = 0

    # -- inputs -------------------------------------------------------------------------------

    def on_rtt(self, rtt: float) -> None:
        """A round-trip time measured from receiver reports (seconds)."""
        if rtt > 0:
            self.rtt = rtt

    def on_remb(self, bps: float, *, now: float) -> None:
        """A REMB from the receiver: the estimate when transport-cc is not negotiated."""
        self.remb_bps = float(bps)

    def on_report_loss(self, fraction: float, *, now: float) -> None:
        """Loss from a receiver report (RFC 3550 §6.4.1 fraction lost): the loss-based bound's
        input when there is no transport-wide feedback."""
        if not self.twcc_seen:
            self._loss_step(fraction, now)

    def on_feedback(self, feedback: TransportFeedback, *, now: float) -> None:
        """One transport-wide CC feedback from the subscriber."""
        self.twcc_seen = True
        self.feedbacks += 1
        ref = feedback.reference_time & (_REF_WRAP - 1)
        if self._ref_last is None:
            self._ref_unwrapped = ref
        else:
            step = (ref - self._ref_last) & (_REF_WRAP - 1)
            if step >= _REF_WRAP // 2:
                step -= _REF_WRAP
            self._ref_unwrapped += step
        self._ref_last = ref
        offset = (self._ref_unwrapped - feedback.reference_time) * REFERENCE_TICK_US
        seqs = array("H")
        arrivals = array("q")
        reported = 0
        lost = 0
        # Where the first lost media packet is: how many reported packets came before it,
        # and how many received ones (probes too) are in ``seqs`` by then (-1: no loss).
        leading = tail_at = -1
        runs, ends_lost = 0, False  # runs of lost media packets (the detailed path)
        try:
            withdrawn = self.history.withdrawn
            if withdrawn != self._withdrawn_seen:
                self._withdrawn_seen = withdrawn
                self._withdrawn_until = now + WITHDRAWN_HOLD
            if (
                now <= self._probes_until or now <= self._withdrawn_until
            ) and feedback.status_count <= DETAILED_FEEDBACK_MAX_PACKETS:
                lookup = self.history.lookup
                probe_lost = 0
                for seq, at in feedback.iter_arrivals():
                    entry = lookup(seq)
                    if entry is not None and entry[2] == WITHDRAWN:
                        # Numbered, then discarded by the pacer: it never left.
                        self.withdrawn_lost += 1
                        continue
                    if entry is not None and entry[2] != NO_CLUSTER:
                        # A probe packet (its cluster's or its primer's): what it says about
                        # the link is the probe's result.
                        if at is None:
                            probe_lost += 1
                        else:
                            seqs.append(seq)
                            arrivals.append(at + offset)
                        continue
                    reported += 1
                    if at is None:
                        if lost == 0:
                            leading, tail_at = reported - 1, len(seqs)
                        if not ends_lost:
                            runs += 1
                        ends_lost = True
                        lost += 1
                    else:
                        ends_lost = False
                        seqs.append(seq)
                        arrivals.append(at + offset)
                self.probe_packets_lost += probe_lost
            else:
                # The common case, in one pass with lost runs counted, not expanded.
                seqs, arrivals, lost = feedback.received(offset)
                reported = len(seqs) + lost
        except ValueError:
            return  # a malformed status list: nothing from it is trusted
        packets, size, first_send, last_send, first_arrival, last_arrival = (
            self.detector.on_feedback(self.history, seqs, arrivals)
        )
        if packets:
            # What was sent over the reported range, lost packets included: from the send
            # times of its first and last numbers (a leading lost run was sent before the
            # first packet that arrived), or, out of the history, the arrivals' own.
            count = feedback.status_count
            first = self.history.lookup(feedback.base_seq)
            last = self.history.lookup((feedback.base_seq + count - 1) & 0xFFFF)
            if first is not None and last is not None and last[0] >= first[0]:
                sent, first_send, last_send = count, first[0], last[0]
            else:
                sent = packets + lost
            self._recent.append(
                (packets, size, sent, first_send, last_send, first_arrival, last_arrival)
            )
            acked = self._acked
            acked.append((first_arrival, last_arrival, size))
            while acked and last_arrival - acked[0][1] > ACKED_WINDOW:
                acked.popleft()
        if reported:
            shape = (0, False, False)
            if lost:
                if leading < 0:  # the common path: every received packet was reported
                    found = _loss_shape(feedback.base_seq, feedback.status_count, seqs)
                    shape = found[:3]
                    leading = tail_at = found[3]
                else:
                    shape = (runs, leading == 0, ends_lost)
            opening = None
            if lost and self._onset is None and self._window.reported:
                # This feedback's first loss opens the window's onset (see _count_loss): its
                # share is what the feedback reports after that loss, with its packets' bytes
                # taken at the feedback's mean size (at most all of them).
                tail = arrivals[tail_at:]
                tail_bytes = min(size, size * len(tail) // packets) if packets and tail else 0
                opening = (
                    reported - leading - 1,
                    lost - 1,
                    len(tail) if tail_bytes else 0,
                    tail_bytes,
                    min(tail, default=0) / 1e6,
                    max(tail, default=0) / 1e6,
                    (shape[0], False, shape[2]),
                )
            self._count_loss(
                (reported, lost, packets, size, first_arrival, last_arrival, shape), now, opening
            )
        self._rate_control(self.detector.state, now)

    def on_probe_sent(self, *, now: float) -> None:
        """Probe packets went out (recorded in the history under a cluster id, or
        :data:`PRIMER` for a primer): until :data:`PROBE_LOSS_HOLD` after the last, feedback
        tells them apart, and their losses are the probe's result, not the media's loss;
        until :data:`PROBE_DELAY_HOLD` + RTT after the last, a delay overuse is the probe's."""
        self._probes_until = now + PROBE_LOSS_HOLD
        self._probe_sent_at = now

    def on_probe_result(self, bps: float, *, now: float) -> None:
        """A probe cluster got ``bps`` through: the link takes at least that."""
        self.probe_results += 1
        if bps > self.target_bps():
            # The link took more than it was thought to: whatever congestion was measured
            # before is not where the link is now (the pacer stops keeping to the estimate).
            self.congested_at = -1e9
        if bps > self._delay_bps:
            self._delay_bps = min(bps, self.max_bps)
            self._capacity = None
        if self._loss_bps is not None and bps > self._loss_bps:
            self._loss_bps = bps

    # -- outputs ------------------------------------------------------------------------------

    @property
    def acked_bps(self) -> float | None:
        """The acknowledged bitrate: what got through lately (None before enough feedback)."""
        acked = self._acked
        if not acked:
            return None
        span = acked[-1][1] - acked[0][0]
        if span < ACKED_WINDOW / 5:
            span = ACKED_WINDOW / 5  # one short feedback says little about a rate
        return sum(entry[2] for entry in acked) * 8 / span

    @property
    def state(self) -> int:
        """The delay detector's latest state (0 normal, 1 overuse, 2 underuse)."""
        return self._state

    def target_bps(self) -> float:
        """The estimate: what the subscriber's transport may carry now (bps)."""
        if not self.twcc_seen and self.remb_bps is not None:
            rate = self.remb_bps
        else:
            rate = self._delay_bps
        if self._loss_bps is not None and self._loss_bps < rate:
            rate = self._loss_bps
        return max(self.min_bps, min(rate, self.max_bps))

    def sent_bps(self, now: float) -> float:
        """What the server sent on this transport lately (bps), from the send history."""
        sent = self._sent
        sent.append((now, self.history.bytes))
        while len(sent) > 2 and now - sent[1][0] >= 1.0:
            sent.popleft()
        span = now - sent[0][0]
        return (sent[-1][1] - sent[0][1]) * 8 / span if span > 0 else 0.0

    def in_alr(self, now: float) -> bool:
        """Application-limited: sending well below the estimate, so it is untested."""
        return self.sent_bps(now) < ALR_SHARE * self.target_bps()

    def probe_bps(self, cluster: int) -> float | None:
        """The bitrate probe ``cluster`` got through, once enough of it was acknowledged."""
        packets, size, first_size, _, _, _, a0, a1 = self.detector.cluster(cluster)
        if packets < PROBE_MIN_PACKETS:
            return None
        # The bottleneck spaces the train out: its receive rate is what the link took (the
        # first packet's bytes arrived before the measured interval began).
        receive = (size - first_size) * 8 / max(a1 - a0, MIN_ARRIVAL_SPAN)
        # The send side bounds it through the caller's cap at the rate the cluster aimed at;
        # the send rate of the acknowledged packets of a spread train would read low by the
        # loss share (a packet lost inside the train shortens the bytes, not the span).
        return receive

    # -- control ------------------------------------------------------------------------------

    def _rate_control(self, signal: int, now: float) -> None:
        """AIMD (§6) driven by the detector's signal."""
        last = self._last_update
        dt = 0.0 if last is None else min(max(now - last, 0.0), 1.0)
        self._last_update = now
        self._state = signal
        acked = self.acked_bps
        rate = self._delay_bps
        if signal == OVERUSE and now - self._probe_sent_at <= PROBE_DELAY_HOLD + self.rtt:
            self.overuses += 1
            self.probe_overuses += 1  # the probe's own queue: its result speaks for it
        elif signal == OVERUSE:
            self.overuses += 1
            self.congested_at = now
            latest = self.latest_rates()
            collapse = (
                latest is not None
                and latest[0] < COLLAPSE_SHARE * latest[1]
                and latest[2] >= COLLAPSE_LOSS
            )
            due = now - self._last_decrease >= max(MIN_DECREASE_INTERVAL, self.rtt)
            if due or (collapse and not self._collapsed):
                # A collapse is read even within the interval after a decrease that was not
                # one: it measures the link, so the losses of what was sent before that
                # decrease cannot count twice in it. At a cap the newest arrivals of the first
                # overuse may still hold what the tbf's bucket let through at line rate, read
                # over half the sent rate, and step to half the estimate (the middle layer).
                new = rate
                if due:
                    base = acked if acked is not None else rate
                    new = max(BETA * base, MAX_DECREASE * rate)
                if collapse:
                    assert latest is not None
                    # The link carries a fraction of what is sent: its full queue spaced the
                    # newest arrivals at its capacity, which bounds the decrease better than
                    # the acknowledged rate's half second and MAX_DECREASE do.
                    self.collapses += 1
                    new = min(new, BETA * latest[0])
                if new < rate:
                    rate = new
                    self.decreases += 1
                self._last_decrease = now
                self._collapsed = collapse
                if acked is not None:
                    cap = self._capacity
                    self._capacity = (
                        acked
                        if cap is None
                        else (1 - CAPACITY_WEIGHT) * cap + CAPACITY_WEIGHT * acked
                    )
        elif signal == UNDERUSE:
            pass  # hold: the queue is draining, let it
        else:
            capacity = self._capacity
            if capacity is not None and acked is not None and acked > CAPACITY_MARGIN * capacity:
                capacity = self._capacity = None
            if capacity is not None and rate >= capacity / CAPACITY_MARGIN:
                response = self.rtt + RESPONSE_EXTRA
                rate += max(MIN_ADDITIVE, ADDITIVE_PACKET_BITS / response) * dt
            else:
                rate *= 1.0 + MULTIPLICATIVE_GROWTH * dt
            if acked is not None:
                rate = min(rate, max(self._delay_bps, ACKED_CAP_FACTOR * acked + ACKED_CAP_EXTRA))
        self._delay_bps = max(self.min_bps, min(rate, self.max_bps))

    def _count_loss(
        self,
        share: tuple[int, int, int, int, float, float, tuple[int, bool, bool]],
        now: float,
        opening: tuple[int, int, int, int, float, float, tuple[int, bool, bool]] | None,
    ) -> None:
        """Add one feedback's ``share`` (reported, lost, then acknowledged packets, bytes,
        first and last arrival, its runs of losses) to the loss window; close it early when
        its loss, or the loss since its onset, is significantly above :data:`LOSS_HIGH`, else
        when it is a second or 200 packets long. ``opening``: the share that opens the
        onset, if this feedback brings the window's first loss."""
        window = self._window
        if window.reported == 0:
            self._loss_window_at = now
        window.add(*share)
        onset = self._onset
        if onset is not None:
            onset.add(*share)
        elif opening is not None:
            # The first feedback with a loss after the window's first feedback: what follows
            # is read on its own too, so a cap that starts mid-window is not diluted by the
            # loss-free packets before it (the real-client test's 400 kbit/s cap first read
            # as 20 % loss, 0.4 s in). It starts after the loss that opened it (a window that
            # begins at a loss would read high under random loss), and it closes the window
            # only for severe loss: moderate loss is the whole window's to judge, since a
            # second test per window doubled the false steps under random loss.
            onset = self._onset = _LossWindow()
            onset.add(*opening)
        if (
            onset is not None
            and onset.significant()
            and onset.fraction() >= LOSS_SEVERE
            and onset.runs >= LOSS_EARLY_RUNS
        ):
            self._loss_step(onset.fraction(), now, onset)
        elif window.significant() or (
            window.reported >= LOSS_MIN_PACKETS
            and (
                window.reported >= LOSS_WINDOW_PACKETS
                or now - self._loss_window_at >= LOSS_WINDOW_S
            )
        ):
            self._loss_step(window.fraction(), now, window)
        else:
            return
        self._window = _LossWindow()
        self._onset = None

    def _got_through(
        self, fraction: float, window: _LossWindow | None
    ) -> tuple[float | None, bool]:
        """What got through lately (bps): the acknowledged rate, or, in a window that lost
        :data:`LOSS_SEVERE` or more, the rate its own packets arrived at when that is lower;
        and whether it is that delivered rate."""
        acked = self.acked_bps
        if fraction >= LOSS_SEVERE and window is not None:
            delivered = window.delivered_bps(fraction)
            if delivered is not None and (acked is None or delivered < acked):
                return delivered, True
        return acked, False

    def latest_rates(self) -> tuple[float, float, float] | None:
        """(delivered bps, sent bps, share lost) of the latest feedbacks that together hold
        :data:`DELIVERED_MIN_PACKETS` arrivals over :data:`DELIVERED_MIN_SPAN` (None if the
        kept ones do not, or a gap of over that span parts them): the rate they arrived at,
        and the rate the ranges they report, lost packets included (at the same mean size),
        were sent at. With a queue growing, a full
        bottleneck spaced the arrivals, so the delivered rate is its capacity (see
        :data:`COLLAPSE_SHARE`): at the real-client test's 400 kbit/s cap, the last feedback's
        four arrivals said 410 kbit/s where the acknowledged rate said 1.2 Mbit/s."""
        packets = size = sent = 0
        first = last = first_sent = last_sent = span = 0.0
        for count, nbytes, reported, send0, send1, arrival0, arrival1 in reversed(self._recent):
            if packets == 0:
                first, last, first_sent, last_sent = arrival0, arrival1, send0, send1
            else:
                # A gap in the arrivals (an outage, a radio fade) is no link time: read as
                # such, a 100-200 ms fade made a collapse of a link that carried three
                # quarters of the rate. A full bottleneck spaces its arrivals evenly, so a gap
                # is one of over GAP_SPACINGS times the spacing of those after it (a low cap
                # spaces them widely: 80 ms at 100 kbit/s), or of GAP_ALONE after one arrival.
                spacing = span / (packets - 1) if packets > 1 else 0.0
                gap = max(DELIVERED_MIN_SPAN, GAP_SPACINGS * spacing) if spacing else GAP_ALONE
                if first - arrival1 > gap:
                    return None
                first, first_sent = min(first, arrival0), min(first_sent, send0)
                last, last_sent = max(last, arrival1), max(last_sent, send1)
            packets += count
            size += nbytes
            sent += reported
            span = last - first
            if packets >= DELIVERED_MIN_PACKETS and span >= DELIVERED_MIN_SPAN:
                # n packets span n - 1 intervals: the first one's bytes came before it.
                mean = size / packets
                delivered = (packets - 1) * mean * 8 / span
                sent_span = max(last_sent - first_sent, MIN_ARRIVAL_SPAN)
                return delivered, (sent - 1) * mean * 8 / sent_span, max(0, sent - packets) / sent
        return None

    def _loss_step(self, fraction: float, now: float, window: _LossWindow | None = None) -> None:
        """The loss-based bound (§7), from a closed loss ``window`` (None: a receiver
        report's fraction, with no arrivals to read)."""
        self.loss = fraction
        if fraction > LOSS_HIGH:
            self.congested_at = now
        through, measured = self._got_through(fraction, window)
        if now - self._loss_at < LOSS_INTERVAL + self.rtt and fraction > LOSS_HIGH:
            # Within the hold only a severe window moves the bound, and only down to what got
            # through: the hold keeps the losses of packets sent before a decrease from
            # counting twice, and what got through cannot overshoot that way (waiting the
            # hold out at a 400 kbit/s cap kept a 2 Mbit/s bound for 0.3 s of 86 % loss).
            bound = self.target_bps() if self._loss_bps is None else self._loss_bps
            if fraction >= LOSS_SEVERE and through is not None and through < bound:
                self._loss_at = now
                self._loss_bps = max(self.min_bps, through)
            return
        dt = min(max(now - self._loss_at, 0.0), 1.0)
        self._loss_at = now
        current = self._loss_bps
        if fraction > LOSS_HIGH:
            base = self.target_bps() if current is None else current
            bound = base * (1.0 - 0.5 * fraction)
            if through is not None and through < bound:
                # What got through bounds the link better than the old estimate does: a
                # drop-tail bottleneck with a short queue (a policer) shows loss, not delay,
                # and halving steps of half the loss fraction took 3.5 s from 2.5 Mbit/s to a
                # 400 kbit/s cap in the real-client test. At most MAX_DECREASE per step (the
                # acknowledged rate of a few feedbacks is noisy).
                bound = through if fraction >= LOSS_SEVERE else max(through, MAX_DECREASE * base)
            elif measured and through is not None:
                # A full bottleneck's delivered rate is the link: halving below it counts the
                # losses of packets sent before the last decrease (a delay overuse that fell to
                # that rate) a second time.
                bound = min(base, through)
            self._loss_bps = max(self.min_bps, bound)
        elif fraction < LOSS_LOW and current is not None:
            grown = current * (1.0 + LOSS_GROWTH * dt) + ACKED_CAP_EXTRA * dt
            acked = self.acked_bps
            if acked is not None:
                # As the delay-based growth: no further than what got through can vouch for.
                # Paused below the lowest layer (audio only), the bound otherwise grew 8 % a
                # second past the link until the layer resumed into it and was shed again;
                # only a probe (or media that gets through) raises it there.
                grown = min(grown, max(current, ACKED_CAP_FACTOR * acked + ACKED_CAP_EXTRA))
            # Far above the delay-based estimate the bound no longer bounds anything.
            self._loss_bps = None if grown > 2 * self._delay_bps else grown


def _loss_shape(base_seq: int, count: int, seqs: array[int]) -> tuple[int, bool, bool, int]:
    """A feedback's runs of lost packets, from its received sequence numbers (in order from
    ``base_seq``, ``count`` reported): how many, whether the first packet was lost, whether
    the last was, and how many packets arrived before the first loss."""
    if not seqs:
        return (1, True, True, 0) if count else (0, False, False, 0)
    runs = 0
    leading = -1
    expected = base_seq
    for i, seq in enumerate(seqs):
        if seq != expected:
            runs += 1
            if leading < 0:
                leading = i
        expected = (seq + 1) & 0xFFFF
    ends_lost = expected != (base_seq + count) & 0xFFFF
    if leading < 0:
        leading = len(seqs)
    return runs + ends_lost, seqs[0] != base_seq, ends_lost, leading
