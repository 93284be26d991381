"""Forwarding workers without processes: worker count, CPU budget, placement, metrics merge,
the supervisor's routing helpers and each worker's environment."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sfu.app import WORKER_LOAD_PATH, Server, worker_count
from sfu.cli import build_parser, main
from sfu.cluster.registry import member_id, node_from_config, node_of_member
from sfu.config import (
    ClusterConfig,
    Config,
    ConfigError,
    HttpConfig,
    MediaConfig,
    RoomsConfig,
    ServerConfig,
    config_environment,
    load_config,
    parse_config,
    parse_workers,
)
from sfu.workers import placement as placement_module
from sfu.workers.cpus import (
    cgroup_quota_cpus,
    parse_cpu_max,
    parse_cpu_quota_v1,
    usable_cpus,
)
from sfu.workers.metrics import MergedMetrics, relabel
from sfu.workers.pipes import WorkerPipes
from sfu.workers.placement import IDLE_FORGET_S, SATURATED_LOAD, Placement
from sfu.workers.supervisor import (
    Supervisor,
    WorkerProcess,
    check_cluster_ports,
    room_of_join,
    room_of_path,
    session_of_path,
    worker_environment,
)

# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [("auto", 0), ("AUTO", 0), ("1", 1), ("2", 2), ("256", 256), (" 4 ", 4)],
)
def test_workers_values(text: str, count: int) -> None:
    assert parse_workers(text) == count


@pytest.mark.parametrize("text", ["0", "257", "-1", "two", "", "1.5", "²", "0x2"])
def test_bad_workers_values_are_refused(text: str) -> None:
    assert parse_workers(text) is None
    with pytest.raises(ConfigError) as err:
        parse_config({"server": {"workers": text}})
    assert err.value.errors[0][0] == "server.workers"


CLUSTER = {"redis_url": "redis://127.0.0.1:6379/0"}
AUTH = {"jwt_secret": "a-cluster-secret-of-enough-length-0123456789"}
LINK = {"advertise_address": "10.0.0.5:7000", "ca_file": "c", "cert_file": "n", "key_file": "k"}


@pytest.mark.parametrize("text", ["2", "auto"])
def test_a_clustered_node_runs_workers_with_a_link_port_each(text: str) -> None:
    """Every worker of a clustered node is a member with a link of its own on link_port +
    its index: several workers need a link (else a room spread over them gets no media),
    its first port set (a free port per worker could not be advertised), and advertised as
    it is (a worker is told apart by its address). Each refusal names its key."""

    def refused(cluster: dict[str, object]) -> list[tuple[str, str]]:
        with pytest.raises(ConfigError) as err:
            parse_config({"server": {"workers": text}, "cluster": cluster, "auth": AUTH})
        return err.value.errors

    (no_link,) = refused(CLUSTER)
    assert no_link[0] == "cluster.advertise_address" and "required" in no_link[1]
    (no_port,) = refused({**CLUSTER, **LINK})
    assert no_port[0] == "cluster.link_port" and "link_port + i" in no_port[1]
    (other_port,) = refused({**CLUSTER, **LINK, "link_port": 7100})
    assert other_port[0] == "cluster.advertise_address" and "7100" in other_port[1]
    linked = {**CLUSTER, **LINK, "link_port": 7000}
    config = parse_config({"server": {"workers": text}, "cluster": linked, "auth": AUTH})
    assert config.server.workers == text
    # One worker never needed any of it; nor does a lone node.
    assert parse_config({"server": {"workers": "1"}, "cluster": CLUSTER, "auth": AUTH})
    assert parse_config({"server": {"workers": text}}).server.workers == text


@pytest.mark.parametrize("node_id", ["sfu-a.w0", "b.w12"])
def test_a_node_id_may_not_look_like_a_worker_member(node_id: str) -> None:
    """``<node>.w<i>`` names worker i of a node (whose certificate names the node): a node
    of its own may not take such a name."""
    with pytest.raises(ConfigError) as err:
        parse_config({"cluster": {**CLUSTER, "node_id": node_id}, "auth": AUTH})
    assert [key for key, _ in err.value.errors] == ["cluster.node_id"]
    assert parse_config({"cluster": {**CLUSTER, "node_id": "sfu-a.web"}, "auth": AUTH})


def test_a_clustered_workers_environment_makes_it_a_member_of_its_own() -> None:
    config = parse_config(
        {
            "server": {"workers": "3"},
            "cluster": {**CLUSTER, **LINK, "link_port": 7000, "capacity_participants": 1000},
            "auth": AUTH,
        }
    )
    env = worker_environment({}, config, 2, "s" * 40, workers=3)
    worker = parse_config({}, env)
    assert worker.cluster.link_port == 7002
    assert worker.cluster.advertise_address == "10.0.0.5:7002"
    assert worker.cluster.capacity_participants == 334  # the node's 1000 over 3, rounded up
    assert worker.cluster.node_id == config.cluster.node_id  # the member id is made at start
    lone = worker_environment({}, Config(server=ServerConfig(workers="3")), 2, "s" * 40, 3)
    assert parse_config({}, lone).cluster == Config().cluster


def test_a_clustered_node_that_cannot_run_its_workers_is_refused_naming_the_key() -> None:
    linked = {**CLUSTER, **LINK, "advertise_address": "10.0.0.5:65534", "link_port": 65534}
    config = parse_config({"server": {"workers": "4"}, "cluster": linked, "auth": AUTH})
    with pytest.raises(ConfigError) as err:
        check_cluster_ports(config, 4)
    assert err.value.errors[0][0] == "cluster.link_port" and "65535" in err.value.errors[0][1]
    check_cluster_ports(config, 2)  # 65534 and 65535
    check_cluster_ports(Config(), 200)  # a lone node has no link ports
    # The link ports may not run into the media ports (both UDP on media.udp_host).
    near = {**CLUSTER, **LINK, "link_port": 7000}
    overlapping = parse_config(
        {"server": {"workers": "4"}, "cluster": near, "auth": AUTH, "media": {"udp_port": 6998}}
    )
    with pytest.raises(ConfigError) as err:
        check_cluster_ports(overlapping, 4)
    assert err.value.errors[0][0] == "cluster.link_port" and "overlap" in err.value.errors[0][1]
    check_cluster_ports(overlapping, 2)  # 6998-6999 and 7000-7001
    # A node id too long for its last worker's member id (never shortened: it must lead
    # back to the node its certificate names).
    long = parse_config(
        {"server": {"workers": "4"}, "cluster": {**near, "node_id": "n" * 62}, "auth": AUTH}
    )
    with pytest.raises(ConfigError) as err:
        check_cluster_ports(long, 10)
    assert err.value.errors[0][0] == "cluster.node_id"
    fits = parse_config(
        {"server": {"workers": "4"}, "cluster": {**near, "node_id": "n" * 61}, "auth": AUTH}
    )
    check_cluster_ports(fits, 10)  # "n" * 61 + ".w9": 64 characters


def test_member_ids_name_the_worker_and_lead_back_to_the_node() -> None:
    assert member_id("node-a", 3) == "node-a.w3"
    assert node_of_member("node-a.w3") == "node-a"
    assert node_of_member("node-a") == "node-a"
    assert node_of_member(member_id("n" * 59, 255)) == "n" * 59
    info = node_from_config(ClusterConfig(node_id="node-a", advertise_address="h:7001"), 1)
    assert info.node_id == "node-a.w1" and info.link_address == "h:7001"
    assert node_from_config(ClusterConfig(node_id="node-a")).node_id == "node-a"


def test_a_host_name_like_a_worker_member_is_not_taken_for_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "web.w2")
    assert node_from_config(ClusterConfig()).node_id == "web-w2"
    assert node_from_config(ClusterConfig(), 0).node_id == "web-w2.w0"


def test_workers_may_be_a_toml_integer_or_string(tmp_path: Path) -> None:
    path = tmp_path / "sfu.toml"
    path.write_text("[server]\nworkers = 3\n")
    assert load_config(path).server.workers == "3"
    path.write_text('[server]\nworkers = "auto"\n')
    assert load_config(path).server.workers == "auto"
    with pytest.raises(ConfigError):
        path.write_text("[server]\nworkers = true\n")
        load_config(path)
    assert load_config(None, {"SFU_SERVER_WORKERS": "2"}).server.workers == "2"


def test_worker_count_auto_is_at_least_one_and_explicit_counts_are_kept() -> None:
    assert worker_count(Config()) == 1
    assert worker_count(Config(server=ServerConfig(workers="3"))) == 3
    assert worker_count(Config(server=ServerConfig(workers="auto"))) >= 1


@pytest.mark.parametrize(
    "config",
    [
        Config(),
        Config(
            http=HttpConfig(host="127.0.0.1", port=0, trusted_proxies=("10.0.0.1", "::1")),
            media=MediaConfig(udp_port=0, announced_addresses=("203.0.113.5",)),
            server=ServerConfig(drain_timeout_s=2.5, workers="auto", worker_name="edge a"),
            rooms=RoomsConfig(waiting_room=False, resume_grace_s=0.1),
        ),
    ],
)
def test_config_environment_round_trips(config: Config) -> None:
    assert parse_config({}, config_environment(config)) == config


# -- CPU budget ------------------------------------------------------------------------


def test_cpu_max_parsing() -> None:
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000\n") == 1.5
    assert parse_cpu_max("200000") == 2.0
    assert parse_cpu_max("garbage") is None
    assert parse_cpu_max("0 100000") is None
    assert parse_cpu_max("") is None
    assert parse_cpu_quota_v1("-1\n", "100000\n") is None
    assert parse_cpu_quota_v1("50000\n", "100000\n") == 0.5
    assert parse_cpu_quota_v1("x", "100000") is None


def test_cgroup_v2_quota_is_the_tightest_along_the_path(tmp_path: Path) -> None:
    (tmp_path / "outer" / "inner").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "outer" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "outer" / "inner" / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota_cpus(tmp_path, "0::/outer/inner\n") == 3.0
    (tmp_path / "outer" / "inner" / "cpu.max").write_text("120000 100000\n")
    assert cgroup_quota_cpus(tmp_path, "0::/outer/inner\n") == 1.2
    assert cgroup_quota_cpus(tmp_path, "0::/\n") is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("250000\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota_cpus(tmp_path, "12:cpu,cpuacct:/docker/abc\n") == 2.5


def test_usable_cpus_is_affinity_capped_by_the_quota() -> None:
    assert usable_cpus(affinity=8) == 8
    assert usable_cpus(affinity=8, quota=2.0) == 2
    assert usable_cpus(affinity=8, quota=1.5) == 2  # part of a second core is still useful
    assert usable_cpus(affinity=2, quota=6.0) == 2
    assert usable_cpus(affinity=4, quota=0.25) == 1
    assert usable_cpus() >= 1


# -- placement -------------------------------------------------------------------------


def ready_placement(workers: int, seed: int = 1) -> Placement:
    placement = Placement(workers, rng=random.Random(seed))
    for i in range(workers):
        placement.set_ready(i, True)
    return placement


def test_a_room_stays_where_it_was_placed() -> None:
    placement = ready_placement(4)
    first = placement.place("a", now=0.0)
    assert first is not None
    for _ in range(10):
        assert placement.place("a", now=1.0) == first
    assert placement.worker_of("a") == first


def test_rooms_spread_evenly_over_equally_loaded_workers() -> None:
    placement = ready_placement(2)
    for i in range(100):
        placement.place(f"room-{i}", now=0.0)
    assert placement.rooms_on(0) == placement.rooms_on(1) == 50


def test_busy_workers_get_fewer_new_rooms() -> None:
    placement = ready_placement(4, seed=7)
    placement.observe(0, cpu=0.9, pps=0.0)
    placement.observe(1, cpu=0.0, pps=180_000.0)
    placement.observe(2, cpu=0.1, pps=1000.0)
    placement.observe(3, cpu=0.1, pps=1000.0)
    for i in range(40):
        placement.place(f"room-{i}", now=0.0)
        # Fresh samples after every room keep the busy ones busy.
        placement.observe(0, cpu=0.9, pps=0.0)
        placement.observe(1, cpu=0.0, pps=180_000.0)
        placement.observe(2, cpu=0.1, pps=1000.0)
        placement.observe(3, cpu=0.1, pps=1000.0)
    light = placement.rooms_on(2) + placement.rooms_on(3)
    busy = placement.rooms_on(0) + placement.rooms_on(1)
    assert light > 3 * busy


def test_a_dead_worker_loses_its_rooms_and_gets_no_new_ones() -> None:
    placement = ready_placement(2)
    rooms = [f"r{i}" for i in range(10)]
    where = {room: placement.place(room, now=0.0) for room in rooms}
    placement.set_ready(0, False)
    for room in rooms:
        assert placement.worker_of(room) == (1 if where[room] == 1 else None)
        assert placement.place(room, now=1.0) == 1
    placement.set_ready(1, False)
    assert placement.place("new", now=2.0) is None


def test_idle_rooms_are_forgotten_but_not_connected_ones() -> None:
    placement = ready_placement(2)
    placement.place("busy", now=0.0)
    placement.connected("busy")
    placement.place("idle", now=0.0)
    placement.connected("idle")
    placement.disconnected("idle", now=1.0)
    assert placement.forget_idle(now=1.0 + IDLE_FORGET_S - 0.1) == 0
    assert placement.forget_idle(now=1.0 + IDLE_FORGET_S) == 1
    assert placement.worker_of("idle") is None
    assert placement.worker_of("busy") is not None


# -- metrics ---------------------------------------------------------------------------

WORKER_TEXT = """# HELP sfu_rtp_packets_received_total Decrypted RTP media packets.
# TYPE sfu_rtp_packets_received_total counter
sfu_rtp_packets_received_total{media="audio"} 10.0
sfu_rtp_packets_received_total{media="video"} 90.0
# HELP sfu_rtp_packets_forwarded_total RTP packets forwarded.
# TYPE sfu_rtp_packets_forwarded_total counter
sfu_rtp_packets_forwarded_total{media="video"} 900.0
# HELP sfu_rooms Rooms.
# TYPE sfu_rooms gauge
sfu_rooms 3.0
"""


def test_worker_series_get_a_worker_label_and_merge() -> None:
    merged = MergedMetrics([relabel(WORKER_TEXT, 0), relabel(WORKER_TEXT, 1)])
    text = generate_latest(merged).decode()  # type: ignore[arg-type]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    rooms = families["sfu_rooms"].samples
    assert sorted(s.labels["worker"] for s in rooms) == ["0", "1"]
    video = [
        s for s in families["sfu_rtp_packets_received"].samples if s.labels.get("media") == "video"
    ]
    assert {s.labels["worker"]: s.value for s in video} == {"0": 90.0, "1": 90.0}
    assert text.count("# TYPE sfu_rooms gauge") == 1


# -- routing and worker environment ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "room"),
    [
        ("/whip/team", "team"),
        ("/whip/team/abc", "team"),
        ("/whep/team/alice/xyz", "team"),
        ("/rooms/team/policy", "team"),
        ("/", None),
        ("/ws", None),
        ("/whip/", None),
        ("/dev-token", None),
        ("/static/whip/x", None),
    ],
)
def test_room_of_path(path: str, room: str | None) -> None:
    assert room_of_path(path) == room


@pytest.mark.parametrize(
    ("path", "session"),
    [
        ("/whip/team/abc", "abc"),
        ("/whep/team/alice/xyz", "xyz"),
        ("/whip/team", None),
        ("/whep/team/alice", None),
        ("/whip/team/", None),
        ("/whep/team/alice/", None),
        ("/whip/team/a/b", None),
        ("/rooms/team/policy", None),
        ("/ws", None),
    ],
)
def test_session_of_path(path: str, session: str | None) -> None:
    assert session_of_path(path) == session


def test_room_of_join() -> None:
    assert room_of_join('{"type": "join", "room": "team", "token": "t"}') == "team"
    assert room_of_join('{"type": "join", "room": 5}') == ""
    assert room_of_join("[1, 2]") == ""
    assert room_of_join("not json") == ""


def test_worker_environment_gives_each_worker_its_ports_and_the_shared_secret() -> None:
    config = Config(
        media=MediaConfig(udp_port=40000, tcp_port=40100),
        http=HttpConfig(trusted_proxies=("10.0.0.1",)),
        server=ServerConfig(workers="auto"),
    )
    base = {"PATH": "/bin", "SFU_HTTP_PORT": "9999", "SFU_NO_EXTENSIONS": "1"}
    env = worker_environment(base, config, 3, "s" * 40)
    assert env["PATH"] == "/bin"
    assert env["SFU_NO_EXTENSIONS"] == "1"
    worker = parse_config({}, {k: v for k, v in env.items() if k.startswith("SFU_")})
    assert worker.media.udp_port == 40003
    assert worker.media.tcp_port == 40103
    assert worker.http.host == "127.0.0.1" and worker.http.port == 0
    assert worker.http.ops_port == -1
    assert worker.http.trusted_proxies == ("10.0.0.1", "127.0.0.1")
    assert worker.server.workers == "1"
    assert worker.server.worker_name == "sfu-3"
    assert worker.auth.jwt_secret == "s" * 40
    # Everything else is the supervisor's configuration.
    assert replace(worker.rooms) == config.rooms
    ephemeral = worker_environment({}, replace(config, media=MediaConfig(udp_port=0)), 1, "s" * 40)
    assert ephemeral["SFU_MEDIA_UDP_PORT"] == "0"


def test_the_room_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement_module, "MAX_PLACED_ROOMS", 3)
    placement = ready_placement(2)
    placement.place("old", now=0.0)
    placement.place("held", now=1.0)
    placement.connected("held")
    placement.place("newer", now=2.0)
    placement.place("newest", now=3.0)  # evicts "old", the longest idle
    assert placement.worker_of("old") is None
    assert all(placement.worker_of(r) is not None for r in ("held", "newer", "newest"))
    for room in ("newer", "newest"):
        placement.connected(room)
    # Every remembered room has a connection: a new one is placed but not remembered.
    assert placement.place("extra", now=4.0) is not None
    assert placement.worker_of("extra") is None


def test_a_worker_with_a_bad_environment_says_which_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SFU_SERVER_WORKERS", "zero")
    assert main(["worker", "--index", "0"]) == 1
    assert "SFU_SERVER_WORKERS" in capsys.readouterr().err
    # The worker subcommand is internal: not advertised in the help.
    assert "worker" not in build_parser().format_help()


def test_a_room_spreads_to_shards_past_its_threshold() -> None:
    placement = Placement(3, rng=random.Random(7))
    for index in range(3):
        placement.set_ready(index, True)
    home = placement.place("big", now=0.0)
    assert home is not None
    placed = []
    for _ in range(5):
        worker = placement.place_participant("big", spread=2, now=0.0)
        assert worker is not None
        placement.connected("big", worker)
        placed.append(worker)
    # Two on the home worker, then two on a shard, then a third worker opens a shard.
    assert placed[:2] == [home, home]
    assert placed[2] == placed[3] != home
    assert placed[4] not in (home, placed[2])
    assert placement.shards_of("big") == {0, 1, 2}
    # A shard that emptied is no longer one; the home stays.
    placement.disconnected("big", placed[4], now=1.0)
    assert placement.shards_of("big") == {home, placed[2]}
    # Below its threshold a room stays home, unless the home is saturated.
    assert placement.place_participant("small", spread=50, now=0.0) == placement.worker_of("small")
    small_home = placement.worker_of("small")
    assert small_home is not None
    placement.observe(small_home, cpu=SATURATED_LOAD, pps=0.0)
    assert placement.place_participant("small", spread=50, now=0.0) != small_home
    # Spreading off (0, the default): a room stays whole whatever the load.
    assert placement.place_participant("small", spread=0, now=0.0) == small_home


@pytest.mark.parametrize("value", [-1, 1001])
def test_bad_room_spread_values_name_the_key(value: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"server": {"room_spread_subscribers": value}})
    assert err.value.errors[0][0] == "server.room_spread_subscribers"
    assert (
        parse_config({"server": {"room_spread_subscribers": 50}}).server.room_spread_subscribers
        == 50
    )


class _Response:
    status = 200

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None


class _PipeAnnouncements:
    """The supervisor's HTTP session as the workers' pipe endpoints see it: each POST of
    the pipe peers reaches the worker's real ``WorkerPipes.set_peers`` (no socket: the
    pipes queue what they would send). The first POST is held until ``release`` is set,
    so a second announcement can start while it is in flight."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.pipes = {w.index: WorkerPipes(w.index, lambda: None, lambda: 0.0) for w in workers}
        self.by_port = {w.http_port: w.index for w in workers}
        self.release = asyncio.Event()
        self.posts = 0
        #: Each pipe a worker made: (worker, peer).
        self.made: list[tuple[int, int]] = []
        for index, pipes in self.pipes.items():
            add_peer = pipes.endpoint.add_peer

            def recording(
                peer: int, address: tuple[str, int], me: int = index, add: Any = add_peer
            ) -> Any:
                self.made.append((me, peer))
                return add(peer, address)

            pipes.endpoint.add_peer = recording  # type: ignore[method-assign]

    def post(self, url: str, *, json: dict[str, Any], **_kwargs: Any) -> Any:
        session = self

        class Post(_Response):
            async def __aenter__(self) -> _Response:
                session.posts += 1
                if session.posts == 1:
                    await session.release.wait()
                port = int(url.split(":")[2].split("/")[0])
                peers = {int(k): v for k, v in json["peers"].items()}
                session.pipes[session.by_port[port]].set_peers(peers)
                return self

        return Post()


