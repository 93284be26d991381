"""The sealed media lane's liveness check, sans-I/O with a fake clock.

A dropper on the path can tell lane datagrams from QUIC by their first byte and take only
them. Each side reports on the control stream how many sealed datagrams it opened; a sender
whose peer opens almost none of a window's datagrams stops sealing (QUIC DATAGRAMs again)
and retries with backoff. Checked: a fully dropped lane falls back within the window and
media reaches the peer as DATAGRAM frames; 5% loss (and 50%) never trips it; the retry
re-seals after the backoff, falls back again (backoff doubled) while blocked and stays
sealed once the path heals; malformed reports are dropped and counted, never raised.
"""

from __future__ import annotations

import logging
import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from test_media_lane import A_ADDR, B_ADDR, PIPE_DATAGRAM, T0, Files, exchange, flows
from test_node_link import CLIENT_ADDR, SERVER_ADDR, Pair, _node_files

from sfu.cluster.directory import LocalDirectory, NodeInfo
from sfu.cluster.links import NodeLinks
from sfu.cluster.pki import mint_ca
from sfu.cluster.registry import NodeRegistry
from sfu.config import ClusterConfig
from sfu.metrics.cluster import ClusterCollector
from sfu.transport.media_lane import (
    BLOCKED_MIN_SEALED,
    BLOCKED_WINDOW_S,
    MESSAGE_KEY,
    MESSAGE_REPORT,
    REPORT_INTERVAL_S,
    RETRY_AFTER_S,
    RETRY_MAX_S,
    MediaLane,
    is_lane_datagram,
)
from sfu.transport.node_link import FlowReceived, LinkDown

#: Media rate of the simulated relay (datagrams per second): about one video layer's.
RATE = 100
#: Fake seconds by which a fully dropped lane must have fallen back: a report interval for
#: the first report, the window, the report that closes it (with a round of the fake
#: clock's float error).
FALLBACK_WITHIN_S = REPORT_INTERVAL_S + BLOCKED_WINDOW_S + REPORT_INTERVAL_S + 0.02

Deliver = Callable[[int], bool]


class Relay:
    """A's media to B at RATE datagrams a fake second; control messages cross instantly."""

    def __init__(self) -> None:
        self.now = T0
        self.a, self.b = MediaLane(B_ADDR, now=T0), MediaLane(A_ADDR, now=T0)
        exchange_at(self.a, self.b, T0)
        self.sent = 0
        self.opened = 0
        self.unsealed = 0  # datagrams A would send as QUIC DATAGRAMs

    def run(
        self, seconds: float, deliver: Deliver, until: Callable[[], bool] | None = None
    ) -> None:
        """Relay for ``seconds`` (or until ``until`` holds); ``deliver(i)`` says whether the
        i-th sealed datagram reaches B."""
        for _ in range(round(seconds * RATE)):
            self.now += 1 / RATE
            for lane in (self.a, self.b):
                if lane.next_timer() <= self.now:
                    lane.handle_timer(now=self.now)
            exchange_at(self.a, self.b, self.now)
            sealed = self.a.seal(PIPE_DATAGRAM)
            if sealed is None:
                self.unsealed += 1
            else:
                if deliver(self.sent) and self.b.open(sealed, A_ADDR) == PIPE_DATAGRAM:
                    self.opened += 1
                self.sent += 1
            if until is not None and until():
                return


def exchange_at(a: MediaLane, b: MediaLane, now: float) -> None:
    """Deliver each end's control messages to the other at ``now`` until none is left."""
    while a.has_messages or b.has_messages:
        for message in a.take_messages():
            assert b.receive_message(message, now=now)
        for message in b.take_messages():
            assert a.receive_message(message, now=now)


def nothing(_: int) -> bool:
    return False


def everything(_: int) -> bool:
    return True


def test_a_lane_whose_datagrams_all_vanish_falls_back_within_the_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sfu.transport.media_lane")
    relay = Relay()
    assert relay.a.up
    relay.run(10, nothing, until=lambda: relay.a.in_fallback)
    assert relay.a.in_fallback and not relay.a.up and relay.a.blocked == 1
    assert relay.now - T0 <= FALLBACK_WITHIN_S
    assert relay.a.seal(PIPE_DATAGRAM) is None  # the link sends it as a DATAGRAM frame
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 1 and "QUIC DATAGRAMs" in lines[0]
    assert "10.0.0" not in lines[0] and "4433" not in lines[0]  # no address
    # The other direction is B's own affair: B still seals (A opens what it gets).
    assert relay.b.up and not relay.b.in_fallback


