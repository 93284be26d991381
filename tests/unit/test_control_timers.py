"""The event-driven control plane, on fake clocks: peers run when their own deadlines
(``next_timer()``) pass or an event wakes them, never on a tick over every peer."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from typing import Any

import pytest
from core_parts import RecordingSender, video_publication
from hypothesis import given
from hypothesis import strategies as st
from room_fixtures import Harness, harness, recvonly_offer, simulcast_offer, vp8_packet

from sfu.core.counters import PeerCounters
from sfu.core.peer import ALLOCATION_INTERVAL
from sfu.core.reporter import REPORT_INTERVAL, REPORT_SPREAD, Reporter
from sfu.core.twcc_recorder import TwccRecorder
from sfu.io.deadline_timer import DeadlineTimer
from sfu.packet.rtcp import ReceiverReport, parse_compound
from sfu.packet.rtcp_feedback import Remb
from sfu.room.room import Participant
from sfu.room.service import HOUSEKEEPING_INTERVAL
from sfu.timer_queue import TimerQueue
from sfu.transport.transport import TransportState

ROOM = "timers"
SSRC_Q, SSRC_H, SSRC_F = 1111, 2222, 3333


# -- the queue -----------------------------------------------------------------------------


def test_timer_queue_keeps_one_deadline_per_key_earliest_first() -> None:
    q: TimerQueue[str] = TimerQueue()
    q.schedule("a", 3.0)
    q.schedule("b", 1.0)
    q.schedule("c", 2.0)
    q.schedule("b", 4.0)  # moved later: its old entry must not fire
    q.advance("c", 5.0)  # later than scheduled: no change
    q.advance("a", 0.5)  # earlier: moves
    assert q.next_deadline() == 0.5
    assert q.pop_due(2.5) == ["a", "c"]
    q.cancel("b")
    assert q.pop_due(10.0) == [] and q.next_deadline() is None and len(q) == 0


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.one_of(st.none(), st.floats(0, 100)), st.floats(0, 100)),
        max_size=60,
    )
)
def test_timer_queue_matches_a_plain_dict(ops: list[tuple[int, float | None, float]]) -> None:
    """Schedules, cancels and pops in any order agree with the obvious model."""
    q: TimerQueue[int] = TimerQueue()
    model: dict[int, float] = {}
    for key, deadline, now in ops:
        q.schedule(key, deadline)
        if deadline is None:
            model.pop(key, None)
        else:
            model[key] = deadline
        assert q.next_deadline() == (min(model.values()) if model else None)
        if key == 0:  # now and then, pop what is due
            due = sorted((d, k) for k, d in model.items() if d <= now)
            popped = q.pop_due(now)
            assert sorted(popped) == sorted(k for _, k in due)
            assert [model[k] for k in popped] == sorted(model[k] for k in popped)
            for k in popped:
                del model[k]
        assert len(q) == len(model)


# -- the adapter ---------------------------------------------------------------------------


def test_deadline_timer_runs_at_the_earliest_deadline_and_rearms_from_the_result() -> None:
    clock = [100.0]
    runs: list[float] = []

    def run(now: float) -> float | None:
        runs.append(now)
        clock[0] += 0.5
        return None if len(runs) >= 2 else now + 1000.0

    async def scenario() -> DeadlineTimer:
        timer = DeadlineTimer(run, lambda: clock[0])
        timer.arm(None)  # nothing to do: not armed
        assert timer.armed_at is None
        timer.arm(500.0)
        timer.arm(100.0)  # an event made it due now: moves earlier
        assert timer.armed_at == 100.0
        for _ in range(3):
            await asyncio.sleep(0)
        assert runs == [100.0]  # ran once; re-armed far away from the result
        assert timer.armed_at == 1100.0
        timer.arm(-math.inf)  # woken: runs at once
        for _ in range(3):
            await asyncio.sleep(0)
        timer.close()
        return timer

    timer = asyncio.run(scenario())
    assert runs == [100.0, 100.5] and timer.runs == 2 and timer.armed_at is None


# -- peers ---------------------------------------------------------------------------------


def _connect(h: Harness, identity: str, participant: Participant, now: float) -> None:
    """The participant's transport got SRTP keys (as DTLS finishing tells the peer)."""
    h.capture(identity, participant)
    assert participant.peer is not None
    participant.peer.on_state(participant.peer.transport, TransportState.CONNECTED, now)