def test_overlapping_pipe_announcements_make_each_pipe_once() -> None:
    """Worker 2 becomes ready while the announcement of workers 0 and 1 is still in
    flight: the second announcement waits for the first and goes out with the list as it
    is then, so the older list never lands last (which dropped the pipes to worker 2, or
    replaced them), and every pair of workers ends with one pipe each way, made once."""

    async def run() -> tuple[_PipeAnnouncements, Supervisor]:
        supervisor = Supervisor(Config(), 3)
        for worker in supervisor.workers:
            worker.http_port = 9000 + worker.index
            worker.pipe_port = 7000 + worker.index
        session = _PipeAnnouncements(supervisor.workers)
        supervisor._session = session  # type: ignore[assignment]
        for worker in supervisor.workers[:2]:
            worker.ready = True
        supervisor.announce_pipes()
        for _ in range(5):
            await asyncio.sleep(0)  # the first POST (to worker 0) is now held
        supervisor.workers[2].ready = True
        supervisor.announce_pipes()
        supervisor.announce_pipes()  # a third ready in the same window coalesces
        for _ in range(5):
            await asyncio.sleep(0)
        session.release.set()
        assert supervisor._pipes_task is not None
        await supervisor._pipes_task
        return session, supervisor

    session, supervisor = asyncio.run(run())
    for index, pipes in session.pipes.items():
        addresses = pipes.endpoint.addresses()
        others = {w.index for w in supervisor.workers} - {index}
        assert set(addresses) == others
        assert all(addresses[peer] == ("127.0.0.1", 7000 + peer) for peer in others)
    assert sorted(session.made) == sorted(
        (me, peer) for me in range(3) for peer in range(3) if me != peer
    )
    assert session.posts == 2 + 3  # the first list to 0 and 1, then the current one to all


