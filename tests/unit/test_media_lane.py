"""The sealed media lane of a node link, sans-I/O: keys, sealing, the receiver's checks.

Two :class:`MediaLane` ends exchange their control messages by hand; then two
:class:`NodeLink` ends (QUIC with the cluster's mutual TLS, in memory at a fake time) key
their lanes over the control stream and carry flows on it. Checked: the round trip, every
tampered byte refused, replays and stale counters refused, another address refused before
decryption, the DATAGRAM fallback until keyed, fresh keys with every link, rekeying, and
arbitrary input never raising.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from test_node_link import CLIENT_ADDR, SERVER_ADDR, Pair, _node_files

from sfu.cluster.directory import LocalDirectory, NodeInfo
from sfu.cluster.links import NodeLinks
from sfu.cluster.pki import mint_ca
from sfu.cluster.registry import NodeRegistry
from sfu.config import ClusterConfig
from sfu.io.quic_link import LinkEndpoint
from sfu.metrics.cluster import ClusterCollector
from sfu.packet.errors import ParseError
from sfu.packet.flow import encode_flow
from sfu.transport import media_lane
from sfu.transport.media_lane import (
    HEADER_BYTES,
    LANE_DROP_REASONS,
    MESSAGE_KEY,
    OVERHEAD,
    QUIC_FIXED_BIT,
    REPLAY_WINDOW,
    VERSION,
    MediaLane,
    is_lane_datagram,
    parse_header,
)
from sfu.transport.node_link import FlowReceived, LinkDown, NodeLink, link_configuration

A_ADDR = ("10.0.0.1", 4433)
B_ADDR = ("10.0.0.2", 4433)
#: The fake clock's start.
T0 = 1000.0
PIPE_DATAGRAM = encode_flow(7, b"\x80\x60" + bytes(range(200)))

Files = tuple[str, str, str]


def keyed() -> tuple[MediaLane, MediaLane]:
    """Two lane ends (A's, B's) that exchanged their keys and acknowledgements."""
    a, b = MediaLane(B_ADDR, now=T0), MediaLane(A_ADDR, now=T0)
    exchange(a, b)
    return a, b


def exchange(a: MediaLane, b: MediaLane) -> None:
    """Deliver each end's control messages to the other until none is left."""
    while a.has_messages or b.has_messages:
        for message in a.take_messages():
            assert b.receive_message(message, now=T0)
        for message in b.take_messages():
            assert a.receive_message(message, now=T0)


def dropped(lane: MediaLane) -> dict[str, int]:
    return {reason: count for reason, count in lane.drops.items() if count}


# -- the lane alone ------------------------------------------------------------------------------


def test_sealed_datagrams_round_trip_both_ways_once_keyed() -> None:
    a, b = MediaLane(B_ADDR, now=T0), MediaLane(A_ADDR, now=T0)
    assert not a.up and a.seal(PIPE_DATAGRAM) is None  # nothing sealed before keying
    for message in a.take_messages():  # A's key reaches B; B's acknowledgement is not back
        b.receive_message(message, now=T0)
    assert not a.up
    exchange(a, b)
    assert a.up and b.up
    for sender, receiver, source in ((a, b, A_ADDR), (b, a, B_ADDR)):
        for i in range(3):
            sealed = sender.seal(PIPE_DATAGRAM + bytes([i]))
            assert sealed is not None and is_lane_datagram(sealed)
            assert sealed[0] & QUIC_FIXED_BIT == 0 and sealed[0] & 0xF0 == VERSION
            assert len(sealed) == len(PIPE_DATAGRAM) + 1 + OVERHEAD
            assert parse_header(sealed)[1] == i  # the counter, from 0
            assert PIPE_DATAGRAM not in sealed  # sealed, not only signed
            assert receiver.open(sealed, source) == PIPE_DATAGRAM + bytes([i])
        assert sender.sealed == 3 and receiver.received == 3
        assert dropped(receiver) == {}


def test_every_tampered_byte_is_refused_and_counted() -> None:
    a, b = keyed()
    sealed = a.seal(PIPE_DATAGRAM)
    assert sealed is not None
    for i in range(len(sealed)):
        forged = bytearray(sealed)
        forged[i] ^= 0x01
        assert b.open(bytes(forged), A_ADDR) is None
    # A flipped epoch bit names a key B does not hold; any other byte fails the tag.
    assert dropped(b) == {"unknown_key": 1, "auth_failed": len(sealed) - 1}
    assert b.open(sealed, A_ADDR) == PIPE_DATAGRAM  # the real one still opens
    assert b.open(sealed[:-1], A_ADDR) is None  # cut short: the tag fails
    assert b.open(sealed[: HEADER_BYTES + 3], A_ADDR) is None  # no room for a tag
    assert dropped(b)["malformed"] == 1