def test_a_quiet_peer_is_not_woken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connected participants that publish and subscribe nothing cost no timer runs, however
    many there are: only the service's housekeeping is armed."""
    h = harness(monkeypatch)
    quiet = []
    for i in range(20):
        p = h.join(ROOM, f"quiet{i}")
        h.service.offer(p, recvonly_offer(f"quiet{i:02d}"), 0.0)
        _connect(h, f"quiet{i}", p, 0.0)
        quiet.append(p)
    t = 0.0
    polls = 0
    while t < 10.0:
        h.service.poll(t, 1.7e9)
        polls += 1
        deadline = h.service.next_timer()
        assert deadline is not None
        t = max(deadline, t + 0.001)
    assert h.service.peer_runs == 0
    assert all(p.peer is not None and p.peer.next_timer() is None for p in quiet)
    # Woken only for housekeeping and each room's speaker detection: a handful per second.
    assert polls <= 10.0 / HOUSEKEEPING_INTERVAL + 10.0 / 0.2 + 2
    assert not any(h.sent_rtcp.values())


def test_receiver_reports_go_out_on_the_randomised_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A publisher's RRs, with the service run only at its own deadlines: every
    [0.5, 1.5] x REPORT_INTERVAL (RFC 3550 §6.3.1), not on a fixed tick."""
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    h.service.offer(alice, simulcast_offer(), 0.0)
    _connect(h, "alice", alice, 0.0)
    assert alice.peer is not None
    transport = alice.peer.transport
    sent = h.sent_rtcp["alice"]
    t, frame, next_frame = 0.0, 0, 0.0
    times: list[float] = []
    while t < 30.0:
        if t >= next_frame:  # 10 frames a second of layer q, as media taking the Python path
            pkt = vp8_packet(SSRC_Q, frame, 9000 * frame, keyframe=frame == 0, rid="q")
            alice.peer.on_rtp(transport, pkt, t)
            frame += 1
            next_frame += 0.1
        before = len(sent)
        h.service.poll(t, 1.7e9)
        if any(isinstance(p, ReceiverReport) for raw in sent[before:] for p in parse_compound(raw)):
            times.append(t)
        deadline = h.service.next_timer()
        t = min(next_frame, deadline if deadline is not None else math.inf)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 15
    low, high = REPORT_INTERVAL * (1 - REPORT_SPREAD), REPORT_INTERVAL * (1 + REPORT_SPREAD)
    assert all(low - 1e-9 <= g <= high + 1e-9 for g in gaps), gaps
    assert len(set(gaps)) > 1  # randomised, not one fixed period


def test_reporter_interval_is_randomised_within_rfc3550_bounds() -> None:
    sender, counters = RecordingSender(), PeerCounters()
    reporter = Reporter(0x77, sender, TwccRecorder(0x77), counters, rng=random.Random(7))
    pub = video_publication()
    stream = pub.add_stream(0x100, 0)
    sent_at: list[float] = []
    for step in range(60_000):  # one minute in 1 ms steps
        now = step / 1000
        stream.stats.on_packet(step, step * 90, now, False)
        before = counters.reports_out
        if now >= reporter.next_report:
            reporter.poll_reports([pub], [], now=now, wallclock=1e9)
        if counters.reports_out > before:
            sent_at.append(now)
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    low, high = REPORT_INTERVAL * (1 - REPORT_SPREAD), REPORT_INTERVAL * (1 + REPORT_SPREAD)
    assert all(low - 0.002 <= g <= high + 0.002 for g in gaps)
    assert len(set(round(g, 3) for g in gaps)) > len(gaps) // 2  # not one fixed period
    assert abs(sum(gaps) / len(gaps) - REPORT_INTERVAL) < 0.15


def _meeting(h: Harness) -> tuple[Participant, Participant]:
    alice = h.join(ROOM, "alice")
    bob = h.join(ROOM, "bob")
    h.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
    _connect(h, "alice", alice, 0.0)
    tracks = {m["track"]["kind"]: m["track"]["id"] for m in h.messages("bob", "track_published")}
    h.service.offer(
        bob, recvonly_offer(), 0.0, subscriptions={"0": tracks["audio"], "1": tracks["video"]}
    )
    _connect(h, "bob", bob, 0.0)
    return alice, bob


def test_feedback_that_lowers_the_estimate_triggers_allocation_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice, bob = _meeting(h)
    assert alice.peer is not None and bob.peer is not None
    sub = next(s for s in bob.peer.subscriptions.values() if s.selector)
    assert sub.selector is not None
    t = alice.peer.transport
    for i in range(30):  # one second of q ~48, h ~144, f ~288 kbit/s
        now = 1.0 + i / 30
        for ssrc, rid, size in ((SSRC_Q, "q", 200), (SSRC_H, "h", 600), (SSRC_F, "f", 1200)):
            pkt = vp8_packet(ssrc, i, 3000 * i, keyframe=i == 0, rid=rid, payload=bytes(size))
            alice.peer.on_rtp(t, pkt, now)
    bob_t = bob.peer.transport
    bob.peer.on_rtcp(bob_t, Remb.from_bitrate(1, 2_000_000, [sub.out_ssrc]).serialize(), 1.95)
    h.service.poll(2.0, 1.7e9)
    assert sub.selector.requested.spatial == 2
    runs = h.service.peer_runs
    # Nothing happens for bob until his next allocation (or report) is due.
    deadline = h.service.next_timer()
    assert deadline is not None and deadline > 2.0
    # A REMB well below: bob is due at once, long before ALLOCATION_INTERVAL passed.
    assert ALLOCATION_INTERVAL > 0.05
    bob.peer.on_rtcp(bob_t, Remb.from_bitrate(1, 200_000, [sub.out_ssrc]).serialize(), 2.05)
    deadline = h.service.next_timer()
    assert deadline is not None and deadline <= 2.05
    h.service.poll(2.05, 1.7e9)
    assert sub.selector.requested.spatial == 1  # q + h fit 180 kbit/s, f does not
    assert h.service.peer_runs > runs


def test_a_new_subscriber_is_allocated_without_waiting_for_a_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    _alice, bob = _meeting(h)
    assert bob.peer is not None
    deadline = h.service.next_timer()
    assert deadline is not None and deadline <= 0.0
    h.service.poll(0.0, 1.7e9)
    sub = next(s for s in bob.peer.subscriptions.values() if s.selector)
    assert sub.selector is not None and sub.selector.requested.spatial is not None


def test_the_port_looks_only_at_transports_whose_timer_is_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between sweeps, polling the port costs nothing per idle transport."""
    from room_fixtures import certificate

    from sfu.transport.dtls import DtlsRole
    from sfu.transport.port import TIMER_SWEEP_S, MediaPort
    from sfu.transport.transport import WebRtcTransport

    port = MediaPort(certificate(), lambda data, addr: None, connect_timeout=5.0)
    for _ in range(30):
        port.create_transport(
            remote_ufrag="abcd", remote_fingerprints=[], dtls_role=DtlsRole.SERVER, now=0.0
        )
    looked = [0]
    original = WebRtcTransport.next_timer

    def counting(self: WebRtcTransport) -> float | None:
        looked[0] += 1
        return original(self)

    monkeypatch.setattr(WebRtcTransport, "next_timer", counting)
    port.poll(0.0)  # the first poll sweeps every transport
    assert looked[0] >= 30
    looked[0] = 0
    t = 0.05
    while t < TIMER_SWEEP_S:
        port.poll(t)
        t += 0.05
    assert looked[0] == 0
    port.poll(5.0)  # the connect timeout: each is looked at, fails and is forgotten
    assert port.transport_count == 0 and port.next_timer() is None


