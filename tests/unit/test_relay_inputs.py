"""Relay inputs: the forwarder opens a peer node's lane datagrams and forwards their media.

The receiving side of a relay used to take every relayed packet through Python: the link
socket's reader, the lane's opener, the flow's decoding, the pipe, the remote publication,
the data plane's ingest. A relay input (the peer's link address, its lane's opener, a table
of flows to plaintext sources) lets the forwarder do it in one pass; what opened but is not
a routed source stream's RTP is kept for Python (the replay window took it); what is not a
relay input's lane datagram is the slow path. The reference and the compiled kernel must do
exactly the same.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from forwarder_world import (
    AUDIO_SSRC,
    PUB_KEY,
    PUB_SALT,
    VIDEO_SSRCS,
    World,
    _session,
    rtp,
    vp8_payload,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu._fastpath._lane_shared import MAX_INPUT_FLOWS, MAX_RELAY_INPUTS
from sfu.core.kernels import REFERENCE, Kernels
from sfu.packet.flow import encode_flow

PEER = ("10.0.0.2", 4433)
STRANGER = ("10.0.0.9", 4433)
EPOCH = 2
KEY = bytes(range(16))
FLOW = 6  #: the flow the far side relays the world's publication on
OTHER_FLOW = 8  #: a flow no source is routed for


class Peer:
    """The publishing node: seals pipe datagrams for the world's relay input 0."""

    def __init__(self) -> None:
        self.sealer = REFERENCE.LaneSealer(EPOCH, KEY)
        self.sealer.active = True
        self.seqs = [100, 200, 300, 400]

    def seal(self, datagram: bytes) -> bytes:
        sealed = self.sealer.seal(datagram)
        assert sealed is not None
        return sealed

    def media(self, layer: int, size: int, key: bool, now: float, ssrc: int | None = None) -> bytes:
        """A VP8 packet of ``layer`` (3: the audio stream's SSRC), as a pipe datagram."""
        self.seqs[layer] += 1
        seq = self.seqs[layer]
        payload = vp8_payload(seq, 1, 0, True, key, True, size)
        ssrc = ssrc if ssrc is not None else (*VIDEO_SSRCS, AUDIO_SSRC)[layer]
        return rtp(ssrc, seq, int(now * 90000), 96, payload, b"")


def relay_world(kernels: Kernels) -> tuple[World, Any]:
    """A forwarding world whose publisher is a plaintext source (handle 0), fed by relay
    input 0 (the peer's address, an opener holding the peer's key, FLOW routed to it)."""
    world = World(kernels, source=True)
    opener = kernels.LaneOpener()
    opener.add_key(EPOCH, KEY)
    world.forwarder.set_relay_input(0, PEER, opener)
    world.forwarder.set_relay_flows(0, {FLOW: 0})
    return world, opener


def counts(world: World, opener: Any) -> tuple[Any, ...]:
    f = world.forwarder
    return (
        f.relay_input_counts(0),
        (opener.received, opener.malformed, opener.unknown_key, opener.replayed,
         opener.auth_failed),
        (f.relay_in_packets, f.relay_in_bytes, f.relay_in_overflow, f.sent_packets),
    )  # fmt: skip


datagram_events = st.one_of(
    st.tuples(st.just("video"), st.integers(0, 2), st.integers(0, 1200), st.booleans()),
    st.tuples(st.just("audio"), st.integers(0, 200)),
    st.tuples(st.just("replay"), st.integers(0, 5)),
    st.tuples(st.just("garbage"), st.binary(max_size=60)),
    st.tuples(st.just("forged"), st.integers(0, 30)),
    st.tuples(st.just("unknown_flow"), st.integers(0, 300)),
    st.tuples(st.just("rtcp"), st.sampled_from([200, 201, 205, 206])),
    st.tuples(st.just("control"), st.binary(max_size=20)),
    st.tuples(st.just("unbound_ssrc"), st.integers(0, 300)),
    st.tuples(st.just("no_flow"), st.sampled_from([b"", b"\x40", b"\xc0\x00\x01"])),
    st.tuples(st.just("quic"), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("stranger"), st.integers(0, 100)),
    st.tuples(st.just("short"), st.integers(0, 11)),
)


