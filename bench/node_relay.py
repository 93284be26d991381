"""``python -m bench.node_relay``: one publication relayed between two nodes, on loopback.

Node A has the publisher (its Router) and one local subscriber; node B has the stand-in of
the publication (what the room bus's ``track_published`` makes) and one subscriber. The two
nodes are two :class:`~sfu.cluster.node_pipes.NodePipes` over two
:class:`~sfu.io.quic_link.LinkEndpoint` on 127.0.0.1 (real UDP sockets, real QUIC with the
cluster's mutual TLS), in one event loop, so the CPU figure is both nodes' work on one core.

VP8 packets are published at a paced rate (a burst every millisecond, as a media socket's
batches come); each carries its index in its last bytes (payloads pass untouched), so each
subscriber's send is matched to the publish call. Reported per rate and per carrier of the
relayed media (``--carrier``: ``quic``, QUIC DATAGRAM frames; ``sealed``, the link's sealed
media lane, AES-GCM over plain UDP, keyed during the warm-up; ``both``, the default, one
after the other in the same run): the latency a local subscriber sees (publish call to its
send: one forward) and the one B's subscriber sees (publish call on A to the send on B:
tap, carrier, UDP, carrier, B's Router), p50/p99, the packets that arrived, the datagrams
that went sealed, and the process CPU per published packet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from aioquic.quic.configuration import QuicConfiguration

from sfu.cluster.node_pipes import NodePipes
from sfu.cluster.pki import mint_ca, mint_node_cert, write_pem
from sfu.core.binder import Binder
from sfu.core.counters import PeerCounters
from sfu.core.kernels import default_kernels
from sfu.core.publication import Publication, SourceStream
from sfu.core.relay import RelayTap
from sfu.core.router import Router
from sfu.core.subscription import Subscription
from sfu.core.twcc_recorder import TwccRecorder
from sfu.io.quic_link import LinkEndpoint
from sfu.negotiation import NegotiatedCodec
from sfu.transport.node_link import (
    ControlReceived,
    FlowReceived,
    LinkDown,
    LinkEvent,
    LinkUp,
    NodeLink,
    link_configuration,
)

#: The shard origin each node gives the other (the room bus's first node origin).
ORIGIN: Final = 1 << 16
SSRC: Final = 0x1111
VP8: Final = NegotiatedCodec(96, "VP8", 90000, None, None, ("nack", "nack pli"))
#: RTP payload bytes of a video packet (a browser's ~1200-byte packets).
PAYLOAD_BYTES: Final = 1100
#: Seconds of publishing before measuring (the flow opens, the first keyframe crosses).
WARMUP_S: Final = 1.0
#: How often a burst of packets is published.
BURST_S: Final = 0.001


class TimingSender:
    """A subscriber's transport that notes when each packet (by its index) was sent."""

    has_srtp = True

    def __init__(self) -> None:
        self.sent_at: dict[int, float] = {}

    def send_rtp(self, packet: bytes) -> bool:
        self.sent_at[struct.unpack_from("!I", packet, len(packet) - 4)[0]] = time.perf_counter()
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        return True


def _packet(index: int, *, key: bool) -> bytes:
    descriptor = bytes((0x90, 0xE0, 0x80 | (index >> 8) & 0x7F, index & 0xFF, index & 0xFF, 0x00))
    body = bytes((0x00 if key else 0x01,)) + bytes(PAYLOAD_BYTES - 11)
    header = struct.pack("!BBHII", 0x80, 96, index & 0xFFFF, (3000 * index) & 0xFFFFFFFF, SSRC)
    return header + descriptor + body + struct.pack("!I", index)


def _publication() -> Publication:
    return Publication(
        "TR_bench", "alice", "video", "camera", "0", VP8, {}, kernels=default_kernels()
    )


