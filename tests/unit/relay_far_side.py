"""Node B of a relay pipe for tests and benchmarks: subscribers of a relayed publication.

Node A's publishing pipe sends a VP8 simulcast publication; node B holds it as a
``RemotePublication`` with ``subs`` subscribers, with its ``DataPlane`` (the relayed packets
enter the forwarder through a plaintext source) or without (the remote publication's Router,
the Python path). No sockets: the pipe's datagrams are handed across.
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
from sfu.core.relay import RemotePublication
from sfu.core.subscription import Subscription
from sfu.negotiation import NegotiatedCodec
from sfu.packet.rtcp import parse_compound
from sfu.packet.rtcp_feedback import Nack, seqs_from_nack_pairs
from sfu.transport.pipe import Feedback, FlowRequested, Media, Pipe, StreamsReceived
from sfu.transport.transport import WebRtcTransport

PROFILE = "SRTP_AEAD_AES_128_GCM"
SSRCS = (0x111, 0x222, 0x333)
SUBS = 2


def packet(seq: int, *, key: bool = False, layer: int = 0) -> bytes:
    head = struct.pack("!BBHII", 0x80, VP8_PT, seq & 0xFFFF, 3000 * seq, SSRCS[layer])
    return head + vp8_payload(seq, key=key)


class FarSide:
    """Node B: subscribers of the relayed publication, with or without a data plane."""

    def __init__(
        self, kernels: Kernels, *, plane: bool, subs: int = SUBS, decode: bool = True
    ) -> None:
        """``decode=False``: what the subscribers get is only counted (:attr:`delivered`),
        not decrypted and kept (benchmarks)."""
        self.decode = decode
        self.delivered = 0
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
        for i in range(subs):
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
        self.received: list[list[bytes]] = [[] for _ in range(subs)]
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
        if not self.decode:
            self.delivered += len(self.egress) + sum(len(t.rtp) for t in self.transports)
            self.egress.clear()
            for transport in self.transports:
                transport.rtp.clear()
            return
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
