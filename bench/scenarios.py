"""The load scenarios and their measurement: ``fanout``, ``meeting``, ``audio``.

A scenario connects synthetic publishers and subscribers to a :class:`~bench.targets.Target`
(real signaling, ICE, DTLS-SRTP), hands their sockets and SRTP contexts to the load engine,
warms up, then measures one window per load step: what the receivers got (egress packets/s,
loss, duplicates, reordering, one-way latency percentiles), what the publishers sent, and the
server's CPU seconds over the same window. ``find-max`` raises a rate multiplier (frames per
second of every stream) step by step until loss exceeds the threshold, a step count or a total
time bound is reached, and reports the highest sustained egress packets/s.

* ``fanout``: one publisher (Opus + 3-layer VP8 simulcast), ``subscribers`` WHEP viewers;
* ``meeting``: ``participants`` each publishing audio+video and subscribing to every other;
* ``audio``: ``participants`` in an audio-only room, ``speakers`` of them publishing Opus,
  everyone subscribing to every speaker but themselves.

``rooms`` runs K such rooms at once (the same plan in each, its own room name), as many small
meetings load a server rather than one big one. A step counts as sustained only within the
loss limit, keeping up with the offered load, and with its p99 one-way latency under
``p99_bound_ms``: a server with a growing backlog can still deliver everything, late.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from bench._loadgen_py import KIND_AUDIO, KIND_VIDEO, StreamSpec, min_packet_size, percentile_ns
from bench.client import IMPLEMENTATION, Endpoint, PublishPlan, TcpRelay, loadgen
from bench.targets import Target, forwarding_quantiles, proc_cpu_seconds
from sfu.packet.extensions import MID_URI, RID_URI
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import SrtpProfile

__all__ = [
    "DELIVERY_LIMIT",
    "FEEDBACK_WARMUP_S",
    "LOSS_LIMIT",
    "MAX_ROOMS",
    "P99_BOUND_MS",
    "SCENARIOS",
    "WARMUP_S",
    "Plan",
    "RunResult",
    "ScenarioConfig",
    "StepResult",
    "run_scenario",
]

SCENARIOS = ("fanout", "meeting", "audio")
#: find-max stops once a step loses more than this fraction of the egress packets.
LOSS_LIMIT = 0.001
#: ... or once the server delivers less than this share of what the first step's fan-out
#: ratio (egress per packet sent) promises: it no longer keeps up and its queues grow.
DELIVERY_LIMIT = 0.9
#: A find-max step counts as sustained only while its p99 latency stays under this (ms).
P99_BOUND_MS = 50.0
#: Most rooms one run loads at once.
MAX_ROOMS = 200
#: Concurrent handshakes (the server bounds transports that have not proved ICE yet).
HANDSHAKE_CONCURRENCY = 16
#: Engine slice: Python handles control traffic and progress between slices.
SLICE_S = 0.2
#: Seconds of load before the first measured window.
WARMUP_S: Final = 2.0
#: The same when subscribers send transport-wide CC feedback: the server's send-side estimate
#: starts low and its probes lift it to the top layer in about 4-6 s on loopback (measured:
#: 3 subscribers at 1.8 -> 3.5 Mbit/s each between seconds 2 and 8), so a shorter warm-up
#: would measure the ramp, not the load.
FEEDBACK_WARMUP_S: Final = 6.0
#: Seconds between two transport-wide CC feedbacks of a synthetic subscriber (libwebrtc's
#: receivers send one every 50-250 ms, more often at higher rates).
FEEDBACK_INTERVAL_S: Final = 0.1
_FPS = 30


@dataclass(slots=True)
class ScenarioConfig:
    """Everything that shapes the load; the same config gives the same load on any target."""

    scenario: str = "fanout"
    subscribers: int = 50
    participants: int | None = None
    speakers: int = 3
    packet_size: int = 1200
    video_kbps: tuple[int, ...] = (150, 500, 2000)
    audio_packet_size: int = 120
    duration_s: float = 10.0
    warmup_s: float = WARMUP_S
    rate: float = 1.0
    find_max: bool = False
    max_steps: int = 8
    max_total_s: float = 600.0
    step_factor: float = 1.5
    srtp_profile: str = "SRTP_AEAD_AES_128_GCM"
    bind_host: str = "127.0.0.1"
    #: How subscribers reach the server: "udp", or "tcp" (ICE-TCP; publishers stay on UDP).
    transport: str = "udp"
    #: How many rooms of this scenario run at once (each its own copy of the plan).
    rooms: int = 1
    #: find-max: a step with a higher p99 latency (ms) is not sustained.
    p99_bound_ms: float = P99_BOUND_MS
    #: Subscribers offer transport-wide CC and send its feedback (as browsers do), so the
    #: server's send-side estimator and allocator run on real input.
    feedback: bool = True
    #: Measure one step at each of these rate multipliers, in order, whatever each step's
    #: loss or latency (empty: ``rate`` alone, or find-max's steps).
    rates: tuple[float, ...] = ()
    room: str = field(default_factory=lambda: "bench-" + secrets.token_hex(4))

    def room_names(self) -> list[str]:
        """The rooms of one run: ``room`` alone, or ``room-0`` .. ``room-(K-1)``."""
        if self.rooms == 1:
            return [self.room]
        return [f"{self.room}-{k}" for k in range(self.rooms)]

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}")
        if self.participants is None:
            self.participants = {"meeting": 6, "audio": 50}.get(self.scenario, 0)
        checks = [
            (1 <= self.subscribers <= 5000, "subscribers must be in [1, 5000]"),
            (0 <= self.participants <= 1000, "participants must be in [0, 1000]"),
            (1 <= self.speakers <= 64, "speakers must be in [1, 64]"),
            (200 <= self.packet_size <= 1400, "packet size must be in [200, 1400]"),
            (40 <= self.audio_packet_size <= 400, "audio packet size must be in [40, 400]"),
            (0.5 <= self.duration_s <= 3600, "duration must be in [0.5, 3600] s"),
            (0 <= self.warmup_s <= 600, "warmup must be in [0, 600] s"),
            (0.05 <= self.rate <= 100, "rate must be in [0.05, 100]"),
            (1 <= self.max_steps <= 50, "max steps must be in [1, 50]"),
            (1.05 <= self.step_factor <= 4, "step factor must be in [1.05, 4]"),
            (len(self.video_kbps) in (1, 2, 3), "1 to 3 video layers"),
            (self.transport in ("udp", "tcp"), "transport must be udp or tcp"),
            (1 <= self.rooms <= MAX_ROOMS, f"rooms must be in [1, {MAX_ROOMS}]"),
            (1.0 <= self.p99_bound_ms <= 10_000, "p99 bound must be in [1, 10000] ms"),
            (len(self.rates) <= self.max_steps, "more rates than max steps"),
            (all(0.05 <= r <= 100 for r in self.rates), "rates must be in [0.05, 100]"),
            (not (self.rates and self.find_max), "rates and find-max exclude each other"),
        ]
        if self.scenario == "meeting":
            checks.append((2 <= self.participants <= 40, "meeting needs 2..40 participants"))
        if self.scenario == "audio":
            checks.append((self.participants >= 2, "audio needs >= 2 participants"))
            checks.append((self.speakers <= self.participants, "more speakers than people"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def load_label(self) -> str:
        """What one unit of load is, for tables."""
        if self.scenario == "fanout":
            label = f"1 pub -> {self.subscribers} subs"
        elif self.scenario == "meeting":
            label = f"{self.participants} participants"
        else:
            label = f"{self.participants} participants, {self.speakers} speakers"
        return label if self.rooms == 1 else f"{self.rooms} rooms x {label}"


@dataclass(frozen=True, slots=True)
class Plan:
    """Who publishes and who subscribes to whom (identities)."""

    publishers: tuple[str, ...]
    subscriptions: tuple[tuple[str, str], ...]  # (subscriber identity, publisher identity)
    audio_only: bool


def make_plan(cfg: ScenarioConfig) -> Plan:
    """The publishers and subscriptions of a scenario."""
    n = cfg.participants or 0
    if cfg.scenario == "fanout":
        subs = tuple((f"viewer-{i}", "caster") for i in range(cfg.subscribers))
        return Plan(("caster",), subs, False)
    if cfg.scenario == "meeting":
        people = [f"p{i}" for i in range(n)]
        pairs = tuple((f"{s}-sees-{p}", p) for s in people for p in people if s != p)
        return Plan(tuple(people), pairs, False)
    speakers = [f"p{i}" for i in range(cfg.speakers)]
    people = [f"p{i}" for i in range(n)]
    pairs = tuple((f"{s}-hears-{p}", p) for s in people for p in speakers if s != p)
    return Plan(tuple(speakers), pairs, True)


def planned_pps(specs: list[StreamSpec], rate: float) -> float:
    """Packets per second these streams should send at ``rate`` (keyframes' extra packets
    spread over their interval): what the generator offers when it keeps up."""
    total = 0.0
    for spec in specs:
        per_frame = float(spec.packets_per_frame)
        if spec.kind == KIND_VIDEO and spec.keyframe_interval:
            per_frame += (spec.keyframe_packets - spec.packets_per_frame) / spec.keyframe_interval
        total += per_frame * rate * 1e9 / spec.frame_interval_ns
    return total


def layer_specs(cfg: ScenarioConfig, ep: Endpoint) -> list[StreamSpec]:
    """The streams a publisher endpoint sends, with the ids and types its answer settled."""
    plan = ep.publish
    assert plan is not None
    mid_id = ep.ext_ids.get(MID_URI, 0)
    rid_id = ep.ext_ids.get(RID_URI, 0)
    specs: list[StreamSpec] = []
    ssrcs = iter(ep.ssrcs)
    mid = 0
    if plan.audio:
        specs.append(
            StreamSpec(
                ssrc=next(ssrcs),
                payload_type=ep.payload_types.get("opus", 111),
                kind=KIND_AUDIO,
                packet_size=cfg.audio_packet_size,
                frame_interval_ns=20_000_000,
                keyframe_interval=0,
                timestamp_step=960,
                mid_id=mid_id,
                mid=str(mid).encode(),
                twcc_id=ep.twcc_id,
            )
        )
        mid += 1
    if plan.video:
        for layer, (rid, kbps) in enumerate(zip(plan.rids, cfg.video_kbps, strict=True)):
            frame_bytes = kbps * 1000 / 8 / _FPS
            base = StreamSpec(
                ssrc=0, payload_type=0, mid_id=mid_id, mid=str(mid).encode(), rid_id=rid_id,
                rid=rid.encode(), twcc_id=ep.twcc_id,
            )  # fmt: skip
            overhead = base.header_size()
            per_packet = cfg.packet_size - overhead
            ppf = max(1, math.ceil(frame_bytes / per_packet))
            size = max(
                min_packet_size(base), min(cfg.packet_size, overhead + math.ceil(frame_bytes / ppf))
            )
            specs.append(
                StreamSpec(
                    ssrc=next(ssrcs),
                    payload_type=ep.payload_types.get("vp8", 96),
                    kind=KIND_VIDEO,
                    packet_size=size,
                    packets_per_frame=ppf,
                    keyframe_packets=min(64, ppf * 4),
                    frame_interval_ns=1_000_000_000 // _FPS,
                    keyframe_interval=3 * _FPS,
                    timestamp_step=90_000 // _FPS,
                    mid_id=mid_id,
                    mid=str(mid).encode(),
                    rid_id=rid_id,
                    rid=rid.encode(),
                    layer=layer,
                    twcc_id=ep.twcc_id,
                )
            )
    return specs


@dataclass(slots=True)
class StepResult:
    """One measured window at one load (rate multiplier)."""

    rate: float
    window_s: float
    sent_pps: float
    egress_pps: float
    received_pps: float
    loss: float
    duplicates: int
    reordered: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_p999_ms: float | None
    server_cpu_s: float | None
    server_cpu_util: float | None
    server_cpu_s_per_million_packets: float | None
    generator_cpu_util: float | None
    srtp_errors: int
    late_frames: int
    send_errors: int
    #: egress per subscription (tells which simulcast layer the subscribers got)
    egress_pps_per_subscription: float = 0.0
    #: this step's egress/sent ratio over the first step's (1.0: the server keeps up)
    delivery: float = 1.0
    #: RTCP receiver reports the subscribers sent in the window (about one per second each)
    receiver_reports: int = 0
    #: transport-wide CC feedback packets the subscribers sent in the window
    transport_feedback: int = 0
    #: The p99 latency bound this step was judged by (ms; None: latency not judged)
    p99_bound_ms: float | None = None
    #: With subscribers on several server media ports (a room spread over workers): loss
    #: and latency of each port's subscribers, measured like the totals (``--spread``).
    by_server_port: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: The server's own forwarding-latency histogram in the window, per worker (p50/p99
    #: upper bucket edges in ms, and samples), when it exposes ``/metrics``.
    server_forwarding_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: With a target of several server processes (``--cluster``): each one's CPU seconds in
    #: the window, its share of a core, and its CPU seconds per million egress packets and
    #: per million packets the subscribers received (of the whole step's egress: each
    #: node's share of the cost of a packet; the two differ when packets are lost).
    server_cpu_by_node: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: ... and each one's node-link counters as rates over the window (``published_pps``,
    #: ``received_pps``, ``dropped_pps``, ``relay_out_pps``, ``relay_in_pps``,
    #: ``resent_pps``, ``links_lost_pps``), and its data plane's (``dataplane_fast_pps``:
    #: RTP the compiled forwarder forwarded itself, ``dataplane_slow_pps``: RTP it handed
    #: to Python, ``dataplane_relayed_pps``: relayed RTP it took from the pipe and forwarded,
    #: ``dataplane_relay_in_pps``: relayed RTP it read from the link socket and forwarded).
    link: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def sustained(self) -> bool:
        """Within the loss limit, keeping up with the offered load, and (when a bound is
        set) with its p99 latency within the bound."""
        return (
            self.loss <= LOSS_LIMIT
            and self.delivery >= DELIVERY_LIMIT
            and not self.over_latency_bound()
        )

    def over_latency_bound(self) -> bool:
        """Whether the p99 latency exceeded the bound (or could not be measured)."""
        if self.p99_bound_ms is None:
            return False
        return self.latency_p99_ms is None or self.latency_p99_ms > self.p99_bound_ms

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class RunResult:
    """A scenario on one target: the setup and every measured step."""

    target: str
    scenario: str
    load: str
    publishers: int
    subscriptions: int
    setup_s: float
    srtp_profile: str | None
    implementation: str
    steps: list[StepResult] = field(default_factory=list)
    stopped_by: str = ""
    rooms: int = 1
    p99_bound_ms: float | None = None
    #: Whether the subscribers sent transport-wide CC feedback (figures differ: see RESULTS.md)
    feedback: bool = False

    def best(self) -> StepResult | None:
        """The step with the highest egress among the sustained ones."""
        ok = [s for s in self.steps if s.sustained()]
        return max(ok, key=lambda s: s.egress_pps) if ok else None

    def as_dict(self, find_max: bool) -> dict[str, Any]:
        """The JSON object for this target (headline figures first, then the steps)."""
        head = self.best() if find_max else (self.steps[-1] if self.steps else None)
        out: dict[str, Any] = {"target": self.target, "scenario": self.scenario}
        if find_max:
            out["max_egress_pps"] = head.egress_pps if head else 0.0
        keys = (
            "egress_pps", "loss", "latency_p50_ms", "latency_p99_ms", "latency_p999_ms",
            "server_cpu_s_per_million_packets", "sent_pps", "received_pps", "server_cpu_util",
            "generator_cpu_util", "rate", "egress_pps_per_subscription", "delivery",
        )  # fmt: skip
        for key in keys:
            out[key] = getattr(head, key) if head else None
        out.update(
            load=self.load,
            publishers=self.publishers,
            subscriptions=self.subscriptions,
            setup_s=round(self.setup_s, 3),
            srtp_profile=self.srtp_profile,
            implementation=self.implementation,
            stopped_by=self.stopped_by,
            rooms=self.rooms,
            p99_bound_ms=self.p99_bound_ms,
            feedback=self.feedback,
            steps=[s.as_dict() for s in self.steps],
        )
        return out


Progress = Callable[[float, str], None]


class _Session:
    """The connected endpoints of one run and the engine that drives them."""

    def __init__(self, target: Target, cfg: ScenarioConfig) -> None:
        self.target = target
        self.cfg = cfg
        self.cert = Certificate.generate()
        self.profiles = [SrtpProfile(cfg.srtp_profile)]
        self.engine: Any = loadgen().Engine(20000)
        self.endpoints: list[Endpoint] = []
        self.by_index: dict[int, Endpoint] = {}
        self.senders: list[int] = []
        #: The streams each sender sends (planned_pps: what the generator should offer).
        self.sender_specs: list[StreamSpec] = []
        self.receivers: list[int] = []
        self.sessions: list[Any] = []
        self.connected: list[Endpoint] = []
        self.relay: TcpRelay | None = None

    async def setup(self, plan: Plan) -> None:
        """Publish, subscribe and connect everything in every room (bounded concurrency
        and time)."""
        keepalive = asyncio.ensure_future(self._keepalive())
        try:
            rooms = self.cfg.room_names()
            pubs: dict[tuple[str, str], Endpoint] = {}
            for room in rooms:
                for identity in plan.publishers:
                    publish = PublishPlan(audio=True, video=not plan.audio_only)
                    ep = self._endpoint(publish)
                    session = await self.target.publish(room, identity, ep.offer())
                    self.sessions.append(session)
                    assert session.answer_sdp is not None
                    ep.apply_remote(session.answer_sdp)
                    pubs[room, identity] = ep
            gate = asyncio.Semaphore(HANDSHAKE_CONCURRENCY)
            await asyncio.gather(*(self._connect(ep, gate) for ep in pubs.values()))
            start = time.monotonic_ns() + 50_000_000
            for ep in pubs.values():
                specs = layer_specs(self.cfg, ep)
                self.sender_specs += specs
                index = self.engine.add_sender(ep.sock, ep.srtp_out, specs, start)
                self.by_index[index] = ep
                self.senders.append(index)
            subs = await asyncio.gather(
                *(
                    self._subscribe(gate, room, who, pub, plan.audio_only)
                    for room in rooms
                    for who, pub in plan.subscriptions
                )
            )
            for ep in subs:
                sock = ep.sock
                if ep.transport == "tcp":
                    if self.relay is None:
                        self.relay = TcpRelay()
                    sock = self.relay.attach(ep)
                index = self.engine.add_receiver(sock, ep.srtp_in, ep.twcc_id, ep.rtx_pt)
                self.by_index[index] = ep
                self.receivers.append(index)
            if self.relay is not None:
                self.relay.start()
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    def _endpoint(self, publish: PublishPlan | None) -> Endpoint:
        transport = self.cfg.transport if publish is None else "udp"
        ep = Endpoint(
            self.cert,
            publish,
            self.cfg.bind_host,
            self.profiles,
            transport=transport,
            twcc=publish is not None or self.cfg.feedback,
        )
        self.endpoints.append(ep)
        return ep

    async def _connect(self, ep: Endpoint, gate: asyncio.Semaphore | None = None) -> None:
        if gate is None:
            await ep.connect()
        else:
            async with gate:
                await ep.connect()
        self.connected.append(ep)

    async def _subscribe(
        self, gate: asyncio.Semaphore, room: str, who: str, publisher: str, audio_only: bool
    ) -> Endpoint:
        async with gate:
            ep = self._endpoint(None)
            if self.target.server_offers:
                session = await self.target.subscribe(room, who, publisher, None)
                self.sessions.append(session)
                assert session.offer_sdp is not None
                await self.target.answer(session, ep.answer(session.offer_sdp))
            else:
                offer = ep.offer() if not audio_only else _audio_only(ep.offer())
                session = await self.target.subscribe(room, who, publisher, offer)
                self.sessions.append(session)
                assert session.answer_sdp is not None
                ep.apply_remote(session.answer_sdp)
            await self._connect(ep)
            return ep

    async def _keepalive(self) -> None:
        """Consent checks for endpoints already connected while others still handshake."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for ep in list(self.connected):
                ep.keep_alive(now)

    async def drive(self, seconds: float, progress: Callable[[float], None]) -> None:
        """Run the engine for ``seconds`` in slices, handling control traffic between them
        (transport-wide feedback meanwhile, while the engine runs: see :meth:`_feedback`)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            running = asyncio.ensure_future(asyncio.to_thread(self.engine.run, min(SLICE_S, left)))
            feedback = asyncio.ensure_future(self._feedback(running))
            await running
            await feedback
            for index, data in self.engine.control():
                ep = self.by_index.get(index)
                if ep is not None and ep.handle_control(data):
                    self.engine.request_keyframe(index)
            now = time.monotonic()
            self.report(now)
            for ep in self.endpoints:
                ep.keep_alive(now)
            progress(seconds - max(0.0, end - now))

    async def _feedback(self, running: asyncio.Future[Any]) -> None:
        """Transport-wide CC feedback from every subscriber that negotiated it, every
        FEEDBACK_INTERVAL_S while the engine runs (it records arrivals without the GIL and
        hands them over under a lock), so building feedback in Python never stops the
        engine's receive loop: a pause there would show as latency the server never added."""
        receivers = [(i, self.by_index[i]) for i in self.receivers if self.by_index[i].twcc_id]
        if not receivers:
            return
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(running), FEEDBACK_INTERVAL_S)
            now = time.monotonic()
            for index, ep in receivers:
                ep.send_transport_feedback(self.engine.take_arrivals(index), now)
            if running.done():
                return

    def report(self, now: float) -> None:
        """Receiver reports from every subscriber that is due one (RR_INTERVAL_S), so the
        server's egress loss figures are what the subscribers actually lost."""
        for index in self.receivers:
            ep = self.by_index[index]
            if ep.report_due(now):
                ep.send_receiver_report(self.engine.receiver_snapshot(index)["streams"], now)

    def server_ports(self) -> dict[int, str]:
        """Each receiver's server media port (the worker it is on), when they differ."""
        ports = {
            i: str(self.by_index[i].remote_addr[1])
            for i in self.receivers
            if self.by_index[i].remote_addr is not None
        }
        return ports if len(set(ports.values())) > 1 else {}

    def snapshot(self) -> dict[str, Any]:
        """Receiver and sender counters now."""
        return {
            "recv": {i: self.engine.receiver_snapshot(i) for i in self.receivers},
            "send": {i: self.engine.sender_counters(i) for i in self.senders},
            "reports": sum(self.by_index[i].reports_sent for i in self.receivers),
            "feedback": sum(self.by_index[i].feedback_sent for i in self.receivers),
        }

    async def close(self) -> None:
        """End every session on the target and close the sockets."""
        await asyncio.gather(*(self.target.close(s) for s in self.sessions))
        if self.relay is not None:
            self.relay.close()
        for ep in self.endpoints:
            ep.close()


