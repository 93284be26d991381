"""Janus VideoRoom as a second bench target (``python -m bench --vs janus``).

`JanusTarget` writes a Janus configuration into a temporary folder (ICE-lite, no STUN/TURN, the
HTTP transport on 127.0.0.1 and the VideoRoom plugin and nothing else), starts ``janus`` pinned
to one core, and speaks the Janus HTTP API (long-poll REST) so that the load generator drives it
through the same `bench.targets.Target` interface as our server.

Janus never gathers ICE candidates on a loopback interface, so its media sockets live on this
host's first non-loopback IPv4 address (`JanusTarget.media_host`); the generator must put its
own candidates on that address too. Packets between two local addresses never leave the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import glob
import itertools
import json
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.targets import HTTP_TIMEOUT_S, Session, TargetError, cpu_count, proc_cpu_seconds

__all__ = [
    "JanusApi",
    "JanusError",
    "JanusOptions",
    "JanusTarget",
    "find_module_root",
    "janus_binary",
    "media_address",
    "write_config",
]

#: Janus's VideoRoom plugin package name, as the API's ``attach`` wants it.
VIDEOROOM = "janus.plugin.videoroom"

#: Janus 1.0 (``version`` 1000 in ``/info``) brought the multistream VideoRoom API used here.
MIN_VERSION = 1000

#: Error code VideoRoom answers ``create`` with when the room is already there.
ROOM_EXISTS = 427
#: How long a subscriber waits for a feed Janus does not list yet (its publisher connecting).
FEED_WAIT_S = 10.0

#: Where Debian and source builds put the plugin, transport, event-handler and logger modules.
_MODULE_ROOTS = (
    "/usr/lib/*/janus",
    "/usr/lib/janus",
    "/usr/lib64/janus",
    "/usr/local/lib/janus",
    "/opt/janus/lib/janus",
)

#: The only two modules the bench loads.
_HTTP_TRANSPORT = "libjanus_http.so"
_VIDEOROOM_PLUGIN = "libjanus_videoroom.so"

# Linux ioctls and interface flags (linux/sockios.h, net/if.h) for `media_address`.
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_RUNNING = 0x40

#: Concurrent HTTP connections to the Janus API (its HTTP server runs a thread per connection).
_API_CONNECTIONS = 64

#: prctl(PR_SET_PDEATHSIG): the kernel signals Janus if the bench dies without stopping it.
_PR_SET_PDEATHSIG = 1


class JanusError(TargetError):
    """Janus refused a request, failed to start, or went away."""


def janus_binary() -> str | None:
    """The ``janus`` executable on PATH, or None when Janus is not installed."""
    return shutil.which("janus")


def find_module_root() -> Path:
    """The folder holding Janus's ``plugins/`` and ``transports/`` (Debian's is multiarch)."""
    for pattern in _MODULE_ROOTS:
        for root in sorted(glob.glob(pattern)):
            if (Path(root) / "plugins" / _VIDEOROOM_PLUGIN).exists():
                return Path(root)
    raise JanusError("Janus modules not found (is the Debian package 'janus' installed?)")


def media_address() -> str:
    """This host's first IPv4 address on an interface that is up and not loopback.

    Janus skips loopback interfaces when it gathers ICE candidates, so its media cannot use
    127.0.0.1; any local address keeps the traffic inside the host all the same.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, request), 16)[0]
                if flags & _IFF_LOOPBACK or flags & (_IFF_UP | _IFF_RUNNING) != (
                    _IFF_UP | _IFF_RUNNING
                ):
                    continue
                address = fcntl.ioctl(sock, _SIOCGIFADDR, request)[20:24]
            except OSError:  # no IPv4 address on this interface
                continue
            return socket.inet_ntoa(address)
    raise JanusError("no non-loopback IPv4 address: Janus cannot gather ICE candidates")


def _modules(folder: Path) -> list[str]:
    """Module file names in one of Janus's module folders (``.so`` only, no versioned links)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".so"))


def _free_tcp_port(host: str) -> int:
    """An ephemeral TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    """A libconfig string literal."""
    return json.dumps(value)


