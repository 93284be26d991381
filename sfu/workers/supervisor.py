"""The supervisor: starts the forwarding workers, owns the public HTTP port, places rooms.

``sfu serve`` with ``server.workers`` above one runs this. Each worker is a full single-process
server (:mod:`sfu.app`) in a child process with its own media UDP and ICE-TCP ports
(``media.udp_port + index``) and an HTTP listener on a loopback port of its own. The
supervisor serves the public listener (with the limits of :mod:`sfu.io.http_limits`) and
forwards every request to the worker of its room: the room protocol's WebSocket (the room
is read from the ``join``), WHIP/WHEP and the room admin API by the room in their path, the
rest (demo page, development tokens, echo) to the first ready worker. ``/healthz``,
``/readyz`` and ``/metrics`` are its own: ready while any worker is, metrics of every
worker with a ``worker`` label. A worker that dies is restarted; its rooms' participants see
``server_draining`` and a 1001 close, and the browser client reconnects (onto a live worker).
A clustered node's workers are cluster members each (``<node_id>.w<index>``, a link port
each): the cluster's bus and node links join up a room spread over them, so the supervisor's
own room bus and worker pipes are not used then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from sfu import clock
from sfu.app import (
    WORKER_LOAD_PATH,
    WORKER_PIPES_PATH,
    WORKER_SESSIONS_MAX,
    WORKER_SESSIONS_PATH,
)
from sfu.cluster.registry import member_id, node_from_config
from sfu.config import (
    ENV_PREFIX,
    MAX_CLUSTER_NAME,
    NON_CONFIG_ENV_VARS,
    Config,
    ConfigError,
    config_environment,
)
from sfu.io.http import HttpServer, build_http_app
from sfu.io.http_limits import ConnectionLimiter, ConnectionLimits, raise_file_limit
from sfu.logging_setup import configure_logging
from sfu.signaling.admin_http import POLICY_COPY_HEADER
from sfu.signaling.auth import signing_secret
from sfu.signaling.room_ws import JOIN_TIMEOUT, MAX_FRAME_BYTES
from sfu.workers.bus import (
    BUS_MAX_MESSAGE_BYTES,
    SHARD_CLOSED,
    WORKER_BUS_PATH,
    WORKER_KEY_HEADER,
    worker_key,
)
from sfu.workers.metrics import MergedMetrics, relabel
from sfu.workers.placement import Placement

__all__ = [
    "LOAD_SAMPLE_S",
    "Supervisor",
    "WorkerProcess",
    "check_cluster_ports",
    "cluster_member_environment",
    "room_of_join",
    "room_of_path",
    "run_supervisor",
    "session_of_path",
    "worker_environment",
]

log = logging.getLogger(__name__)

#: How often each worker's CPU and packet rate are sampled for placement.
LOAD_SAMPLE_S: Final = 2.0
#: The keys of the workers' cluster status the supervisor's ``/readyz`` repeats
#: (``NodeRegistry.status`` and the links): health and node ids only.
CLUSTER_KEYS: Final = frozenset(
    {"node_id", "region", "directory", "lease", "nodes_alive", "draining", "links_up"}
)
#: A worker that has not reported its ports this long after starting is killed and retried.
WORKER_START_TIMEOUT_S: Final = 30.0
#: Restart delays after a worker dies: at once the first time, then doubling up to the cap
#: while it keeps dying within :data:`STABLE_AFTER_S` of starting (a crash loop).
RESTART_DELAY_S: Final = 0.25
RESTART_DELAY_MAX_S: Final = 10.0
STABLE_AFTER_S: Final = 30.0
#: After a connection to a worker broke: how long to wait for its process to look dead
#: (a killed one is seen dead within milliseconds) and how often to look.
LOST_CONFIRM_S: Final = 0.5
LOST_POLL_S: Final = 0.01
#: Bound on one scrape of a worker's ``/metrics`` or one forwarded HTTP request.
UPSTREAM_TIMEOUT_S: Final = 10.0
#: Once the workers have drained, closing the supervisor's listeners takes at most this.
_CLOSE_TIMEOUT_S: Final = 5.0
#: Headers that belong to one hop (RFC 9110 section 7.6.1) and are never forwarded.
_HOP_HEADERS: Final = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        # Content-Length is recomputed; bodies pass undecoded, so Content-Encoding stays.
        "Content-Length",
    )
)
#: Paths whose second segment names the room: WHIP, WHEP and the room admin API.
_ROOM_PATH_PREFIXES: Final = ("whip", "whep", "rooms")
#: The ``listener`` label of the supervisor's public HTTP listener in ``sfu_http_connections``.
PUBLIC_LISTENER: Final = "public"
#: Paths of the workers' own listeners that only the supervisor uses.
_INTERNAL_PREFIX: Final = "/_worker/"
_WORKER_LOST_NOTICE: Final = {"type": "server_draining", "deadline_s": 0}
#: WHIP/WHEP sessions whose worker the supervisor remembers (their follow-up ``PATCH`` and
#: ``DELETE`` go there). Beyond this a new session is not remembered: its follow-ups go to
#: the room's home worker, which answers 404 if the session is on another shard.
MAX_HTTP_SESSIONS: Final = 100_000
#: Room policy writes, which every worker applies (each shard admits its own joiners).
_POLICY_WRITES: Final = frozenset({"PUT", "DELETE"})


def room_of_path(path: str) -> str | None:
    """The room a request path is about (``/whip/{room}``, ``/whep/{room}/...``,
    ``/rooms/{room}/policy``), or None for paths of no room."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == "" and parts[1] in _ROOM_PATH_PREFIXES and parts[2]:
        return parts[2]
    return None


