"""Per-message cost of data channel chat on the server: one text message received through the
SCTP association (aiortc's, driven sans-I/O) and DCEP, and one sent on a channel, with the
SACK traffic both cause. The DTLS record layer is left out (measured in test_bench_transport).
Run with `make bench`.
"""

from __future__ import annotations

import struct

from pytest_benchmark.fixture import BenchmarkFixture

from sfu.transport.datachannel import DCEP_OPEN, DataChannels, Ppid
from sfu.transport.sctp import SctpAssociation

MESSAGE = b'{"type":"chat","text":"' + b"x" * 80 + b'"}'
ROUNDS = 2000


def _connected() -> tuple[DataChannels, SctpAssociation]:
    """A server's channels and a client association, established, with a ``chat`` channel."""
    server = DataChannels(SctpAssociation(server=True))
    client = SctpAssociation(server=False)
    to_server = client.start(now=0.0)
    label = b"chat"
    open_message = struct.pack("!BBHIHH", DCEP_OPEN, 0, 0, 0, len(label), 0) + label
    for _ in range(10):
        to_client: list[bytes] = []
        for packet in to_server:
            to_client += server.receive(packet, now=0.0)[0]
        to_server = []
        for packet in to_client:
            to_server += client.receive(packet, now=0.0)
        if client.established and not to_server:
            break
    to_server = client.send(0, Ppid.DCEP, open_message, now=0.0) or []
    for packet in to_server:
        for reply in server.receive(packet, now=0.0)[0]:
            client.receive(reply, now=0.0)
    assert server.by_label("chat") is not None
    assert [m.data for m in client.messages()] == [b"\x02"]  # the DCEP ACK
    return server, client


def test_receive_one_chat_message(benchmark: BenchmarkFixture) -> None:
    server, client = _connected()
    packets: list[bytes] = []
    delivered = 0

    def next_packet() -> tuple[tuple[bytes], dict[str, object]]:
        (packet,) = client.send(0, Ppid.STRING, MESSAGE, now=0.0) or [b""]
        return (packet,), {}

    def receive(packet: bytes) -> None:
        nonlocal delivered
        out, events = server.receive(packet, now=0.0)
        delivered += len(events)
        packets.extend(out)
        for reply in out:  # the SACKs keep the client's send window open
            client.receive(reply, now=0.0)

    benchmark.pedantic(receive, setup=next_packet, rounds=ROUNDS, warmup_rounds=10)
    assert delivered == ROUNDS + 10


def test_send_one_chat_message(benchmark: BenchmarkFixture) -> None:
    server, client = _connected()
    channel = server.by_label("chat")
    assert channel is not None
    got = 0

    def send() -> None:
        nonlocal got
        for packet in server.send(channel, MESSAGE, binary=False, now=0.0) or []:
            for sack in client.receive(packet, now=0.0):
                server.receive(sack, now=0.0)
        got += len(client.messages())

    benchmark.pedantic(send, rounds=ROUNDS, warmup_rounds=10)
    assert got == ROUNDS + 10