@settings(max_examples=80, deadline=None)
@given(batches=st.lists(st.lists(datagram_events, min_size=1, max_size=6), min_size=1, max_size=12))
def test_compiled_relay_inputs_match_the_reference(
    compiled_kernels: Kernels, batches: list[list[tuple[Any, ...]]]
) -> None:
    """On a mixed stream of link datagrams (media of routed and unrouted flows and SSRCs,
    replays, forgeries, garbage, RTCP, control, QUIC, strangers) both kernels return the
    same slow path, send the same egress, keep the same plaintext for Python and count
    alike; the local subscribers' state ends equal."""
    (ref, ref_opener), (comp, comp_opener) = relay_world(REFERENCE), relay_world(compiled_kernels)
    peer = Peer()
    sent: list[bytes] = []
    now = 20.0
    for batch in batches:
        datagrams: list[tuple[bytes, tuple[str, int]]] = []
        for event in batch:
            now += 0.003
            kind = event[0]
            address = PEER
            if kind == "video":
                data = peer.seal(encode_flow(FLOW, peer.media(event[1], event[2], event[3], now)))
            elif kind == "audio":
                data = peer.seal(encode_flow(FLOW, peer.media(3, event[1], False, now)))
            elif kind == "replay":
                if not sent:
                    continue
                data = sent[-1 - event[1] % len(sent)]
            elif kind == "garbage":
                data = bytes([event[1][0] & ~0x40]) + event[1][1:] if event[1] else b"\x2a"
            elif kind == "forged":
                good = peer.seal(encode_flow(FLOW, peer.media(0, 50, False, now)))
                spot = event[1] % len(good)
                data = good[:spot] + bytes([good[spot] ^ 1]) + good[spot + 1 :]
                if spot == 0:
                    data = good[:-1] + bytes([good[-1] ^ 1])
            elif kind == "unknown_flow":
                data = peer.seal(encode_flow(OTHER_FLOW, peer.media(0, event[1], False, now)))
            elif kind == "rtcp":
                data = peer.seal(encode_flow(FLOW, bytes([0x81, event[1], 0, 1]) + bytes(4)))
            elif kind == "control":
                data = peer.seal(b"\x00" + event[1])
            elif kind == "unbound_ssrc":
                data = peer.seal(encode_flow(FLOW, peer.media(0, event[1], False, now, 0x7777)))
            elif kind == "no_flow":
                data = peer.seal(event[1])
            elif kind == "quic":
                data = bytes([event[1][0] | 0x40]) + event[1][1:]
            elif kind == "stranger":
                data = peer.seal(encode_flow(FLOW, peer.media(0, event[1], False, now)))
                address = STRANGER
            else:
                data = peer.seal(encode_flow(FLOW, bytes([0x80, 96]) + bytes(event[1])))
            sent.append(data)
            datagrams.append((data, address))
        results = []
        for world, opener in ((ref, ref_opener), (comp, comp_opener)):
            slow, egress = world.forwarder.receive_link(datagrams, now)
            kept = world.forwarder.drain_relay_in()
            results.append((slow, egress, kept, counts(world, opener)))
        assert results[0] == results[1]
    assert ref.snapshot() == comp.snapshot()
    assert ref.forwarder.drain_log() == comp.forwarder.drain_log()


def test_routed_media_is_forwarded_and_the_rest_kept_or_passed(kernels: Kernels) -> None:
    """RTP of a routed flow's source stream is forwarded to the subscribers here; RTCP,
    control, another flow and an unknown SSRC are kept, opened, for Python; QUIC and a
    stranger's datagrams are passed untouched; forgeries and replays are dropped, counted."""
    world, opener = relay_world(kernels)
    f = world.forwarder
    peer = Peer()
    media = peer.media(0, 300, True, 20.0)
    sealed = peer.seal(encode_flow(FLOW, media))
    rtcp = bytes([0x81, 201, 0, 1]) + bytes(4)
    kept_rtcp = peer.seal(encode_flow(FLOW, rtcp))
    control = peer.seal(b"\x00\x01\x05")
    other = peer.seal(encode_flow(OTHER_FLOW, media))
    quic = b"\x40" + bytes(30)
    stranger = peer.seal(encode_flow(FLOW, media))
    slow, egress = f.receive_link(
        [(sealed, PEER), (kept_rtcp, PEER), (control, PEER), (other, PEER), (quic, PEER),
         (stranger, STRANGER), (sealed, PEER)],  # the last one: a replay
        20.0,
    )  # fmt: skip
    assert slow == [(quic, PEER), (stranger, STRANGER)]
    assert len(egress) == world.subs_count  # one per subscriber of layer 0
    assert f.drain_relay_in() == [(0, FLOW, rtcp), (0, 0, b"\x01\x05"), (0, OTHER_FLOW, media)]
    assert f.relay_input_counts(0) == (1, len(media), 0)
    assert (f.relay_in_packets, f.relay_in_bytes) == (1, len(media))
    assert opener.received == 4 and opener.replayed == 1
    # The ingest log names the stream, as for ingest(): the remote publication's bookkeeping.
    (record,) = f.drain_log()
    assert record[0] == 0


