"""A deterministic network lab for bandwidth adaptation (fake clock, no sockets).

The pieces, small on purpose so other tests (the allocator's) can drive them too:

* :class:`Link`: a bottleneck: capacity (bps, any function of time: steps, ramps), a FIFO queue
  with a byte limit (tail drop), propagation delay, random loss from a seeded RNG;
* :class:`Receiver`: the subscriber's side: records arrivals with the server's own
  :class:`~sfu.core.twcc_recorder.TwccRecorder` and answers with real transport-wide CC
  feedback packets (``sfu.packet.twcc``) every ``interval``;
* :class:`Sender`: the server's side of one subscriber transport: the REAL send history,
  delay detector, :class:`~sfu.core.estimator.BandwidthEstimator` and
  :class:`~sfu.core.prober.Prober`; it offers simulcast layer rates (default 150 / 490 / 1480
  kbit/s as 30 fps frames sent as bursts, as an SFU forwards them) plus a 40 kbit/s audio
  stream, and the REAL :class:`~sfu.core.allocator.Allocator` picks the layer through
  :class:`AllocatorAdapter` (the budget and probe target computed as ``Peer`` does); a target
  is forwarded from the next frame (the lab's keyframes come at once);
* :func:`run`: the loop, 1 ms ticks for ``seconds``; returns a trace of :class:`Sample`
  (t, estimate, queue delay, sent bps, layer) every 100 ms per sender.

Several senders may share one link (fairness), and a competing constant-rate flow can be added.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core_parts import OPUS, VP8

from sfu.core.allocator import Allocation, Allocator
from sfu.core.estimator import PRIMER, BandwidthEstimator
from sfu.core.kernels import Kernels
from sfu.core.peer import BUDGET_HEADROOM, allocation_budget, allocation_due, probe_target
from sfu.core.prober import PADDING_SIZE, Prober, probe_step
from sfu.core.publication import Publication
from sfu.core.subscription import Subscription
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.twcc import TransportFeedback

__all__ = [
    "AUDIO_BPS",
    "AUDIO_INTERVAL",
    "LAYERS",
    "OVERHEAD",
    "PAUSED",
    "AllocatorAdapter",
    "Link",
    "Receiver",
    "Sample",
    "Sender",
    "ramp",
    "run",
    "steps",
]

#: Simulcast layer bitrates (bps) of the issue's publisher.
LAYERS = (150_000, 490_000, 1_480_000)
MTU_PAYLOAD = 1200
#: Per-packet bytes on the wire besides the RTP packet (IPv4 + UDP + SRTP tag).
OVERHEAD = 20 + 8 + 16
TICK = 0.001
FPS = 30
#: The subscriber's audio (Opus at 50 packets per second).
AUDIO_BPS = 40_000
AUDIO_INTERVAL = 0.02
PAUSED = -1
#: An uncapped link in :func:`report`.
HIGH_BPS = 2_500_000
#: The publication's meters are fed in lots of this many seconds of bytes.
METER_STEP = 0.1


def steps(*points: tuple[float, float]) -> Callable[[float], float]:
    """Capacity from (start time, bps) steps."""

    def capacity(t: float) -> float:
        value = points[0][1]
        for start, bps in points:
            if t >= start:
                value = bps
        return value

    return capacity


def ramp(t0: float, t1: float, bps0: float, bps1: float) -> Callable[[float], float]:
    """Capacity ramping linearly from ``bps0`` at ``t0`` to ``bps1`` at ``t1``."""

    def capacity(t: float) -> float:
        if t <= t0:
            return bps0
        if t >= t1:
            return bps1
        return bps0 + (bps1 - bps0) * (t - t0) / (t1 - t0)

    return capacity


@dataclass
class Link:
    """A bottleneck: FIFO queue of at most ``queue_bytes``, served at ``capacity(t)``."""

    capacity: Callable[[float], float]
    queue_bytes: int = 30_000
    delay: float = 0.025
    loss: float = 0.0
    seed: int = 1
    #: A token bucket's depth (bytes, as ``tc tbf`` burst): while the queue is empty, this
    #: much passes at line rate before the capacity applies (0: none).
    burst_bytes: int = 0
    _busy_until: float = 0.0
    _tokens: float = 0.0
    _token_at: float = 0.0
    _rng: random.Random = field(init=False)
    dropped: int = 0
    lost: int = 0
    carried: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def queue_delay(self, t: float) -> float:
        """How long a packet entering now waits before it is served."""
        return max(0.0, self._busy_until - t)

    def send(self, size: int, t: float) -> float | None:
        """A packet of ``size`` bytes enters at ``t``: its arrival time, or None if lost."""
        rate = self.capacity(t)
        if self.burst_bytes and self._busy_until <= t:
            since = t - max(self._token_at, self._busy_until)
            self._tokens = min(self.burst_bytes, self._tokens + since * rate / 8)
            self._token_at = t
            if self._tokens >= size:
                self._tokens -= size
                return self._deliver(t)
        wait = self.queue_delay(t)
        if wait * rate / 8 + size > self.queue_bytes:
            self.dropped += 1  # (the bucket keeps its tokens: a policer without a queue)
            return None
        self._tokens = 0.0  # the queue is served at the rate from here
        self._busy_until = max(t, self._busy_until) + size * 8 / rate
        return self._deliver(self._busy_until)

    def _deliver(self, served: float) -> float | None:
        if self.loss and self._rng.random() < self.loss:
            self.lost += 1
            return None
        self.carried += 1
        return served + self.delay


class Receiver:
    """The subscriber: arrivals in, transport-wide CC feedback out (real packets)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.recorder = TwccRecorder(0x5EED, interval=interval)

    def on_packet(self, seq: int, at: float) -> None:
        self.recorder.on_packet(seq, 0x1234, at)

    def poll(self, now: float) -> list[bytes]:
        return self.recorder.poll(now)