def test_deadline_timer_rounds_to_slots_and_runs_from_the_readers_wakeup() -> None:
    from sfu.io.deadline_timer import TIMER_SLOT_S

    clock = [100.0]
    runs: list[float] = []

    def run(now: float) -> float | None:
        runs.append(now)
        return None

    async def scenario() -> DeadlineTimer:
        timer = DeadlineTimer(run, lambda: clock[0])
        timer.arm(100.001)
        timer.arm(100.003)  # due within the same slot: nothing changes
        armed = timer.armed_at
        assert armed is not None and armed == pytest.approx(100.0 + TIMER_SLOT_S)
        timer.run_if_due(100.0 + TIMER_SLOT_S / 2)  # a packet woke the loop: not yet due
        assert runs == []
        timer.run_if_due(armed)  # due: runs from that wakeup, the loop timer is dropped
        assert runs == [armed] and timer.armed_at is None
        timer.close()
        return timer

    assert asyncio.run(scenario()).runs == 1


def test_allocation_without_a_budget_runs_only_when_its_inputs_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No estimate (nothing sent to Bob yet): after the allocation his subscription asked for,
    the periodic one is skipped until the layers Alice sends change."""
    h = harness(monkeypatch)
    alice, bob = _meeting(h)
    assert alice.peer is not None and bob.peer is not None
    calls: list[float] = []
    allocate = bob.peer.allocate

    def counting(*, budget_bps: float | None, now: float) -> Any:
        calls.append(now)
        return allocate(budget_bps=budget_bps, now=now)

    monkeypatch.setattr(bob.peer, "allocate", counting)
    t = 0.0
    seq = 0

    def run_until(end: float, media: bool) -> None:
        nonlocal t, seq
        while t < end:
            if media:  # delta frames of every layer: layers become active, nothing is forwarded
                for ssrc, rid in ((SSRC_Q, "q"), (SSRC_H, "h"), (SSRC_F, "f")):
                    pkt = vp8_packet(ssrc, seq, 3000 * seq, keyframe=False, rid=rid)
                    alice.peer.on_rtp(alice.peer.transport, pkt, t)  # type: ignore[union-attr]
                seq += 1
            h.service.poll(t, 1.7e9)
            deadline = h.service.next_timer()
            following = end if deadline is None else deadline
            if media:
                following = min(following, t + 0.1)
            t = max(following, t + 0.001)

    run_until(3.0, media=False)
    assert bob.peer.estimate_bps is None
    assert len(calls) == 1  # the subscription's own; every periodic one since was skipped
    run_until(4.0, media=True)
    assert len(calls) == 2  # the layers Alice sends changed: allocated again
    run_until(6.0, media=True)
    assert len(calls) == 2


def test_a_layer_that_stops_or_starts_reallocates_its_subscribers_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The publisher's own deadline (the top layer's last packet plus LAYER_TIMEOUT) is the
    event: the subscriber falls back then, not at its next allocation; and climbs back as
    soon as the layer is seen again."""
    from sfu.core.allocator import UPGRADE_HOLD
    from sfu.core.publication import LAYER_TIMEOUT

    h = harness(monkeypatch)
    alice, bob = _meeting(h)
    assert alice.peer is not None and bob.peer is not None
    sub = next(s for s in bob.peer.subscriptions.values() if s.selector)
    assert sub.selector is not None
    transport = alice.peer.transport
    t, seq = 0.0, 0
    rids = ((SSRC_Q, "q"), (SSRC_H, "h"), (SSRC_F, "f"))

    def run_until(end: float, layers: tuple[tuple[int, str], ...]) -> None:
        nonlocal t, seq
        while t < end:
            for ssrc, rid in layers:
                pkt = vp8_packet(ssrc, seq, 3000 * seq, keyframe=False, rid=rid)
                alice.peer.on_rtp(transport, pkt, t)  # type: ignore[union-attr]
            seq += 1
            next_frame = t + 0.1
            while True:
                h.service.poll(t, 1.7e9)
                deadline = h.service.next_timer()
                if deadline is None or deadline >= min(next_frame, end):
                    break
                t = max(deadline, t + 0.001)
            t = next_frame

    run_until(2.0, rids)
    assert sub.selector.target.spatial == 2
    stopped_at = t - 0.1  # f's last packet
    run_until(stopped_at + LAYER_TIMEOUT - 0.05, rids[:2])
    assert sub.selector.target.spatial == 2  # not yet: f may just be late
    run_until(stopped_at + LAYER_TIMEOUT + 0.11, rids[:2])
    assert sub.selector.target.spatial == 1  # f is gone: h, without waiting to allocate
    fell_at = t
    # f is back: allocated at once, and up again once the allocator's upgrade hold passed
    # (the periodic allocation is not skipped while a hold runs).
    run_until(fell_at + UPGRADE_HOLD + ALLOCATION_INTERVAL + 0.2, rids)
    assert sub.selector.target.spatial == 2
