"""The QUIC node link, sans-I/O: two ends driven against each other with a fake clock.

Mutual TLS from the cluster CA (a client or server with another CA's certificate is refused
and nothing it sent is delivered), the control stream both ways, flow datagrams with their
payload untouched, and the bounds (too large, malformed) counted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.cluster.pki import mint_ca, mint_node_cert, write_pem
from sfu.packet.errors import ParseError
from sfu.packet.flow import MAX_VARINT, decode_flow, decode_varint, encode_flow, encode_varint
from sfu.transport.node_link import (
    MAX_DATAGRAM_DATA,
    ControlReceived,
    FlowReceived,
    LinkDown,
    LinkEvent,
    LinkUp,
    NodeLink,
    link_configuration,
)

CLIENT_ADDR = ("127.0.0.1", 5001)
SERVER_ADDR = ("127.0.0.1", 5002)


def _node_files(folder: Path, ca: tuple[bytes, bytes], node: str) -> tuple[str, str, str]:
    cert, key = mint_node_cert(ca[0], ca[1], node)
    ca_path, cert_path, key_path = folder / "ca.pem", folder / f"{node}.pem", folder / f"{node}.key"
    ca_path.write_bytes(ca[0])
    cert_path.write_bytes(cert)
    write_pem(key_path, key, private=True)
    return str(ca_path), str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def cluster_a(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, str]]:
    folder = tmp_path_factory.mktemp("ca-a")
    ca = mint_ca("cluster A")
    return {node: _node_files(folder, ca, node) for node in ("node-a", "node-b")}


@pytest.fixture(scope="module")
def cluster_b(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, str]]:
    folder = tmp_path_factory.mktemp("ca-b")
    ca = mint_ca("cluster B")
    return {"node-x": _node_files(folder, ca, "node-x")}


class Pair:
    """A client and a server link exchanging datagrams instantly at a fake time."""

    def __init__(
        self,
        client_files: tuple[str, str, str],
        server_files: tuple[str, str, str],
        server_name: str,
    ) -> None:
        self.now = 100.0
        ca, cert, key = client_files
        client_conf = link_configuration(
            is_client=True, ca_file=ca, cert_file=cert, key_file=key, server_name=server_name
        )
        ca, cert, key = server_files
        server_conf = link_configuration(is_client=False, ca_file=ca, cert_file=cert, key_file=key)
        self.client = NodeLink(client_conf, peer_address=SERVER_ADDR, now=self.now)
        self.server: NodeLink | None = None
        self._server_conf = server_conf
        self.client_events: list[LinkEvent] = []
        self.server_events: list[LinkEvent] = []

    def pump(self, rounds: int = 40) -> None:
        """Exchange datagrams, 5 ms of fake time a round, running each end's due timers."""
        for _ in range(rounds):
            self.now += 0.005
            ends = [(self.client, self.client_events)]
            if self.server is not None:
                ends.append((self.server, self.server_events))
            for link, events in ends:
                timer = link.next_timer()
                if timer is not None and timer <= self.now:
                    events += link.handle_timer(now=self.now)
            for data, _addr in self.client.datagrams(now=self.now):
                if self.server is None:
                    self.server = NodeLink.accept(
                        self._server_conf, data, CLIENT_ADDR, now=self.now
                    )
                    assert self.server is not None
                self.server_events += self.server.receive(data, CLIENT_ADDR, now=self.now)
            if self.server is not None:
                for data, _addr in self.server.datagrams(now=self.now):
                    self.client_events += self.client.receive(data, SERVER_ADDR, now=self.now)


def test_link_comes_up_with_both_peers_named(cluster_a: dict[str, tuple[str, str, str]]) -> None:
    pair = Pair(cluster_a["node-a"], cluster_a["node-b"], "node-b")
    pair.pump()
    assert LinkUp("node-b") in pair.client_events
    assert LinkUp("node-a") in pair.server_events
    assert pair.client.peer == "node-b" and pair.server is not None
    assert pair.server.peer == "node-a"


def test_flows_and_control_cross_both_ways(cluster_a: dict[str, tuple[str, str, str]]) -> None:
    pair = Pair(cluster_a["node-a"], cluster_a["node-b"], "node-b")
    pair.pump()
    server = pair.server
    assert server is not None
    payload = bytes(range(256)) * 4
    assert pair.client.send_flow(7, payload)
    assert pair.client.send_flow(300, b"\x80\x60rtcp")
    pair.client.send_control(b"hello from a")
    server.send_control(b"hello from b")
    assert server.send_flow(2**40, b"back")
    pair.pump()
    assert FlowReceived(7, payload) in pair.server_events
    assert FlowReceived(300, b"\x80\x60rtcp") in pair.server_events
    assert ControlReceived(b"hello from a") in pair.server_events
    assert ControlReceived(b"hello from b") in pair.client_events
    assert FlowReceived(2**40, b"back") in pair.client_events
    assert pair.client.flows_sent == 2 and server.flows_received == 2