def _audio_only(sdp: str) -> str:
    """A subscriber offer with its video section removed (audio rooms)."""
    head, *sections = sdp.split("m=")
    kept = [s for s in sections if s.startswith("audio")]
    return (head + "".join("m=" + s for s in kept)).replace(
        "a=group:BUNDLE 0 1", "a=group:BUNDLE 0"
    )


def _ticker(report: Progress, base: float, total: float, label: str) -> Callable[[float], None]:
    """A drive() progress callback: seconds into this phase -> overall fraction."""

    def tick(elapsed: float) -> None:
        report(min(1.0, (base + elapsed) / total), label)

    return tick


def _self_cpu() -> float | None:
    return proc_cpu_seconds(os.getpid())


def _receivers(
    before: dict[str, Any], after: dict[str, Any], only: set[int] | None
) -> tuple[int, int, int, int, int, list[int]]:
    """Expected, received, duplicate, reordered packets, SRTP errors and the latency
    histogram of the receivers (those in ``only``, when given) between two snapshots."""
    expected = received = dups = reordered = srtp_errors = 0
    hist = [0] * len(next(iter(after["recv"].values()))["hist"]) if after["recv"] else []
    for index, snap in after["recv"].items():
        if only is not None and index not in only:
            continue
        old = before["recv"].get(index)
        old_streams = {s[0]: s for s in old["streams"]} if old else {}
        for ssrc, unique, dup, reord, first, highest, _nbytes in snap["streams"]:
            prev = old_streams.get(ssrc)
            if prev is None:
                exp, got = highest - first + 1, unique
                d, r = dup, reord
            else:
                exp, got = highest - prev[5], unique - prev[1]
                d, r = dup - prev[2], reord - prev[3]
            expected += max(exp, got)
            received += got
            dups += d
            reordered += r
        old_hist = old["hist"] if old else [0] * len(hist)
        for k, (a, b) in enumerate(zip(snap["hist"], old_hist, strict=True)):
            hist[k] += a - b
        srtp_errors += snap["srtp_errors"] - (old["srtp_errors"] if old else 0)
    return expected, received, dups, reordered, srtp_errors, hist