def session_of_path(path: str) -> str | None:
    """The session id a WHIP/WHEP follow-up request names (``/whip/{room}/{session}``,
    ``/whep/{room}/{identity}/{session}``), or None for any other path."""
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "whip" and parts[3]:
        return parts[3]
    if len(parts) == 5 and parts[1] == "whep" and parts[4]:
        return parts[4]
    return None


def _is_policy_path(path: str) -> bool:
    """Whether ``path`` is a room's policy in the admin API (``/rooms/{room}/policy``)."""
    parts = path.split("/")
    return len(parts) == 4 and parts[1] == "rooms" and parts[3] == "policy"


def _starts_session(method: str, path: str) -> bool:
    """Whether the request opens a WHIP (``POST /whip/{room}``) or WHEP
    (``POST /whep/{room}/{identity}``) session: a newcomer of the room, placed like a
    WebSocket joiner."""
    if method != "POST":
        return False
    parts = path.split("/")
    return (len(parts) == 3 and parts[1] == "whip") or (len(parts) == 4 and parts[1] == "whep")


def room_of_join(text: str) -> str:
    """The room a room-protocol ``join`` names; "" when it names none (the worker then
    answers the malformed join itself, exactly as a single process would)."""
    try:
        message = json.loads(text)
    except ValueError:
        return ""
    room = message.get("room") if isinstance(message, dict) else None
    return room if isinstance(room, str) else ""


def worker_environment(
    base: Mapping[str, str], config: Config, index: int, secret: str, workers: int = 1
) -> dict[str, str]:
    """The environment of worker ``index`` of ``workers``: the supervisor's own without its
    ``SFU_*`` overrides, then the supervisor's whole configuration as overrides (so a worker
    runs exactly it, whether it came from a file, the environment or code), then what makes
    it one worker among many (and, clustered, one member of the cluster among many)."""
    media, http = config.media, config.http
    env = {
        k: v for k, v in base.items() if not k.startswith(ENV_PREFIX) or k in NON_CONFIG_ENV_VARS
    }
    env.update(config_environment(config))
    env.update(
        {
            "SFU_SERVER_WORKERS": "1",
            "SFU_SERVER_WORKER_NAME": f"{config.server.worker_name}-{index}"[:64],
            "SFU_HTTP_HOST": "127.0.0.1",
            "SFU_HTTP_PORT": "0",
            "SFU_HTTP_OPS_PORT": "-1",
            # The supervisor is the worker's only client; it passes the real client address on.
            "SFU_HTTP_TRUSTED_PROXIES": ",".join(
                dict.fromkeys((*http.trusted_proxies, "127.0.0.1"))
            ),
            "SFU_MEDIA_UDP_PORT": str(media.udp_port + index if media.udp_port else 0),
            "SFU_MEDIA_TCP_PORT": str(media.tcp_port + index if media.tcp_port else 0),
            # Every worker verifies the same join tokens (and signs the same dev tokens).
            "SFU_AUTH_JWT_SECRET": secret,
        }
    )
    if config.cluster.redis_url:
        env.update(cluster_member_environment(config, index, workers))
    return env