@dataclass
class Sample:
    t: float
    estimate: float
    queue_delay: float
    sent_bps: float
    layer: int


class AllocatorAdapter:
    """The real :class:`Allocator` over one simulcast video and one audio subscription whose
    publications are metered at the lab's layer rates; budget and probe target as ``Peer``."""

    def __init__(self, kernels: Kernels, layers: Sequence[float]) -> None:
        rids = ("q", "h", "f")[: len(layers)]
        video = Publication("v", "pub", "video", "cam", "0", VP8, {}, rids, kernels=kernels)
        audio = Publication("a", "pub", "audio", "mic", "1", OPUS, {}, kernels=kernels)
        for layer in range(len(layers)):
            video.add_stream(0x100 + layer, layer)
        audio.add_stream(0x200, 0)
        self.rates = {video: tuple(layers), audio: (float(AUDIO_BPS),)}
        self.video = _subscription(video, 0x9000)
        self.audio = _subscription(audio, 0x9001)
        self.allocator = Allocator()
        self.last: Allocation | None = None
        self._metered: float | None = None

    def _meter(self, now: float) -> None:
        """The publisher kept sending every layer at its rate up to ``now`` (in 100 ms lots;
        it was sending for a second before the subscriber came)."""
        if self._metered is None:
            self._metered = now - 1.0
        while self._metered + METER_STEP <= now + 1e-9:
            self._metered += METER_STEP
            for pub, rates in self.rates.items():
                for layer, bps in enumerate(rates):
                    stream = pub.layers[layer]
                    stream.meter.add(int(bps * METER_STEP / 8), self._metered)
                    stream.last_packet_at = self._metered

    def update(self, estimate: float, current: int, now: float) -> Allocation:
        """One allocation on ``estimate`` while ``current`` (a layer, or PAUSED) is sent."""
        self._meter(now)
        spend = AUDIO_BPS + (self.rates[self.video.publication][current] if current >= 0 else 0)
        budget = allocation_budget(estimate, spend)
        self.last = self.allocator.update([self.video, self.audio], budget_bps=budget, now=now)
        return self.last

    def layer(self) -> int:
        """The spatial layer the last allocation aims the video at (PAUSED: none)."""
        assert self.last is not None
        spatial = self.last.targets[self.video].spatial
        return PAUSED if spatial is None else spatial

    def wanted(self) -> float:
        """What everything at its top needs, with the budget's headroom."""
        return 0.0 if self.last is None else self.last.wanted_bps / BUDGET_HEADROOM

    def desired(self) -> float:
        """The prober's target: what the next upgrade needs, with the budget's headroom."""
        return 0.0 if self.last is None else probe_target(self.last)


def _subscription(pub: Publication, ssrc: int) -> Subscription:
    return Subscription(
        f"s{ssrc}",
        pub,
        "sub",
        pub.mid,
        out_ssrc=ssrc,
        payload_type=pub.codec.payload_type,
        extensions={},
        kernels=pub.kernels,
    )