@pytest.mark.parametrize("loss", [0.05, 0.5])
def test_five_per_cent_loss_or_even_half_never_trips_it(loss: float) -> None:
    draw = random.Random(15)
    relay = Relay()
    relay.run(120, lambda _: draw.random() >= loss)
    assert relay.a.blocked == 0 and relay.a.up and relay.unsealed == 0
    assert relay.sent == 120 * RATE
    assert relay.opened == pytest.approx(relay.sent * (1 - loss), rel=0.05)


def test_a_burst_of_total_loss_shorter_than_the_window_does_not_trip_it() -> None:
    relay = Relay()
    relay.run(5, everything)
    # Half a second of nothing, inside an otherwise working window.
    relay.run(10, lambda i: not 700 <= i < 750)
    assert relay.a.blocked == 0 and relay.a.up


def test_a_burst_in_flight_as_a_report_arrives_does_not_trip_it() -> None:
    """A keyframe's burst sealed just before the peer's report comes in is not in that
    report's count; the window it falls in is judged only by the report after."""
    relay = Relay()
    a, b = relay.a, relay.b
    reports = 0
    for _ in range(100):  # 10 s of a trickle of 10/s, all delivered
        relay.now += 0.1
        for lane in (a, b):
            if lane.next_timer() <= relay.now:
                lane.handle_timer(now=relay.now)
        burst = []
        if b.has_messages:  # B's report leaves
            reports += 1
            if reports == 5:  # and A seals 10 windows' worth before it arrives
                burst = [a.seal(PIPE_DATAGRAM) for _ in range(200)]
        exchange_at(a, b, relay.now)
        for sealed in [*burst, a.seal(PIPE_DATAGRAM)]:
            assert sealed is not None and b.open(sealed, A_ADDR) == PIPE_DATAGRAM
    assert reports == 10 and a.sealed == 300 and a.blocked == 0 and a.up


def test_too_few_datagrams_give_no_verdict() -> None:
    """Under BLOCKED_MIN_SEALED datagrams in a window nothing is judged (loss or block?)."""
    relay = Relay()
    per_window = BLOCKED_MIN_SEALED - 5
    for _ in range(40 * per_window):  # 40 windows of a trickle, all dropped
        relay.now += BLOCKED_WINDOW_S / per_window
        for lane in (relay.a, relay.b):
            lane.handle_timer(now=relay.now)
        exchange_at(relay.a, relay.b, relay.now)
        assert relay.a.seal(PIPE_DATAGRAM) is not None  # never judged: sealed every time
    assert relay.a.blocked == 0
    relay.run(FALLBACK_WITHIN_S, nothing)  # 100/s: enough to judge
    assert relay.a.blocked == 1


def test_the_retry_reseals_after_the_backoff_falls_back_again_and_stays_once_healed() -> None:
    relay = Relay()
    relay.run(10, nothing, until=lambda: relay.a.in_fallback)
    first = relay.now
    # In fallback for the backoff: nothing sealed, nothing judged.
    relay.run(RETRY_AFTER_S - 1, nothing)
    assert relay.a.in_fallback and relay.a.seal(PIPE_DATAGRAM) is None
    relay.run(10, nothing, until=lambda: relay.a.up)
    assert relay.now - first == pytest.approx(RETRY_AFTER_S, abs=REPORT_INTERVAL_S + 0.02)
    assert relay.a.seal(PIPE_DATAGRAM) is not None  # sealed again
    # Still blocked: back to DATAGRAMs within the window, the backoff doubled.
    relay.run(10, nothing, until=lambda: relay.a.in_fallback)
    second = relay.now
    assert relay.a.blocked == 2 and second - first <= RETRY_AFTER_S + FALLBACK_WITHIN_S + 0.02
    relay.run(2 * RETRY_AFTER_S - 1, nothing)
    assert relay.a.in_fallback
    # The path heals meanwhile: the next retry stays sealed.
    relay.run(10, everything, until=lambda: relay.a.up)
    assert relay.now - second == pytest.approx(2 * RETRY_AFTER_S, abs=REPORT_INTERVAL_S + 0.02)
    sent_before = relay.sent
    relay.run(60, everything)
    assert relay.a.up and relay.a.blocked == 2
    assert relay.sent - sent_before == 60 * RATE  # every datagram of the minute sealed
    # A window delivered in full reset the backoff: a new block waits RETRY_AFTER_S again.
    relay.run(10, nothing, until=lambda: relay.a.in_fallback)
    third = relay.now
    relay.run(10 + RETRY_AFTER_S, everything, until=lambda: relay.a.up)
    assert relay.now - third == pytest.approx(RETRY_AFTER_S, abs=REPORT_INTERVAL_S + 0.02)


