"""``python -m bench.room_span``: what rooms' spans in Redis cost (placement by where a room is).

Starts a ``redis-server`` on loopback (the tests' helper, no persistence), has ``--nodes``
directories each hold every one of ``--rooms`` rooms (as each node's registry writes them:
:meth:`~sfu.cluster.redis_directory.RedisDirectory.hold_rooms`, batches of
:data:`~sfu.cluster.directory.ROOM_BATCH`), then reads one room's span ``--reads`` times as a
full node placing a join does (:meth:`~sfu.cluster.registry.NodeRegistry.room_nodes`, one
call at a time). Reported: the read's latency (median, p99, max, milliseconds), what one
refresh of a node's rooms costs (wall milliseconds per 1000 rooms, and Redis's own CPU per
room written, from ``INFO cpu``), and Redis memory per room (``INFO memory``). Loopback only:
a network hop between node and Redis adds its round trip to the read.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from redis_server import redis_server  # noqa: E402

from sfu.cluster.directory import NodeInfo  # noqa: E402
from sfu.cluster.redis_directory import RedisDirectory  # noqa: E402
from sfu.cluster.registry import NodeRegistry  # noqa: E402


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def measure(url: str, rooms: int, nodes: int, reads: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    names = [f"room-{i:06d}" for i in range(rooms)]
    directories = [RedisDirectory(url) for _ in range(nodes)]
    registry = NodeRegistry(directories[0], NodeInfo("node-0", "eu"))
    try:
        memory_before = int(client.info("memory")["used_memory"])
        cpu_before = _redis_cpu(client)
        started = time.perf_counter()
        for i, directory in enumerate(directories):
            await directory.hold_rooms(f"node-{i}", names)
        write_s = time.perf_counter() - started
        cpu_s = _redis_cpu(client) - cpu_before
        memory = int(client.info("memory")["used_memory"]) - memory_before
        await registry.start()
        latencies = []
        for i in range(reads):
            room = names[(i * 7919) % rooms]
            began = time.perf_counter()
            found = await registry.room_nodes(room)
            latencies.append((time.perf_counter() - began) * 1000)
            assert len(found) == nodes - 1, found
        latencies.sort()
        return {
            "read_ms_median": statistics.median(latencies),
            "read_ms_p99": latencies[int(0.99 * (len(latencies) - 1))],
            "read_ms_max": latencies[-1],
            "refresh_ms_per_1000_rooms": write_s * 1000 / (rooms * nodes) * 1000,
            "redis_cpu_us_per_room_written": cpu_s * 1e6 / (rooms * nodes),
            "redis_bytes_per_room": memory / rooms,
        }
    finally:
        await registry.stop()
        for directory in directories[1:]:
            await directory.close()
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.room_span", description=__doc__)
    parser.add_argument("--rooms", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--reads", type=int, default=5_000)
    args = parser.parse_args(argv)
    with redis_server() as server:
        figures = asyncio.run(measure(server.url, args.rooms, args.nodes, args.reads))
    for name, value in figures.items():
        print(f"{name:32} {value:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
