"""The far end of a relay pipe fans its media out in the data plane, as a local publisher's.

Node A's publishing pipe sends a VP8 simulcast publication; node B holds it as a
``RemotePublication`` with two subscribers. With B's ``DataPlane`` given, the relayed packets
enter the forwarder through a plaintext source (``DataPlane.ingest``); without it, through the
remote publication's Router (the Python path). Both must deliver the same packets, and the
forwarder's records must land in the same receive bookkeeping (NACKs up the flow included).
No sockets: the pipe's datagrams are handed across by the test.
"""

from __future__ import annotations

import struct
from typing import Any, cast

from ingest_paths import PUB_EXT, RIDS, SUB_EXT, SUB_KEY, SUB_SALT, VP8_PT, FakeTransport
from ingest_paths import vp8 as vp8_payload

from sfu._fastpath import _srtp_py
from sfu.core.dataplane import DataPlane
from sfu.core.kernels import Kernels
from sfu.core.peer import Peer
from sfu.core.publication import Publication
from sfu.core.relay import RelayHub, RemotePublication
from sfu.core.subscription import Subscription
from sfu.negotiation import NegotiatedCodec
from sfu.packet.rtcp import parse_compound
from sfu.packet.rtcp_feedback import Nack, seqs_from_nack_pairs
from sfu.transport.pipe import Feedback, FlowRequested, Media, Pipe, StreamsReceived
from sfu.transport.transport import WebRtcTransport

PROFILE = "SRTP_AEAD_AES_128_GCM"
SSRCS = (0x111, 0x222, 0x333)
SUBS = 2


def _packet(seq: int, *, key: bool = False, layer: int = 0) -> bytes:
    head = struct.pack("!BBHII", 0x80, VP8_PT, seq & 0xFFFF, 3000 * seq, SSRCS[layer])
    return head + vp8_payload(seq, key=key)


class FarSide:
    """Node B: subscribers of the relayed publication, with or without a data plane."""

    def __init__(self, kernels: Kernels, *, plane: bool) -> None:
        self.now = 10.0
        self.dataplane = DataPlane(kernels=kernels) if plane else None
        self.egress: list[tuple[bytes, Any]] = []
        if self.dataplane is not None:
            self.dataplane.on_egress = self.egress.extend
        codec = NegotiatedCodec(VP8_PT, "VP8", 90000, None, None, ("nack", "nack pli"))
        self.publication = Publication(
            "TR_cam", "alice", "video", "cam", "0", codec, dict(PUB_EXT), RIDS, kernels=kernels
        )
        self.transports: list[FakeTransport] = []
        self.clients = []
        self.peers: list[Peer] = []
        for i in range(SUBS):
            transport = FakeTransport(("127.0.0.1", 6000 + i), SUB_KEY, SUB_SALT)
            peer = Peer(
                f"sub{i}",
                cast(WebRtcTransport, transport),
                0x88 + i,
                extensions=dict(SUB_EXT),
                dataplane=self.dataplane,
            )
            sub = Subscription(
                f"s{i}",
                self.publication,
                f"sub{i}",
                "0",
                out_ssrc=0x9000 + i,
                payload_type=VP8_PT,
                extensions=dict(SUB_EXT),
                kernels=kernels,
            )
            assert sub.selector is not None
            sub.selector.set_target(0, None)
            peer.add_subscription(sub)
            self.publication.add_subscriber(sub, cast(WebRtcTransport, transport))
            self.transports.append(transport)
            self.clients.append(_srtp_py.SrtpContext(PROFILE, SUB_KEY, SUB_SALT, outbound=False))
            self.peers.append(peer)
        self.received: list[list[bytes]] = [[] for _ in range(SUBS)]
        # The pipe between A (publishing) and B, and the flow B asked for.
        self.pipe_a = Pipe(role=0, now=self.now)
        self.pipe_b = Pipe(role=1, now=self.now)
        flow = self.pipe_b.open_flow("TR_cam", spatial_mask=0b111, bitrate=0, now=self.now)
        assert flow is not None
        self.flow = flow
        events = [self.pipe_a.receive(d, now=self.now) for d in self.pipe_b.take_datagrams()]
        assert any(isinstance(event, FlowRequested) for event in events)
        self.to_a: list[bytes] = []
        self.remote = RemotePublication(
            self.publication,
            self.pipe_b,
            flow,
            self.to_a.append,
            rtcp_ssrc=5,
            extensions=dict(PUB_EXT),
            declared=[],
            plane=self.dataplane,
        )

    def announce(self) -> None:
        """A names the SSRC of each layer (STREAMS), as its tap does before the first packet."""
        datagram = self.pipe_a.announce_streams(
            self.flow, tuple((ssrc, layer) for layer, ssrc in enumerate(SSRCS))
        )
        assert datagram is not None
        event = self.pipe_b.receive(datagram, now=self.now)
        assert isinstance(event, StreamsReceived)
        self.remote.on_streams(event)

    def relay(self, packet: bytes, layer: int = 0) -> None:
        """A relays one packet; B takes it in."""
        self.now += 0.01
        datagram = self.pipe_a.relay(self.flow, packet, layer)
        assert datagram is not None
        event = self.pipe_b.receive(datagram, now=self.now)
        assert isinstance(event, Media)
        self.remote.on_media(event, now=self.now)
        self.collect()

    def collect(self) -> None:
        for data, address in self.egress:
            index = address[1] - 6000
            self.received[index].append(self.clients[index].unprotect_rtp(data))
        self.egress.clear()
        for index, transport in enumerate(self.transports):
            self.received[index] += transport.rtp
            transport.rtp.clear()

    def replay(self) -> None:
        if self.dataplane is not None:
            self.dataplane.replay()

    def nacked(self) -> list[int]:
        """The sequence numbers B's NACKs up the flow asked A for."""
        seqs: list[int] = []
        for datagram in self.to_a + self.pipe_b.take_datagrams():
            event = self.pipe_a.receive(datagram, now=self.now)
            if isinstance(event, Feedback):
                for packet in parse_compound(event.rtcp):
                    if isinstance(packet, Nack):
                        seqs += seqs_from_nack_pairs(packet.pairs)
        self.to_a.clear()
        return seqs