def test_pump_link_reads_the_socket_in_batches(kernels: Kernels) -> None:
    """From a real socket: the lane's media forwarded (its egress returned without a media
    socket), QUIC handed back with its source address."""
    link = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        link.bind(("127.0.0.1", 0))
        link.setblocking(False)
        far.bind(("127.0.0.1", 0))
        world = World(kernels, source=True)
        opener = kernels.LaneOpener()
        opener.add_key(EPOCH, KEY)
        world.forwarder.set_relay_input(3, far.getsockname(), opener)
        world.forwarder.set_relay_flows(3, {FLOW: 0})
        peer = Peer()
        for i in range(100):
            far.sendto(peer.seal(encode_flow(FLOW, peer.media(0, 100, i == 0, 20.0))),
                       link.getsockname())  # fmt: skip
        far.sendto(b"\xc0quic", link.getsockname())
        slow: list[Any] = []
        egress: list[Any] = []
        for _ in range(50):
            more, out = world.forwarder.pump_link(link, 20.0)
            slow += more
            egress += out
            if world.forwarder.relay_in_packets == 100 and slow:
                break
        assert world.forwarder.relay_in_packets == 100
        assert world.forwarder.relay_input_counts(3)[0] == 100
        assert slow == [(b"\xc0quic", far.getsockname())]
        assert len(egress) == 100 * world.subs_count
    finally:
        link.close()
        far.close()


def test_registration_edges(kernels: Kernels) -> None:
    """Bounded and checked: index range, one input per address, the flow limit, the
    opener's kind, flows of a removed input."""
    world, _ = relay_world(kernels)
    f = world.forwarder
    with pytest.raises(ValueError):
        f.set_relay_input(MAX_RELAY_INPUTS, PEER, kernels.LaneOpener())
    with pytest.raises(ValueError, match="address"):
        f.set_relay_input(1, PEER, kernels.LaneOpener())
    with pytest.raises(ValueError, match="IP literal"):
        f.set_relay_input(1, ("example.org", 1), kernels.LaneOpener())
    with pytest.raises(ValueError, match="at most"):
        f.set_relay_flows(0, {2 * i + 2: 0 for i in range(MAX_INPUT_FLOWS + 1)})
    with pytest.raises(ValueError, match="range"):
        f.set_relay_flows(0, {0: 0})
    with pytest.raises(KeyError):
        f.set_relay_flows(5, {FLOW: 0})
    other = REFERENCE if kernels.name != "python" else None
    if other is not None:
        with pytest.raises(TypeError):
            f.set_relay_input(1, STRANGER, other.LaneOpener())
    f.set_relay_flows(0, {2 * i + 2: 0 for i in range(MAX_INPUT_FLOWS)})  # at the limit
    f.set_relay_input(0, PEER, kernels.LaneOpener())  # the same input again: replaced
    assert f.relay_input_counts(0) == (0, 0, 0)
    f.remove_relay_input(0)
    f.remove_relay_input(0)  # twice: nothing
    assert f.relay_input_counts(0) == (0, 0, 0)
    f.set_relay_input(1, PEER, kernels.LaneOpener())  # its address is free again


def test_a_stale_route_never_reaches_another_transport(kernels: Kernels) -> None:
    """The flow table names a source handle: once that source is gone, or its slot is a
    participant's transport now, the flow's media is kept for Python, never forwarded
    there; an input removed passes its datagrams to the slow path."""
    world, opener = relay_world(kernels)
    f = world.forwarder
    peer = Peer()

    def one(address: tuple[str, int] = PEER) -> tuple[Any, Any, Any]:
        media = peer.media(0, 100, True, 20.0)
        data = peer.seal(encode_flow(FLOW, media))
        slow, egress = f.receive_link([(data, address)], 20.0)
        return slow, egress, f.drain_relay_in()

    slow, egress, kept = one()
    assert not slow and egress and not kept
    f.set_relay_flows(0, {})  # the flow closed: kept, opened, for the pipe's counting
    slow, egress, kept = one()
    assert not slow and not egress and [entry[:2] for entry in kept] == [(0, FLOW)]
    f.set_relay_flows(0, {FLOW: 0})
    f.remove_transport(0)  # the source released
    slow, egress, kept = one()
    assert not egress and len(kept) == 1
    # The slot reused: a participant's transport now.
    f.set_transport(0, ("127.0.0.1", 7000), _session(world.srtp, PUB_KEY, PUB_SALT))
    slow, egress, kept = one()
    assert not egress and len(kept) == 1
    f.remove_relay_input(0)
    slow, egress, kept = one()
    assert len(slow) == 1 and not egress and not kept
    assert opener.received == 4  # the last one was not opened: Python's path will


