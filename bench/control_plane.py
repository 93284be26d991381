"""``python -m bench.control_plane``: what the control plane's timers cost, in one process.

A socket-free room service (the unit tests' harness, ``tests/unit/room_fixtures.py``) with the
bench's room shapes: ``meeting`` (everyone publishes audio + video, one subscriber transport per
subscription, as WHEP viewers) or ``audio`` (S speakers, everyone else listening). Publishers'
media is fed on the Python path for ``--seconds`` of simulated time and the timers are driven
the way the server drives them: at the room service's own deadlines (rounded to the adapter's
slot) when it has ``next_timer()``, else on the old fixed 50 ms tick over every peer; the
port's timers every 50 ms. Reported: CPU seconds spent in the timers (``RoomService.poll`` and
``MediaPort.poll``) per simulated second, and the number of timer runs. Run it from a checkout
to compare two commits (each measures its own code); nothing here is timed in a test.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

#: The old fixed tick, and the port's tick (both 50 ms in the server).
TICK_S = 0.05
#: The adapter's timer slot (``sfu.io.deadline_timer.TIMER_SLOT_S`` where it exists).
SLOT_S = 0.02
SSRC_AUDIO, SSRC_Q, SSRC_H, SSRC_F = 4444, 1111, 2222, 3333


class _Patch:
    """The few attributes the harness replaces, as pytest's monkeypatch would."""

    def __init__(self) -> None:
        self.undo: list[tuple[Any, str, Any]] = []

    def setattr(self, target: Any, name: str, value: Any) -> None:
        self.undo.append((target, name, getattr(target, name)))
        setattr(target, name, value)


def run(scenario: str, participants: int, speakers: int, seconds: float) -> dict[str, Any]:
    """Build the room, feed media, drive the timers; the figures as a dict."""
    from room_fixtures import harness, opus_packet, recvonly_offer, simulcast_offer, vp8_packet

    from sfu.room.policy import RoomDefaults, RoomPolicy
    from sfu.room.service import RoomLimits

    room_policy = RoomPolicy(waiting_room=False, max_participants=1000)
    h = harness(_Patch(), defaults=RoomDefaults(room_policy))  # type: ignore[arg-type]
    service = h.service
    service.limits = RoomLimits(max_participants=1000)
    room = "cost"
    publishers = [f"p{i}" for i in range(participants if scenario == "meeting" else speakers)]
    people = [f"p{i}" for i in range(participants)]
    pubs = {}
    for name in publishers:
        p = h.join(room, name)
        service.offer(p, simulcast_offer(), 0.0, names={"1": "camera"})
        h.capture(name, p)
        pubs[name] = p
    tracks: dict[str, dict[str, str]] = {}
    for m in h.messages(publishers[0], "track_published"):  # it hears of every track
        track = m["track"]
        tracks.setdefault(track["participant"], {})[track["kind"]] = track["id"]
    by_id = {p.id: name for name, p in pubs.items()}
    subscriptions = 0
    for who in people:
        for pub_id, kinds in tracks.items():
            if by_id.get(pub_id) == who:
                continue
            ident = f"{who}-sees-{by_id[pub_id]}"
            viewer = h.join(room, ident)
            wanted = {"0": kinds["audio"]}
            if scenario == "meeting":
                wanted["1"] = kinds["video"]
            ufrag = f"u{subscriptions:07d}"
            service.offer(viewer, recvonly_offer(ufrag), 0.0, subscriptions=wanted)
            h.capture(ident, viewer)
            subscriptions += 1
    has_timer = hasattr(service, "next_timer")
    port = service.port
    cpu = 0.0
    runs = 0
    t = 0.0
    next_audio = next_video = next_port = next_tick = 0.0
    seq_a = seq_v = 0
    end = seconds
    while t < end:
        if t >= next_audio:
            for p in pubs.values():
                assert p.peer is not None
                p.peer.on_rtp(p.peer.transport, opus_packet(SSRC_AUDIO, seq_a, 960 * seq_a), t)
            seq_a += 1
            next_audio += 0.02
        if scenario == "meeting" and t >= next_video:
            for p in pubs.values():
                assert p.peer is not None
                for ssrc, rid in ((SSRC_Q, "q"), (SSRC_H, "h"), (SSRC_F, "f")):
                    pkt = vp8_packet(ssrc, seq_v, 3000 * seq_v, keyframe=seq_v % 90 == 0, rid=rid)
                    p.peer.on_rtp(p.peer.transport, pkt, t)
            seq_v += 1
            next_video += 1 / 30
        c0 = time.process_time()
        if t >= next_port:
            port.poll(t)
            next_port += TICK_S
        if has_timer:
            deadline = service.next_timer()
            if deadline is not None and deadline <= t:
                service.poll(t, 1.7e9)
                runs += 1
        elif t >= next_tick:
            service.poll(t, 1.7e9)
            runs += 1
            next_tick += TICK_S
        cpu += time.process_time() - c0
        following = min(next_audio, next_port)
        if scenario == "meeting":
            following = min(following, next_video)
        if has_timer:
            deadline = service.next_timer()
            if deadline is not None:
                slot = math.ceil(deadline / SLOT_S - 1e-9) * SLOT_S
                following = min(following, max(slot, t + 1e-6))
        else:
            following = min(following, next_tick)
        t = following
    return {
        "scenario": scenario,
        "participants": participants,
        "publishers": len(pubs),
        "subscriber_transports": subscriptions,
        "event_driven": has_timer,
        "timer_cpu_s_per_s": round(cpu / seconds, 5),
        "timer_runs_per_s": round(runs / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Print one line of figures."""
    p = argparse.ArgumentParser(prog="python -m bench.control_plane")
    p.add_argument("scenario", choices=("meeting", "audio"))
    p.add_argument("--participants", type=int)
    p.add_argument("--speakers", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    n = args.participants or (6 if args.scenario == "meeting" else 50)
    print(run(args.scenario, n, args.speakers, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