def test_the_backoff_doubles_up_to_its_ceiling() -> None:
    relay = Relay()
    waits = []
    for _ in range(7):
        relay.run(10, nothing, until=lambda: relay.a.in_fallback)
        blocked_at = relay.now
        relay.run(RETRY_MAX_S + 5, nothing, until=lambda: relay.a.up)
        waits.append(round(relay.now - blocked_at))
    assert waits == [30, 60, 120, 240, 300, 300, 300]
    assert relay.a.blocked == 7


def test_reports_go_every_interval_once_the_peers_key_is_held() -> None:
    a, b = MediaLane(B_ADDR, now=T0), MediaLane(A_ADDR, now=T0)
    a.handle_timer(now=T0 + REPORT_INTERVAL_S)
    key = a.take_messages()
    assert [m[0] for m in key] == [MESSAGE_KEY]  # no REPORT: without B's key, B cannot seal
    for message in key:
        assert b.receive_message(message, now=T0)
    exchange(a, b)
    assert a.next_timer() == T0 + 2 * REPORT_INTERVAL_S
    a.handle_timer(now=T0 + 1.5)  # not due: nothing
    assert not a.has_messages
    sealed = b.seal(PIPE_DATAGRAM)
    assert sealed is not None and a.open(sealed, A_ADDR) is None  # wrong source: dropped
    assert a.open(sealed, B_ADDR) == PIPE_DATAGRAM
    a.handle_timer(now=T0 + 2 * REPORT_INTERVAL_S)
    (report,) = a.take_messages()
    assert report == bytes([MESSAGE_REPORT]) + (1).to_bytes(8, "big")  # one opened
    a.handle_timer(now=T0 + 9.0)  # called late: the next is an interval from now
    assert a.take_messages() == [report]  # sent even with nothing new (B must hear "none")
    assert a.next_timer() == T0 + 9.0 + REPORT_INTERVAL_S


def report(count: int) -> bytes:
    return struct.pack("!BQ", MESSAGE_REPORT, count)


def test_malformed_reports_are_dropped_and_counted() -> None:
    relay = Relay()
    relay.run(3, everything)
    a = relay.a
    opened = relay.opened
    assert a.receive_message(report(opened), now=relay.now)  # the same count again: fine
    bad = [
        report(opened - 1),  # goes back: the stream is ordered, counts only grow
        report(a.sealed + 1),  # more than was ever sealed
        report(1 << 63),
        bytes([MESSAGE_REPORT]),  # cut short
        report(opened)[:-1],
        report(opened) + b"\x00",  # too long
    ]
    for message in bad:
        assert a.receive_message(message, now=relay.now) is False
    assert a.drops["malformed"] == len(bad)
    # None of them moved the check: the lane keeps sealing and judging on good reports.
    relay.run(10, everything)
    assert a.up and a.blocked == 0


@given(st.binary(min_size=0, max_size=16))
def test_reports_of_any_bytes_never_raise(tail: bytes) -> None:
    a = MediaLane(B_ADDR, now=T0)
    a.take_messages()
    message = bytes([MESSAGE_REPORT]) + tail
    accepted = a.receive_message(message, now=T0)
    # A's lane sealed nothing: only a count of 0 in 8 bytes is possible.
    assert accepted == (tail == bytes(8))
    assert a.drops["malformed"] == (0 if accepted else 1)
    a.handle_timer(now=T0 + 10)
    assert a.blocked == 0