def _readyz(app: web.Application) -> dict[str, Any]:
    """The body of ``GET /readyz`` from the app's own handler, socket-free."""

    async def run() -> dict[str, Any]:
        request = make_mocked_request("GET", "/readyz", app=app)
        handler = next(
            r.handler
            for r in app.router.routes()
            if r.method == "GET" and r.resource is not None and r.resource.canonical == "/readyz"
        )
        response = await handler(request)
        assert isinstance(response, web.Response) and response.text is not None
        body: dict[str, Any] = json.loads(response.text)
        return body

    return asyncio.run(run())


def test_readyz_of_a_clustered_supervisor_shows_the_node_not_the_redis_url() -> None:
    secret_url = "redis://:hunter2-password@10.1.2.3:6379/0"
    config = Config(cluster=ClusterConfig(redis_url=secret_url, node_id="node-a", region="eu"))
    supervisor = Supervisor(config, 2)
    body = _readyz(supervisor.http_app)
    assert body["cluster"] == {"node_id": "node-a", "region": "eu", "members": []}
    # Each worker is a member of the cluster: what each reports is listed, only the keys of
    # its status (nothing else it might send); worker 0's view is the node's summary.
    member = {
        "region": "eu",
        "directory": "up",
        "lease": "live",
        "nodes_alive": 4,
        "draining": False,
        "links_up": ["node-b.w0"],
    }
    for worker in supervisor.workers:
        worker.ready = True
        worker.cluster = {
            "node_id": f"node-a.w{worker.index}",
            **member,
            "redis_url": secret_url,
        }
    body = _readyz(supervisor.http_app)
    assert body["cluster"] == {
        "node_id": "node-a",
        **member,
        "members": [{"node_id": "node-a.w0", **member}, {"node_id": "node-a.w1", **member}],
    }
    assert "hunter2" not in json.dumps(body) and "10.1.2.3" not in json.dumps(body)
    # A worker that is down is not listed; with worker 0 down, the node's own name leads.
    supervisor.workers[0].ready = False
    assert _readyz(supervisor.http_app)["cluster"] == {
        "node_id": "node-a",
        "region": "eu",
        "members": [{"node_id": "node-a.w1", **member}],
    }
    # Not clustered: no cluster part at all.
    assert "cluster" not in _readyz(Supervisor(Config(), 2).http_app)


