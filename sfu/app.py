"""Composition root: wires config, logging, the media UDP socket and the HTTP server.

:class:`Server` owns the sockets and the readiness state; :func:`run` adds signal handling
and the bounded drain; :func:`serve` is the process entry point (logging + uvloop).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

from sfu import __version__, clock
from sfu.cluster.directory import Directory, LocalDirectory, NodeInfo
from sfu.cluster.links import LinkSetupError, NodeLinks
from sfu.cluster.node_pipes import NodePipes
from sfu.cluster.placement import MOVED_KINDS, LoadMeter, NodePlacement, signaling_url
from sfu.cluster.redis_directory import RedisDirectory
from sfu.cluster.registry import NodeRegistry, node_from_config
from sfu.cluster.room_bus import ClusterRoomBus, NodeTracks
from sfu.cluster.room_state import RedisRoomState
from sfu.config import Config, ConfigError, parse_workers
from sfu.core.dataplane import DataPlane
from sfu.core.kernels import Kernels, default_kernels
from sfu.echo import EchoService
from sfu.io.address_check import address_warnings, read_rmem_max
from sfu.io.deadline_timer import DeadlineTimer
from sfu.io.http import HttpServer, build_http_app
from sfu.io.http_limits import (
    ConnectionLimiter,
    ConnectionLimits,
    HttpLimitCounters,
    raise_file_limit,
)
from sfu.io.memory import HeapTrimmer, libc_malloc_trim
from sfu.io.tcp import IceTcpListener, open_ice_tcp_listener
from sfu.io.udp import SOCKET_BUFFER_BYTES, Address, MediaSocket, open_media_socket
from sfu.logging_setup import configure_logging
from sfu.metrics.cluster import ClusterCollector
from sfu.metrics.collector import MetricSources
from sfu.metrics.http import add_metrics_route, build_registry
from sfu.metrics.loop_lag import LoopLagMonitor
from sfu.negotiation import HostCandidate
from sfu.room.chat import ChatLimits, ChatRelay
from sfu.room.persistence import StateError, StateStore
from sfu.room.room import Participant
from sfu.room.security import RoomSecurity
from sfu.room.service import CLOSE_MOVED, RoomService
from sfu.signaling.admin_http import add_admin_routes
from sfu.signaling.auth import signing_secret
from sfu.signaling.cors import add_cors
from sfu.signaling.echo_http import add_echo_routes
from sfu.signaling.room_ws import JoinGuard, RoomSockets, add_room_routes
from sfu.signaling.turn import TurnCredentials, turn_relay_hosts
from sfu.signaling.web_http import add_web_routes
from sfu.signaling.whip_forward import WhipForwarder
from sfu.signaling.whip_http import HttpSessions, add_whip_routes
from sfu.transport.certificate import Certificate
from sfu.transport.ice import is_tcp
from sfu.transport.media_lane import LaneKernels
from sfu.transport.port import MediaPort
from sfu.transport.tcp import IceTcpGate
from sfu.transport.transport import WebRtcTransport
from sfu.workers.bus import WORKER_BUS_PATH, WORKER_KEY_HEADER, WorkerBus, worker_key
from sfu.workers.cpus import cgroup_quota_cpus, usable_cpus
from sfu.workers.pipes import PipeMetrics, WorkerPipes

__all__ = [
    "WORKER_LOAD_PATH",
    "WORKER_PIPES_PATH",
    "WORKER_SESSIONS_MAX",
    "WORKER_SESSIONS_PATH",
    "DatagramSink",
    "Server",
    "build_data_plane",
    "connect_data_plane",
    "fast_path_implementation",
    "format_address",
    "run",
    "serve",
    "serve_worker",
    "worker_count",
]

log = logging.getLogger(__name__)

_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
#: A second signal this soon after the first is the same request, not "force exit".
_SIGNAL_REPEAT_S: Final = 1.0
#: Once sessions have ended (or the drain deadline passed), closing sockets takes at most this.
_CLOSE_TIMEOUT_S: Final = 5.0
#: How often a drain checks whether the last session has ended.
_DRAIN_POLL_S: Final = 0.1
#: A draining node of a cluster asks its participants to move over at most this long (or half
#: the drain timeout when that is shorter), spread evenly: a thousand reconnections in one
#: instant would land on the other nodes' signaling and ICE as one burst.
MOVE_SPREAD_S: Final = 2.0
#: The reason a moved WHIP/WHEP session's RTCP BYE gives (RFC 3550 §6.6: free text).
MOVED_BYE_REASON: Final = b"moved to another node"
#: Participants that have no signaling channel (WHIP, WHEP): a drain ends their session with
#: an RTCP BYE and a DTLS close_notify, and their client re-POSTs to the URL it used.
_HTTP_KINDS: Final = frozenset({"whip", "whep"})
#: The order a drain moves participants in, by kind (stable within a kind; see
#: :meth:`Server._move_participants`).
_MOVE_ORDER: Final = {"whip": 0, "websocket": 1, "whep": 2}
#: At most one traceback this often for datagrams that hit a bug (the rest are only counted),
#: so a packet that triggers one cannot flood the log.
_ERROR_LOG_INTERVAL_S: Final = 60.0
#: The forwarder's stream table never gets smaller than its default (16384 source streams),
#: so small configurations keep the headroom they had.
_MIN_FORWARDER_STREAMS: Final = 16384
#: Source streams one transport may bring: audio, three simulcast layers of camera video and
#: of a screen share, with room to spare. A stream that does not fit is not lost: it takes
#: the Python path (``DataPlane.add_stream`` leaves it there).
_STREAMS_PER_TRANSPORT: Final = 8
#: Forwarder slots kept beyond the port's transports for relay pipes' far ends (one per
#: publication another worker or node relays here; ``DataPlane.open_source``), so they never
#: take a participant's slot. A publication beyond them takes the Python path.
_RELAY_SOURCES: Final = 256
#: The rooms' timer runs at most this long after relayed media arrived (the pipes' NACK poll
#: interval, ``sfu.core.relay.DEMAND_POLL_S``): a gap is seen, and NACKed, as soon as it would
#: have been on the Router's path.
RELAYED_REPLAY_S: Final = 0.02
#: The operations listener's own connection budget (``http.ops_port``): probes and scrapers
#: are few, so this is plenty, and a flood of the main listener never touches it.
OPS_MAX_CONNECTIONS: Final = 64
OPS_MAX_CONNECTIONS_PER_SOURCE: Final = 16
#: File descriptors wanted beyond the HTTP connection caps: the media socket, the event loop,
#: logs, the audit and state files, and room to spare.
FD_RESERVE: Final = 1024


def build_data_plane(max_transports: int, kernels: Kernels) -> DataPlane:
    """A data plane whose forwarder (of ``kernels``) holds ``max_transports`` transports and
    their streams, and as many relayed publications as :data:`_RELAY_SOURCES`."""
    slots = max_transports + _RELAY_SOURCES
    return DataPlane(
        kernels.Forwarder(
            clock=clock.now,
            max_transports=slots,
            max_streams=max(_MIN_FORWARDER_STREAMS, _STREAMS_PER_TRANSPORT * slots),
        ),
        kernels=kernels,
        max_sources=_RELAY_SOURCES,
    )


def connect_data_plane(port: MediaPort, dataplane: DataPlane) -> None:
    """Keep ``dataplane`` in step with the port's transports (registered once connected and
    keyed, re-registered when they move, released when the port forgets them).

    Raises :class:`ValueError` when the forwarder holds fewer transports than the port: a
    subscriber it could not register would get no forwarded media.
    """
    if dataplane.forwarder.max_transports < port.max_transports:
        raise ValueError("the data plane holds fewer transports than the media port")
    port.on_transport_changed = dataplane.sync
    port.on_transport_closed = dataplane.release


#: A worker's stdin is a pipe from its supervisor; nothing is sent on it, its end is the news.
_STDIN_FD: Final = 0


def worker_count(config: Config) -> int:
    """How many forwarding workers ``server.workers`` asks for on this machine."""
    count = parse_workers(config.server.workers)
    if count is None:  # a validated config never gets here
        raise ValueError(f"invalid server.workers {config.server.workers!r}")
    if count == 0:
        return usable_cpus(quota=cgroup_quota_cpus())
    return count


def serve_worker(config: Config, index: int) -> int:
    """Entry point of one worker process (``sfu worker``, started by the supervisor).

    It runs the single-process server, then reports its bound ports as one JSON line on
    stdout; it drains and exits on SIGTERM or when its stdin (the supervisor) closes.
    """
    configure_logging(config.logging, worker_name=config.server.worker_name)
    import uvloop

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def parent_input() -> None:
            # End of file (or an error) on stdin: the supervisor is gone.
            try:
                data = os.read(_STDIN_FD, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(_STDIN_FD)
                stop.set()

        loop.add_reader(_STDIN_FD, parent_input)

        def report(server: Server) -> None:
            tcp = server.tcp_address
            line = {
                "index": index,
                "pid": os.getpid(),
                "http_port": int(server.http_addresses[0][1]),
                "udp_port": int(server.media_address[1]),
                "tcp_port": int(tcp[1]) if tcp is not None else 0,
                "pipe_port": server.pipes.port if server.pipes is not None else 0,
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

        return await run(config, stop=stop, on_ready=report, worker_index=index)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def fast_path_implementation() -> str:
    """Which packet fast path is active: ``"cython"``, ``"python"`` or ``"unknown"``."""
    try:
        from sfu._fastpath import IMPLEMENTATION  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return "unknown"
    return str(IMPLEMENTATION)


def format_address(addr: Address) -> str:
    """``host:port``, with IPv6 hosts in brackets (for the server's own bind addresses)."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


#: A worker's load report on its loopback listener (read by the supervisor, which never
#: forwards this path from its public listener).
WORKER_LOAD_PATH: Final = "/_worker/load"
#: Where the supervisor tells a worker the other workers' pipe ports (loopback only, never
#: forwarded from the public listener, like the load report).
WORKER_PIPES_PATH: Final = "/_worker/pipes"
#: Where the supervisor asks which of the WHIP/WHEP sessions it routes to a worker are still
#: open there (a session whose transport failed ends without a ``DELETE``).
WORKER_SESSIONS_PATH: Final = "/_worker/sessions"
#: Most session ids one such question may name (about 25 bytes each in the JSON body, well
#: inside ``http.max_body_bytes``' default of 64 KiB).
WORKER_SESSIONS_MAX: Final = 1000

#: How often transport timers (ICE consent, DTLS retransmission and timeouts) are checked.
TIMER_INTERVAL_S: Final = 0.05


class DatagramSink:
    """The media socket's callback: hands each datagram to the port, never lets it raise.

    The port itself drops and counts bad input; this is the last line of defence against a
    bug, so one malformed packet can never take the event loop's reader down.
    """

    __slots__ = ("_last_error_log", "count", "errors", "port")

    def __init__(self, port: MediaPort) -> None:
        self.port = port
        self.count = 0
        self.errors = 0
        self._last_error_log = -1e9

    def __call__(self, data: bytes, addr: Address) -> None:
        self.count += 1
        now = clock.now()
        try:
            self.port.datagram_received(data, addr, now)
        except Exception:
            self.errors += 1
            if now - self._last_error_log > _ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                log.exception("internal error handling a media datagram (dropped)")


class Server:
    """The running SFU process: media socket, HTTP listener and readiness state."""

    def __init__(self, config: Config, *, worker_index: int | None = None) -> None:
        self.config = config
        #: This process's index when it is one of several workers behind a supervisor.
        self.worker_index = worker_index
        self.certificate = Certificate.generate()
        #: The join-token signing key for this process (configured, or random on loopback).
        self.token_secret = signing_secret(config)
        #: The per-packet classes (compiled or references) of this whole process.
        self.kernels = default_kernels()
        self.port = MediaPort(
            self.certificate,
            self._send_datagram,
            max_transports=config.media.max_transports,
            max_pending=config.media.max_pending_transports,
            max_pending_per_source=config.media.max_pending_per_source,
            max_pending_per_identity=config.media.max_pending_per_identity,
            connect_timeout=config.media.ice_connect_timeout_s,
        )
        #: The forwarder that carries established media, and its control-plane bookkeeping.
        self.dataplane = build_data_plane(config.media.max_transports, self.kernels)
        connect_data_plane(self.port, self.dataplane)
        release = self.port.on_transport_closed

        def closed(transport: WebRtcTransport) -> None:
            release(transport)
            self._log_failure(transport)

        self.port.on_transport_closed = closed
        #: The TURN relays' addresses: peers coming from them count as relayed candidates.
        self.port.counters.relay_hosts = turn_relay_hosts(config.turn.urls)
        #: ICE-TCP connections' framing, limits and timeouts (the listener feeds it).
        self.tcp_gate = IceTcpGate(self.port.is_authenticated)
        self.sink = DatagramSink(self.port)
        self.echo: EchoService | None = None
        self.rooms: RoomService | None = None
        self.sockets = RoomSockets()
        self.http_sessions = HttpSessions()
        self._udp: MediaSocket | None = None
        self._tcp: IceTcpListener | None = None
        #: Short-lived TURN credentials for clients (TURN REST API), when [turn] is set.
        self.turn = TurnCredentials(config.turn)
        self._timer_task: asyncio.Task[None] | None = None
        self._room_timer: DeadlineTimer | None = None
        #: Releases the pacers' backlog between media batches (the batches release it too).
        self._pacer_timer: DeadlineTimer | None = None
        self._draining = False
        self.loop_lag = LoopLagMonitor()
        #: Gives freed heap back to the system after sessions end (see sfu/io/memory.py).
        self.heap = HeapTrimmer(trim=libc_malloc_trim(), collect=gc.collect)
        #: This node in the cluster directory (Redis when ``cluster.redis_url`` is set, else
        #: in-process). Clustered, every forwarding worker is a member of its own
        #: (``<node_id>.w<index>``: its own lease, link, rooms and placement); a lone node's
        #: workers have one registry, worker 0's.
        self.cluster: NodeRegistry | None = None
        clustered = bool(config.cluster.redis_url)
        if clustered or worker_index is None or worker_index == 0:
            directory: Directory = (
                RedisDirectory(config.cluster.redis_url) if clustered else LocalDirectory(clock.now)
            )
            self.cluster = NodeRegistry(
                directory,
                node_from_config(config.cluster, worker_index if clustered else None),
                load=self._node_load,
            )
        #: This node's load for its lease: CPU share and seats taken.
        self.load_meter = LoadMeter(config.cluster.capacity_participants)
        #: Where joins go when this node (this worker, of a node that runs several) is full
        #: or drains; clustered only.
        self.placement: NodePlacement | None = None
        if self.cluster is not None and clustered:
            registry = self.cluster
            self.placement = NodePlacement(
                local=lambda: registry.node,
                nodes=lambda: registry.peers,
                generation=lambda: registry.renewals,
                max_load=config.cluster.max_load,
                room_nodes=self._room_nodes,
                lookup=registry.room_nodes,
            )
        #: Sends WHIP/WHEP POSTs placed on another node there (``whip_placement = "proxy"``).
        self.whip_forwarder: WhipForwarder | None = None
        if self.placement is not None and config.cluster.whip_placement == "proxy":
            self.whip_forwarder = WhipForwarder()
        #: The rooms' bus between cluster members and their home claims (clustered).
        self.room_bus: ClusterRoomBus | None = None
        #: QUIC links to the other nodes, when this node offers one (cluster.advertise_address).
        self.links: NodeLinks | None = None
        #: The relay of publications over those links (set when the rooms start clustered).
        self.node_pipes: NodePipes | None = None
        if self.cluster is not None and config.cluster.advertise_address:
            self.links = NodeLinks(self.cluster.node.node_id, config.cluster, config.media.udp_host)
            # The lanes seal with this data plane's kernel, so that its forwarder seals the
            # relayed packets it forwards through the same keys and counters.
            self.links.lane_kernels = LaneKernels(self.kernels.LaneSealer, self.kernels.LaneOpener)
            # The links' socket is read by the data plane: relayed media of the links' relay
            # inputs is forwarded there, the rest comes to the links as before.
            self.links.reader = self.dataplane.read_link
        self.http_app = build_http_app(
            readiness=self.readiness,
            max_body_bytes=config.http.max_body_bytes,
            details=self._cluster_details,
        )
        http = config.http
        exempt = frozenset(http.trusted_proxies)
        self.http_limiter = ConnectionLimiter(
            ConnectionLimits(
                http.max_connections, http.max_connections_per_source, http.header_timeout_s, exempt
            ),
            "http",
        )
        #: The operations listener (``http.ops_port``): probes and metrics only, its own budget.
        self.ops_app: web.Application | None = None
        self.ops_limiter = ConnectionLimiter(
            ConnectionLimits(
                OPS_MAX_CONNECTIONS, OPS_MAX_CONNECTIONS_PER_SOURCE, http.header_timeout_s
            ),
            "ops",
        )
        self.http_limits = HttpLimitCounters([self.http_limiter])
        if http.ops_port >= 0:
            self.ops_app = build_http_app(
                readiness=self.readiness, max_body_bytes=1024, details=self._cluster_details
            )
            self.http_limits.limiters.append(self.ops_limiter)
        self.metrics = build_registry(
            MetricSources(
                port=self.port,
                forwarder=self.dataplane.forwarder,
                link_drops=lambda: (
                    self.dataplane.link_handler_errors,
                    self.dataplane.relay_in_orphans,
                ),
                rooms=lambda: self.rooms,
                loop_lag=self.loop_lag,
                implementation=fast_path_implementation(),
                version=__version__,
                ready=lambda: self.readiness() is None,
                draining=lambda: self._draining,
                signaling_connections=lambda: len(self.sockets.open),
                http_limits=lambda: self.http_limits,
                tcp_gate=lambda: self.tcp_gate,
            )
        )
        if self.cluster is not None:
            self.metrics.register(
                ClusterCollector(
                    self.cluster,
                    lambda: self.links,
                    lambda: self.room_bus,
                    lambda: self.node_pipes,
                    lambda: self.placement,
                    lambda: self.whip_forwarder.results if self.whip_forwarder else None,
                )
            )
        #: The pipes and the room bus to the other workers (rooms spread over workers), in
        #: a worker of a lone node only (a clustered node's workers use the cluster's).
        self.pipes: WorkerPipes | None = None
        self.bus: WorkerBus | None = None
        if worker_index is not None:
            self.http_app.router.add_get(WORKER_LOAD_PATH, self._worker_load)
            self.http_app.router.add_post(WORKER_SESSIONS_PATH, self._worker_sessions)
        if worker_index is not None and not clustered:
            self.pipes = WorkerPipes(worker_index, lambda: self.rooms, clock.now)
            self.bus = WorkerBus(lambda: self.rooms, clock.now, self.token_secret)
            self.metrics.register(PipeMetrics(self.pipes))
            self.http_app.router.add_post(WORKER_PIPES_PATH, self._worker_pipes)
            self.http_app.router.add_get(WORKER_BUS_PATH, self.bus.handle)
        if config.metrics.enabled:
            add_metrics_route(self.http_app, self.metrics)
            if self.ops_app is not None:
                add_metrics_route(self.ops_app, self.metrics)
        self._http = HttpServer(
            self.http_app,
            shutdown_timeout=config.server.drain_timeout_s,
            access_log=config.logging.debug_personal_data,
            keepalive_timeout=http.keepalive_timeout_s,
            limiter=self.http_limiter,
            clock=clock.now,
        )
        #: Where room policies and bans persist (``rooms.state_dir``), once started.
        self.room_state: StateStore | None = None
        self._ops: HttpServer | None = None
        if self.ops_app is not None:
            self._ops = HttpServer(
                self.ops_app,
                shutdown_timeout=config.server.drain_timeout_s,
                keepalive_timeout=http.keepalive_timeout_s,
                limiter=self.ops_limiter,
                clock=clock.now,
            )

    async def _worker_load(self, _request: web.Request) -> web.Response:
        """A worker's load for its supervisor's placement, cheap enough to poll: datagrams
        through the forwarder (in, fast and slow, and out) so far; and, clustered (each
        worker a member), its ``cluster`` part of ``/readyz`` (the supervisor's ``/readyz``
        shows them)."""
        forwarder = self.dataplane.forwarder
        packets = forwarder.fast_packets + forwarder.slow_packets + forwarder.sent_packets
        return web.json_response({"packets": packets, **self._cluster_details()})

    async def _peers_changed(self, nodes: list[NodeInfo]) -> None:
        """The live nodes after a lease renewal: the links dial them, the rooms drop the
        participants of nodes that are gone."""
        if self.links is not None:
            await self.links.update(nodes)
        if self.room_bus is not None:
            await self.room_bus.peers_changed(nodes)

    def _cluster_details(self) -> dict[str, object]:
        """The ``cluster`` part of ``/readyz`` when clustered (no personal data: node ids and
        health); a single node's body stays ``{"status": "ok"}``."""
        if self.cluster is None or not self.config.cluster.redis_url:
            return {}
        status = self.cluster.status()
        if self.links is not None:
            status["links_up"] = sorted(self.links.up)
        return {"cluster": status}

    async def _worker_pipes(self, request: web.Request) -> web.Response:
        """The supervisor's list of the other workers' pipe ports: ``{"peers": {index:
        port}}``; a precise 400 for anything else, 403 without the supervisor's key."""
        shown = request.headers.get(WORKER_KEY_HEADER, "")
        if not hmac.compare_digest(shown.encode(), worker_key(self.token_secret).encode()):
            return web.json_response({"error": "not the supervisor"}, status=403)
        try:
            body = await request.json()
            peers = {int(k): int(v) for k, v in body["peers"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response({"error": 'expected {"peers": {index: port}}'}, status=400)
        if any(not 0 < port < 65536 or index < 0 for index, port in peers.items()):
            return web.json_response({"error": "peer index or port out of range"}, status=400)
        if self.pipes is not None:
            self.pipes.set_peers(peers)
        return web.json_response({"peers": len(peers)})

    async def _worker_sessions(self, request: web.Request) -> web.Response:
        """Which of the WHIP/WHEP session ids the supervisor names are still open here:
        ``{"sessions": [id, ...]}`` answered by ``{"open": [id, ...]}``; 403 without the
        supervisor's key (the ids are capabilities), a precise 400 for anything else."""
        shown = request.headers.get(WORKER_KEY_HEADER, "")
        if not hmac.compare_digest(shown.encode(), worker_key(self.token_secret).encode()):
            return web.json_response({"error": "not the supervisor"}, status=403)
        try:
            body = await request.json()
            asked = body["sessions"]
            if not isinstance(asked, list) or not all(isinstance(s, str) for s in asked):
                raise TypeError("sessions")
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"sessions": [id, ...]}'}, status=400)
        if len(asked) > WORKER_SESSIONS_MAX:
            return web.json_response({"error": "too many session ids"}, status=400)
        self.http_sessions.reap()
        live = self.http_sessions.by_id
        return web.json_response({"open": [s for s in asked if s in live]})

    @property
    def draining(self) -> bool:
        """True once shutdown has begun; ``/readyz`` then reports 503."""
        return self._draining

    def readiness(self) -> str | None:
        """``None`` when ready for traffic, else why not (served by ``/readyz``)."""
        if self._draining:
            return "draining"
        if self._udp is None or not self._udp.is_open:
            return "media socket not bound"
        if not self._http.is_listening:
            return "http not listening"
        return None

    @property
    def media_address(self) -> Address:
        """The bound media UDP address; raises if not bound."""
        if self._udp is None:
            raise RuntimeError("media socket not bound")
        return self._udp.local_address

    @property
    def http_addresses(self) -> list[Address]:
        """The bound HTTP listener addresses (empty when not listening)."""
        return self._http.addresses

    @property
    def ops_addresses(self) -> list[Address]:
        """The bound operations listener addresses (empty when off or not listening)."""
        return self._ops.addresses if self._ops is not None else []

    @property
    def tcp_address(self) -> Address | None:
        """The bound ICE-TCP address (None when ICE-TCP is off or not started)."""
        return self._tcp.local_address if self._tcp is not None else None

    def candidates(self) -> list[HostCandidate]:
        """Our host candidates: UDP on every announced address, then ICE-TCP on each."""
        hosts = self.config.announced_addresses()
        out: list[HostCandidate] = [(host, self.media_address[1]) for host in hosts]
        if self._tcp is not None:
            tcp_port = int(self._tcp.local_address[1])
            out += [(host, tcp_port, "tcp") for host in hosts]
        return out

    def _log_failure(self, transport: WebRtcTransport) -> None:
        """One INFO line per transport that failed to connect; its peer only with debug on."""
        failure = transport.failure
        if failure is None:
            return
        stage, reason = failure.value
        peer = ""
        address = transport.ice.selected_address
        if self.config.logging.debug_personal_data and address is not None:
            peer = f" peer={format_address((address[0], address[1]))}"
        log.info(
            "transport failed to connect: stage=%s reason=%s candidate=%s%s",
            stage,
            reason,
            transport.candidate_type,
            peer,
        )

    def _ice_servers(self) -> list[dict[str, object]]:
        server = self.turn.issue(wall_now=time.time())
        return [] if server is None else [server.to_json()]

    def _pump(self, sock: socket.socket, now: float) -> list[tuple[bytes, Address]]:
        """The media socket's reader: the forwarder's batch, then its ICE-TCP egress."""
        slow = self.dataplane.forwarder.pump(sock, now)
        self._relay(now)
        self.dataplane.release_paced(now)  # paced transports: what their budget allows, now
        self._send_framed()
        if self._room_timer is not None:
            self._room_timer.run_if_due(now)  # the loop is awake anyway: no wakeup of its own
        return slow

    def _run_pacers(self, now: float) -> None:
        """The pacer timer: what the backlogged pacers let go now (the data plane re-arms
        the timer for the next), and its ICE-TCP share."""
        self.dataplane.release_paced(now)
        self._send_framed()

    def _after_ingest(self, now: float) -> None:
        """After the forwarder took relayed packets: the ICE-TCP egress, and the rooms' timer
        when due, and due within :data:`RELAYED_REPLAY_S` at the latest: its replay feeds the
        remote publications' NACK state, which their pipes' poll reads every 20 ms (a
        relayed stream has no peer of its own whose timers would bring the replay)."""
        self._send_framed()
        if self._room_timer is not None:
            self._room_timer.arm(now + RELAYED_REPLAY_S)
            self._room_timer.run_if_due(now)

    def _tcp_datagram(self, data: bytes, addr: Address) -> None:
        """One datagram from an ICE-TCP connection: the forwarder first (media of registered
        streams is forwarded as from UDP), the rest to the port like any slow-path datagram."""
        now = clock.now()
        slow, egress = self.dataplane.forwarder.process(((data, addr),), now)
        self._relay(now)
        self.dataplane.release_paced(now)
        if egress and self._udp is not None:
            for packet, destination in egress:
                self._udp.sendto(packet, destination)
        self._send_framed()
        for packet, source in slow:
            self.sink(packet, source)

    def _relay(self, now: float) -> None:
        """What the forwarder logged for relayed publications, to their pipes' taps."""
        try:
            self.dataplane.relay(now)
        except Exception:  # pragma: no cover - a bug must not stop the media socket
            log.exception("internal error relaying to the pipes")

    def _send_framed(self) -> None:
        """Write what the forwarder sent to ICE-TCP transports to their connections."""
        framed = self.dataplane.forwarder.drain_framed()
        if framed and self._tcp is not None:
            for packet, destination in framed:
                self._tcp.sendto(packet, destination)

    def _send_datagram(self, data: bytes, addr: Address) -> None:
        if is_tcp(addr):
            if self._tcp is not None:
                self._tcp.sendto(data, addr)
        elif self._udp is not None:
            self._udp.sendto(data, addr)

    async def _run_timers(self) -> None:
        """Drive every transport's timers from the loop (the cores only take ``now``); the
        rooms' timers have their own deadline timer (:meth:`_run_rooms`)."""
        while True:
            await asyncio.sleep(TIMER_INTERVAL_S)
            now = clock.now()
            try:
                self.port.poll(now)
            except Exception:  # pragma: no cover - a bug must not stop every timer
                log.exception("internal error in transport timers")
            self.heap.observe(now, self.port.transport_count)

    def _run_rooms(self, now: float) -> float | None:
        """The room service's due timers (peers, speakers, expiry); returns the next one."""
        rooms = self.rooms
        if rooms is None:
            return None
        rooms.poll(now, time.time())
        return rooms.next_timer()

    async def start(self) -> None:
        """Bind the media socket, then the HTTP listener; log the bound addresses."""
        media, http = self.config.media, self.config.http
        self._udp = await open_media_socket(
            media.udp_host, media.udp_port, self._pump, self.sink, clock.now
        )
        log.info("media listening on udp %s", format_address(self._udp.local_address))
        # Relayed media the forwarder takes from the pipes (``DataPlane.ingest``) leaves on
        # the media socket, as pumped media does.
        self.dataplane.socket = self._udp.socket
        self.dataplane.after_ingest = self._after_ingest
        self.dataplane.defer = asyncio.get_running_loop().call_soon
        if media.tcp_enabled:
            self._tcp = await open_ice_tcp_listener(
                media.udp_host, media.tcp_port, self.tcp_gate, self._tcp_datagram, clock.now
            )
            self._tcp.on_closed = self.port.connection_closed
            log.info("ICE-TCP listening on tcp %s", format_address(self._tcp.local_address))
        for warning in address_warnings(
            self.config.announced_addresses(),
            udp_host=media.udp_host,
            nat_mapping=media.nat_mapping,
            wanted_buffer=SOCKET_BUFFER_BYTES,
            rmem_max=read_rmem_max(),
        ):
            log.warning("self-check: %s", warning)
        log.info(
            "announcing ICE candidates: %s",
            ", ".join(
                f"{c[2] if len(c) == 3 else 'udp'} {format_address((c[0], c[1]))}"
                for c in self.candidates()
            ),
        )
        if not self.config.auth.jwt_secret:
            log.info("auth: no jwt_secret configured; using a random key for this process")
        candidates = self.candidates()
        if self.config.echo.enabled:
            self.echo = EchoService(self.port, candidates)
            add_echo_routes(
                self.http_app,
                self.echo,
                clock.now,
                trusted_proxies=self.config.http.trusted_proxies,
            )
            log.info("echo endpoint enabled at POST /echo (test page: /echo-test)")
        # Meeting security: room policies, bans, audit log, password limits, admin API.
        store: StateStore | None = None
        if self.links is not None and self.cluster is not None:
            link_host, link_port = await self.links.start()
            log.info(
                "cluster: node links listening on udp %s", format_address((link_host, link_port))
            )
        if self.cluster is not None:
            self.cluster.on_peers = self._peers_changed
            await self.cluster.start()
            log.info(
                "cluster: node %s (region %s) %s the %s directory",
                self.cluster.node.node_id,
                self.cluster.node.region,
                "registered in" if self.cluster.connected else "keeps trying to reach",
                "Redis" if self.config.cluster.redis_url else "in-process",
            )
        if self.config.cluster.redis_url:
            # Every worker of a clustered node reads and writes the cluster's policies and bans.
            store = RedisRoomState(self.config.cluster.redis_url)
        security = RoomSecurity.from_config(
            self.config, now=clock.now(), wall=time.time(), store=store
        )
        self.room_state = security.state
        self.rooms = RoomService(
            self.port,
            candidates,
            clock=clock.now,
            limits=security.limits,
            policies=security.policies,
            bans=security.bans,
            audit=security.audit,
            dataplane=self.dataplane,
            kernels=self.kernels,
            resume_grace_s=self.config.rooms.resume_grace_s,
            pacing=self.config.bandwidth.pacing,
            ice_servers=self._ice_servers if self.turn.enabled else None,
            chat=ChatRelay(
                ChatLimits(
                    max_message_bytes=self.config.rooms.chat_max_message_bytes,
                    rate_per_s=self.config.rooms.chat_rate_per_s,
                    burst=self.config.rooms.chat_burst,
                )
            ),
        )
        if self.placement is not None:
            self.rooms.fallback_nodes = self.placement.fallbacks
        # Rooms never spread (room_spread_subscribers 0, the default) need no bus: each room
        # lives whole on one worker, so its events stay there.
        spreading = self.config.server.room_spread_subscribers > 0
        if self.cluster is not None and self.config.cluster.redis_url:
            # Rooms span cluster members: their events over the cluster's bus, homes claimed
            # in Redis. A clustered node's workers are members each, so a room spread over
            # them (or over nodes) is joined up here, not by the supervisor's bus and pipes.
            self.room_bus = ClusterRoomBus(self.cluster, lambda: self.rooms, clock=clock.now)
            self.rooms.bus = self.room_bus
            self.rooms.homes = self.room_bus
            if self.links is not None:
                # Other nodes' tracks are fed over the node links (the relay pipe on QUIC).
                rooms = self.rooms
                self.node_pipes = NodePipes(
                    rooms.own_publication,
                    self.room_bus.origin_of,
                    self.links.flush,
                    clock.now,
                    asyncio.get_running_loop().call_soon,
                )
                self.node_pipes.hub.stats = self.rooms.stats
                self.node_pipes.hub.plane = self.dataplane
                self.node_pipes.plane = self.dataplane
                self.node_pipes.attach(self.links)
                self.node_pipes.start()
                self.rooms.remote_tracks = self.node_pipes
            else:
                self.rooms.remote_tracks = NodeTracks()
            self.room_bus.start()
        elif self.pipes is not None and self.bus is not None and spreading:
            self.rooms.bus = self.bus
            self.rooms.remote_tracks = self.pipes.hub
            self.pipes.hub.stats = self.rooms.stats
            self.pipes.hub.plane = self.dataplane
        auth = self.config.auth
        add_admin_routes(
            self.http_app,
            self.rooms,
            token_secret=self.token_secret,
            auth=auth,
            copy_key=worker_key(self.token_secret) if self.worker_index is not None else None,
        )
        add_room_routes(
            self.http_app,
            self.rooms,
            self.sockets,
            token_secret=self.token_secret,
            auth=auth,
            clock=clock.now,
            guard=JoinGuard(security.attempts, self.config.http.trusted_proxies),
            placement=self.placement,
        )
        add_whip_routes(
            self.http_app,
            self.rooms,
            self.http_sessions,
            token_secret=self.token_secret,
            auth=auth,
            clock=clock.now,
            trusted_proxies=self.config.http.trusted_proxies,
            turn=self.turn,
            placement=self.placement,
            forwarder=self.whip_forwarder,
        )
        add_cors(self.http_app, self.config.http.cors_origins)
        registry = self.cluster if self.placement is not None else None
        add_web_routes(
            self.http_app,
            token_secret=self.token_secret,
            dev_tokens=auth.dev_tokens,
            node_urls=lambda: [n.url for n in registry.peers] if registry is not None else [],
        )
        if auth.dev_tokens:
            log.info("development tokens enabled at POST /dev-token (loopback only)")
        self._timer_task = asyncio.ensure_future(self._run_timers())
        self._room_timer = DeadlineTimer(self._run_rooms, clock.now)
        self.rooms.on_timer = self._room_timer.arm
        self._room_timer.arm(self.rooms.next_timer())
        self._pacer_timer = DeadlineTimer(self._run_pacers, clock.now)
        self.dataplane.on_pacer_due = self._pacer_timer.arm
        self.loop_lag.start()
        if self.pipes is not None:
            port = await self.pipes.start()
            log.info("pipe to the other workers on udp 127.0.0.1:%d", port)
        wanted = http.max_connections + FD_RESERVE
        if self._ops is not None:
            wanted += OPS_MAX_CONNECTIONS
        soft, _ = raise_file_limit(wanted)
        if soft < wanted:
            log.warning(
                "the file limit (%d) is below http.max_connections plus a reserve (%d): "
                "a connection flood may exhaust descriptors; raise ulimit -n",
                soft,
                wanted,
            )
        for addr in await self._http.start(http.host, http.port):
            if self.worker_index is None:
                log.info("http listening on %s", format_address(addr))
            else:
                log.info("worker http (behind the supervisor) on %s", format_address(addr))
        if self._ops is not None:
            for addr in await self._ops.start(http.ops_host or http.host, http.ops_port):
                log.info("operations (health, metrics) listening on %s", format_address(addr))

    def begin_drain(self, deadline_s: float = 0.0) -> None:
        """Stop advertising readiness, refuse new joins and tell connected clients.

        A clustered node moves its sessions to other nodes (:meth:`_move_participants`). A
        single node has nowhere to send them: its sessions keep their media until they
        leave or the drain deadline passes.
        """
        if self._draining:
            return
        self._draining = True
        log.info("draining: readiness now reports unavailable; new joins are refused")
        if self.cluster is not None:
            self.cluster.set_draining()
        if self.rooms is not None:
            self.rooms.draining = True
            if self.placement is not None and deadline_s > 0:
                self._move_participants(deadline_s)
                return
            notice = {"type": "server_draining", "deadline_s": round(deadline_s, 1)}
            for room in list(self.rooms.rooms.values()):
                room.broadcast(notice)
                for participant in list(room.waiting.values()):
                    participant.send(notice)

    def _node_load(self) -> float:
        """This node's load (0..1) for its lease, read once per renewal."""
        return self.load_meter.sample(
            now=clock.now(), cpu_s=time.process_time(), sessions=self.session_count()
        )

    def _move_participants(self, deadline_s: float) -> None:
        """A draining node of a cluster: tell each room's participants which node to go to
        (one node per room) and end their sessions, spread over :data:`MOVE_SPREAD_S`, so
        their clients reconnect there.

        WebSocket participants are told the node (``server_draining`` with ``url``) and
        closed with 4011. WHIP and WHEP sessions have no channel to be told: their session
        ends (:meth:`_move_one`) and their client re-POSTs to this node, whose ``307`` for
        the room names the node the room went to (the placement keeps it).
        """
        placement, rooms = self.placement, self.rooms
        if placement is None or rooms is None or deadline_s <= 0:
            return
        moving: list[Participant] = []
        for room in list(rooms.rooms.values()):
            target = placement.move_target(room=room.name)
            notice: dict[str, object] = {
                "type": "server_draining",
                "deadline_s": round(deadline_s, 1),
            }
            if target is not None:
                notice["url"] = signaling_url(target)
            for participant in [*room.participants.values(), *room.waiting.values()]:
                participant.send(notice)
                if target is not None:
                    moving.append(participant)
        if not moving:
            return
        # Publishers over WHIP first, WHEP viewers last: a viewer that comes back finds the
        # stream it asks for republished on the new node rather than still here (a viewer
        # bound to the relayed stand-in of a publication that then moves would keep watching
        # a stream that has ended; WebSocket clients renegotiate, WHEP ones cannot).
        moving.sort(key=lambda p: _MOVE_ORDER.get(p.kind, 1))
        spread = min(MOVE_SPREAD_S, deadline_s / 2)
        loop = asyncio.get_running_loop()
        for i, participant in enumerate(moving):
            loop.call_later(spread * i / len(moving), self._move_one, participant)
        kinds = {kind: sum(p.kind == kind for p in moving) for kind in MOVED_KINDS}
        log.info(
            "draining: moving %d participant(s) to other nodes over %.1f s "
            "(%d websocket, %d whip, %d whep)",
            len(moving),
            spread,
            kinds["websocket"],
            kinds["whip"],
            kinds["whep"],
        )

    def _room_nodes(self, name: str) -> set[str] | None:
        """The other nodes room ``name`` has participants on, as this node sees it (the room
        bus's remote participants); None when the room is not here (placement then asks the
        directory)."""
        rooms, bus = self.rooms, self.room_bus
        room = None if rooms is None else rooms.rooms.get(name)
        if room is None or bus is None:
            return None
        origins = set(room.remote_shard.values())
        return {node for node, origin in bus.origins.items() if origin in origins}

    def _move_one(self, participant: Participant) -> None:
        """End one participant a drain moves. A WHIP or WHEP session is told the way a
        standard client notices at once, not after its consent freshness runs out (RFC 7675,
        some 30 s): an RTCP BYE for every source the server sends it (RFC 3550 §6.6), then
        the transport closes with a DTLS close_notify alert (RFC 5246 §7.2.1); its resource
        then answers 404."""
        rooms = self.rooms
        if rooms is None or participant.on_close is None:
            return  # gone already (left, or its connection dropped)
        if self.placement is not None:
            self.placement.count_move(participant.kind)
        peer = participant.peer
        if participant.kind in _HTTP_KINDS and peer is not None:
            peer.goodbye(MOVED_BYE_REASON)
        # Leaving closes the transport, which sends close_notify while DTLS is up.
        rooms.end(participant, CLOSE_MOVED, "moved to another node", now=clock.now())

    def session_count(self) -> int:
        """Sessions a drain waits for: admitted and waiting participants of every room."""
        if self.rooms is None:
            return 0
        return sum(len(r.participants) + len(r.waiting) for r in self.rooms.rooms.values())

    async def drain(self, timeout: float) -> bool:
        """Begin draining and wait until the last session ends; False if ``timeout`` passed."""
        self.begin_drain(timeout)
        deadline = clock.now() + timeout
        while self.session_count() and clock.now() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        remaining = self.session_count()
        if remaining:
            log.warning("drain deadline passed with %d session(s) still open", remaining)
        else:
            log.info("drain complete: no sessions left")
        return remaining == 0

    async def stop(self) -> None:
        """Close every session, the media socket and the HTTP server (after a drain)."""
        self.begin_drain()
        await self.loop_lag.stop()
        await self.sockets.close_all()
        self.port.close_all(clock.now())
        if self._room_timer is not None:
            self._room_timer.close()
            self._room_timer = None
        if self._pacer_timer is not None:
            self._pacer_timer.close()
            self._pacer_timer = None
            self.dataplane.on_pacer_due = None
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
            self._timer_task = None
        if self._tcp is not None:
            await self._tcp.close()
        self.dataplane.socket = None
        if self._udp is not None:
            await self._udp.close()
        if self.pipes is not None:
            self.pipes.close()
        if self.bus is not None:
            await self.bus.close()
        await self._http.close()
        if self.whip_forwarder is not None:
            await self.whip_forwarder.close()
        if self._ops is not None:
            await self._ops.close()
        if self.room_state is not None:
            self.room_state.close()
            self.room_state = None
        if self.room_bus is not None:
            await self.room_bus.stop()
        if self.cluster is not None:
            await self.cluster.stop()  # deregisters: the other nodes see it gone at once
        if self.node_pipes is not None:
            self.node_pipes.stop()
        if self.links is not None:
            self.links.close()
        log.info("stopped (media datagrams received: %d)", self.sink.count)


async def run(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Server], None] | None = None,
    worker_index: int | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (or ``stop`` is set), then drain within the timeout.

    Returns the process exit code: 0 after a normal shutdown, 1 if binding failed, the
    room state file cannot be used, or a second signal forced an immediate exit.
    """
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    first_signal_at: list[float] = []
    forced = False
    drain_task: asyncio.Task[None] | None = None

    def on_signal(signum: int) -> None:
        nonlocal forced
        now = clock.now()
        name = signal.Signals(signum).name
        if not first_signal_at:
            first_signal_at.append(now)
            log.info("received %s, shutting down", name)
            stop.set()
        elif now - first_signal_at[0] < _SIGNAL_REPEAT_S:
            # The same request delivered twice: a terminal's Ctrl-C reaches both `make run`
            # and the server, and make passes SIGTERM/SIGINT on to its child as well.
            return
        elif drain_task is not None and not drain_task.done():
            log.warning("received %s again, forcing exit", name)
            forced = True
            drain_task.cancel()

    installed: list[int] = []
    for sig in _SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)

    server = Server(config, worker_index=worker_index)
    timeout = config.server.drain_timeout_s
    try:
        try:
            await server.start()
        except OSError as exc:
            log.error("cannot bind listening sockets: %s", exc)
            await asyncio.wait_for(server.stop(), timeout)
            return 1
        except (StateError, LinkSetupError) as exc:
            log.error("%s", exc)
            await asyncio.wait_for(server.stop(), timeout)
            return 1
        # What exists now (modules, classes, config, the server's own tables) lives as long
        # as the process: out of the cyclic collector's way, so that its full collections
        # (Python's own, and the heap trimmer's) walk only what sessions made. A bare import
        # of the server is ~90,000 objects and a 30 ms full collection.
        gc.collect()
        gc.freeze()
        log.info("ready")
        if on_ready is not None:
            on_ready(server)
        await stop.wait()

        async def drain() -> None:
            await server.drain(timeout)
            await asyncio.wait_for(server.stop(), _CLOSE_TIMEOUT_S)

        drain_task = asyncio.ensure_future(drain())
        try:
            await drain_task
        except TimeoutError:
            log.warning("closing did not finish within %.1f s; exiting anyway", _CLOSE_TIMEOUT_S)
        except asyncio.CancelledError:
            if not forced:
                raise
            return 1
        return 0
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
            if first_signal_at:
                # Shutting down because of a signal: copies of it still in flight (Ctrl-C
                # reaches both `make run` and the server) must not kill the exiting process
                # with the default action now that our handler is gone.
                signal.signal(signum, signal.SIG_IGN)


def serve(config: Config) -> int:
    """Process entry point for ``sfu serve``: set up logging, run on uvloop, return exit code.

    With ``server.workers`` above one (or "auto" on a machine with several usable CPUs)
    this process becomes the supervisor of that many worker processes (sfu/workers/).
    """
    workers = worker_count(config)
    if workers > 1:
        from sfu.workers.supervisor import check_cluster_ports, run_supervisor

        try:
            check_cluster_ports(config, workers)
        except ConfigError as err:
            print(f"sfu: invalid configuration:\n{err}", file=sys.stderr)
            return 1
        return run_supervisor(config, workers)
    configure_logging(config.logging, worker_name=config.server.worker_name)
    log.info(
        "sfu %s starting (python %s, fast path: %s)",
        __version__,
        sys.version.split()[0],
        fast_path_implementation(),
    )
    if config.logging.debug_personal_data:
        log.warning(
            "logging.debug_personal_data is ON: logs may contain IP addresses and other "
            "personal data; never enable this in production"
        )
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(config))
