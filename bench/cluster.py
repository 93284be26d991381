"""``python -m bench <scenario> --cluster``: the same load relayed between two nodes, and on one.

:class:`LocalCluster` starts what a two-node cluster needs on loopback: a real ``redis-server``
(the Debian package; its own process on a free port, no config file, no persistence, its files
in a temporary directory), a cluster CA and one certificate per node minted for the run
(:mod:`sfu.cluster.pki`, what ``sfu cluster-ca`` / ``sfu node-cert`` write), and two
``sfu serve`` nodes whose QUIC node link runs on a free loopback port each. It waits until the
link is up, and :meth:`LocalCluster.stop` removes every process and file, also after an error
or Ctrl-C; the kernel kills the children if the bench itself is killed
(``PR_SET_PDEATHSIG``).

Two :class:`ClusterArm` targets share it, so both arms run on the same processes, one after
the other, each in its own room:

* ``relay`` (``2-nodes``): the publishers on node A, the subscribers on node B, so every
  packet crosses the node link once (per publication) before B fans it out;
* ``baseline`` (``1-node``): the same load all on node A (node B idles, linked).

Each step records each node's CPU seconds (``/proc``) and the node link's counters from the
nodes' ``/metrics`` (datagrams relayed, received, dropped), and :func:`cluster_comparison`
pairs the arms' steps by rate: the relay's CPU per egress packet against the baseline's, the
latency the hop adds, and the extra CPU per relayed packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.scenarios import RunResult, StepResult
from bench.targets import HTTP_TIMEOUT_S, Session, SfuTarget, TargetError, death_signal
from sfu.cluster.pki import mint_ca, mint_node_cert, write_pem
from sfu.room.identity import Grant

__all__ = [
    "ARMS",
    "NODES",
    "ClusterArm",
    "LocalCluster",
    "RedisProcess",
    "cluster_comparison",
    "clustered_node",
    "format_cluster",
    "free_udp_run",
    "link_counters",
]

#: The two nodes: A holds the publishers (and the baseline's whole load), B the relay's
#: subscribers. A, the smaller id, dials the link.
NODES: Final = ("node-a", "node-b")
#: The arms, in the order they run: the relay first, then the baseline on one node.
ARMS: Final = ("2-nodes", "1-node")
REDIS_SERVER: Final = "redis-server"
#: Bound on redis-server's start (spawn to answering PING).
REDIS_START_S: Final = 10.0
#: Bound on the node link coming up once both nodes listen (leases are renewed every second
#: and a node dials the peers it sees in the directory).
LINK_UP_S: Final = 20.0
#: A node's drain on SIGTERM (its participants are asked to reconnect elsewhere): short, the
#: bench's sessions are closed before the nodes stop.
DRAIN_S: Final = 1.0
_POLL_S: Final = 0.05
#: Tries at finding a run of consecutive free UDP ports for a clustered node's workers.
PORT_RUN_TRIES: Final = 50
#: WebSocket ping interval of a room's holder (ClusterArm._hold), well inside the server's
#: idle timeout.
HOLDER_HEARTBEAT_S: Final = 10.0

#: ``/metrics`` counters of the node link (sfu/metrics/cluster.py) read at each step: the
#: name of the family and the label value (None: a counter without labels), by the key they
#: are reported under. Absent counters (another carrier, an older node) read as None.
_LINK_COUNTERS: Final[dict[str, tuple[str, str | None]]] = {
    "published": ("sfu_cluster_link_datagrams", "published"),
    "received": ("sfu_cluster_link_datagrams", "received"),
    "dropped": ("sfu_cluster_link_datagrams", "dropped"),
    "relay_out": ("sfu_cluster_relay_packets", "out"),
    "relay_in": ("sfu_cluster_relay_packets", "in"),
    # Packets the other node NACKed, resent from the cache (they count in relay_out too).
    "resent": ("sfu_cluster_relay_retransmissions", "hit"),
    "links_lost": ("sfu_cluster_links_lost", None),
    # Not the link's, but what tells where the node's RTP went: forwarded by the compiled
    # data plane itself, handed to Python, or (a relayed publication's, on the receiving
    # node) taken decrypted from the relay pipe and forwarded by the data plane, or read from
    # the link socket, opened and forwarded by it (its relay input).
    "dataplane_fast": ("sfu_dataplane_datagrams", "fast"),
    "dataplane_slow": ("sfu_dataplane_datagrams", "slow"),
    "dataplane_relayed": ("sfu_dataplane_datagrams", "relayed"),
    "dataplane_relay_in": ("sfu_dataplane_datagrams", "relay_in"),
}


def _free_port(kind: socket.SocketKind) -> int:
    """A port free on 127.0.0.1 now (its user binds it right after)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(eq=False)