def test_server_control_waits_for_the_stream(cluster_a: dict[str, tuple[str, str, str]]) -> None:
    """Control queued on either side before the link is up is delivered once it is."""
    pair = Pair(cluster_a["node-a"], cluster_a["node-b"], "node-b")
    pair.client.send_control(b"early")
    pair.pump()
    assert ControlReceived(b"early") in pair.server_events


def test_too_large_payload_is_dropped_and_counted(
    cluster_a: dict[str, tuple[str, str, str]],
) -> None:
    pair = Pair(cluster_a["node-a"], cluster_a["node-b"], "node-b")
    pair.pump()
    assert not pair.client.send_flow(1, bytes(MAX_DATAGRAM_DATA))
    assert pair.client.dropped_too_large == 1
    assert pair.client.send_flow(1, bytes(MAX_DATAGRAM_DATA - 1))
    pair.pump()
    assert FlowReceived(1, bytes(MAX_DATAGRAM_DATA - 1)) in pair.server_events


def test_nothing_is_sent_before_the_link_is_up(cluster_a: dict[str, tuple[str, str, str]]) -> None:
    pair = Pair(cluster_a["node-a"], cluster_a["node-b"], "node-b")
    assert not pair.client.send_flow(1, b"x")


def test_client_of_another_ca_is_refused(
    cluster_a: dict[str, tuple[str, str, str]], cluster_b: dict[str, tuple[str, str, str]]
) -> None:
    """The server asks for the client's certificate and refuses one its CA did not sign; the
    client's early control message is never delivered."""
    # node-x trusts cluster A's CA (so only the server can refuse) with a cert of CA B.
    _ca_b, cert, key = cluster_b["node-x"]
    pair = Pair((cluster_a["node-b"][0], cert, key), cluster_a["node-b"], "node-b")
    pair.client.send_control(b"let me in")
    pair.pump(400)
    assert pair.server is not None
    assert pair.server.peer is None
    assert not any(isinstance(e, (LinkUp, ControlReceived)) for e in pair.server_events)
    assert any(isinstance(e, LinkDown) for e in pair.client_events)


def test_server_of_another_ca_is_refused(
    cluster_a: dict[str, tuple[str, str, str]], cluster_b: dict[str, tuple[str, str, str]]
) -> None:
    pair = Pair(cluster_a["node-a"], cluster_b["node-x"], "node-x")
    pair.pump(400)
    assert pair.client.peer is None
    assert any(isinstance(e, LinkDown) for e in pair.client_events)
    assert not any(isinstance(e, LinkUp) for e in pair.client_events)


def test_server_must_be_the_node_dialled(cluster_a: dict[str, tuple[str, str, str]]) -> None:
    """A certificate of the right CA for another node is refused by the client."""
    pair = Pair(cluster_a["node-a"], cluster_a["node-b"], "node-c")
    pair.pump(400)
    assert pair.client.peer is None
    assert any(isinstance(e, LinkDown) for e in pair.client_events)


@given(st.integers(min_value=0, max_value=MAX_VARINT), st.binary(max_size=64))
def test_flow_framing_round_trips(flow_id: int, payload: bytes) -> None:
    data = encode_flow(flow_id, payload)
    assert decode_flow(data) == (flow_id, payload)
    assert decode_varint(encode_varint(flow_id)) == (flow_id, len(encode_varint(flow_id)))


@given(st.binary(max_size=9))
def test_flow_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        flow_id, payload = decode_flow(data)
    except ParseError:
        return
    assert 0 <= flow_id <= MAX_VARINT and data.endswith(payload)


def test_varint_lengths_are_the_shortest() -> None:
    assert [len(encode_varint(v)) for v in (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30)] == [
        1,
        1,
        2,
        2,
        4,
        4,
        8,
    ]
    with pytest.raises(ValueError):
        encode_varint(MAX_VARINT + 1)
    with pytest.raises(ValueError):
        encode_varint(-1)


def test_cli_mints_a_ca_and_node_certs_that_link(tmp_path: Path) -> None:
    """`sfu cluster-ca` and `sfu node-cert` write files the link accepts (keys mode 0600)."""
    from sfu.cli import main

    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    assert main(["cluster-ca", "--cert", str(ca), "--key", str(ca_key)]) == 0
    files = {}
    for node in ("node-a", "node-b"):
        cert, key = tmp_path / f"{node}.pem", tmp_path / f"{node}.key"
        args = ["node-cert", node, "--ca-cert", str(ca), "--ca-key", str(ca_key)]
        assert main([*args, "--cert", str(cert), "--key", str(key)]) == 0
        assert key.stat().st_mode & 0o777 == 0o600
        files[node] = (str(ca), str(cert), str(key))
    assert main(["node-cert", "bad id", "--ca-cert", str(ca), "--ca-key", str(ca_key),
                 "--cert", "x", "--key", "y"]) == 2  # fmt: skip
    # A key is never overwritten.
    assert main(["cluster-ca", "--cert", str(ca), "--key", str(ca_key)]) == 1
    pair = Pair(files["node-a"], files["node-b"], "node-b")
    pair.pump()
    assert pair.client.peer == "node-b"
