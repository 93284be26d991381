"""The worker side of the room bus: what the supervisor relays is applied, and one event the
room service cannot apply leaves the bus (and every shard's view of this worker) intact."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sfu.workers.bus import WorkerBus


class Rooms:
    """A room service stand-in recording what the bus hands it; ``explode`` raises once."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, int, dict[str, Any]]] = []
        self.explode = False

    def on_shared(self, room: str, origin: int, event: dict[str, Any], *, now: float) -> None:
        if self.explode:
            self.explode = False
            raise RuntimeError("a bug in one event's handler")
        self.applied.append((room, origin, event))

    def shard_closed(self, origin: int, *, now: float) -> None:
        self.applied.append(("", origin, {}))


def _message(room: str, origin: Any, event: dict[str, Any]) -> str:
    return json.dumps({"room": room, "origin": origin, "event": event})


def test_a_failing_event_is_counted_and_the_next_one_is_applied() -> None:
    rooms = Rooms()
    bus = WorkerBus(lambda: rooms, lambda: 1.0, "secret")  # type: ignore[arg-type]
    rooms.explode = True
    bus._received(_message("r", 1, {"type": "joined"}))
    assert bus.failed == 1
    bus._received(_message("r", 1, {"type": "left"}))
    assert rooms.applied == [("r", 1, {"type": "left"})]


@pytest.mark.parametrize(
    "text", ["not json", json.dumps({"room": "r"}), _message("r", "1", {}), _message("r", True, {})]
)
def test_malformed_messages_are_counted_not_applied(text: str) -> None:
    rooms = Rooms()
    bus = WorkerBus(lambda: rooms, lambda: 1.0, "secret")  # type: ignore[arg-type]
    bus._received(text)
    assert bus.malformed == 1
    assert rooms.applied == []