class RedisProcess:
    """One ``redis-server`` on ``127.0.0.1:port``: no config file, no persistence."""

    workdir: Path
    port: int = field(default_factory=lambda: _free_port(socket.SOCK_STREAM))
    _proc: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start it and wait (bounded) until it answers PING."""
        binary = shutil.which(REDIS_SERVER)
        if binary is None:
            raise TargetError(
                "redis-server not found: install the Debian package redis-server (make test does)"
            )
        self._proc = await asyncio.create_subprocess_exec(
            binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes",
            "--loglevel", "warning", "--logfile", str(self.workdir / "redis.log"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=death_signal(),
        )  # fmt: skip
        deadline = time.monotonic() + REDIS_START_S
        while not await self._pong():
            if self._proc.returncode is not None or time.monotonic() > deadline:
                log = self.workdir / "redis.log"
                text = log.read_text()[-1000:] if log.exists() else ""
                raise TargetError(f"redis-server did not start on port {self.port}: {text}")
            await asyncio.sleep(_POLL_S)

    async def _pong(self) -> bool:
        with contextlib.suppress(OSError, TimeoutError):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 1.0
            )
            try:
                writer.write(b"PING\r\n")
                return (await asyncio.wait_for(reader.readline(), 1.0)).startswith(b"+PONG")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        return False

    async def stop(self) -> None:
        """SIGKILL it (nothing to save) and reap it; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _cluster_toml(node: str, redis_url: str, link_port: int, folder: Path) -> str:
    return (
        f'[cluster]\nredis_url = "{redis_url}"\nnode_id = "{node}"\nregion = "bench"\n'
        f'advertise_address = "127.0.0.1:{link_port}"\nlink_port = {link_port}\n'
        f'ca_file = "{folder / "ca.pem"}"\ncert_file = "{folder / f"{node}.pem"}"\n'
        f'key_file = "{folder / f"{node}.key"}"\n'
    )


def free_udp_run(count: int) -> int:
    """The first of ``count`` consecutive UDP ports free on 127.0.0.1 now (a clustered
    node's workers bind ``link_port + i``); bounded tries."""
    for _ in range(PORT_RUN_TRIES):
        first = _free_port(socket.SOCK_DGRAM)
        if first + count > 65536:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise TargetError(f"no {count} consecutive free UDP ports on 127.0.0.1")


@contextlib.asynccontextmanager
async def clustered_node(workers: int) -> AsyncIterator[str]:
    """``--clustered``: a ``redis-server`` and a node certificate for one local node; yields
    the ``[cluster]`` section that makes the bench's server that node (with ``workers``
    above one, each worker a member with a link port of its own, so a spread room relays
    over the workers' node links rather than the worker pipes)."""
    folder = Path(tempfile.mkdtemp(prefix="sfu-bench-clustered-"))
    redis = RedisProcess(folder)
    try:
        await redis.start()
        ca_cert, ca_key = mint_ca("sfu bench cluster")
        (folder / "ca.pem").write_bytes(ca_cert)
        cert, key = mint_node_cert(ca_cert, ca_key, NODES[0])
        (folder / f"{NODES[0]}.pem").write_bytes(cert)
        write_pem(folder / f"{NODES[0]}.key", key, private=True)
        yield _cluster_toml(NODES[0], redis.url, free_udp_run(max(workers, 1)), folder)
    finally:
        await redis.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(eq=False)
