"""Nothing of a session outlives it: after join/leave cycles the server holds no more objects
of its own types than after the first ones (counted with ``gc``, not RSS, so the check is exact
and independent of the allocator).

Each cycle is the churn bench's (``python -m bench churn``): a publisher joins over WHIP and
completes ICE and DTLS-SRTP, a viewer over WHEP, both leave with DELETE, against an in-process
server on loopback.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
from collections import Counter

import pytest
from clients import AUDIT_DIR

from bench.soak import run_churn
from bench.targets import SfuTarget
from sfu.app import Server
from sfu.config import AuditConfig, AuthConfig, Config, HttpConfig, MediaConfig, RoomsConfig

pytestmark = pytest.mark.integration

#: Cycles before the first count (the first rooms, caches and pools), and between the counts.
WARMUP_CYCLES = 6
CYCLES = 24
TIMEOUT_S = 120.0
#: Seconds to wait after a batch for the ended sessions' objects to go.
SETTLE_S = 20.0
PEER = "sfu.core.peer.Peer"


def _sfu_objects() -> Counter[str]:
    """Live objects whose type is defined in the server's own package, by type name."""
    gc.collect()
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        module = getattr(type(obj), "__module__", "")
        if isinstance(module, str) and (module == "sfu" or module.startswith("sfu.")):
            counts[f"{module}.{type(obj).__qualname__}"] += 1
    return counts


async def _settled(peers: int) -> Counter[str]:
    """The counts once every ended session is released (their last timers fire within a few
    seconds of the leave), or after SETTLE_S. Every count waits for the same state, no more
    Peers than ``peers`` (those of other tests in this process, counted before the server
    started), so that the lingering objects of the last sessions weigh on none of them."""
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    while True:
        counts = _sfu_objects()
        if counts[PEER] <= peers or asyncio.get_running_loop().time() > deadline:
            return counts
        await asyncio.sleep(0.5)


def test_join_leave_cycles_leave_no_session_objects() -> None:
    async def scenario() -> list[Counter[str]]:
        secret = secrets.token_urlsafe(32)
        config = Config(
            http=HttpConfig(host="127.0.0.1", port=0),
            media=MediaConfig(udp_host="127.0.0.1", udp_port=0),
            rooms=RoomsConfig(waiting_room=False),
            auth=AuthConfig(jwt_secret=secret, dev_tokens=False),
            audit=AuditConfig(path=AUDIT_DIR),
        )
        before = _sfu_objects()[PEER]  # other tests' sessions still alive in this process
        server = Server(config)
        await server.start()
        target = SfuTarget(url=f"http://127.0.0.1:{server.http_addresses[0][1]}", jwt_secret=secret)
        await target.start()
        try:
            warm = await run_churn(target, WARMUP_CYCLES, 2, lambda f, label: None)
            assert warm.failures == 0 and not warm.transports_end
            counts = [await _settled(before)]
            assert counts[0][PEER] <= before, counts[0]
            for _ in range(2):
                churn = await run_churn(target, CYCLES, 2, lambda f, label: None)
                assert churn.failures == 0 and not churn.transports_end
                assert server.port.transport_count == 0
                counts.append(await _settled(before))
                assert counts[-1][PEER] <= before, counts[-1]
            return counts
        finally:
            await target.stop()
            await server.stop()

    first, middle, last = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT_S))
    # Every cycle creates objects of each session type (a Peer, its transport, router,
    # allocator, ... per participant), so a leak grows a type by at least one per cycle, in
    # both batches. What may stay is bounded: the objects of the last few sessions until their
    # timers fire, a cache at its size; that shows as the same count after either batch.
    grown = {name: (first[name], middle[name], n) for name, n in last.items() if n > first[name]}
    leaked = {name: c for name, c in grown.items() if c[2] - c[0] >= CYCLES}
    assert not leaked, leaked
    still_growing = {name: c for name, c in grown.items() if c[2] - c[1] >= CYCLES // 2}
    assert not still_growing, still_growing
    assert sum(last.values()) - sum(middle.values()) < CYCLES, grown