@dataclass(frozen=True)
class JanusOptions:
    """What the bench may vary about the Janus it starts."""

    #: Where the HTTP API listens.
    api_host: str = "127.0.0.1"
    #: Address for ICE/media; None picks `media_address()`.
    media_host: str | None = None
    #: RTP/RTCP ports Janus may bind (one per PeerConnection: bundle and rtcp-mux).
    rtp_ports: tuple[int, int] = (30000, 39999)
    #: Janus log level (0-7); 4 is Janus's default. The log goes to a file in the config folder.
    debug_level: int = 4
    #: Most publishers a bench room admits.
    max_publishers: int = 1000
    #: VideoRoom's per-publisher bitrate (REMB) cap in bit/s: high, so that it never limits load.
    bitrate: int = 100_000_000
    #: Janus's ``event_loops``: 0 (Janus's default) gives each handle its own loop thread; N > 0
    #: shares N loop threads among all handles. None: one per CPU Janus may run on (1 when
    #: pinned), how one would tune it for throughput. On one core, thread-per-handle costs
    #: Janus about 2.5 times the CPU per forwarded packet (context switches).
    event_loops: int | None = None
    #: DTLS handshake retransmission timeout in ms (honoured when Janus is built with BoringSSL).
    dtls_timeout_ms: int = 500
    session_timeout_s: int = 60
    #: Seconds between keepalives on the API session (well under ``session_timeout_s``).
    keepalive_s: float = 20.0
    startup_timeout_s: float = 20.0
    stop_timeout_s: float = 5.0
    #: Order of the simulcast rids in a publisher's ``a=simulcast`` line, as Janus's JSEP
    #: ``rid_order`` names it: the bench's clients list them low to high ("lmh"); Janus assumes
    #: high to low ("hml") unless told.
    rid_order: str = "lmh"
    #: Keep the config folder (and janus.log) after stop, for debugging.
    keep_folder: bool = False


def write_config(
    folder: Path,
    http_port: int,
    media_host: str,
    options: JanusOptions,
    modules: Path,
    event_loops: int = 0,
) -> Path:
    """Write janus.jcfg, the HTTP transport's and VideoRoom's configs; returns janus.jcfg's path.

    Every plugin, transport, logger and event handler other than VideoRoom and HTTP is disabled,
    so Janus spends no CPU on modules the bench does not use. No certificate is configured:
    Janus generates a self-signed one (ECDSA P-256) at start, as WebRTC allows.
    """
    plugins = [m for m in _modules(modules / "plugins") if m != _VIDEOROOM_PLUGIN]
    transports = [m for m in _modules(modules / "transports") if m != _HTTP_TRANSPORT]
    loggers = _modules(modules / "loggers")
    events = _modules(modules / "events")
    low, high = options.rtp_ports
    main = f"""general: {{
	configs_folder = {_quote(str(folder))}
	plugins_folder = {_quote(str(modules / "plugins"))}
	transports_folder = {_quote(str(modules / "transports"))}
	events_folder = {_quote(str(modules / "events"))}
	loggers_folder = {_quote(str(modules / "loggers"))}
	log_to_stdout = false
	log_to_file = {_quote(str(folder / "janus.log"))}
	debug_level = {options.debug_level}
	debug_timestamps = true
	debug_colors = false
	interface = {_quote(media_host)}
	server_name = "sfu-bench"
	session_timeout = {options.session_timeout_s}
	hide_dependencies = true
	event_loops = {event_loops}
}}
certificates: {{
	dtls_accept_selfsigned = true
}}
media: {{
	ipv6 = false
	rtp_port_range = "{low}-{high}"
	dtls_timeout = {options.dtls_timeout_ms}
	no_media_timer = 0
	slowlink_threshold = 0
}}
nat: {{
	nice_debug = false
	full_trickle = false
	ice_lite = true
	ice_tcp = false
	ignore_mdns = true
	ice_enforce_list = {_quote(media_host)}
}}
plugins: {{
	disable = {_quote(",".join(plugins))}
}}
transports: {{
	disable = {_quote(",".join(transports))}
}}
loggers: {{
	disable = {_quote(",".join(loggers))}
}}
events: {{
	broadcast = false
	disable = {_quote(",".join(events))}
}}
"""
    http = f"""general: {{
	json = "plain"
	base_path = "/janus"
	http = true
	port = {http_port}
	ip = {_quote(options.api_host)}
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
"""
    # Rooms are created over the API; string ids let the bench use its own room and peer names.
    videoroom = """general: {
	string_ids = true
	events = false
}
"""
    (folder / "janus.jcfg").write_text(main)
    (folder / "janus.transport.http.jcfg").write_text(http)
    (folder / "janus.plugin.videoroom.jcfg").write_text(videoroom)
    return folder / "janus.jcfg"


def _jsep(kind: str, sdp: str) -> dict[str, Any]:
    """A JSEP object whose candidates are all in the SDP: no trickle follows."""
    return {"type": kind, "sdp": sdp, "trickle": False}