class LocalCluster:
    """Redis, a cluster CA and two linked ``sfu serve`` nodes on loopback (module docstring).

    ``cpus`` pins the nodes: one CPU for both (they time-share it, as the one-node baseline
    has it alone), or one each.
    """

    cpus: tuple[int | None, int | None] = (None, None)
    nodes: dict[str, SfuTarget] = field(default_factory=dict)
    redis: RedisProcess | None = None
    _tmp: Path | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Start everything and wait for the node link; on failure stop what started."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="sfu-bench-cluster-"))
        self.redis = RedisProcess(self._tmp)
        await self.redis.start()
        ca_cert, ca_key = mint_ca("sfu bench cluster")
        (self._tmp / "ca.pem").write_bytes(ca_cert)
        secret = None
        for node, cpu in zip(NODES, self.cpus, strict=True):
            cert, key = mint_node_cert(ca_cert, ca_key, node)
            (self._tmp / f"{node}.pem").write_bytes(cert)
            write_pem(self._tmp / f"{node}.key", key, private=True)
            target = SfuTarget(
                server_cpu=cpu,
                name=node,
                server_options=f"drain_timeout_s = {DRAIN_S}\n",
                extra_config=_cluster_toml(
                    node, self.redis.url, _free_port(socket.SOCK_DGRAM), self._tmp
                ),
                die_with_bench=True,
                # No public_url: neither node places sessions on the other; should one
                # answer 307 anyway, the run fails rather than move the arm's load.
                follow_redirects=False,
                jwt_secret=secret,
            )
            self.nodes[node] = target
            await target.start()
            secret = target.jwt_secret  # one token secret for the cluster
        await self._wait_linked()

    async def _wait_linked(self) -> None:
        """Until every node reports its link to the other up (bounded by LINK_UP_S)."""
        deadline = time.monotonic() + LINK_UP_S
        while True:
            ups = [await _gauge(node, "sfu_cluster_links_up") for node in self.nodes.values()]
            if all(up is not None and up >= 1 for up in ups):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"{n}:\n{t.log_tail()}" for n, t in self.nodes.items())
                raise TargetError(f"the node link did not come up in {LINK_UP_S:g} s\n{tails}")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """Stop the nodes (SIGTERM, bounded), then Redis, and remove the files; safe to call
        twice and after a failed start."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*(node.stop() for node in self.nodes.values()))
        self.nodes.clear()
        if self.redis is not None:
            await self.redis.stop()
            self.redis = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


async def _gauge(node: SfuTarget, name: str) -> float | None:
    text = await node.metrics_text()
    if text is None:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return None


def link_counters(text: str) -> dict[str, float | None]:
    """The node link's counters (:data:`_LINK_COUNTERS`) in a ``/metrics`` text."""
    found: dict[str, float | None] = dict.fromkeys(_LINK_COUNTERS)
    for family in text_string_to_metric_families(text):
        for key, (name, label) in _LINK_COUNTERS.items():
            if family.name != name:
                continue
            for sample in family.samples:
                if sample.name != name + "_total":
                    continue
                if (label is None and not sample.labels) or label in sample.labels.values():
                    found[key] = float(sample.value)
    return found