def test_replays_are_refused_and_reordering_within_the_window_is_not() -> None:
    a, b = keyed()
    sealed = [a.seal(PIPE_DATAGRAM) for _ in range(REPLAY_WINDOW + 10)]
    assert all(s is not None for s in sealed)
    first, late, newest = sealed[0], sealed[5], sealed[-1]
    assert first is not None and late is not None and newest is not None
    assert b.open(first, A_ADDR) is not None
    assert b.open(first, A_ADDR) is None  # the same datagram again
    assert b.open(newest, A_ADDR) is not None  # 1033 ahead
    assert b.open(late, A_ADDR) is None  # now more than a window behind
    in_window = sealed[-REPLAY_WINDOW]
    assert in_window is not None
    assert b.open(in_window, A_ADDR) is not None  # late but within the window: accepted once
    assert b.open(in_window, A_ADDR) is None
    assert b.open(newest, A_ADDR) is None
    assert dropped(b) == {"replayed": 4}
    assert b.received == 3


def test_another_address_is_dropped_before_any_decryption() -> None:
    a, b = keyed()
    sealed = a.seal(PIPE_DATAGRAM)
    assert sealed is not None
    assert b.open(sealed, ("10.0.0.9", 4433)) is None
    assert b.open(sealed, (A_ADDR[0], A_ADDR[1] + 1)) is None
    assert b.open(b"garbage", ("10.0.0.9", 4433)) is None  # not even parsed
    assert dropped(b) == {"not_peer": 3}
    # The replay window did not move: the datagram still opens from the peer (an IPv6-style
    # 4-tuple source compares by host and port).
    assert b.open(sealed, (*A_ADDR, 0, 0)) == PIPE_DATAGRAM


def test_a_lane_without_the_peers_key_drops_and_counts() -> None:
    a, b = MediaLane(B_ADDR, now=T0), MediaLane(A_ADDR, now=T0)
    for message in b.take_messages():
        a.receive_message(message, now=T0)  # A holds B's key; B never got A's
    for message in a.take_messages():
        b.receive_message(message, now=T0)  # the acknowledgement of B's key: B may seal
    assert b.up and not a.up
    sealed = b.seal(PIPE_DATAGRAM)
    assert sealed is not None and a.open(sealed, B_ADDR) == PIPE_DATAGRAM
    c = MediaLane(A_ADDR, now=T0)  # no key from anyone
    assert c.open(sealed, A_ADDR) is None
    assert dropped(c) == {"unknown_key": 1}


def test_each_lane_draws_its_own_key() -> None:
    a1, b1 = keyed()
    _a2, b2 = keyed()
    sealed = a1.seal(PIPE_DATAGRAM)
    assert sealed is not None
    assert b2.open(sealed, A_ADDR) is None  # another link's key never opens it
    assert sum(b2.drops.values()) == 1
    assert b1.open(sealed, A_ADDR) == PIPE_DATAGRAM


def test_a_new_key_is_announced_and_used_once_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(media_lane, "REKEY_AFTER", 4)
    monkeypatch.setattr(media_lane, "KEY_LIMIT", 8)
    draws = itertools.count()
    # Deterministic draws: the epoch byte 15, then keys (the next epoch wraps to 0).
    a = MediaLane(B_ADDR, now=T0, random=lambda n: bytes([15 + next(draws)]) * n)
    b = MediaLane(A_ADDR, now=T0)
    exchange(a, b)
    old = [a.seal(PIPE_DATAGRAM) for _ in range(4)]
    assert a.has_messages  # the next key, announced after 4 datagrams
    (announce,) = a.take_messages()
    assert announce[0] == MESSAGE_KEY and announce[1] == 0  # epoch 15 + 1, wrapped
    in_flight = a.seal(PIPE_DATAGRAM)  # still the old key: B has not acknowledged
    assert in_flight is not None and parse_header(in_flight)[0] == 15
    b.receive_message(announce, now=T0)
    exchange(a, b)
    new = a.seal(PIPE_DATAGRAM)
    assert new is not None and parse_header(new)[0] == 0
    # B opens the new key's datagram and the old key's ones still in flight.
    assert b.open(new, A_ADDR) == PIPE_DATAGRAM
    for sealed in [*old, in_flight]:
        assert sealed is not None and b.open(sealed, A_ADDR) == PIPE_DATAGRAM
    assert dropped(b) == {}


