"""The QUIC node link over real loopback UDP sockets: two nodes' endpoints link up with mutual
TLS, carry flow datagrams and control messages both ways, and a node holding a certificate of
another CA is refused (nothing it sends reaches the node)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress

from sfu.cluster.pki import mint_ca, mint_node_cert, write_pem
from sfu.io.quic_link import MAX_PENDING_PER_HOST, LinkEndpoint
from sfu.transport.media_lane import (
    BLOCKED_MIN_SEALED,
    BLOCKED_WINDOW_S,
    REPORT_INTERVAL_S,
    is_lane_datagram,
)
from sfu.transport.node_link import (
    ControlReceived,
    FlowReceived,
    LinkDown,
    LinkEvent,
    LinkUp,
    NodeLink,
    link_configuration,
)

pytestmark = pytest.mark.integration

WAIT_S = 5.0


def _files(folder: Path, ca: tuple[bytes, bytes], node: str) -> tuple[str, str, str]:
    cert, key = mint_node_cert(ca[0], ca[1], node)
    (folder / f"{node}-ca.pem").write_bytes(ca[0])
    (folder / f"{node}.pem").write_bytes(cert)
    write_pem(folder / f"{node}.key", key, private=True)
    return str(folder / f"{node}-ca.pem"), str(folder / f"{node}.pem"), str(folder / f"{node}.key")


async def _endpoint(
    files: tuple[str, str, str], events: list[tuple[NodeLink, LinkEvent]]
) -> LinkEndpoint:
    ca, cert, key = files
    server = link_configuration(is_client=False, ca_file=ca, cert_file=cert, key_file=key)

    def client(peer: str) -> QuicConfiguration:
        return link_configuration(
            is_client=True, ca_file=ca, cert_file=cert, key_file=key, server_name=peer
        )

    return await LinkEndpoint.listen(
        "127.0.0.1", 0, server, client, lambda link, event: events.append((link, event))
    )


async def _until(check: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the wait"
        await asyncio.sleep(0.01)


def test_two_nodes_link_over_loopback(tmp_path: Path) -> None:
    ca = mint_ca()
    a_files, b_files = _files(tmp_path, ca, "node-a"), _files(tmp_path, ca, "node-b")

    async def run() -> None:
        a_events: list[tuple[NodeLink, LinkEvent]] = []
        b_events: list[tuple[NodeLink, LinkEvent]] = []
        a = await _endpoint(a_files, a_events)
        b = await _endpoint(b_files, b_events)
        try:
            link = a.connect(b.address, "node-b")
            link.send_control(b"subscribe flow 5")
            await _until(lambda: link.peer == "node-b")
            await _until(lambda: any(isinstance(e, ControlReceived) for _, e in b_events))
            assert any(e == LinkUp("node-a") for _, e in b_events)
            for i in range(50):
                link.send_flow(5, b"\x80\x60" + bytes([i]) * 100)
            a.flush(link)
            await _until(lambda: sum(isinstance(e, FlowReceived) for _, e in b_events) == 50)
            flows = [e for _, e in b_events if isinstance(e, FlowReceived)]
            assert {f.flow_id for f in flows} == {5}
            assert {f.payload for f in flows} == {b"\x80\x60" + bytes([i]) * 100 for i in range(50)}
            back = next(lk for lk, e in b_events if isinstance(e, LinkUp))
            back.send_flow(9, b"rtcp pli")
            back.send_control(b"ack")
            b.flush(back)
            await _until(lambda: any(e == FlowReceived(9, b"rtcp pli") for _, e in a_events))
            await _until(lambda: any(e == ControlReceived(b"ack") for _, e in a_events))
        finally:
            a.close()
            b.close()

    asyncio.run(run())


def test_node_of_another_ca_is_refused_over_loopback(tmp_path: Path) -> None:
    ca, other = mint_ca("cluster"), mint_ca("intruder")
    b_files = _files(tmp_path, ca, "node-b")
    _, cert, key = _files(tmp_path, other, "node-x")
    # The intruder trusts the cluster's CA, so only node-b's check of its certificate stops it.
    x_files = (b_files[0], cert, key)

    async def run() -> None:
        b_events: list[tuple[NodeLink, LinkEvent]] = []
        x_events: list[tuple[NodeLink, LinkEvent]] = []
        b = await _endpoint(b_files, b_events)
        x = await _endpoint(x_files, x_events)
        try:
            link = x.connect(b.address, "node-b")
            link.send_control(b"let me in")
            await _until(lambda: any(isinstance(e, LinkDown) for _, e in x_events))
            assert not any(isinstance(e, (LinkUp, ControlReceived)) for _, e in b_events)
            assert all(lk.peer is None for lk, _ in b_events)
        finally:
            b.close()
            x.close()

    asyncio.run(run())


def test_initials_from_a_host_that_is_no_node_start_no_link(tmp_path: Path) -> None:
    """Only the live nodes' hosts may start a link: forged Initials from elsewhere cannot
    fill the pending slots and lock the nodes out."""
    ca = mint_ca()
    a_files, b_files = _files(tmp_path, ca, "node-a"), _files(tmp_path, ca, "node-b")

    async def run() -> None:
        a_events: list[tuple[NodeLink, LinkEvent]] = []
        b_events: list[tuple[NodeLink, LinkEvent]] = []
        a = await _endpoint(a_files, a_events)
        b = await _endpoint(b_files, b_events)
        try:
            b.accept_from = lambda host: host == "127.0.0.2"  # node-a is not (yet) known
            refused = a.connect(b.address, "node-b")
            a.flush(refused)
            await _until(lambda: b.dropped_unknown > 0)
            assert not b.links and refused.peer is None
            # Now node-a's host is a live node's: its link comes up (a fresh dial).
            b.accept_from = lambda host: host == "127.0.0.1"
            refused.close("retry")
            a.links.clear()
            link = a.connect(b.address, "node-b")
            await _until(lambda: link.peer == "node-b")
        finally:
            a.close()
            b.close()

    asyncio.run(run())


def test_one_host_holds_a_bounded_number_of_pending_links(tmp_path: Path) -> None:
    ca = mint_ca()
    a_files, b_files = _files(tmp_path, ca, "node-a"), _files(tmp_path, ca, "node-b")

    async def run() -> None:
        b = await _endpoint(b_files, [])
        try:
            ca_file, cert, key = a_files
            config = link_configuration(
                is_client=True, ca_file=ca_file, cert_file=cert, key_file=key, server_name="node-b"
            )
            clock = asyncio.get_running_loop().time
            # Initials of more dials than the bound, as if from as many source ports of one
            # host (a node's workers dial from one host, each from its own port).
            dials = MAX_PENDING_PER_HOST + 3
            for port in range(40000, 40000 + dials):
                dial = NodeLink(config, peer_address=b.address, now=clock())
                for data, _ in dial.datagrams(now=clock()):
                    b.datagram_received(data, ("127.0.0.1", port))
            assert len(b.links) == MAX_PENDING_PER_HOST
            assert b.dropped_unknown >= dials - MAX_PENDING_PER_HOST
        finally:
            b.close()

    asyncio.run(run())


def test_relayed_media_survives_a_path_that_drops_every_lane_datagram(tmp_path: Path) -> None:
    """Someone on the path drops the sealed lane's datagrams (first byte's fixed bit clear)
    and lets QUIC through: node-b's liveness reports show node-a that nothing arrives, its
    lane falls back and the media reaches node-b as QUIC DATAGRAMs over the same link. The
    dropper is a filter in front of node-b's endpoint (the test's, not the product's)."""
    ca = mint_ca()
    a_files, b_files = _files(tmp_path, ca, "node-a"), _files(tmp_path, ca, "node-b")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        a_events: list[tuple[NodeLink, LinkEvent]] = []
        b_events: list[tuple[NodeLink, LinkEvent]] = []
        a = await _endpoint(a_files, a_events)
        b = await _endpoint(b_files, b_events)
        dropped = 0
        deliver = b.datagram_received

        def path(data: bytes, addr: NetworkAddress) -> None:
            nonlocal dropped
            if is_lane_datagram(data):
                dropped += 1
                return
            deliver(data, addr)

        b.datagram_received = path  # type: ignore[method-assign]
        try:
            link = a.connect(b.address, "node-b")
            await _until(lambda: link.lane is not None and link.lane.up)
            lane = link.lane
            assert lane is not None
            # Media at 100 datagrams/s until 50 arrived after the fallback (bounded in
            # count and time: the window and a report interval make about 3 s).
            after: list[int] = []
            deadline = loop.time() + BLOCKED_WINDOW_S + REPORT_INTERVAL_S + WAIT_S
            for i in range(round((deadline - loop.time()) * 100)):
                if len(after) >= 50 or loop.time() > deadline:
                    break
                assert link.send_flow(5, b"\x80\x60" + i.to_bytes(4, "big"))
                a.flush(link)
                if lane.in_fallback:  # this one went as a DATAGRAM frame
                    after.append(i)
                await asyncio.sleep(0.01)
            assert lane.in_fallback and link.lane_totals()["blocked"] == 1, "no fallback"
            first = after[0]
            await _until(
                lambda: any(
                    isinstance(e, FlowReceived) and e.payload[2:] == (first + 40).to_bytes(4, "big")
                    for _, e in b_events
                )
            )
            got = {
                int.from_bytes(e.payload[2:], "big")
                for _, e in b_events
                if isinstance(e, FlowReceived)
            }
            assert set(range(first, first + 41)) <= got  # every one after the fallback
            assert dropped >= BLOCKED_MIN_SEALED and min(got) == first  # none sealed got in
            back = next(lk for lk, e in b_events if isinstance(e, LinkUp))
            assert back.lane is not None and back.lane.received == 0  # not one sealed got in
            assert not any(isinstance(e, LinkDown) for _, e in a_events + b_events)
        finally:
            a.close()
            b.close()

    asyncio.run(run())