class Sender:
    """The server's side of one subscriber transport, with the real estimator, prober and
    allocator."""

    def __init__(
        self,
        kernels: Kernels,
        *,
        layers: Sequence[float] = LAYERS,
        probing: bool = True,
        start: float = 0.0,
    ) -> None:
        self.history = kernels.SendHistory()
        self.estimator = BandwidthEstimator(self.history, kernels.DelayDetector())
        self.prober = Prober()
        self.adapter = AllocatorAdapter(kernels, layers)
        self.layers = tuple(layers)
        self.probing = probing
        self.layer = 0
        self.start = start
        self._next_frame = start
        self._next_audio = start
        self._last_allocation = -1e9
        self._allocated_on: float | None = None
        self.receiver = Receiver()
        self.layer_switches: list[tuple[float, int]] = []
        self.clusters: list[Any] = []
        #: Probe packets still to send: (when, size, cluster id).
        self.probe_queue: deque[tuple[float, int, int]] = deque()

    def desired(self) -> float:
        """What the next upgrade needs in total (0 when nothing more is wanted)."""
        return self.adapter.desired()

    def probe(self, now: float) -> Any:
        """One probing step as ``Peer._probe`` takes it: a success ends the congestion holds
        and the allocator acts on it at once."""
        succeeded = self.prober.succeeded
        cluster = probe_step(
            self.prober,
            self.estimator,
            desired_bps=self.adapter.desired(),
            now=now,
            wanted_bps=self.adapter.wanted(),
            reach=0 if self.adapter.last is None else self.adapter.last.reach,
            paused=self.layer == PAUSED,
        )
        if self.prober.succeeded > succeeded:
            self.adapter.allocator.end_congestion_holds()
            self._last_allocation = -1e9
        return cluster

    def choose(self, now: float) -> None:
        """Every allocation interval: the real allocator's target becomes the layer sent."""
        estimate = self.estimator.target_bps()
        if not allocation_due(now + 1e-9, self._last_allocation, estimate, self._allocated_on):
            return
        self._last_allocation = now
        self._allocated_on = estimate
        allocation = self.adapter.update(estimate, self.layer, now)
        if allocation.changes or allocation.resumed:
            self.prober.on_target_change(now=now)
        new = self.adapter.layer()
        if new != self.layer:
            self.layer = new
            self.layer_switches.append((now, new))

    def packets(self, now: float) -> list[tuple[int, int]]:
        """(size, cluster) of what to send at ``now``: audio, frames, then any probe cluster."""
        out: list[tuple[int, int]] = []
        if now + 1e-9 >= self._next_audio:
            self._next_audio += AUDIO_INTERVAL
            out.append((int(AUDIO_BPS * AUDIO_INTERVAL / 8), -1))
        if now + 1e-9 >= self._next_frame:
            self._next_frame += 1 / FPS
            frame = int(self.layers[self.layer] / FPS / 8) if self.layer >= 0 else 0
            while frame > 0:
                size = min(frame, MTU_PAYLOAD)
                out.append((size, -1))
                frame -= size
        return out


def run(
    link: Link,
    senders: Sequence[Sender],
    seconds: float,
    *,
    competing_bps: Callable[[float], float] | None = None,
) -> list[list[Sample]]:
    """Run ``seconds`` of the lab; per sender, a :class:`Sample` every 100 ms."""
    arrivals: deque[tuple[float, int, int]] = deque()  # (time, sender index, seq): FIFO order
    feedback: deque[tuple[float, int, bytes]] = deque()
    traces: list[list[Sample]] = [[] for _ in senders]
    competing_credit = 0.0
    ticks = round(seconds / TICK)
    for tick in range(ticks + 1):
        now = tick * TICK
        for index, sender in enumerate(senders):
            if now < sender.start:
                continue
            batch = sender.packets(now)
            if sender.probing and tick % 10 == 0:
                cluster = sender.probe(now)
                if cluster is not None:
                    # As Peer._send_probe: the primer and the cluster at once.
                    sender.clusters.append(cluster)
                    queue = sender.probe_queue
                    queue.extend((now, PADDING_SIZE + 12, PRIMER) for _ in range(cluster.primer))
                    queue.extend(
                        (now, PADDING_SIZE + 12, cluster.id) for _ in range(cluster.packets)
                    )
            probes = sender.probe_queue
            while probes and probes[0][0] <= now + 1e-9:
                batch.append(probes.popleft()[1:])
                sender.estimator.on_probe_sent(now=now)
            for size, cluster_id in batch:
                wire = size + OVERHEAD
                seq = sender.history.record(wire, now, cluster_id)
                at = link.send(wire, now)
                if at is not None:
                    arrivals.append((at, index, seq))
            sender.choose(now)
        if competing_bps is not None:
            competing_credit += competing_bps(now) * TICK / 8
            while competing_credit >= MTU_PAYLOAD:
                competing_credit -= MTU_PAYLOAD
                link.send(MTU_PAYLOAD + OVERHEAD, now)
        while arrivals and arrivals[0][0] <= now:
            at, index, seq = arrivals.popleft()
            senders[index].receiver.on_packet(seq, at)
        for index, sender in enumerate(senders):
            for packet in sender.receiver.poll(now):
                feedback.append((now + link.delay, index, packet))
        while feedback and feedback[0][0] <= now:
            _, index, packet = feedback.popleft()
            senders[index].estimator.on_feedback(TransportFeedback.parse(packet), now=now)
        if tick % 100 == 0:
            for index, sender in enumerate(senders):
                if now < sender.start:
                    continue
                traces[index].append(
                    Sample(
                        now,
                        sender.estimator.target_bps(),
                        link.queue_delay(now),
                        sender.estimator.sent_bps(now),
                        sender.layer,
                    )
                )
    return traces