def test_each_worker_of_a_clustered_node_reports_its_membership_with_its_load() -> None:
    """What the supervisor's ``/readyz`` repeats comes with each worker's load report: each
    is a member of its own, ``<node_id>.w<index>``, with its own placement (no Redis is
    reached: the registry only connects when it starts)."""
    cluster = ClusterConfig(redis_url="redis://:pw@10.1.2.3:6379/0", node_id="node-a")
    reports = {}
    for index in (0, 1):
        server = Server(Config(cluster=cluster), worker_index=index)
        assert server.placement is not None and server.bus is None and server.pipes is None

        async def report(server: Server = server) -> dict[str, Any]:
            response = await server._worker_load(make_mocked_request("GET", WORKER_LOAD_PATH))
            assert response.text is not None
            body: dict[str, Any] = json.loads(response.text)
            return body

        reports[index] = asyncio.run(report())
    for index, body in reports.items():
        assert body["packets"] == 0 and body["cluster"]["node_id"] == f"node-a.w{index}"
        assert body["cluster"]["directory"] == "down"  # not started
        assert "pw" not in json.dumps(body) and "10.1.2.3" not in json.dumps(body)
    # A lone node's workers: worker 0 keeps the in-process registry, nobody is a member.
    lone = Server(Config(), worker_index=1)
    assert lone.cluster is None and lone.placement is None and lone.pipes is not None