# -- on a node link ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Files]:
    folder = tmp_path_factory.mktemp("lane-live-ca")
    ca = mint_ca("lane-live")
    return {node: _node_files(folder, ca, node) for node in ("node-a", "node-b")}


def pump_dropping_lane(pair: Pair, seconds: float, *, drop_lane: bool, flow_every: int) -> int:
    """As Pair.pump (5 ms rounds), the client sending a flow every ``flow_every`` rounds,
    and the path to the server dropping every lane datagram when ``drop_lane``; returns the
    lane datagrams dropped."""
    server = pair.server
    assert server is not None
    dropped = 0
    for i in range(round(seconds / 0.005)):
        pair.now += 0.005
        for link, events in ((pair.client, pair.client_events), (server, pair.server_events)):
            timer = link.next_timer()
            if timer is not None and timer <= pair.now:
                events += link.handle_timer(now=pair.now)
        if i % flow_every == 0:
            assert pair.client.send_flow(4, b"\x80\x60" + i.to_bytes(4, "big"))
        for data, _ in pair.client.datagrams(now=pair.now):
            if drop_lane and is_lane_datagram(data):
                dropped += 1
                continue
            pair.server_events += server.receive(data, CLIENT_ADDR, now=pair.now)
        for data, _ in server.datagrams(now=pair.now):
            pair.client_events += pair.client.receive(data, SERVER_ADDR, now=pair.now)
    return dropped


def test_a_link_whose_lane_is_dropped_carries_media_as_quic_datagrams(
    cluster: dict[str, Files],
) -> None:
    pair = Pair(cluster["node-a"], cluster["node-b"], "node-b")
    pair.pump()
    server, lane = pair.server, pair.client.lane
    assert server is not None and lane is not None and lane.up
    # 4 s of media at 100/s, every lane datagram dropped on the way.
    dropped = pump_dropping_lane(pair, FALLBACK_WITHIN_S, drop_lane=True, flow_every=2)
    assert dropped >= BLOCKED_MIN_SEALED and lane.in_fallback
    assert pair.client.lane_totals()["blocked"] == 1
    assert not any(isinstance(e, LinkDown) for e in pair.client_events + pair.server_events)
    # From now on the media rides DATAGRAM frames and arrives, though the dropper stays.
    pair.server_events.clear()
    assert pump_dropping_lane(pair, 2.0, drop_lane=True, flow_every=2) == 0
    arrived = flows(pair.server_events)
    assert len(arrived) == 200 and {f.flow_id for f in arrived} == {4}
    assert arrived[-1] == FlowReceived(4, b"\x80\x60" + (398).to_bytes(4, "big"))
    # The metrics see the block and the lane in fallback; labels stay fixed.
    links = NodeLinks("node-a", ClusterConfig(), "127.0.0.1")
    links.up["node-b"] = pair.client
    registry = CollectorRegistry()
    node = NodeRegistry(LocalDirectory(), NodeInfo("node-a", "eu"))
    registry.register(ClusterCollector(node, links=lambda: links))
    assert registry.get_sample_value("sfu_cluster_link_sealed_blocked_total") == 1.0
    assert registry.get_sample_value("sfu_cluster_links_sealed_fallback") == 1.0
    assert registry.get_sample_value("sfu_cluster_links_sealed") == 0.0
    links._event(pair.client, LinkDown("gone"))  # the count outlives the link
    assert registry.get_sample_value("sfu_cluster_link_sealed_blocked_total") == 1.0
    assert registry.get_sample_value("sfu_cluster_links_sealed_fallback") == 0.0


def test_a_link_with_a_working_lane_keeps_it_and_stays_up(cluster: dict[str, Files]) -> None:
    """Ten fake seconds of media: reports flow both ways, nothing falls back, QUIC's idle
    timeout never fires though all the media is off QUIC."""
    pair = Pair(cluster["node-a"], cluster["node-b"], "node-b")
    pair.pump()
    lane = pair.client.lane
    assert lane is not None and pair.server is not None
    pump_dropping_lane(pair, 10.0, drop_lane=False, flow_every=2)
    assert lane.up and lane.blocked == 0 and lane.sealed == 1000
    assert pair.server.lane_totals()["received"] == 1000
    assert not any(isinstance(e, LinkDown) for e in pair.client_events + pair.server_events)