@dataclass(eq=False)
class ClusterArm:
    """One arm of a cluster run, a :class:`~bench.targets.Target` over a started
    :class:`LocalCluster`: publishers on ``publish_node``, subscribers on ``subscribe_node``.
    ``start``/``stop`` do nothing: the cluster outlives both arms."""

    cluster: LocalCluster
    name: str
    publish_node: str = NODES[0]
    subscribe_node: str = NODES[1]
    server_offers: bool = False
    _sessions: dict[int, SfuTarget] = field(default_factory=dict, repr=False)
    _holders: dict[str, tuple[aiohttp.ClientSession, asyncio.Task[None]]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def relay(cls, cluster: LocalCluster) -> ClusterArm:
        return cls(cluster, ARMS[0], NODES[0], NODES[1])

    @classmethod
    def baseline(cls, cluster: LocalCluster) -> ClusterArm:
        return cls(cluster, ARMS[1], NODES[0], NODES[0])

    def _node(self, node: str) -> SfuTarget:
        target = self.cluster.nodes.get(node)
        if target is None:
            raise TargetError(f"{node} is not running")
        return target

    @property
    def pid(self) -> int | None:
        node = self.cluster.nodes.get(self.publish_node)
        return node.pid if node is not None else None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"{n}:\n{t.log_tail(lines)}" for n, t in self.cluster.nodes.items())

    @property
    def loaded_nodes(self) -> tuple[str, ...]:
        """The nodes this arm's sessions are on (whose CPU is the arm's server CPU)."""
        return tuple(dict.fromkeys((self.publish_node, self.subscribe_node)))

    async def start(self) -> None:
        for node in self.loaded_nodes:
            self._node(node)

    async def stop(self) -> None:
        """Close the rooms' holders (the cluster itself is stopped by its owner)."""
        holders, self._holders = self._holders, {}
        for http, task in holders.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await http.close()

    async def _hold(self, room: str) -> None:
        """Open ``room`` on the subscribers' node before anything is published in it.

        A participant joined over the room WebSocket (no media) opens the room there, which
        subscribes the node to the room's bus channel; a WHEP viewer alone does not (today
        ``RoomService.open_shard`` opens a shard without joining its bus channel, so the
        publisher's tracks on the other node never arrive and WHEP answers 404). In a real
        meeting other participants hold the room open on every node that has viewers.
        """
        if self.subscribe_node == self.publish_node or room in self._holders:
            return
        node = self._node(self.subscribe_node)
        assert node.url is not None
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        try:
            ws = await http.ws_connect(f"{node.url}/ws", heartbeat=HOLDER_HEARTBEAT_S)
            token = node.join_token(room, f"holder-{self.subscribe_node}", Grant.SUBSCRIBE)
            await ws.send_json({"type": "join", "protocol": 1, "room": room, "token": token})
            reply = await ws.receive_json(timeout=HTTP_TIMEOUT_S)
            if reply.get("type") != "joined":
                raise TargetError(f"the room holder on {self.subscribe_node}: {reply}")
        except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as exc:
            await http.close()
            raise TargetError(f"the room holder on {self.subscribe_node}: {exc!r}") from None
        except BaseException:
            await http.close()
            raise

        async def drain() -> None:  # room events for the holder: read and dropped
            async for _message in ws:
                pass

        self._holders[room] = (http, asyncio.ensure_future(drain()))

    async def publish(self, room: str, identity: str, offer_sdp: str) -> Session:
        await self._hold(room)
        node = self._node(self.publish_node)
        session = await node.publish(room, identity, offer_sdp)
        self._sessions[id(session)] = node
        return session

    async def subscribe(
        self, room: str, identity: str, publisher: str, offer_sdp: str | None
    ) -> Session:
        node = self._node(self.subscribe_node)
        session = await node.subscribe(room, identity, publisher, offer_sdp)
        self._sessions[id(session)] = node
        return session

    async def answer(self, session: Session, answer_sdp: str) -> None:
        raise TargetError("our SFU does not send offers")

    async def close(self, session: Session) -> None:
        node = self._sessions.pop(id(session), None)
        if node is not None:
            await node.close(session)

    async def cpu_seconds(self) -> float | None:
        """CPU seconds of the nodes that carry this arm's load, together."""
        per_node = await self.cpu_by_node()
        values = [per_node.get(n) for n in self.loaded_nodes]
        return None if any(v is None for v in values) else sum(v for v in values if v)

    async def cpu_by_node(self) -> dict[str, float | None]:
        """CPU seconds of every node, loaded or idle."""
        return {n: await t.cpu_seconds() for n, t in self.cluster.nodes.items()}

    async def link_counters(self) -> dict[str, dict[str, float | None]]:
        """Each node's node-link counters (:func:`link_counters`) now."""
        out: dict[str, dict[str, float | None]] = {}
        for n, t in self.cluster.nodes.items():
            text = await t.metrics_text()
            out[n] = link_counters(text) if text is not None else dict.fromkeys(_LINK_COUNTERS)
        return out

    async def forwarding_latency(self) -> dict[str, dict[float, float]] | None:
        """The forwarding-latency buckets of every node, keyed by node (and worker)."""
        out: dict[str, dict[float, float]] = {}
        for n, t in self.cluster.nodes.items():
            for worker, buckets in (await t.forwarding_latency() or {}).items():
                out[f"{n}/{worker}" if worker else n] = buckets
        return out or None


def _pair(results: list[RunResult]) -> tuple[RunResult, RunResult] | None:
    by_name = {r.target: r for r in results}
    relay, base = by_name.get(ARMS[0]), by_name.get(ARMS[1])
    return (relay, base) if relay is not None and base is not None else None


def _ratio(x: float | None, y: float | None, digits: int = 3) -> float | None:
    return round(x / y, digits) if x is not None and y else None


def _diff(x: float | None, y: float | None) -> float | None:
    return round(x - y, 4) if x is not None and y is not None else None