def test_relayed_media_is_forwarded_in_the_data_plane_as_on_the_python_path(
    kernels: Kernels,
) -> None:
    """Every relayed packet reaches both subscribers, byte for byte as the Router's path
    sends it, and the forwarder took each one (none went to the Python path)."""
    sides = [FarSide(kernels, plane=False), FarSide(kernels, plane=True)]
    for side in sides:
        side.announce()
        for seq in range(1, 31):
            side.relay(_packet(seq, key=seq == 1))
        side.replay()
    python, compiled = sides
    assert compiled.dataplane is not None
    assert compiled.dataplane.ingested == 30 and compiled.dataplane.ingest_misses == 0
    assert compiled.dataplane.forwarder.ingested_packets == 30
    assert all(len(packets) == 30 for packets in python.received)
    assert compiled.received == python.received
    # The receive bookkeeping saw every packet, on either path.
    for side in sides:
        stream = side.publication.layers[0]
        assert stream.packets == 30
        assert side.remote.counters.rtp_in == 30
        assert side.remote.counters.video_out == 30 * SUBS


def test_a_gap_in_relayed_media_is_nacked_up_the_flow_from_the_replayed_records(
    kernels: Kernels,
) -> None:
    side = FarSide(kernels, plane=True)
    side.announce()
    for seq in [1, 2, 3, 4, 5, 7, 8, 9]:
        side.relay(_packet(seq, key=seq == 1))
    assert side.dataplane is not None and side.dataplane.ingested == 8
    side.replay()
    side.now += 0.05
    side.remote.poll(now=side.now)
    assert side.nacked() == [6]


def test_a_stream_not_yet_named_takes_the_router_then_the_data_plane(kernels: Kernels) -> None:
    """Without STREAMS the first packet binds its SSRC on the Router's path; from then on the
    stream is registered and the forwarder takes the rest."""
    side = FarSide(kernels, plane=True)
    for seq in range(1, 6):
        side.relay(_packet(seq, key=seq == 1))
    side.replay()
    assert side.dataplane is not None
    assert side.dataplane.ingest_misses == 1 and side.dataplane.ingested == 4
    assert all(len(packets) == 5 for packets in side.received)
    assert side.remote.counters.rtp_in == 5


def test_a_closed_flow_leaves_nothing_in_the_data_plane(kernels: Kernels) -> None:
    side = FarSide(kernels, plane=True)
    dataplane = side.dataplane
    assert dataplane is not None
    side.announce()
    side.relay(_packet(1, key=True))
    assert dataplane.stream_count == 3 and dataplane.handle_of(side.remote) >= 0
    side.remote.close()
    assert dataplane.stream_count == 0 and dataplane.handle_of(side.remote) == -1
    assert side.publication.on_fanout is None
    # What still arrives takes the Router's path (nothing is left to take it).
    side.relay(_packet(2))
    assert dataplane.ingested == 1
    assert all(len(packets) == 2 for packets in side.received)


def test_the_hub_hands_its_plane_to_each_remote_and_releases_it_with_the_peer(
    kernels: Kernels,
) -> None:
    dataplane = DataPlane(kernels=kernels)
    pipe = Pipe(role=1, now=0.0)
    hub = RelayHub(
        {7: pipe}, lambda track: None, lambda peer, data: None, lambda peer: None, lambda: 0.0
    )
    hub.plane = dataplane
    codec = NegotiatedCodec(VP8_PT, "VP8", 90000, None, None, ())
    publication = Publication(
        "TR_x", "bob", "video", "cam", "0", codec, dict(PUB_EXT), RIDS, kernels=kernels
    )
    assert hub.open(7, publication)
    remote = hub.remotes[7, next(iter(hub.remotes))[1]]
    assert remote.plane is dataplane and dataplane.handle_of(remote) >= 0
    # Opened again (a new pipe to that node): the first flow's source goes.
    assert hub.open(7, publication)
    assert dataplane.handle_of(remote) == -1 and len(hub.remotes) == 1
    current = next(iter(hub.remotes.values()))
    hub.drop_peer(7)
    assert dataplane.handle_of(current) == -1 and not hub.remotes