def by_group(
    before: dict[str, Any], after: dict[str, Any], groups: dict[int, str]
) -> dict[str, dict[str, float | None]]:
    """Loss, p50 and p99 latency (ms) of each group of receivers (receiver -> label)."""
    out: dict[str, dict[str, float | None]] = {}
    for label in sorted(set(groups.values())):
        members = {i for i, g in groups.items() if g == label}
        expected, received, *_, hist = _receivers(before, after, members)
        p50, p99 = percentile_ns(hist, 0.5), percentile_ns(hist, 0.99)
        out[label] = {
            "subscribers": float(len(members)),
            "loss": round((expected - received) / expected, 6) if expected else None,
            "latency_p50_ms": None if p50 is None else round(p50 / 1e6, 4),
            "latency_p99_ms": None if p99 is None else round(p99 / 1e6, 4),
        }
    return out


def measure(
    before: dict[str, Any],
    after: dict[str, Any],
    window: float,
    rate: float,
    cpu: tuple[float | None, float | None],
    gen_cpu: tuple[float | None, float | None],
) -> StepResult:
    """One step's figures from two snapshots ``window`` seconds apart."""
    expected, received, dups, reordered, srtp_errors, hist = _receivers(before, after, None)
    sent = late = send_errors = 0
    for index, counters in after["send"].items():
        old_c = before["send"].get(index, {})
        sent += counters["packets"] - old_c.get("packets", 0)
        late += counters["late_frames"] - old_c.get("late_frames", 0)
        send_errors += counters["send_errors"] - old_c.get("send_errors", 0)
    lost = expected - received
    loss = lost / expected if expected else 1.0
    server_cpu = cpu[1] - cpu[0] if cpu[0] is not None and cpu[1] is not None else None
    gen = gen_cpu[1] - gen_cpu[0] if gen_cpu[0] is not None and gen_cpu[1] is not None else None

    def ms(q: float) -> float | None:
        value = percentile_ns(hist, q) if hist else None
        return None if value is None else round(value / 1e6, 4)

    return StepResult(
        rate=rate,
        window_s=round(window, 3),
        sent_pps=round(sent / window, 1),
        egress_pps=round(expected / window, 1),
        received_pps=round(received / window, 1),
        loss=round(loss, 6),
        duplicates=dups,
        reordered=reordered,
        latency_p50_ms=ms(0.5),
        latency_p99_ms=ms(0.99),
        latency_p999_ms=ms(0.999),
        server_cpu_s=None if server_cpu is None else round(server_cpu, 3),
        server_cpu_util=None if server_cpu is None else round(server_cpu / window, 3),
        server_cpu_s_per_million_packets=(
            round(server_cpu / (expected / 1e6), 3) if server_cpu is not None and expected else None
        ),
        generator_cpu_util=None if gen is None else round(gen / window, 3),
        srtp_errors=srtp_errors,
        late_frames=late,
        send_errors=send_errors,
        receiver_reports=after.get("reports", 0) - before.get("reports", 0),
        transport_feedback=after.get("feedback", 0) - before.get("feedback", 0),
    )