def test_sealing_stops_at_the_key_limit_without_an_acknowledged_new_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(media_lane, "REKEY_AFTER", 2)
    monkeypatch.setattr(media_lane, "KEY_LIMIT", 3)
    a, _b = keyed()
    assert all(a.seal(PIPE_DATAGRAM) is not None for _ in range(3))
    assert a.take_messages()  # the new key, never acknowledged
    assert not a.up and a.seal(PIPE_DATAGRAM) is None  # back to QUIC DATAGRAMs


@given(st.binary(max_size=64))
def test_the_header_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        epoch, counter = parse_header(data)
    except ParseError:
        return
    assert 0 <= epoch < 16 and 0 <= counter < 1 << 64
    assert data[0] & 0xF0 == VERSION


@given(st.binary(max_size=200), st.sampled_from([A_ADDR, ("10.0.0.9", 1)]))
def test_garbage_never_raises_and_is_counted_once(data: bytes, source: tuple[str, int]) -> None:
    _, b = keyed()
    assert b.open(data, source) is None
    assert sum(b.drops.values()) == 1 and b.received == 0


@given(st.binary(max_size=40))
def test_garbage_control_messages_never_raise(message: bytes) -> None:
    a, _ = keyed()
    before = a.drops["malformed"]
    accepted = a.receive_message(message, now=T0)
    assert accepted or a.drops["malformed"] == before + 1


def test_the_drop_reasons_are_a_fixed_set() -> None:
    assert set(MediaLane(A_ADDR, now=T0).drops) == set(LANE_DROP_REASONS)


# -- on a node link ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Files]:
    folder = tmp_path_factory.mktemp("lane-ca")
    ca = mint_ca("lane")
    return {node: _node_files(folder, ca, node) for node in ("node-a", "node-b")}


def up_pair(cluster: dict[str, Files]) -> tuple[Pair, NodeLink]:
    pair = Pair(cluster["node-a"], cluster["node-b"], "node-b")
    pair.pump()
    assert pair.server is not None
    return pair, pair.server


def flows(events: list[object]) -> list[FlowReceived]:
    return [e for e in events if isinstance(e, FlowReceived)]


def test_a_link_keys_its_lane_and_moves_media_off_quic(cluster: dict[str, Files]) -> None:
    pair, server = up_pair(cluster)
    assert pair.client.lane is not None and pair.client.lane.up
    assert server.lane is not None and server.lane.up
    assert pair.client.send_flow(9, b"media")
    out = pair.client.datagrams(now=pair.now)
    lane_out = [data for data, _ in out if is_lane_datagram(data)]
    assert len(lane_out) == 1 and all(addr == SERVER_ADDR for _, addr in out)
    assert server.receive(lane_out[0], CLIENT_ADDR, now=pair.now) == [FlowReceived(9, b"media")]
    assert server.send_flow(10, b"feedback")
    pair.pump(1)
    assert FlowReceived(10, b"feedback") in pair.client_events
    assert pair.client.lane_totals()["sent"] == 1 and pair.client.lane_totals()["received"] == 1
    assert pair.client.flows_sent == 1 and server.flows_received == 1
    # From another address the same datagram is refused, counted, never delivered.
    assert pair.client.send_flow(9, b"again")
    (again,) = [d for d, _ in pair.client.datagrams(now=pair.now) if is_lane_datagram(d)]
    assert server.receive(again, ("127.0.0.1", 6666), now=pair.now) == []
    assert server.lane_totals()["not_peer"] == 1
    assert server.receive(again, CLIENT_ADDR, now=pair.now) == [FlowReceived(9, b"again")]
    assert server.receive(again, CLIENT_ADDR, now=pair.now) == []  # replayed
    assert server.lane_totals()["replayed"] == 1


def test_media_rides_quic_datagrams_until_the_lane_is_keyed(cluster: dict[str, Files]) -> None:
    pair = Pair(cluster["node-a"], cluster["node-b"], "node-b")
    while pair.client.peer is None:  # up to the client's LinkUp, before any key is back
        pair.pump(1)
    assert pair.client.lane is not None and not pair.client.lane.up
    assert pair.client.send_flow(5, b"early")  # accepted: a DATAGRAM frame
    out = pair.client.datagrams(now=pair.now)
    assert out and not any(is_lane_datagram(data) for data, _ in out)
    assert pair.server is not None
    for data, _ in out:
        pair.server_events += pair.server.receive(data, CLIENT_ADDR, now=pair.now)
    pair.pump()
    assert FlowReceived(5, b"early") in pair.server_events
    assert pair.client.lane.sealed == 0 and pair.client.lane.up


