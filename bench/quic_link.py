"""``python -m bench.quic_link``: what aioquic's DATAGRAM path costs per relayed packet.

Two measurements of the QUIC node link (:mod:`sfu.transport.node_link`), both on this
machine's cores:

1. **CPU per datagram, in process.** Two links connected in memory (no sockets), the sender
   queueing batches of RTP-sized payloads and the receiver taking them, acks flowing back,
   all on one core. The process CPU time of each side, divided by the datagrams, gives
   datagrams per second per core for sending and for receiving; RTP forwarded to one
   subscriber by the compiled data plane costs about 1-3 us, the figure to compare with.
2. **Latency over loopback sockets.** Two :class:`~sfu.io.quic_link.LinkEndpoint` on
   127.0.0.1 in one event loop, a paced stream of datagrams carrying their send time;
   p50/p99 one-way latency (send call to delivery) at that rate, and how many arrived.

Both ends share the process, so figures are per core for the pair's work; see
``bench/RESULTS.md`` for the decision they support. ``--carrier`` picks what carries the
flow datagrams once the link is up: ``quic`` (DATAGRAM frames), ``sealed`` (the link's
sealed media lane: AES-GCM over plain UDP, QUIC only for its keys and acks of them), or
``both`` (the default: each, in the same run).
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from aioquic.quic.configuration import QuicConfiguration

from sfu.cluster.pki import mint_ca, mint_node_cert, write_pem
from sfu.io.quic_link import LinkEndpoint
from sfu.transport.node_link import FlowReceived, LinkEvent, NodeLink, link_configuration

#: An RTP video packet's usual size (a browser's 1200-byte packets less SRTP's tag).
PAYLOAD_BYTES: Final = 1180
#: Datagrams queued before the pair exchanges packets (one event-loop turn's worth).
BATCH: Final = 64
_A: Final = ("127.0.0.1", 1)
_B: Final = ("127.0.0.1", 2)


#: The carriers ``--carrier`` chooses from.
CARRIERS: Final = ("quic", "sealed")


@dataclass(frozen=True)
class CpuResult:
    carrier: str
    datagrams: int
    payload_bytes: int
    send_us_per_datagram: float
    receive_us_per_datagram: float
    #: Send plus receive: a relayed packet crosses both on two different nodes.
    send_per_core_per_s: float
    receive_per_core_per_s: float


@dataclass(frozen=True)
class LatencyResult:
    carrier: str
    rate_per_s: float
    #: Datagrams due at that rate, and those the link took (the rest: its queue was full).
    offered: int
    sent: int
    received: int
    p50_ms: float
    p99_ms: float


def _certificates(folder: Path) -> dict[str, tuple[str, str, str]]:
    ca_cert, ca_key = mint_ca()
    (folder / "ca.pem").write_bytes(ca_cert)
    files = {}
    for node in ("node-a", "node-b"):
        cert, key = mint_node_cert(ca_cert, ca_key, node)
        (folder / f"{node}.pem").write_bytes(cert)
        write_pem(folder / f"{node}.key", key, private=True)
        files[node] = (
            str(folder / "ca.pem"),
            str(folder / f"{node}.pem"),
            str(folder / f"{node}.key"),
        )
    return files


def _config(files: tuple[str, str, str], *, client_of: str | None) -> QuicConfiguration:
    ca, cert, key = files
    return link_configuration(
        is_client=client_of is not None,
        ca_file=ca,
        cert_file=cert,
        key_file=key,
        server_name=client_of,
    )


def measure_cpu(
    datagrams: int, files: dict[str, tuple[str, str, str]], carrier: str = "quic"
) -> CpuResult:
    """Send ``datagrams`` payloads from one in-memory link to the other; CPU per side."""
    now = 0.0
    lane = carrier == "sealed"
    client = NodeLink(
        _config(files["node-a"], client_of="node-b"), peer_address=_B, now=now, media_lane=lane
    )
    server: NodeLink | None = None
    for _ in range(50):  # the handshake
        now += 0.001
        for data, _ in client.datagrams(now=now):
            if server is None:
                server = NodeLink.accept(
                    _config(files["node-b"], client_of=None), data, _A, now=now, media_lane=lane
                )
            assert server is not None
            server.receive(data, _A, now=now)
        if server is not None:
            for data, _ in server.datagrams(now=now):
                client.receive(data, _B, now=now)
    assert server is not None and client.peer == "node-b" and server.peer == "node-a"
    assert (client.lane is not None and client.lane.up) == lane, "the lane did not key"
    payload = bytes(PAYLOAD_BYTES)
    send_cpu = receive_cpu = 0.0
    received = 0
    sent = 0
    while sent < datagrams:
        now += 0.0005
        t0 = time.process_time()
        for _ in range(BATCH):
            if client.send_flow(1, payload):
                sent += 1
        wire = client.datagrams(now=now)
        t1 = time.process_time()
        for data, _ in wire:
            for event in server.receive(data, _A, now=now):
                if isinstance(event, FlowReceived):
                    received += 1
        acks = server.datagrams(now=now)
        t2 = time.process_time()
        for data, _ in acks:
            client.receive(data, _B, now=now)
        t3 = time.process_time()
        send_cpu += (t1 - t0) + (t3 - t2)  # queueing, packetizing, encrypting, taking acks
        receive_cpu += t2 - t1  # decrypting, parsing, acking
    send_us = send_cpu / sent * 1e6
    receive_us = receive_cpu / max(received, 1) * 1e6
    return CpuResult(
        carrier=carrier,
        datagrams=received,
        payload_bytes=PAYLOAD_BYTES,
        send_us_per_datagram=round(send_us, 2),
        receive_us_per_datagram=round(receive_us, 2),
        send_per_core_per_s=round(1e6 / send_us),
        receive_per_core_per_s=round(1e6 / receive_us),
    )


async def measure_latency(
    rate: float, seconds: float, files: dict[str, tuple[str, str, str]], carrier: str = "quic"
) -> LatencyResult:
    """A paced stream over loopback sockets: one-way latency of each datagram."""
    latencies: list[float] = []

    def on_b(_link: NodeLink, event: LinkEvent) -> None:
        if isinstance(event, FlowReceived):
            (stamp,) = struct.unpack_from("!d", event.payload)
            latencies.append(time.perf_counter() - stamp)

    a = await LinkEndpoint.listen(
        "127.0.0.1", 0, _config(files["node-a"], client_of=None),
        lambda peer: _config(files["node-a"], client_of=peer), lambda _l, _e: None,
    )  # fmt: skip
    b = await LinkEndpoint.listen(
        "127.0.0.1", 0, _config(files["node-b"], client_of=None),
        lambda peer: _config(files["node-b"], client_of=peer), on_b,
    )  # fmt: skip
    a.media_lane = b.media_lane = carrier == "sealed"
    try:
        link = a.connect(b.address, "node-b")
        deadline = time.monotonic() + 5.0
        while link.peer is None or (a.media_lane and not (link.lane and link.lane.up)):
            if time.monotonic() > deadline:
                raise RuntimeError("the link did not come up")
            await asyncio.sleep(0.01)
        filler = bytes(PAYLOAD_BYTES - 8)
        tick = 0.001  # a batch per loop turn (about a millisecond), as a forwarder sends them
        sent = offered = 0
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            for _ in range(int(rate * elapsed) - offered):  # what is due by now
                offered += 1
                if link.send_flow(1, struct.pack("!d", time.perf_counter()) + filler):
                    sent += 1
            a.flush(link)
            await asyncio.sleep(tick)
        await asyncio.sleep(0.2)
    finally:
        a.close()
        b.close()
    latencies.sort()
    if not latencies:
        return LatencyResult(carrier, rate, offered, sent, 0, float("nan"), float("nan"))
    return LatencyResult(
        carrier=carrier,
        rate_per_s=rate,
        offered=offered,
        sent=sent,
        received=len(latencies),
        p50_ms=round(statistics.median(latencies) * 1e3, 3),
        p99_ms=round(latencies[int(0.99 * (len(latencies) - 1))] * 1e3, 3),
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quic_link", description=__doc__)
    p.add_argument("--datagrams", type=int, default=50000, help="in-process run's datagrams")
    p.add_argument(
        "--rates", default="2000,10000,20000", help="loopback runs' datagrams/s, comma-separated"
    )
    p.add_argument("--seconds", type=float, default=2.0, help="each loopback run's length")
    p.add_argument(
        "--carrier", choices=(*CARRIERS, "both"), default="both", help="the flow datagrams' lane"
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)
    carriers = CARRIERS if args.carrier == "both" else (args.carrier,)
    cpus: list[CpuResult] = []
    latency: list[LatencyResult] = []
    with tempfile.TemporaryDirectory(prefix="sfu-quic-bench-") as folder:
        files = _certificates(Path(folder))
        for carrier in carriers:
            cpu = measure_cpu(args.datagrams, files, carrier)
            cpus.append(cpu)
            print(
                f"{carrier}: in process, {cpu.datagrams} datagrams of {cpu.payload_bytes} B: "
                f"send {cpu.send_us_per_datagram} us ({cpu.send_per_core_per_s}/s per core), "
                f"receive {cpu.receive_us_per_datagram} us "
                f"({cpu.receive_per_core_per_s}/s per core)"
            )
        for rate in (float(r) for r in args.rates.split(",")):
            for carrier in carriers:
                result = asyncio.run(measure_latency(rate, args.seconds, files, carrier))
                latency.append(result)
                print(
                    f"{carrier}: loopback at {rate:.0f}/s: {result.received} of "
                    f"{result.offered} delivered ({result.offered - result.sent} refused by a "
                    f"full queue), latency p50 {result.p50_ms} ms, p99 {result.p99_ms} ms"
                )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"cpu": [asdict(c) for c in cpus], "latency": [asdict(r) for r in latency]},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