def _subscribe(publication: Publication) -> TimingSender:
    sender = TimingSender()
    subscription = Subscription(
        "s1",
        publication,
        "sub",
        publication.mid,
        out_ssrc=0x9000,
        payload_type=96,
        extensions={},
        kernels=publication.kernels,
    )
    publication.add_subscriber(subscription, sender)  # type: ignore[arg-type]
    return sender


class Node:
    """One node's link endpoint and relay pipes."""

    def __init__(self, node_id: str, pipes: NodePipes) -> None:
        self.node_id = node_id
        self.pipes = pipes
        self.endpoint: LinkEndpoint | None = None

    def on_event(self, link: NodeLink, event: LinkEvent) -> None:
        """What :class:`~sfu.cluster.links.NodeLinks` does with a link's events."""
        if isinstance(event, LinkUp):
            self.pipes.link_up(event.peer, link)
        elif link.peer is None:
            return
        elif isinstance(event, LinkDown):
            self.pipes.link_down(link.peer, link)
        elif isinstance(event, FlowReceived):
            self.pipes.on_flow(link.peer, event.flow_id, event.payload)
        elif isinstance(event, ControlReceived):
            self.pipes.on_control(link.peer, event.message)


async def _node(
    node_id: str,
    publication: Publication | None,
    folder: Path,
    ca: tuple[bytes, bytes],
    *,
    sealed: bool,
) -> Node:
    """A node listening for links on loopback; ``publication`` is its publisher's, if any."""
    cert, key = mint_node_cert(ca[0], ca[1], node_id)
    (folder / "ca.pem").write_bytes(ca[0])
    (folder / f"{node_id}.pem").write_bytes(cert)
    write_pem(folder / f"{node_id}.key", key, private=True)
    ca_file = str(folder / "ca.pem")
    cert_file, key_file = str(folder / f"{node_id}.pem"), str(folder / f"{node_id}.key")
    server = link_configuration(
        is_client=False, ca_file=ca_file, cert_file=cert_file, key_file=key_file
    )

    def client(peer: str) -> QuicConfiguration:
        return link_configuration(
            is_client=True,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            server_name=peer,
        )

    def find(track_id: str) -> Publication | None:
        return publication if publication is not None and track_id == publication.id else None

    def origin_of(peer: str) -> int | None:
        return ORIGIN if peer != node_id else None

    def flush(link: NodeLink) -> None:
        if node.endpoint is not None:
            node.endpoint.flush(link)

    loop = asyncio.get_running_loop()
    node = Node(node_id, NodePipes(find, origin_of, flush, time.monotonic, loop.call_soon))
    node.endpoint = await LinkEndpoint.listen("127.0.0.1", 0, server, client, node.on_event)
    node.endpoint.media_lane = sealed
    node.pipes.start()
    return node


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


#: The carriers ``--carrier`` chooses from; ``both`` runs them one after the other.
CARRIERS: Final = ("quic", "sealed")