def test_a_peer_without_the_lane_keeps_quic_datagrams(cluster: dict[str, Files]) -> None:
    ca, cert, key = cluster["node-a"]
    conf = link_configuration(
        is_client=True, ca_file=ca, cert_file=cert, key_file=key, server_name="node-b"
    )
    pair = Pair(cluster["node-a"], cluster["node-b"], "node-b")
    pair.client = NodeLink(conf, peer_address=SERVER_ADDR, now=pair.now, media_lane=False)
    pair.pump()
    assert pair.client.lane is None and pair.server is not None and pair.server.lane is not None
    assert not pair.server.lane.up  # its key was never acknowledged
    assert pair.server.send_flow(3, b"fallback")
    pair.pump(2)
    assert FlowReceived(3, b"fallback") in pair.client_events
    assert pair.server.lane.sealed == 0


def test_a_new_link_draws_new_keys(cluster: dict[str, Files]) -> None:
    """A reconnection is a new link: the old link's datagrams are refused by the new one."""
    old, _ = up_pair(cluster)
    new, server = up_pair(cluster)
    assert old.client.send_flow(1, b"stale")
    (stale,) = [d for d, _ in old.client.datagrams(now=old.now) if is_lane_datagram(d)]
    assert server.receive(stale, CLIENT_ADDR, now=new.now) == []
    totals = server.lane_totals()
    assert totals["auth_failed"] + totals["unknown_key"] == 1
    assert new.client.send_flow(1, b"fresh")
    new.pump(1)
    assert FlowReceived(1, b"fresh") in new.server_events


def test_the_endpoint_drops_lane_datagrams_from_strangers(cluster: dict[str, Files]) -> None:
    ca, cert, key = cluster["node-b"]
    conf = link_configuration(is_client=False, ca_file=ca, cert_file=cert, key_file=key)
    endpoint = LinkEndpoint(conf, lambda peer: conf, lambda link, event: None)
    endpoint.datagram_received(bytes([VERSION]) + bytes(40), ("127.0.0.1", 7777))
    assert endpoint.lane_not_peer == 1 and endpoint.dropped_unknown == 0 and not endpoint.links


def test_the_lane_metrics_count_by_fixed_labels_and_outlive_the_link(
    cluster: dict[str, Files],
) -> None:
    pair, server = up_pair(cluster)
    for i in range(5):
        assert pair.client.send_flow(1, bytes([i]) * 100)
    sealed = [d for d, _ in pair.client.datagrams(now=pair.now) if is_lane_datagram(d)]
    for data in sealed:
        server.receive(data, CLIENT_ADDR, now=pair.now)
    server.receive(sealed[0], CLIENT_ADDR, now=pair.now)  # replayed
    server.receive(sealed[1], ("127.0.0.1", 9), now=pair.now)  # not the peer
    links = NodeLinks("node-b", ClusterConfig(), "127.0.0.1")
    links.up["node-a"] = server
    registry = CollectorRegistry()
    node = NodeRegistry(LocalDirectory(), NodeInfo("node-b", "eu"))
    registry.register(ClusterCollector(node, links=lambda: links))

    def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
        value: float | None = registry.get_sample_value(name, labels)
        return value

    assert sample("sfu_cluster_links_sealed") == 1.0
    # The link's round trip, as QUIC measured it in the handshake (floored at 1 ms).
    longest = sample("sfu_cluster_link_rtt_seconds", {"stat": "max"})
    assert longest is not None and longest >= 0.001
    assert sample("sfu_cluster_link_rtt_seconds", {"stat": "min"}) == longest
    assert sample("sfu_cluster_link_sealed_datagrams_total", {"event": "received"}) == 5.0
    assert sample("sfu_cluster_link_sealed_datagrams_total", {"event": "sent"}) == 0.0
    drops = {
        r: sample("sfu_cluster_link_sealed_drops_total", {"reason": r}) for r in LANE_DROP_REASONS
    }
    assert drops == {
        "not_peer": 1.0, "malformed": 0.0, "unknown_key": 0.0, "replayed": 1.0, "auth_failed": 0.0
    }  # fmt: skip
    text = generate_latest(registry).decode()
    assert "node-a" not in text and "node-b" not in text and "127.0.0.1" not in text
    # The link goes down: its counts stay in the totals.
    links._event(server, LinkDown("gone"))
    assert sample("sfu_cluster_links_sealed") == 0.0
    assert sample("sfu_cluster_link_rtt_seconds", {"stat": "max"}) is None
    assert sample("sfu_cluster_link_sealed_datagrams_total", {"event": "received"}) == 5.0