NodeCpu = dict[str, float | None]
LinkCounters = dict[str, dict[str, float | None]]


async def _node_readings(target: Target) -> tuple[NodeCpu | None, LinkCounters | None]:
    """Per-process CPU seconds and node-link counters, from a target of several server
    processes (``bench.cluster.ClusterArm``); None from any other."""
    cpu_by_node = getattr(target, "cpu_by_node", None)
    link_counters = getattr(target, "link_counters", None)
    cpu = await cpu_by_node() if callable(cpu_by_node) else None
    link = await link_counters() if callable(link_counters) else None
    return cpu, link


def _node_cpu(
    before: NodeCpu | None, after: NodeCpu | None, window: float, step: StepResult
) -> dict[str, dict[str, float | None]]:
    """Each process's CPU in the window: seconds, share of a core, and seconds per million
    egress packets and per million delivered (received) packets."""

    def per_million(used: float | None, pps: float) -> float | None:
        return round(used / (pps * window / 1e6), 3) if used is not None and pps else None

    out: dict[str, dict[str, float | None]] = {}
    for node, end in (after or {}).items():
        start = (before or {}).get(node)
        used = end - start if end is not None and start is not None else None
        out[node] = {
            "cpu_s": None if used is None else round(used, 3),
            "cpu_util": None if used is None else round(used / window, 3),
            "cpu_s_per_million_packets": per_million(used, step.egress_pps),
            "cpu_s_per_million_delivered": per_million(used, step.received_pps),
        }
    return out