def _per_delivered(step: StepResult, node: str | None = None) -> float | None:
    """CPU microseconds per packet the subscribers received: of ``node``, or of the arm's
    loaded nodes together (``server_cpu_util``)."""
    util = (
        step.server_cpu_util
        if node is None
        else step.server_cpu_by_node.get(node, {}).get("cpu_util")
    )
    return (
        round(util / step.received_pps * 1e6, 2) if util is not None and step.received_pps else None
    )


def _step_comparison(relay: StepResult, base: StepResult) -> dict[str, Any]:
    """One rate's relay step against the baseline's."""
    relayed = relay.link.get(NODES[0], {}).get("published_pps")
    extra_us = None
    if relay.server_cpu_util is not None and base.server_cpu_util is not None and relayed:
        extra_us = round((relay.server_cpu_util - base.server_cpu_util) / relayed * 1e6, 2)
    return {
        "rate": relay.rate,
        "egress_pps": [relay.egress_pps, base.egress_pps],
        "received_pps": [relay.received_pps, base.received_pps],
        "loss": [relay.loss, base.loss],
        "latency_p50_ms": [relay.latency_p50_ms, base.latency_p50_ms],
        "latency_p99_ms": [relay.latency_p99_ms, base.latency_p99_ms],
        "added_p50_ms": _diff(relay.latency_p50_ms, base.latency_p50_ms),
        "added_p99_ms": _diff(relay.latency_p99_ms, base.latency_p99_ms),
        # Per packet delivered (received), not per packet due: a lossy step's cost per
        # due packet would look cheap for the packets it never delivered.
        "cpu_us_per_delivered_packet": {
            "baseline": _per_delivered(base, NODES[0]),
            **{n: _per_delivered(relay, n) for n in NODES},
            "relay_total": _per_delivered(relay),
        },
        "cpu_per_delivered_packet_ratio": _ratio(_per_delivered(relay), _per_delivered(base)),
        "node_b_cpu_per_delivered_packet_ratio": _ratio(
            _per_delivered(relay, NODES[1]), _per_delivered(base, NODES[0])
        ),
        "relayed_pps": relayed,
        "link_dropped_pps": relay.link.get(NODES[0], {}).get("dropped_pps"),
        "extra_cpu_us_per_relayed_packet": extra_us,
    }


def cluster_comparison(results: list[RunResult]) -> dict[str, Any]:
    """The relay arm against the baseline, step by step at the same rates (empty without
    both arms)."""
    pair = _pair(results)
    if pair is None:
        return {}
    relay, base = pair
    base_by_rate = {s.rate: s for s in base.steps}
    steps = [
        _step_comparison(s, base_by_rate[s.rate]) for s in relay.steps if s.rate in base_by_rate
    ]
    return {
        "relay": relay.target,
        "baseline": base.target,
        "publishers_on": NODES[0],
        "subscribers_on": {relay.target: NODES[1], base.target: NODES[0]},
        "steps": steps,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def format_cluster(results: list[RunResult]) -> str:
    """The comparison as text lines (empty without both arms)."""
    doc = cluster_comparison(results)
    if not doc:
        return ""
    lines = [
        f"{doc['relay']}: publishers on {NODES[0]}, subscribers on {NODES[1]}; "
        f"{doc['baseline']}: everything on {NODES[0]} (CPU per delivered packet, both arms)"
    ]
    for s in doc["steps"]:
        cpu = s["cpu_us_per_delivered_packet"]
        lines.append(
            f"x{s['rate']:g}: loss {_fmt(s['loss'][0] * 100, 3)}% / "
            f"{_fmt(s['loss'][1] * 100, 3)}%, "
            f"{doc['relay']} / {doc['baseline']}: CPU per delivered packet "
            f"{_fmt(s['cpu_per_delivered_packet_ratio'], 3)} (node B alone "
            f"{_fmt(s['node_b_cpu_per_delivered_packet_ratio'], 3)}; us: A {_fmt(cpu[NODES[0]])}, "
            f"B {_fmt(cpu[NODES[1]])}, baseline {_fmt(cpu['baseline'])}), "
            f"p50/p99 added {_fmt(s['added_p50_ms'])}/{_fmt(s['added_p99_ms'])} ms, relayed "
            f"{_fmt(s['relayed_pps'], 0)} pps (link drops {_fmt(s['link_dropped_pps'], 0)}/s), "
            f"extra CPU per relayed packet {_fmt(s['extra_cpu_us_per_relayed_packet'], 1)} us"
        )
    return "\n".join(lines)