def cluster_member_environment(config: Config, index: int, workers: int) -> dict[str, str]:
    """What makes worker ``index`` a cluster member of its own (it registers as
    ``<node_id>.w<index>``, ``registry.member_id``): its QUIC link on ``link_port + index``,
    announced as the advertised port + ``index``, and its share of the node's seats (the
    node's ``capacity_participants`` split over its workers, rounded up)."""
    cluster = config.cluster
    env = {
        "SFU_CLUSTER_CAPACITY_PARTICIPANTS": str(-(-cluster.capacity_participants // workers)),
    }
    if cluster.advertise_address:
        host, _, port = cluster.advertise_address.rpartition(":")
        env["SFU_CLUSTER_ADVERTISE_ADDRESS"] = f"{host}:{int(port) + index}"
        env["SFU_CLUSTER_LINK_PORT"] = str(cluster.link_port + index if cluster.link_port else 0)
    return env


def check_cluster_ports(config: Config, workers: int) -> None:
    """Refuse (ConfigError naming the key) a clustered node that cannot run ``workers``
    members: a node id too long for its workers' member ids, link ports that would run past
    65535 or into the media ports' range (both UDP on ``media.udp_host``)."""
    cluster = config.cluster
    if not cluster.redis_url:
        return
    errors: list[tuple[str, str]] = []
    node_id = node_from_config(cluster).node_id
    last = member_id(node_id, workers - 1)
    if len(last) > MAX_CLUSTER_NAME:
        errors.append(
            (
                "cluster.node_id",
                f"{node_id!r} is too long for its workers' member ids "
                f"({last!r} passes {MAX_CLUSTER_NAME} characters)",
            )
        )
    port, media = cluster.link_port, config.media.udp_port
    if cluster.advertise_address and port + workers - 1 > 65535:
        errors.append(("cluster.link_port", f"{port} + {workers - 1} (a port each) passes 65535"))
    if cluster.advertise_address and media and port < media + workers and media < port + workers:
        errors.append(
            (
                "cluster.link_port",
                f"the workers' link ports {port}-{port + workers - 1} overlap their media "
                f"ports {media}-{media + workers - 1} (media.udp_port)",
            )
        )
    if errors:
        raise ConfigError(errors)


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process ``pid`` (``/proc/<pid>/stat``), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    except (IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


class WorkerProcess:
    """One worker: its child process, the ports it reported, and its load samples."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.http_port = 0
        self.udp_port = 0
        self.tcp_port = 0
        #: Its pipe socket's loopback port (rooms spread over workers), 0 before it reports.
        self.pipe_port = 0
        self.ready = False
        #: The ``cluster`` part of its ``/readyz`` it last reported (clustered).
        self.cluster: dict[str, object] | None = None
        self.restarts = 0
        self.started_at = 0.0
        self.cpu_total = 0.0
        self._last_cpu: tuple[float, float] | None = None
        self._last_packets: tuple[float, float] | None = None

    @property
    def pid(self) -> int | None:
        """The live child's process id."""
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def sample_cpu(self, now: float) -> float:
        """CPU share (of one core) since the previous sample."""
        pid = self.pid
        total = _cpu_seconds(pid) if pid is not None else None
        if total is None:
            return 0.0
        self.cpu_total = total
        previous, self._last_cpu = self._last_cpu, (now, total)
        if previous is None or now <= previous[0]:
            return 0.0
        return max(0.0, (total - previous[1]) / (now - previous[0]))

    def sample_packets(self, now: float, total: float) -> float:
        """Packets per second since the previous sample."""
        previous, self._last_packets = self._last_packets, (now, total)
        if previous is None or now <= previous[0] or total < previous[1]:
            return 0.0
        return (total - previous[1]) / (now - previous[0])

    def alive(self) -> bool:
        """Whether the child still runs (a killed one is a zombie until it is reaped, which
        may come after its connections are seen to break)."""
        pid = self.pid
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            return False
        state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
        return state not in (b"Z", b"X")

    def reset_samples(self) -> None:
        self.cluster = None
        self._last_cpu = None
        self._last_packets = None


class Supervisor:
    """Worker processes, the public HTTP front and room placement."""

    def __init__(self, config: Config, workers: int) -> None:
        self.config = config
        self.secret = signing_secret(config)
        self.workers = [WorkerProcess(i) for i in range(workers)]
        self.placement = Placement(workers)
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        #: The announcement of the workers' pipe ports in flight (kept so it is not
        #: collected); one at a time, so an older list never lands after a newer one.
        self._pipes_task: asyncio.Future[None] | None = None
        #: A worker became ready while an announcement was in flight: announce once more.
        self._pipes_again = False
        #: Open WHIP/WHEP sessions: session id -> (worker index, room), so their follow-ups
        #: reach the shard that holds them and they count as the room's connections there.
        self._http_sessions: dict[str, tuple[int, str]] = {}
        #: The room bus: each worker's WebSocket, and the task reading it.
        self._bus: dict[int, aiohttp.ClientWebSocketResponse] = {}
        self._bus_tasks: dict[int, asyncio.Future[None]] = {}
        http = config.http
        self.http_app = build_http_app(
            readiness=self.readiness,
            max_body_bytes=http.max_body_bytes,
            details=self.cluster_details,
        )
        self.limiter = ConnectionLimiter(
            ConnectionLimits(
                http.max_connections,
                http.max_connections_per_source,
                http.header_timeout_s,
                frozenset(http.trusted_proxies),
            ),
            "http",
        )
        if config.metrics.enabled:
            self.http_app.router.add_get("/metrics", self._metrics, allow_head=True)
        self.http_app.router.add_get("/ws", self._websocket)
        self.http_app.router.add_route("*", "/{tail:.*}", self._forward)
        self._http = HttpServer(
            self.http_app,
            shutdown_timeout=config.server.drain_timeout_s,
            keepalive_timeout=http.keepalive_timeout_s,
            limiter=self.limiter,
            clock=clock.now,
        )
        self._ops: HttpServer | None = None
        if http.ops_port >= 0:
            ops = build_http_app(
                readiness=self.readiness, max_body_bytes=1024, details=self.cluster_details
            )
            if config.metrics.enabled:
                ops.router.add_get("/metrics", self._metrics, allow_head=True)
            self._ops = HttpServer(ops, shutdown_timeout=1.0)

    # -- readiness and addresses ------------------------------------------------------

    def cluster_details(self) -> dict[str, object]:
        """The ``cluster`` part of ``/readyz`` when clustered: this node's id and region,
        what worker 0 last reported of the cluster (directory, lease, peers, links), and
        under ``members`` each ready worker's own report (every worker is a cluster member,
        ``<node_id>.w<index>``). Only those keys: never the Redis URL or a secret. A single
        node's body stays ``{"status": "ok"}``."""
        if not self.config.cluster.redis_url:
            return {}
        node = node_from_config(self.config.cluster)
        status: dict[str, object] = {"node_id": node.node_id, "region": node.region}
        members = [
            {key: value for key, value in worker.cluster.items() if key in CLUSTER_KEYS}
            for worker in self.workers
            if worker.ready and worker.cluster is not None
        ]
        registrar = self.workers[0]
        if registrar.ready and registrar.cluster is not None:
            status.update(
                (key, value)
                for key, value in registrar.cluster.items()
                if key in CLUSTER_KEYS and key != "node_id"
            )
        status["members"] = members
        return {"cluster": status}

    def readiness(self) -> str | None:
        """``None`` while any worker is ready (new rooms go there), else why not."""
        if self.stopping:
            return "draining"
        if not self._http.is_listening:
            return "http not listening"
        if not any(w.ready for w in self.workers):
            return "no worker ready"
        return None

    @property
    def token_secret(self) -> str:
        """The join-token signing key every worker verifies with (configured, or random
        for this server's lifetime on loopback)."""
        return self.secret

    @property
    def http_addresses(self) -> list[tuple[Any, ...]]:
        return self._http.addresses

    def _stopped(self) -> bool:
        """Whether a shutdown began (a method, so a check after an ``await`` is not
        narrowed away by the type checker)."""
        return self.stopping

    # -- worker processes ---------------------------------------------------------------

    async def _spawn(self, worker: WorkerProcess) -> bool:
        """Start ``worker`` and wait for its ports; False (and the child killed) on failure."""
        # The configuration travels whole in the environment (worker_environment).
        args = [sys.executable, "-m", "sfu", "worker", "--index", str(worker.index)]
        env = worker_environment(
            os.environ, self.config, worker.index, self.secret, len(self.workers)
        )
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE,  # its end of file tells the worker we are gone
            stdout=asyncio.subprocess.PIPE,
            # A process group of its own: a terminal's Ctrl-C reaches the supervisor only.
            # Not a session of its own: with autogroup scheduling a new session would be a
            # new CPU group, escaping the operator's nice and the share the server is given.
            preexec_fn=os.setpgrp,  # only setpgid(0, 0) in the child (uvloop has no process_group)
        )
        worker.proc = proc
        worker.started_at = clock.now()
        worker.reset_samples()
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), WORKER_START_TIMEOUT_S)
            report = json.loads(line)
            worker.http_port = int(report["http_port"])
            worker.udp_port = int(report["udp_port"])
            worker.tcp_port = int(report.get("tcp_port") or 0)
            worker.pipe_port = int(report.get("pipe_port") or 0)
        except (TimeoutError, ValueError, KeyError, TypeError):
            log.error("worker %d did not start (no port report)", worker.index)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return False
        worker.ready = True
        self.placement.set_ready(worker.index, True)
        log.info(
            "worker %d ready (pid %d): media udp port %d, ice-tcp port %d",
            worker.index,
            proc.pid,
            worker.udp_port,
            worker.tcp_port,
        )
        if not self.config.cluster.redis_url:
            # Clustered, the workers are cluster members: the cluster's bus and node links
            # join up a room spread over them, not these.
            self.announce_pipes()
            self._bus_tasks[worker.index] = asyncio.ensure_future(self._bus_link(worker))
        return True

    async def _bus_link(self, worker: WorkerProcess) -> None:
        """The room bus with ``worker`` (sfu/workers/bus.py): its events go to the other
        shards of their room, in the order it sent them, until it goes away."""
        if self._session is None:
            return
        try:
            ws = await self._session.ws_connect(
                worker.base_url + WORKER_BUS_PATH,
                headers={WORKER_KEY_HEADER: worker_key(self.secret)},
                max_msg_size=BUS_MAX_MESSAGE_BYTES,
            )
        except (aiohttp.ClientError, TimeoutError):
            log.warning("worker %d: no room bus", worker.index)
            return
        self._bus[worker.index] = ws
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(msg.data)
                    room, event = message["room"], message["event"]
                    if not isinstance(room, str):
                        raise TypeError("room")
                except (ValueError, KeyError, TypeError):
                    continue
                text = json.dumps({"room": room, "origin": worker.index, "event": event})
                for index in sorted(self.placement.shards_of(room) - {worker.index}):
                    peer = self._bus.get(index)
                    if peer is not None and not peer.closed:
                        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                            await peer.send_str(text)
        finally:
            if self._bus.get(worker.index) is ws:
                del self._bus[worker.index]
            await ws.close()
            # Its participants are gone: the other workers' shards forget them.
            gone = json.dumps({"room": "", "origin": worker.index, "event": SHARD_CLOSED})
            for peer in list(self._bus.values()):
                if not peer.closed:
                    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                        await peer.send_str(gone)

    def announce_pipes(self) -> None:
        """Tell every ready worker where the other ready workers' pipes are (after any
        worker started: a restarted one has a new port, and knows no one yet). Idempotent
        under overlap: while an announcement is in flight another is not started beside it
        (its older list could land after the newer one and drop or replace a pipe the newer
        one made); the one in flight goes round once more with the list as it is then."""
        if self._pipes_task is not None and not self._pipes_task.done():
            self._pipes_again = True
            return
        self._pipes_again = False
        self._pipes_task = asyncio.ensure_future(self._announce_until_current())

    async def _announce_until_current(self) -> None:
        """Announce, then again for as long as workers became ready meanwhile."""
        while True:
            await self._announce_pipes()
            if not self._pipes_again:
                return
            self._pipes_again = False

    async def _announce_pipes(self) -> None:
        """One announcement of the ready workers' pipe ports to each ready worker."""
        if self._session is None:
            return
        ready = [w for w in self.workers if w.ready and w.pipe_port]
        peers = {str(w.index): w.pipe_port for w in ready}
        for worker in ready:
            try:
                async with self._session.post(
                    worker.base_url + WORKER_PIPES_PATH,
                    json={"peers": peers},
                    headers={WORKER_KEY_HEADER: worker_key(self.secret)},
                    timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
                ) as resp:
                    if resp.status != 200:
                        log.warning("worker %d refused the pipe peers", worker.index)
            except (aiohttp.ClientError, TimeoutError):
                log.warning("worker %d did not take the pipe peers", worker.index)

    async def _keep(self, worker: WorkerProcess) -> None:
        """Run ``worker`` and restart it whenever it dies, until the supervisor stops."""
        delay = RESTART_DELAY_S
        while not self.stopping:
            try:
                started = await self._spawn(worker)
            except Exception:  # cannot spawn at all (no fds, no memory): retry later
                log.exception("cannot start worker %d", worker.index)
                worker.proc, started = None, False
            proc = worker.proc
            code: int | None = None
            if started and proc is not None:
                code = await proc.wait()
            else:
                code = proc.returncode if proc is not None else None
            worker.ready = False
            self.placement.set_ready(worker.index, False)
            self._forget_sessions(worker.index)
            if self._stopped():
                return
            worker.restarts += 1
            lived = clock.now() - worker.started_at
            delay = RESTART_DELAY_S if lived >= STABLE_AFTER_S else delay
            log.error(
                "worker %d exited (code %s) after %.1f s; restarting in %.2f s",
                worker.index,
                code,
                lived,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(RESTART_DELAY_MAX_S, delay * 2)

    async def _sample_loads(self) -> None:
        """Feed the placement each worker's CPU share and packet rate, every few seconds."""
        while True:
            await asyncio.sleep(LOAD_SAMPLE_S)
            now = clock.now()
            self.placement.forget_idle(now=now)
            for worker in self.workers:
                if not worker.ready:
                    continue
                cpu = worker.sample_cpu(now)
                packets = await self._load(worker)
                pps = worker.sample_packets(now, packets) if packets is not None else 0.0
                self.placement.observe(worker.index, cpu=cpu, pps=pps)
                await self._reconcile_sessions(worker)

    async def _load(self, worker: WorkerProcess) -> float | None:
        """Packets the worker has handled so far (its cheap load report, not its metrics:
        a full scrape every few seconds would cost a busy worker measurably)."""
        if self._session is None or not worker.ready:
            return None
        try:
            async with self._session.get(
                worker.base_url + WORKER_LOAD_PATH,
                timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
            ) as resp:
                if resp.status != 200:
                    return None
                report = await resp.json()
                cluster = report.get("cluster")
                worker.cluster = cluster if isinstance(cluster, dict) else None
                return float(report["packets"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return None

    async def _scrape(self, worker: WorkerProcess) -> str | None:
        """Worker's ``/metrics`` text, None when it does not answer."""
        if self._session is None or not worker.ready:
            return None
        try:
            async with self._session.get(
                worker.base_url + "/metrics",
                timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
            ) as resp:
                if resp.status != 200:
                    return None
                return await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    # -- the public HTTP front ----------------------------------------------------------

    def _forwarded_headers(self, request: web.Request) -> CIMultiDict[str]:
        """The request's end-to-end headers (repeated ones kept), with the client's address
        appended to ``X-Forwarded-For`` (the worker trusts only its supervisor's)."""
        headers = CIMultiDict(
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in _HOP_HEADERS and k.lower() != "x-forwarded-for"
        )
        chain = ", ".join(request.headers.getall("X-Forwarded-For", []))
        peer = request.remote or ""
        headers["X-Forwarded-For"] = f"{chain}, {peer}" if chain else peer
        return headers

    def _check_lost(self, worker: WorkerProcess) -> bool:
        """After a failed or broken upstream connection: if the worker process is gone,
        take it out of placement now (before its exit is reaped), so reconnects go to a
        live worker. True when it was lost."""
        if worker.alive():
            return False
        if worker.ready:
            worker.ready = False
            self.placement.set_ready(worker.index, False)
            log.warning("worker %d is gone; its rooms move on their next join", worker.index)
        return True

    async def _confirm_lost(self, worker: WorkerProcess) -> bool:
        """:meth:`_check_lost` after a broken connection, waiting a moment: a killed
        process's sockets close before it turns zombie, so its connections may break a
        little before it looks dead."""
        deadline = clock.now() + LOST_CONFIRM_S
        while not self._check_lost(worker):
            if clock.now() >= deadline:
                return False
            await asyncio.sleep(LOST_POLL_S)
        return True

    def _room_worker(self, room: str) -> WorkerProcess | None:
        """The worker of ``room`` (placed now if it is not yet), a live one if possible."""
        for _ in range(2):
            index = self.placement.place(room, now=clock.now())
            if index is None:
                return None
            worker = self.workers[index]
            if not self._check_lost(worker):
                return worker
        return None

    def _participant_worker(self, room: str) -> WorkerProcess | None:
        """The worker for a newcomer of ``room``: its home, or another shard once the home
        holds ``server.room_spread_subscribers`` of it or is saturated (placement.py)."""
        spread = self.config.server.room_spread_subscribers
        for _ in range(2):
            index = self.placement.place_participant(room, spread=spread, now=clock.now())
            if index is None:
                return None
            worker = self.workers[index]
            if not self._check_lost(worker):
                return worker
        return None

    def _any_ready(self) -> WorkerProcess | None:
        return next((w for w in self.workers if w.ready), None)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        """Any other request: to the worker of the room in its path, else the first ready.

        A WHIP/WHEP ``POST`` is a newcomer, placed like a WebSocket joiner (on a shard of a
        spread room); its session's follow-ups go where the session is. A room policy write
        reaches every worker once the room's home accepted it."""
        if request.path.startswith(_INTERNAL_PREFIX):
            raise web.HTTPNotFound()
        room = room_of_path(request.path)
        starts = room is not None and _starts_session(request.method, request.path)
        session_id = session_of_path(request.path)
        held = self._http_sessions.get(session_id) if session_id is not None else None
        if room is None:
            worker = self._any_ready()
        elif starts:
            worker = self._participant_worker(room)
        elif held is not None and held[1] == room and not self._check_lost(self.workers[held[0]]):
            worker = self.workers[held[0]]
        else:
            worker = self._room_worker(room)
        if worker is None or self._session is None:
            return web.json_response({"error": "no worker is ready"}, status=503)
        body = await request.read()
        headers = self._forwarded_headers(request)
        if starts and room is not None:
            # Counted before the worker answers: a shard opened for a WHEP viewer then
            # gets the room's events (placement.shards_of) while the viewer waits for them.
            self.placement.connected(room, worker.index)
        response: web.Response | None = None
        try:
            response = await self._request(worker, request, headers, body)
        finally:
            if starts and room is not None:
                self._session_opened(room, worker.index, response)
        if response is None:
            await self._confirm_lost(worker)
            return web.json_response({"error": "the room's worker did not answer"}, status=502)
        if request.method == "DELETE" and session_id is not None and response.status in (200, 404):
            self._session_ended(session_id)
        if (
            room is not None
            and request.method in _POLICY_WRITES
            and _is_policy_path(request.path)
            and response.status == 200
        ):
            await self._copy_policy(worker, request, headers, body)
        return response

    async def _request(
        self, worker: WorkerProcess, request: web.Request, headers: CIMultiDict[str], body: bytes
    ) -> web.Response | None:
        """``request`` as sent to ``worker``, and its answer; None when it did not answer."""
        assert self._session is not None
        try:
            async with self._session.request(
                request.method,
                worker.base_url + request.path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
                auto_decompress=False,
            ) as upstream:
                payload = await upstream.read()
                # Repeated headers (WHIP's Link, one per ICE server) stay repeated.
                out = CIMultiDict(
                    (k, v)
                    for k, v in upstream.headers.items()
                    if k.lower() not in _HOP_HEADERS and k.lower() not in ("date", "server")
                )
                return web.Response(status=upstream.status, headers=out, body=payload)
        except (aiohttp.ClientError, TimeoutError):
            return None

    def _session_opened(self, room: str, index: int, response: web.Response | None) -> None:
        """After a WHIP/WHEP ``POST``: remember the session's worker, or take back the
        connection counted for it when none was created."""
        location = response.headers.get("Location", "") if response is not None else ""
        session_id = location.rsplit("/", 1)[-1] if location else ""
        if (
            response is None
            or response.status != 201
            or not session_id
            or len(self._http_sessions) >= MAX_HTTP_SESSIONS
        ):
            self.placement.disconnected(room, index, now=clock.now())
            return
        self._http_sessions[session_id] = (index, room)

    @property
    def http_session_count(self) -> int:
        """WHIP/WHEP sessions the supervisor remembers (routes follow-ups of)."""
        return len(self._http_sessions)

    def session_worker(self, session_id: str) -> int | None:
        """The worker a WHIP/WHEP session is on, if the supervisor remembers it."""
        held = self._http_sessions.get(session_id)
        return held[0] if held is not None else None

    def _session_ended(self, session_id: str) -> None:
        """A WHIP/WHEP session ended (deleted, gone from its worker, or its worker died)."""
        held = self._http_sessions.pop(session_id, None)
        if held is not None:
            self.placement.disconnected(held[1], held[0], now=clock.now())

    def _forget_sessions(self, index: int) -> None:
        """Worker ``index`` died: its WHIP/WHEP sessions are gone with it."""
        for session_id in [s for s, (w, _) in self._http_sessions.items() if w == index]:
            self._session_ended(session_id)

    async def _reconcile_sessions(self, worker: WorkerProcess) -> None:
        """Forget the sessions ``worker`` no longer holds (their transport failed or timed
        out without a ``DELETE``), so they stop counting as the room's connections."""
        held = [s for s, (w, _) in self._http_sessions.items() if w == worker.index]
        if self._session is None or not held:
            return
        for start in range(0, len(held), WORKER_SESSIONS_MAX):
            batch = held[start : start + WORKER_SESSIONS_MAX]
            try:
                async with self._session.post(
                    worker.base_url + WORKER_SESSIONS_PATH,
                    json={"sessions": batch},
                    headers={WORKER_KEY_HEADER: worker_key(self.secret)},
                    timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
                ) as resp:
                    if resp.status != 200:
                        return
                    open_now = set((await resp.json())["open"])
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
                return
            for session_id in set(batch) - open_now:
                held_by = self._http_sessions.get(session_id)
                if held_by is not None and held_by[0] == worker.index:
                    self._session_ended(session_id)

    async def _copy_policy(
        self, home: WorkerProcess, request: web.Request, headers: CIMultiDict[str], body: bytes
    ) -> None:
        """A room policy change the home accepted, applied by every other ready worker too:
        any of them may hold (or later open) a shard of the room and admits its own
        joiners by it. A worker that does not answer is logged, not retried."""
        others = [w for w in self.workers if w.ready and w is not home]
        # Marked as a copy: the home audited the change, the others only apply it.
        headers = CIMultiDict(headers)
        headers[POLICY_COPY_HEADER] = worker_key(self.secret)
        answers = await asyncio.gather(*(self._request(w, request, headers, body) for w in others))
        for worker, answer in zip(others, answers, strict=True):
            if answer is None or answer.status != 200:
                log.warning("worker %d did not take a room policy change", worker.index)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        """The room protocol: read the ``join``, then relay both ways to the room's worker."""
        client = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=20.0)
        await client.prepare(request)
        try:
            first = await asyncio.wait_for(client.receive(), JOIN_TIMEOUT)
        except TimeoutError:
            await client.close(code=4008, message=b"no join within 10 s")
            return client
        if first.type != WSMsgType.TEXT:
            await client.close(code=4001, message=b"the first message must be a join")
            return client
        room = room_of_join(first.data)
        worker = self._participant_worker(room)
        if worker is None or self._session is None:
            await client.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"no worker ready")
            return client
        headers = self._forwarded_headers(request)
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions"):
            headers.pop(name, None)
        try:
            upstream = await self._session.ws_connect(
                worker.base_url + "/ws",
                headers=headers,
                max_msg_size=MAX_FRAME_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                autoping=True,
            )
        except (aiohttp.ClientError, TimeoutError):
            await self._confirm_lost(worker)
            await client.send_json(_WORKER_LOST_NOTICE)
            await client.close(code=WSCloseCode.GOING_AWAY, message=b"worker unavailable")
            return client
        self.placement.connected(room, worker.index)
        try:
            await upstream.send_str(first.data)
            await self._relay(client, upstream, worker)
        finally:
            self.placement.disconnected(room, worker.index, now=clock.now())
            if not upstream.closed:
                await upstream.close()
        return client

    async def _relay(
        self,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        worker: WorkerProcess,
    ) -> None:
        close_reason = [""]

        async def down() -> None:
            while True:
                msg = await upstream.receive()
                if msg.type == WSMsgType.TEXT:
                    await client.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await client.send_bytes(msg.data)
                else:
                    if msg.type == WSMsgType.CLOSE and isinstance(msg.extra, str):
                        close_reason[0] = msg.extra
                    return

        async def up() -> None:
            async for msg in client:
                if msg.type == WSMsgType.TEXT:
                    await upstream.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await upstream.send_bytes(msg.data)

        tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if client.closed:
            with contextlib.suppress(Exception):
                await upstream.close(code=client.close_code or WSCloseCode.OK)
            return
        code = upstream.close_code
        if code is None or code == WSCloseCode.ABNORMAL_CLOSURE:
            # The worker went away without a close frame (killed): the client reconnects,
            # and its rejoin is placed on a live worker.
            await self._confirm_lost(worker)
            with contextlib.suppress(Exception):
                await client.send_json(_WORKER_LOST_NOTICE)
            await client.close(code=WSCloseCode.GOING_AWAY, message=b"worker restarting")
        else:
            await client.close(code=code, message=close_reason[0].encode()[:120])

    async def _metrics(self, request: web.Request) -> web.Response:
        """Every worker's series (label ``worker``) plus the supervisor's own."""
        groups: list[list[Metric]] = [self._own_metrics()]
        texts = await asyncio.gather(*(self._scrape(w) for w in self.workers))
        for worker, text in zip(self.workers, texts, strict=True):
            if text:
                try:
                    groups.append(relabel(text, worker.index))
                except ValueError:
                    log.warning("worker %d served unparsable metrics", worker.index)
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(MergedMetrics(groups))
        response = web.Response(body=body, headers={"Cache-Control": "no-store"})
        response.headers["Content-Type"] = content_type
        return response

    def _own_metrics(self) -> list[Metric]:
        up = GaugeMetricFamily("sfu_worker_up", "1 while the worker is ready.", labels=["worker"])
        restarts = CounterMetricFamily(
            "sfu_worker_restarts", "Times the worker died and was restarted.", labels=["worker"]
        )
        rooms = GaugeMetricFamily(
            "sfu_worker_rooms", "Rooms the supervisor has placed on the worker.", labels=["worker"]
        )
        sessions = GaugeMetricFamily(
            "sfu_worker_http_sessions",
            "WHIP/WHEP sessions the supervisor routes to the worker.",
            labels=["worker"],
        )
        per_worker: dict[int, int] = {}
        for index, _room in self._http_sessions.values():
            per_worker[index] = per_worker.get(index, 0) + 1
        cpu = CounterMetricFamily(
            "sfu_worker_cpu_seconds", "CPU time of the worker's process.", labels=["worker"]
        )
        pps = GaugeMetricFamily(
            "sfu_worker_load_packets_per_second",
            "Media packets in plus out per second, as last sampled for placement.",
            labels=["worker"],
        )
        for worker in self.workers:
            label = [str(worker.index)]
            up.add_metric(label, 1.0 if worker.ready else 0.0)
            restarts.add_metric(label, float(worker.restarts))
            rooms.add_metric(label, float(self.placement.rooms_on(worker.index)))
            sessions.add_metric(label, float(per_worker.get(worker.index, 0)))
            cpu.add_metric(label, worker.cpu_total)
            pps.add_metric(label, self.placement.loads[worker.index].pps)
        # The public listener's limits (the workers' own series are their loopback ones).
        refused = CounterMetricFamily(
            "sfu_http_connections_refused",
            "HTTP connections refused or closed by a limit, by reason.",
            labels=["reason"],
        )
        for reason, n in self.limiter.refused.items():
            refused.add_metric([reason], float(n))
        open_now = GaugeMetricFamily(
            "sfu_http_connections",
            "Open TCP connections on the HTTP listeners, by listener.",
            labels=["listener"],
        )
        open_now.add_metric([PUBLIC_LISTENER], float(self.limiter.open))
        return [up, restarts, rooms, sessions, cpu, pps, refused, open_now]

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers (waiting for all of them), then the public listener."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        self._tasks = [asyncio.ensure_future(self._keep(w)) for w in self.workers]
        deadline = clock.now() + WORKER_START_TIMEOUT_S
        while not all(w.ready for w in self.workers) and clock.now() < deadline:
            await asyncio.sleep(0.05)
        self._tasks.append(asyncio.ensure_future(self._sample_loads()))
        http = self.config.http
        wanted = http.max_connections * 2 + 1024  # each client connection has an upstream one
        soft, _ = raise_file_limit(wanted)
        if soft < wanted:
            log.warning("the file limit (%d) is below twice http.max_connections", soft)
        for addr in await self._http.start(http.host, http.port):
            log.info("http listening on %s", _format(addr))
        if self._ops is not None:
            for addr in await self._ops.start(http.ops_host or http.host, http.ops_port):
                log.info("operations (health, metrics) listening on %s", _format(addr))

    async def stop(self) -> None:
        """Drain: every worker gets SIGTERM and drains its sessions; then close the front."""
        self.stopping = True
        for worker in self.workers:
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        bound = self.config.server.drain_timeout_s + _CLOSE_TIMEOUT_S + 1.0
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                await asyncio.wait_for(proc.wait(), bound)
            except TimeoutError:
                log.warning("worker %d did not exit in time; killing it", worker.index)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        helpers = [*self._tasks, *self._bus_tasks.values()]
        if self._pipes_task is not None:
            helpers.append(self._pipes_task)
        for task in helpers:
            task.cancel()
        for task in helpers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.close()
        if self._ops is not None:
            await self._ops.close()
        if self._session is not None:
            await self._session.close()
        log.info("stopped")


def _format(addr: tuple[Any, ...]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def _run(config: Config, workers: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(config, workers)
    try:
        await supervisor.start()
    except OSError as exc:
        log.error("cannot bind listening sockets: %s", exc)
        await supervisor.stop()
        return 1
    if not any(w.ready for w in supervisor.workers):
        log.error("no worker started; exiting")
        await supervisor.stop()
        return 1
    log.info("ready (%d workers)", workers)
    await stop.wait()
    log.info("shutting down: draining the workers")
    await supervisor.stop()
    return 0


def run_supervisor(config: Config, workers: int) -> int:
    """Process entry point of ``sfu serve`` with several workers; returns the exit code."""
    configure_logging(config.logging, worker_name=config.server.worker_name)
    log.info("starting %d forwarding workers (started at %s)", workers, time.strftime("%H:%M:%S"))
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(config, workers))
