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
TIMEOUT_S = 90.0


def _sfu_objects() -> Counter[str]:
    """Live objects whose type is defined in the server's own package, by type name."""
    gc.collect()
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        module = getattr(type(obj), "__module__", "")
        if isinstance(module, str) and (module == "sfu" or module.startswith("sfu.")):
            counts[f"{module}.{type(obj).__qualname__}"] += 1
    return counts


def test_join_leave_cycles_leave_no_session_objects() -> None:
    async def scenario() -> tuple[Counter[str], Counter[str], int]:
        secret = secrets.token_urlsafe(32)
        config = Config(
            http=HttpConfig(host="127.0.0.1", port=0),
            media=MediaConfig(udp_host="127.0.0.1", udp_port=0),
            rooms=RoomsConfig(waiting_room=False),
            auth=AuthConfig(jwt_secret=secret, dev_tokens=False),
            audit=AuditConfig(path=AUDIT_DIR),
        )
        server = Server(config)
        await server.start()
        target = SfuTarget(url=f"http://127.0.0.1:{server.http_addresses[0][1]}", jwt_secret=secret)
        await target.start()
        try:
            warm = await run_churn(target, WARMUP_CYCLES, 2, lambda f, label: None)
            assert warm.failures == 0 and not warm.transports_end
            before = _sfu_objects()
            churn = await run_churn(target, CYCLES, 2, lambda f, label: None)
            assert churn.failures == 0 and not churn.transports_end
            assert server.port.transport_count == 0
            return before, _sfu_objects(), churn.cycles
        finally:
            await target.stop()
            await server.stop()

    before, after, cycles = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT_S))
    grown = {name: (before[name], n) for name, n in after.items() if n > before[name]}
    # A type that grew by less than one object per cycle is bounded state (a rate limiter's
    # window, a cache that reached its size) rather than a session's objects left behind;
    # every session creates several objects of each of its types, so a leak shows as >= cycles.
    leaked = {name: counts for name, counts in grown.items() if counts[1] - counts[0] >= cycles}
    assert not leaked, leaked
    assert sum(after.values()) - sum(before.values()) < cycles, grown