def _first(trace: list[Sample], since: float, cond: Callable[[Sample], bool]) -> float:
    return next((s.t for s in trace if s.t >= since and cond(s)), float("nan"))


def report() -> None:  # pragma: no cover - a tool for bench/RESULTS.md, not a test
    """Print the lab's headline figures (``.venv/bin/python tests/unit/netsim.py``)."""
    from sfu.core.kernels import default_kernels

    k = default_kernels()
    first = _first
    s = Sender(k)
    link = Link(steps((0, 2_500_000), (20, 400_000), (40, 2_500_000)))
    (tr,) = run(link, [s], 60)
    print(
        "shed: estimate<cap after",
        round(first(tr, 20, lambda x: x.estimate < 400_000) - 20, 1),
        "s; low layer after",
        round(first(tr, 20, lambda x: x.layer == 0) - 20, 1),
        "s",
    )
    print(
        "queue delay peak after the step",
        round(max(x.queue_delay for x in tr if 20 <= x.t < 40) * 1000),
        "ms; while capped after 22 s",
        round(max(x.queue_delay for x in tr if 22 <= x.t < 40) * 1000),
        "ms",
    )
    print(
        "cap removed: top after",
        round(first(tr, 40, lambda x: x.layer == 2) - 40, 1),
        "s; switches",
        [(round(t, 1), layer) for t, layer in s.layer_switches],
    )
    print("probes started/succeeded/failed", s.prober.started, s.prober.succeeded, s.prober.failed)
    s = Sender(k)
    (tr,) = run(Link(steps((0, 900_000))), [s], 60)
    mid = [x for x in tr if x.t >= 3]
    print(
        "900k: middle layer share",
        round(sum(1 for x in mid if x.layer == 1) / len(mid), 3),
        "switches",
        len(s.layer_switches),
        "probes",
        s.prober.started,
    )
    for cap, queue in ((400_000, 2_500), (900_000, 5_600)):
        s = Sender(k)
        (tr,) = run(Link(steps((0, cap)), queue_bytes=queue, burst_bytes=4_000), [s], 30)
        late = [x for x in tr if x.t >= 3]
        print(
            f"tbf {cap // 1000}k (4 kB burst, 50 ms queue): layer shares",
            [round(sum(1 for x in late if x.layer == i) / len(late), 2) for i in range(3)],
            "switches",
            [(round(t, 1), layer) for t, layer in s.layer_switches],
            "probes started/succeeded",
            s.prober.started,
            s.prober.succeeded,
        )
    s = Sender(k)
    link = Link(steps((0, HIGH_BPS), (10, 100_000), (25, HIGH_BPS)))
    (tr,) = run(link, [s], 40)
    print(
        "paused then uncapped: paused after",
        round(first(tr, 10, lambda x: x.layer == PAUSED) - 10, 1),
        "s; top after",
        round(first(tr, 25, lambda x: x.layer == 2) - 25, 1),
        "s; switches",
        [(round(t, 1), layer) for t, layer in s.layer_switches],
    )
    s = Sender(k)
    link = Link(steps((0, 5_000_000)), loss=0.05, seed=7)
    (tr,) = run(link, [s], 40)
    print(
        "5% loss: min estimate after 5 s",
        round(min(x.estimate for x in tr if x.t >= 5) / 1e3),
        "kbit/s, layer",
        tr[-1].layer,
    )
    s = Sender(k)
    (tr,) = run(Link(steps((0, 120_000))), [s], 20)
    print(
        "120k cap: estimate below the low layer after",
        first(tr, 0, lambda x: x.estimate < 150_000),
        "s",
    )
    a, b = Sender(k), Sender(k, start=10.0)
    link = Link(steps((0, 3_000_000)), queue_bytes=60_000)
    ta, tb = run(link, [a, b], 60)
    sa = sum(x.sent_bps for x in ta if x.t >= 40) / len([x for x in ta if x.t >= 40])
    sb = sum(x.sent_bps for x in tb if x.t >= 40) / len([x for x in tb if x.t >= 40])
    print(
        "two flows on 3 Mbit/s, last 20 s: sent",
        round(sa / 1e3),
        "/",
        round(sb / 1e3),
        "kbit/s; switches in the last 20 s",
        len([t for t, _ in a.layer_switches if t >= 40]),
        "/",
        len([t for t, _ in b.layer_switches if t >= 40]),
    )


if __name__ == "__main__":  # pragma: no cover
    report()
