"""Rounds of a publisher's SRTP packets through a forwarding world's data plane (benches).

Each round's packets are made (and SRTP-protected) in the setup, outside the timing; the run
forwards them through the data plane, hands relayed packets on (``DataPlane.relay``) and
counts what reached the world's subscribers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forwarder_world import rtp, vp8_payload
from ingest_paths import PUB_ADDR, VIDEO_SSRCS, VP8_PT, PathWorld

__all__ = ["packet_rounds"]


def packet_rounds(
    world: PathWorld,
    packets: int,
    *,
    python_path: bool = False,
    before: Callable[[], None] | None = None,
) -> tuple[Callable[[], Any], Any]:
    """(run, setup) for ``benchmark.pedantic``: ``packets`` VP8 packets of the world's first
    video layer a round; ``python_path`` suspends the data plane (everything through the
    Router); ``before`` runs at the start of each setup. ``run.state`` holds the counts."""
    dataplane = world.dataplane
    assert dataplane is not None
    if python_path:
        dataplane.suspend()
    state: dict[str, Any] = {"seq": 1000, "batch": [], "delivered": 0, "rounds": 0}

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        if before is not None:
            before()
        batch = []
        for _ in range(packets):
            seq = state["seq"] = (state["seq"] + 1) & 0xFFFF
            payload = vp8_payload(seq & 0x7FFF, 0, 0, False, seq == 1001, True, 1000)
            plain = rtp(VIDEO_SSRCS[0], seq, 3000 * seq, VP8_PT, payload, b"")
            batch.append((world.client.protect_rtp(plain), PUB_ADDR))
        state["batch"] = batch
        state["rounds"] += 1
        return (), {}

    def run() -> None:
        now = 1.0 + state["seq"] / 1000
        slow, egress = dataplane.forwarder.process(state["batch"], now)
        dataplane.relay(now)
        for data, _ in slow:
            world._slow(data, now)
        state["delivered"] += len(egress)
        for transport in world.transports:
            state["delivered"] += len(transport.rtp)
            transport.rtp.clear()

    run.state = state  # type: ignore[attr-defined]
    return run, setup