def test_the_drain_list_is_bounded(kernels: Kernels) -> None:
    """Opened datagrams Python did not take in time are dropped and counted, not held."""
    from sfu._fastpath._lane_shared import RELAY_IN_SLOTS

    world, _ = relay_world(kernels)
    peer = Peer()
    control = [(peer.seal(b"\x00\x01"), PEER) for _ in range(RELAY_IN_SLOTS + 5)]
    world.forwarder.receive_link(control, 20.0)
    assert len(world.forwarder.drain_relay_in()) == RELAY_IN_SLOTS
    assert world.forwarder.relay_in_overflow == 5


# -- the data plane: a node link's relay input, its flows, its counts ----------------------------


class LinkSockets:
    """The node link socket (read by the data plane) and the peer node's socket."""

    def __init__(self) -> None:
        self.link = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.link.bind(("127.0.0.1", 0))
        self.link.setblocking(False)
        self.far.bind(("127.0.0.1", 0))
        self.address = self.far.getsockname()

    def send(self, datagram: bytes) -> None:
        self.far.sendto(datagram, self.link.getsockname())

    def close(self) -> None:
        self.link.close()
        self.far.close()


def test_the_data_plane_reads_the_link_and_forwards_a_remote_publications_media(
    kernels: Kernels,
) -> None:
    """Node B's data plane reads the link socket: the relayed RTP of the remote
    publication's flow reaches its subscribers without Python (the same packets as its
    Router's path delivers), the forwarder's records land in the remote publication's
    bookkeeping, the counts are folded; RTCP on the flow is delivered to the link's Python
    path, QUIC to the endpoint's; once the source is released or the input closed, nothing
    is forwarded for it."""
    from relay_far_side import SSRCS, FarSide
    from relay_far_side import packet as far_packet

    side = FarSide(kernels, plane=True)
    dataplane = side.dataplane
    assert dataplane is not None
    sockets = LinkSockets()
    try:
        opener = kernels.LaneOpener()
        opener.add_key(EPOCH, KEY)
        peer = Peer()
        delivered: list[tuple[int, bytes]] = []
        folded: list[tuple[int, int, int, float]] = []
        slow: list[tuple[bytes, Any]] = []
        assert dataplane.open_input(
            side.pipe_b,
            sockets.address,
            opener,
            deliver=lambda flow, payload: delivered.append((flow, payload)),
            fold=lambda *counts: folded.append(counts),
        )
        side.announce()

        def read() -> None:
            for _ in range(20):
                dataplane.read_link(sockets.link, side.now, lambda d, a: slow.append((d, a)))
                side.collect()

        packets = [far_packet(seq, key=seq == 1) for seq in range(1, 11)]
        for media in packets:
            sockets.send(peer.seal(encode_flow(side.flow, media)))
        sender_report = bytes([0x80, 200, 0, 6]) + SSRCS[0].to_bytes(4, "big") + bytes(20)
        sockets.send(peer.seal(encode_flow(side.flow, sender_report)))
        sockets.send(b"\xc1quic")
        read()
        assert dataplane.forwarder.relay_in_packets == 10
        assert all(len(received) == 10 for received in side.received)
        assert delivered == [(side.flow, sender_report)]
        assert slow == [(b"\xc1quic", sockets.address)]
        assert sum(f[0] for f in folded) == 10
        assert sum(f[1] for f in folded) == sum(len(p) for p in packets)
        side.replay()  # the records reach the remote publication's Router
        assert side.publication.layers[0].packets == 10
        assert side.remote.counters.rtp_in == 10
        # A second publication's flow is not routed: kept, delivered for the pipe to count.
        sockets.send(peer.seal(encode_flow(side.flow + 2, packets[0])))
        read()
        assert delivered[-1] == (side.flow + 2, packets[0])
        # The remote publication closes: its flow is no longer forwarded, only delivered.
        side.remote.close()
        sockets.send(peer.seal(encode_flow(side.flow, far_packet(11))))
        read()
        assert dataplane.forwarder.relay_in_packets == 10
        assert delivered[-1] == (side.flow, far_packet(11))
        # The input closes (its link went down): the datagrams go to the endpoint's path.
        dataplane.close_input(side.pipe_b)
        late = peer.seal(encode_flow(side.flow, far_packet(12)))
        sockets.send(late)
        read()
        assert slow[-1] == (late, sockets.address)
        assert opener.received == 13  # the lane's REPORT counts what the kernel opened
    finally:
        sockets.close()