def _link_rates(
    before: LinkCounters | None, after: LinkCounters | None, window: float
) -> dict[str, dict[str, float | None]]:
    """Each process's node-link counters as rates (per second) over the window."""
    out: dict[str, dict[str, float | None]] = {}
    for node, counters in (after or {}).items():
        old = (before or {}).get(node, {})
        rates: dict[str, float | None] = {}
        for key, end in counters.items():
            start = old.get(key)
            rates[f"{key}_pps"] = (
                round((end - start) / window, 1) if end is not None and start is not None else None
            )
        out[node] = rates
    return out


def step_rates(cfg: ScenarioConfig) -> list[float]:
    """The rate multipliers find-max tries (or the configured rates, or the single rate)."""
    if cfg.rates:
        return list(cfg.rates)
    if not cfg.find_max:
        return [cfg.rate]
    rates = [cfg.rate]
    while len(rates) < cfg.max_steps:
        rates.append(round(rates[-1] * cfg.step_factor, 3))
    return [r for r in rates if r <= 100]


async def run_scenario(
    target: Target, cfg: ScenarioConfig, progress: Progress | None = None
) -> RunResult:
    """Set the scenario up on a started target, measure every step, tear it down."""
    plan = make_plan(cfg)
    report: Progress = progress or (lambda fraction, label: None)
    rates = step_rates(cfg)
    # Each step: warmup then the window; the first step warms up fully, later ones briefly.
    later_warmup = min(cfg.warmup_s, 1.0)
    total = cfg.warmup_s + cfg.duration_s + (len(rates) - 1) * (later_warmup + cfg.duration_s)
    bound = cfg.p99_bound_ms if cfg.find_max else None
    result = RunResult(
        target=target.name,
        scenario=cfg.scenario,
        load=cfg.load_label(),
        publishers=len(plan.publishers) * cfg.rooms,
        subscriptions=len(plan.subscriptions) * cfg.rooms,
        setup_s=0.0,
        srtp_profile=None,
        implementation=IMPLEMENTATION,
        rooms=cfg.rooms,
        p99_bound_ms=bound,
        feedback=cfg.feedback,
    )
    session = _Session(target, cfg)
    t0 = time.monotonic()
    report(
        0.0,
        f"{target.name}: connecting "
        f"{(len(plan.subscriptions) + len(plan.publishers)) * cfg.rooms} endpoints",
    )
    try:
        await session.setup(plan)
        result.setup_s = time.monotonic() - t0
        profiles = {ep.profile.value for ep in session.endpoints if ep.profile is not None}
        result.srtp_profile = ",".join(sorted(profiles)) or None
        done = 0.0
        deadline = time.monotonic() + cfg.max_total_s
        result.stopped_by = "steps"
        for k, rate in enumerate(rates):
            session.engine.set_rate(rate)
            warm = cfg.warmup_s if k == 0 else later_warmup
            label = f"{target.name} {cfg.scenario} x{rate:g}"

            await session.drive(warm, _ticker(report, done, total, label))
            done += warm
            before = session.snapshot()
            latency = getattr(target, "forwarding_latency", None)
            fwd0 = await latency() if callable(latency) else None
            nodes0, link0 = await _node_readings(target)
            cpu0, gen0 = await target.cpu_seconds(), _self_cpu()
            w0 = time.monotonic()
            await session.drive(cfg.duration_s, _ticker(report, done, total, label))
            after = session.snapshot()
            window = time.monotonic() - w0
            cpu1, gen1 = await target.cpu_seconds(), _self_cpu()
            nodes1, link1 = await _node_readings(target)
            done += cfg.duration_s
            step = measure(before, after, window, rate, (cpu0, cpu1), (gen0, gen1))
            step.server_cpu_by_node = _node_cpu(nodes0, nodes1, window, step)
            step.link = _link_rates(link0, link1, window)
            step.p99_bound_ms = bound
            groups = session.server_ports()
            if groups:
                step.by_server_port = by_group(before, after, groups)
            fwd1 = await latency() if callable(latency) else None
            if fwd0 is not None and fwd1 is not None:
                step.server_forwarding_ms = forwarding_quantiles(fwd0, fwd1)
            step.egress_pps_per_subscription = round(
                step.egress_pps / max(1, result.subscriptions), 1
            )
            first = result.steps[0] if result.steps else step
            if first.sent_pps and first.egress_pps and step.sent_pps:
                promised = step.sent_pps * first.egress_pps / first.sent_pps
                step.delivery = round(step.egress_pps / promised, 4)
            result.steps.append(step)
            if cfg.rates:
                continue
            if not cfg.find_max:
                break
            if step.loss > LOSS_LIMIT:
                result.stopped_by = "loss"
                break
            if step.delivery < DELIVERY_LIMIT:
                result.stopped_by = "backlog"
                break
            if step.over_latency_bound():
                result.stopped_by = "p99"
                break
            if time.monotonic() > deadline:
                result.stopped_by = "time"
                break
        report(1.0, f"{target.name}: done")
    finally:
        await session.close()
    return result