async def measure(
    rate: int, seconds: float, folder: Path, carrier: str = "sealed"
) -> dict[str, float | str]:
    """Publish at ``rate`` packets/s for ``seconds`` (after the warm-up) with the relayed
    media on ``carrier`` (``quic`` or ``sealed``); the figures."""
    clock = time.monotonic
    ca = mint_ca("bench")
    pub_a = _publication()
    binder = Binder()
    binder.add_publication(pub_a, [(SSRC, None)])
    router = Router("alice", binder, TwccRecorder(1), PeerCounters())
    want_key = [True]

    def keyframe(stream: SourceStream, now: float) -> bool:
        want_key[0] = True
        return True

    pub_a.keyframe_requester = keyframe
    local = _subscribe(pub_a)
    pub_b = _publication()
    remote = _subscribe(pub_b)
    sealed = carrier == "sealed"
    a = await _node("node-a", pub_a, folder, ca, sealed=sealed)
    b = await _node("node-b", None, folder, ca, sealed=sealed)
    assert a.endpoint is not None and b.endpoint is not None
    b.pipes.open(ORIGIN, pub_b, None)
    a.endpoint.connect(b.endpoint.address, "node-b")
    published: dict[int, float] = {}
    index = 0
    cpu_start = wall_start = 0.0
    measured_from = 0
    start = time.perf_counter()
    try:
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= WARMUP_S + seconds:
                break
            if not measured_from and elapsed >= WARMUP_S:
                measured_from = index
                cpu_start, wall_start = time.process_time(), time.perf_counter()
            due = int(elapsed * rate)  # paced by the clock: a late wakeup sends more
            while index < due:
                packet = _packet(index, key=want_key[0])
                want_key[0] = False
                published[index] = time.perf_counter()
                router.on_rtp(packet, now=clock())
                index += 1
            await asyncio.sleep(BURST_S)
        cpu = time.process_time() - cpu_start
        wall = time.perf_counter() - wall_start
        await asyncio.sleep(0.2)  # the last ones in flight
        taps = sum(isinstance(sub, RelayTap) for sub, _ in pub_a.fanout)
        # Datagrams the link dropped: its send queue was full (congestion window, or CPU).
        congested = sum(c.link.dropped_congested for c in a.pipes.carriers.values())
        lane_sent = sum(c.link.lane_totals()["sent"] for c in a.pipes.carriers.values())
        flows_sent = sum(c.link.flows_sent for c in a.pipes.carriers.values())
    finally:
        for node in (a, b):
            node.pipes.stop()
            if node.endpoint is not None:
                node.endpoint.close()
    sent = range(measured_from, index)
    local_us = [1e6 * (local.sent_at[i] - published[i]) for i in sent if i in local.sent_at]
    remote_ms = [1e3 * (remote.sent_at[i] - published[i]) for i in sent if i in remote.sent_at]
    return {
        "carrier": carrier,
        "rate": rate,
        "published": len(sent),
        "published_per_s": len(sent) / wall,
        "taps": taps,
        "local_received": len(local_us),
        "local_p50_us": statistics.median(local_us) if local_us else float("nan"),
        "local_p99_us": _percentile(local_us, 0.99),
        "remote_received": len(remote_ms),
        "remote_p50_ms": statistics.median(remote_ms) if remote_ms else float("nan"),
        "remote_p99_ms": _percentile(remote_ms, 0.99),
        "link_dropped": congested,
        "sealed_share": lane_sent / max(1, flows_sent),
        "cpu_us_per_packet": 1e6 * cpu / max(1, len(sent)),
        "cpu_share": cpu / wall,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.node_relay", description=__doc__)
    parser.add_argument("--rates", default="1000,3000", help="packets/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per rate")
    parser.add_argument(
        "--carrier",
        choices=(*CARRIERS, "both"),
        default="both",
        help="the relayed media's carrier between the nodes (both: each, same run)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per rate")
    args = parser.parse_args(argv)
    carriers = CARRIERS if args.carrier == "both" else (args.carrier,)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for rate in (int(r) for r in args.rates.split(",")):
            for carrier in carriers:
                run_folder = Path(folder) / f"{rate}-{carrier}"
                run_folder.mkdir()
                rows.append(asyncio.run(measure(rate, args.seconds, run_folder, carrier)))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(
        "| rate pkts/s | carrier | published/s | local: arrived, p50, p99 "
        "| other node: arrived, p50, p99 | dropped by the link | sealed "
        "| CPU per packet (both nodes) | CPU share |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['rate']} | {r['carrier']} | {r['published_per_s']:.0f} "
            f"| {r['local_received']}/{r['published']}, {r['local_p50_us']:.0f} us, "
            f"{r['local_p99_us']:.0f} us "
            f"| {r['remote_received']}/{r['published']}, {r['remote_p50_ms']:.2f} ms, "
            f"{r['remote_p99_ms']:.2f} ms "
            f"| {r['link_dropped']:.0f} | {100 * float(r['sealed_share']):.0f}% "
            f"| {r['cpu_us_per_packet']:.0f} us | {100 * r['cpu_share']:.0f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