def test_a_failing_handler_or_an_input_closed_mid_batch_loses_nothing_else(
    kernels: Kernels,
) -> None:
    """A handler that raises on one QUIC datagram costs that datagram only (counted; the
    rest of the batch and the kept lane datagrams are handed on); a handler that closes
    the input and opens another in its index within the batch does not get that other link
    the closed one's kept datagrams (they go to the link they came on, whose Python path
    counts them)."""
    from relay_far_side import FarSide

    from sfu._fastpath._lane_shared import MAX_RELAY_INPUTS as LIMIT

    side = FarSide(kernels, plane=True)
    dataplane = side.dataplane
    assert dataplane is not None
    sockets = LinkSockets()
    try:
        opener = kernels.LaneOpener()
        opener.add_key(EPOCH, KEY)
        peer = Peer()
        delivered: list[tuple[str, int, bytes]] = []
        slow: list[bytes] = []

        def noop(*_: Any) -> None:
            return None

        def open_as(name: str) -> None:
            assert dataplane.open_input(
                name,
                sockets.address,
                opener,
                deliver=lambda flow, payload: delivered.append((name, flow, payload)),
                fold=noop,
            )

        for i in range(LIMIT - 1):  # the table full: a reopened input reuses the index
            other = (f"10.0.{i // 250}.{i % 250 + 1}", 4433)
            assert dataplane.open_input(i, other, kernels.LaneOpener(), deliver=noop, fold=noop)
        open_as("first")

        def handler(data: bytes, address: Any) -> None:
            slow.append(data)
            if data == b"\xc1boom":
                raise RuntimeError("a bug in a QUIC handler")
            if data == b"\xc1replace":  # the link is replaced within the batch
                dataplane.close_input("first")
                open_as("second")

        control = peer.seal(b"\x00\x01")  # the control flow: kept for Python
        for datagram in (b"\xc1boom", control, b"\xc1after"):
            sockets.send(datagram)
        dataplane.read_link(sockets.link, 1.0, handler)
        assert slow == [b"\xc1boom", b"\xc1after"]
        assert delivered == [("first", 0, b"\x01")]
        assert dataplane.link_handler_errors == 1
        for datagram in (peer.seal(b"\x00\x02"), b"\xc1replace"):
            sockets.send(datagram)
        dataplane.read_link(sockets.link, 2.0, handler)
        # The closed link's own path takes it, not the link now in its index.
        assert delivered[-1] == ("first", 0, b"\x02")
        sockets.send(peer.seal(b"\x00\x03"))
        dataplane.read_link(sockets.link, 3.0, handler)
        assert delivered[-1] == ("second", 0, b"\x03")
    finally:
        sockets.close()


def test_inputs_are_bounded_and_off_when_asked(kernels: Kernels) -> None:
    """MAX_RELAY_INPUTS inputs at most; with relay inputs off (the benchmarks' baseline) or
    an opener of another kind none opens, and the link's Python path reads everything."""
    from sfu._fastpath._lane_shared import MAX_RELAY_INPUTS as LIMIT
    from sfu.core.dataplane import DataPlane

    dataplane = DataPlane(kernels=kernels)

    def noop(*_: Any) -> None:
        return None

    for i in range(LIMIT):
        address = (f"10.0.{i // 250}.{i % 250 + 1}", 4433)
        assert dataplane.open_input(i, address, kernels.LaneOpener(), deliver=noop, fold=noop)
    assert not dataplane.open_input("x", PEER, kernels.LaneOpener(), deliver=noop, fold=noop)
    dataplane.close_input(1)  # PEER's address: its input was the second
    assert dataplane.open_input("x", PEER, kernels.LaneOpener(), deliver=noop, fold=noop)
    off = DataPlane(kernels=kernels)
    off.relay_inputs = False
    assert not off.open_input("y", PEER, kernels.LaneOpener(), deliver=noop, fold=noop)
    if kernels.name != "python":
        assert not off.open_input("z", PEER, REFERENCE.LaneOpener(), deliver=noop, fold=noop)