def _as_dtls_client(offer_sdp: str) -> str:
    """Our offer, claiming the DTLS client role (``setup:active``) instead of ``actpass``.

    Janus answers an ``actpass`` offer with ``active`` (it would be the DTLS client), while the
    load generator is always the DTLS client; offered ``active``, Janus answers ``passive``.
    """
    return offer_sdp.replace("a=setup:actpass", "a=setup:active")


def _plugin_data(message: dict[str, Any]) -> dict[str, Any]:
    """VideoRoom's reply inside a Janus message; raises `JanusError` on a plugin error."""
    data: dict[str, Any] = message.get("plugindata", {}).get("data", {})
    if "error_code" in data:
        raise JanusError(f"videoroom error {data['error_code']}: {data.get('error')}")
    return data


class JanusApi:
    """One Janus API session over HTTP: requests, a long-poll loop that routes events, keepalives.

    Janus answers asynchronous plugin requests with ``ack`` and delivers the result later as an
    event on the session's long poll, carrying the request's transaction id; `message` hides that.
    """

    def __init__(self, base: str, keepalive_s: float) -> None:
        self.base = base
        self.keepalive_s = keepalive_s
        self.session_id: int | None = None
        #: Handles whose PeerConnection Janus reported up (``webrtcup``), and handles whose
        #: PeerConnection hung up or that were detached (``hangup``, ``detached``).
        self.webrtc_up: set[int] = set()
        self.ended: set[int] = set()
        self._http: aiohttp.ClientSession | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._transactions = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        """Create the Janus session and start the long poll and keepalives."""
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=_API_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=HTTP_TIMEOUT_S),
        )
        reply = await self._request(self.base, {"janus": "create"})
        self.session_id = int(reply["data"]["id"])
        self._tasks = [
            asyncio.create_task(self._poll(), name="janus-long-poll"),
            asyncio.create_task(self._keepalive(), name="janus-keepalive"),
        ]

    async def close(self) -> None:
        """Destroy the session (best effort) and stop polling."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._http is not None and self.session_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._request(self._session_url, {"janus": "destroy"}), 2)
        self._fail_pending(JanusError("Janus API session closed"))
        self._pending.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def _session_url(self) -> str:
        return f"{self.base}/{self.session_id}"

    def _transaction(self) -> str:
        return f"t{next(self._transactions)}"

    async def _request(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one API request; returns Janus's immediate reply (``success`` or ``ack``)."""
        if self._http is None:
            raise JanusError("Janus API session not open")
        body = {**body, "transaction": body.get("transaction") or self._transaction()}
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with self._http.post(url, json=body, timeout=timeout) as resp:
            reply: dict[str, Any] = await resp.json(content_type=None)
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusError(f"Janus error {error.get('code')}: {error.get('reason')}")
        return reply

    async def attach(self) -> int:
        """Attach a new VideoRoom handle (one per PeerConnection); returns its id."""
        reply = await self._request(self._session_url, {"janus": "attach", "plugin": VIDEOROOM})
        return int(reply["data"]["id"])

    async def detach(self, handle: int) -> None:
        """Detach a handle, hanging up its PeerConnection."""
        await self._request(f"{self._session_url}/{handle}", {"janus": "detach"})

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send a plugin request; returns the whole reply (sync) or the matching event (async)."""
        transaction = self._transaction()
        request: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            request["jsep"] = jsep
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        try:
            reply = await self._request(f"{self._session_url}/{handle}", request)
            if reply.get("janus") == "ack":
                reply = await asyncio.wait_for(future, HTTP_TIMEOUT_S)
        finally:
            self._pending.pop(transaction, None)
        _plugin_data(reply)
        return reply

    async def _poll(self) -> None:
        """Long-poll the session for events and hand each to whoever waits on its transaction."""
        assert self._http is not None
        url = f"{self._session_url}?maxev=100"
        while True:
            try:
                timeout = aiohttp.ClientTimeout(total=90)
                async with self._http.get(url, timeout=timeout) as resp:
                    payload = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.2)
                continue
            if isinstance(payload, dict) and payload.get("janus") == "error":
                # The session is gone (e.g. timed out): fail whoever waits, and do not spin.
                self._fail_pending(JanusError(f"Janus long poll: {payload.get('error')}"))
                await asyncio.sleep(1.0)
                continue
            for event in payload if isinstance(payload, list) else [payload]:
                self._dispatch(event)

    def _fail_pending(self, error: JanusError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _dispatch(self, event: dict[str, Any]) -> None:
        """Record PeerConnection state events; complete the request an event answers."""
        kind = event.get("janus")
        sender = event.get("sender")
        if kind == "webrtcup" and sender is not None:
            self.webrtc_up.add(int(sender))
        elif kind in ("hangup", "detached") and sender is not None:
            self.ended.add(int(sender))
        future = self._pending.get(str(event.get("transaction")))
        if future is None or future.done() or kind not in ("event", "success", "error"):
            return
        if kind == "error":
            future.set_exception(JanusError(f"Janus error {event.get('error')}"))
        else:
            future.set_result(event)

    async def _keepalive(self) -> None:
        """Keep the session alive through long runs, independent of the long poll."""
        while True:
            await asyncio.sleep(self.keepalive_s)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, JanusError):
                await self._request(self._session_url, {"janus": "keepalive"})


def _death_signal() -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel SIGKILL Janus if the bench dies without stopping it.

    libc is resolved here, in the parent: the forked child only makes the one prctl call.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return set_death_signal


class JanusTarget:
    """Janus VideoRoom started and stopped by the bench, driven over its HTTP API.

    Janus offers to subscribers (``server_offers``): `subscribe` returns its offer and `answer`
    delivers ours with VideoRoom's ``start``. Publishers join with their identity as their
    VideoRoom id, so subscribers name the feed they want by the publisher's identity.
    """

    name = "janus"
    server_offers = True

    def __init__(self, server_cpu: int | None = None, options: JanusOptions | None = None) -> None:
        self.server_cpu = server_cpu
        self.options = options or JanusOptions()
        self.folder: Path | None = None
        self.http_port: int | None = None
        self.media_host: str | None = None
        self.api: JanusApi | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._rooms: set[str] = set()
        self._room_lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """Janus's process id while it runs (taskset execs it in place)."""
        return self._process.pid if self._process is not None else None

    @property
    def base(self) -> str:
        """The Janus API's root URL."""
        return f"http://{self.options.api_host}:{self.http_port}/janus"

    def event_loops(self) -> int:
        """Janus's ``event_loops``: as configured, else one per CPU it may run on."""
        if self.options.event_loops is not None:
            return self.options.event_loops
        return 1 if self.server_cpu is not None else cpu_count()

    def command(self, config: Path) -> list[str]:
        """The command line that starts Janus, under ``taskset -c server_cpu`` when pinned."""
        binary = janus_binary()
        if binary is None:
            raise JanusError("the janus binary is not on PATH (Debian package 'janus')")
        argv = [binary, "--configs-folder", str(config.parent), "--config", str(config)]
        taskset = shutil.which("taskset")
        if self.server_cpu is not None:
            if taskset is None:
                raise JanusError("pinning Janus to a core needs taskset (util-linux)")
            argv = [taskset, "-c", str(self.server_cpu), *argv]
        return argv

    async def start(self) -> None:
        """Write the config, start Janus and wait until its API lists VideoRoom."""
        if self._process is not None:
            raise JanusError("Janus already started")
        self.folder = Path(tempfile.mkdtemp(prefix="janus-bench-"))
        try:
            self.media_host = self.options.media_host or media_address()
            self.http_port = _free_tcp_port(self.options.api_host)
            config = write_config(
                self.folder,
                self.http_port,
                self.media_host,
                self.options,
                find_module_root(),
                self.event_loops(),
            )
            with open(self.folder / "janus.out", "wb") as out:
                self._process = await asyncio.create_subprocess_exec(
                    *self.command(config),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    preexec_fn=_death_signal(),
                )
            await self._wait_ready()
            self.api = JanusApi(self.base, self.options.keepalive_s)
            await self.api.open()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        """Poll ``/janus/info`` until the HTTP transport answers and VideoRoom is loaded."""
        assert self._process is not None
        deadline = time.monotonic() + self.options.startup_timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if self._process.returncode is not None:
                    code = self._process.returncode
                    raise JanusError(f"janus exited with {code}:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with http.get(self.base + "/info") as resp:
                        info = await resp.json(content_type=None)
                    if int(info.get("version", 0)) < MIN_VERSION:
                        raise JanusError(
                            f"Janus {info.get('version_string')} is too old: the bench speaks the "
                            "multistream VideoRoom API of Janus 1.x"
                        )
                    if VIDEOROOM in info.get("plugins", {}):
                        return
                    raise JanusError(f"Janus started without VideoRoom:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise JanusError(f"Janus not ready in time:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of Janus's console output and log (for error reports)."""
        if self.folder is None:
            return ""
        text: list[str] = []
        for name in ("janus.out", "janus.log"):
            path = self.folder / name
            if path.exists():
                text.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(text)

    async def stop(self) -> None:
        """Close the API session and stop Janus: SIGTERM, then SIGKILL after a timeout."""
        if self.api is not None:
            await self.api.close()
            self.api = None
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self.options.stop_timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self._rooms.clear()
        if self.folder is not None and not self.options.keep_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _api(self) -> JanusApi:
        if self.api is None:
            raise JanusError("Janus is not started")
        return self.api

    async def ensure_room(self, room: str) -> None:
        """Create a VP8/Opus room with no recording and a high bitrate cap, once per room."""
        async with self._room_lock:
            if room in self._rooms:
                return
            api = self._api()
            handle = await api.attach()
            body = {
                "request": "create",
                "room": room,
                "permanent": False,
                "is_private": False,
                "publishers": self.options.max_publishers,
                "bitrate": self.options.bitrate,
                "record": False,
                "videocodec": "vp8",
                "audiocodec": "opus",
                "notify_joining": False,
            }
            try:
                await api.message(handle, body)
            except JanusError as error:
                if f"error {ROOM_EXISTS}:" not in str(error):
                    raise
            finally:
                await api.detach(handle)
            self._rooms.add(room)

    async def publish(self, room: str, identity: str, offer_sdp: str) -> Session:
        """Join ``room`` as publisher ``identity`` and publish our offer; returns Janus's answer."""
        await self.ensure_room(room)
        api = self._api()
        handle = await api.attach()
        session = Session(handle=handle)
        try:
            join = {"request": "join", "ptype": "publisher", "room": room, "id": identity}
            await api.message(handle, join)
            publish = {"request": "publish", "audiocodec": "opus", "videocodec": "vp8"}
            jsep = _jsep("offer", _as_dtls_client(offer_sdp))
            if "a=simulcast:" in offer_sdp:
                jsep["rid_order"] = self.options.rid_order
            reply = await api.message(handle, publish, jsep=jsep)
        except BaseException:
            await self.close(session)
            raise
        answer = reply.get("jsep") or {}
        if answer.get("type") != "answer":
            await self.close(session)
            raise JanusError(f"publish in {room} got no JSEP answer: {reply}")
        session.answer_sdp = str(answer["sdp"])
        return session

    async def subscribe(
        self, room: str, identity: str, publisher: str, offer_sdp: str | None
    ) -> Session:
        """Subscribe to ``publisher``'s feed; ``session.offer_sdp`` is Janus's offer.

        ``offer_sdp`` is ignored: VideoRoom always offers to subscribers.
        """
        api = self._api()
        handle = await api.attach()
        session = Session(handle=handle)
        body = {
            "request": "join",
            "ptype": "subscriber",
            "room": room,
            "streams": [{"feed": publisher}],
        }
        try:
            reply = await self._join_subscriber(api, handle, body)
        except BaseException:
            await self.close(session)
            raise
        jsep = reply.get("jsep") or {}
        if jsep.get("type") != "offer":
            await self.close(session)
            raise JanusError(f"subscribing {identity} to {publisher} got no JSEP offer: {reply}")
        session.offer_sdp = str(jsep["sdp"])
        return session

    async def _join_subscriber(self, api: Any, handle: int, body: dict[str, Any]) -> Any:
        """Join as a subscriber; a feed Janus does not list yet (error 428: its publisher's
        PeerConnection is still coming up) is retried for up to FEED_WAIT_S seconds."""
        deadline = time.monotonic() + FEED_WAIT_S
        while True:
            try:
                return await api.message(handle, body)
            except JanusError as exc:
                if "error 428" not in str(exc) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.1)

    async def answer(self, session: Session, answer_sdp: str) -> None:
        """Deliver our answer to Janus's subscriber offer (VideoRoom ``start``)."""
        await self._api().message(
            int(session.handle), {"request": "start"}, jsep=_jsep("answer", answer_sdp)
        )

    async def close(self, session: Session) -> None:
        """Detach the session's handle, which hangs up its PeerConnection (best effort)."""
        if self.api is None or session.handle is None:
            return
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, JanusError):
            await self.api.detach(int(session.handle))

    async def cpu_seconds(self) -> float | None:
        """Janus's CPU time so far (user + system, all threads), from ``/proc``."""
        pid = self.pid
        return proc_cpu_seconds(pid) if pid is not None else None
