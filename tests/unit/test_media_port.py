"""MediaPort: routing, handshakes, hostile input, capacity, lifecycle and consent, socket-free.

The port is driven with fake time and a recording ``send``; the client side is played by a
:class:`DtlsEndpoint` with its own certificate and a libsrtp session keyed from its
``srtp_keys`` (the client protects with its "local" keys, the server unprotects with its
"remote" ones, and the other way round).
"""

from __future__ import annotations

import functools
import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.app import connect_data_plane
from sfu.core.dataplane import DataPlane
from sfu.core.kernels import Kernels
from sfu.packet.demux import PacketKind, classify
from sfu.packet.stun import (
    BINDING,
    FINGERPRINT,
    MESSAGE_INTEGRITY,
    StunClass,
    StunMessage,
    binding_request,
    verify_fingerprint,
    verify_message_integrity,
)
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsEndpoint, DtlsRole, DtlsState
from sfu.transport.ice import Address, tcp_address
from sfu.transport.port import CapacityError, MediaPort
from sfu.transport.srtp import SrtpSession
from sfu.transport.transport import HandshakeFailure, TransportState, WebRtcTransport

CLIENT_ADDR: Address = ("127.0.0.1", 50000)


@functools.cache
def server_cert() -> Certificate:
    return Certificate.generate()


@functools.cache
def client_cert() -> Certificate:
    return Certificate.generate()


_ufrags = itertools.count()
_tids = itertools.count()


def tid() -> bytes:
    return next(_tids).to_bytes(12, "big")


def rtp_packet(seq: int, ssrc: int = 0x11223344, payload: bytes = b"\x01\x02\x03\x04" * 8) -> bytes:
    return struct.pack(">BBHII", 0x80, 96, seq & 0xFFFF, seq * 960, ssrc) + payload


def rtcp_packet(ssrc: int = 0x11223344) -> bytes:
    # An empty receiver report (PT 201, RC 0): 8 bytes, length field 1.
    return struct.pack(">BBHI", 0x80, 201, 1, ssrc)


class Recorder:
    """A TransportListener that records everything."""

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.states: list[TransportState] = []

    def on_rtp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        self.rtp.append(packet)

    def on_rtcp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        self.rtcp.append(packet)

    def on_state(self, transport: WebRtcTransport, state: TransportState, now: float) -> None:
        self.states.append(state)


class Net:
    """A MediaPort plus the datagrams it sent."""

    def __init__(self, **kwargs: float) -> None:
        self.sent: list[tuple[bytes, Address]] = []
        self.port = MediaPort(server_cert(), self._send, **kwargs)  # type: ignore[arg-type]

    def _send(self, data: bytes, addr: Address) -> None:
        assert isinstance(data, bytes)
        self.sent.append((data, addr))

    def take(self, addr: Address) -> list[bytes]:
        """Remove and return what was sent to ``addr``."""
        mine = [d for d, a in self.sent if tuple(a) == tuple(addr)]
        self.sent = [(d, a) for d, a in self.sent if tuple(a) != tuple(addr)]
        return mine

    def state(self) -> tuple[int, int, int, int, int]:
        p = self.port
        return (
            p.transport_count,
            p.pending_count,
            p.srtp_context_count,
            p.timer_count,
            p.address_count,
        )


class Client:
    """The browser side of one transport: ICE checks, a DTLS endpoint and SRTP."""

    def __init__(
        self,
        net: Net,
        *,
        now: float = 0.0,
        addr: Address = CLIENT_ADDR,
        server_role: DtlsRole = DtlsRole.SERVER,
    ) -> None:
        self.net = net
        self.addr = addr
        self.ufrag = f"cl{next(_ufrags):06d}"
        self.listener = Recorder()
        self.transport = net.port.create_transport(
            remote_ufrag=self.ufrag,
            remote_fingerprints=[client_cert().fingerprint],
            dtls_role=server_role,
            now=now,
            listener=self.listener,
        )
        client_role = DtlsRole.CLIENT if server_role is DtlsRole.SERVER else DtlsRole.SERVER
        self.dtls = DtlsEndpoint(client_cert(), client_role, [server_cert().fingerprint])
        self.srtp: SrtpSession | None = None
        self.seq = 0

    def request(
        self,
        *,
        use_candidate: bool = True,
        pwd: str | None = None,
        remote: str | None = None,
    ) -> bytes:
        creds = self.transport.ice.local_credentials
        username = f"{creds.ufrag}:{remote or self.ufrag}"
        key = (pwd if pwd is not None else creds.pwd).encode()
        return binding_request(
            tid(), username, key, 0x6E7F1EFF, controlling=True, tie_breaker=42,
            use_candidate=use_candidate,
        )  # fmt: skip

    def check(
        self,
        now: float,
        addr: Address | None = None,
        *,
        use_candidate: bool = True,
        pwd: str | None = None,
        remote: str | None = None,
    ) -> bytes:
        """Send one connectivity check; return the request."""
        data = self.request(use_candidate=use_candidate, pwd=pwd, remote=remote)
        self.net.port.datagram_received(data, addr or self.addr, now)
        return data

    def pump_dtls(self, now: float, first: list[bytes] | None = None) -> None:
        """Exchange DTLS datagrams through the port until both sides are quiet."""
        to_server = list(first or [])
        for _ in range(20):
            for d in to_server:
                self.net.port.datagram_received(d, self.addr, now)
            to_server = []
            for d in self.net.take(self.addr):
                assert classify(d) is PacketKind.DTLS
                to_server += self.dtls.receive(d, now)
            if not to_server:
                break
        else:  # pragma: no cover
            raise AssertionError("DTLS did not settle")
        if self.dtls.state is DtlsState.CONNECTED and self.srtp is None:
            assert self.dtls.srtp_keys is not None
            self.srtp = SrtpSession(self.dtls.srtp_keys)

    def connect(self, now: float = 0.0) -> None:
        """ICE (nominated check) then the DTLS handshake, whoever starts it."""
        connect_via_port(self, now)

    def protect_rtp(self, payload: bytes = b"\x01\x02\x03\x04" * 8) -> tuple[bytes, bytes]:
        assert self.srtp is not None
        self.seq += 1
        plain = rtp_packet(self.seq, payload=payload)
        return plain, self.srtp.protect_rtp(plain)

    def send_rtp(self, now: float, addr: Address | None = None) -> bytes:
        plain, protected = self.protect_rtp()
        self.net.port.datagram_received(protected, addr or self.addr, now)
        return plain


def connect_via_port(client: Client, now: float = 0.0) -> None:
    """ICE + DTLS, tolerating a server-initiated handshake (the ClientHello rides with the
    STUN success response)."""
    client.check(now)
    sent = client.net.take(client.addr)
    stun = [d for d in sent if classify(d) is PacketKind.STUN]
    dtls = [d for d in sent if classify(d) is PacketKind.DTLS]
    assert len(stun) == 1 and len(stun) + len(dtls) == len(sent)
    assert parse(stun[0]).msg_class is StunClass.SUCCESS
    first = client.dtls.start(now)
    for d in dtls:
        first += client.dtls.receive(d, now)
    client.pump_dtls(now, first)
    assert state_of(client.transport) is TransportState.CONNECTED
    assert client.srtp is not None


def state_of(transport: WebRtcTransport) -> TransportState:
    """Read the state through a call: mypy keeps narrowing ``.state`` across calls."""
    return transport.state


def parse(data: bytes) -> StunMessage:
    assert verify_fingerprint(data)
    return StunMessage.parse(data)


def code_of(data: bytes) -> int:
    """The ERROR-CODE of an error response."""
    msg = parse(data)
    assert msg.msg_class is StunClass.ERROR and msg.error_code is not None
    return msg.error_code[0]


# -- 1, 2: full handshakes ---------------------------------------------------------------------


def test_full_handshake_server_passive() -> None:
    net = Net()
    port = net.port
    c = Client(net)
    t = c.transport
    assert state_of(t) is TransportState.NEW
    assert (port.transport_count, port.pending_count, port.address_count) == (1, 1, 0)
    assert port.get(t.id) is t and list(port) == [t]

    request = c.check(0.0)
    sent = net.take(CLIENT_ADDR)
    assert net.sent == []
    assert len(sent) == 1
    response = parse(sent[0])
    assert response.method == BINDING and response.msg_class is StunClass.SUCCESS
    assert response.transaction_id == StunMessage.parse(request).transaction_id
    assert verify_message_integrity(sent[0], t.ice.local_credentials.key)
    assert response.xor_mapped_address == CLIENT_ADDR
    assert state_of(t) is TransportState.CONNECTING
    assert t.selected_address == CLIENT_ADDR
    assert (port.pending_count, port.address_count, port.srtp_context_count) == (0, 1, 0)
    assert c.listener.states == [TransportState.CONNECTING]

    c.pump_dtls(0.0, c.dtls.start(0.0))
    assert state_of(t) is TransportState.CONNECTED
    assert c.listener.states == [TransportState.CONNECTING, TransportState.CONNECTED]
    assert port.srtp_context_count == 1
    assert t.srtp_keys is not None and c.dtls.srtp_keys is not None
    assert t.srtp_keys.remote_key == c.dtls.srtp_keys.local_key
    assert c.srtp is not None

    # Client -> server: decrypted and byte-identical.
    plains = [c.send_rtp(0.1) for _ in range(3)]
    assert c.listener.rtp == plains
    rtcp = rtcp_packet()
    port.datagram_received(c.srtp.protect_rtcp(rtcp), CLIENT_ADDR, 0.2)
    assert c.listener.rtcp == [rtcp]
    assert port.counters.total_drops() == 0

    # Server -> client.
    out = rtp_packet(77, ssrc=0xCAFE)
    assert t.send_rtp(out)
    sent = net.take(CLIENT_ADDR)
    assert len(sent) == 1 and sent[0] != out
    assert c.srtp.unprotect_rtp(sent[0]) == out
    assert t.send_rtcp(rtcp_packet(0xCAFE))
    sent = net.take(CLIENT_ADDR)
    assert len(sent) == 1 and c.srtp.unprotect_rtcp(sent[0]) == rtcp_packet(0xCAFE)
    assert net.sent == []


def test_full_handshake_server_active_starts_dtls_after_first_check() -> None:
    net = Net()
    c = Client(net, server_role=DtlsRole.CLIENT)
    t = c.transport
    assert t.dtls_role is DtlsRole.CLIENT
    assert net.sent == []
    c.check(0.0)
    sent = net.take(CLIENT_ADDR)
    kinds = [classify(d) for d in sent]
    # The success response, then the server's ClientHello (handshake record, type 22).
    assert kinds[0] is PacketKind.STUN and parse(sent[0]).msg_class is StunClass.SUCCESS
    assert kinds[1:] and all(k is PacketKind.DTLS for k in kinds[1:])
    assert sent[1][0] == 22
    assert state_of(t) is TransportState.CONNECTING

    # A second check does not restart the handshake.
    c.check(0.5)
    again = net.take(CLIENT_ADDR)
    assert [classify(d) for d in again] == [PacketKind.STUN]

    first: list[bytes] = c.dtls.start(0.5)
    for d in sent[1:]:
        first += c.dtls.receive(d, 0.5)
    c.pump_dtls(0.5, first)
    assert state_of(t) is TransportState.CONNECTED
    assert c.listener.states == [TransportState.CONNECTING, TransportState.CONNECTED]
    assert c.srtp is not None
    plain = c.send_rtp(1.0)
    assert c.listener.rtp == [plain]
    out = rtp_packet(5, ssrc=0xBEEF)
    assert t.send_rtp(out)
    (datagram,) = net.take(CLIENT_ADDR)
    assert c.srtp.unprotect_rtp(datagram) == out


def test_send_before_connected_returns_false() -> None:
    net = Net()
    c = Client(net)
    assert not c.transport.send_rtp(rtp_packet(1))
    assert not c.transport.send_rtcp(rtcp_packet())
    c.check(0.0)
    net.take(CLIENT_ADDR)
    assert not c.transport.send_rtp(rtp_packet(1))
    assert net.sent == []


# -- 3: hostile input ----------------------------------------------------------------------


def test_unknown_ufrag_gets_one_unsigned_401_and_no_state() -> None:
    net = Net()
    c = Client(net)  # an unrelated pending transport
    before = net.state()
    data = binding_request(
        tid(), "nosuchuf:peer", b"p" * 24, 1, controlling=True, tie_breaker=1, use_candidate=True
    )
    net.port.datagram_received(data, ("192.0.2.1", 1234), 0.0)
    assert net.port.counters.drops == {"stun_unknown_username": 1}
    assert len(net.sent) == 1
    response, addr = net.sent[0]
    assert addr == ("192.0.2.1", 1234)
    msg = parse(response)
    assert msg.msg_class is StunClass.ERROR and msg.error_code is not None
    assert msg.error_code[0] == 401
    assert msg.transaction_id == StunMessage.parse(data).transaction_id
    assert not msg.has(MESSAGE_INTEGRITY)
    assert msg.attributes[-1].type == FINGERPRINT
    assert net.state() == before
    assert state_of(c.transport) is TransportState.NEW
    assert c.transport.ice.validated_addresses == frozenset()


def test_request_without_username_creates_no_state() -> None:
    net = Net()
    msg = StunMessage(BINDING, StunClass.REQUEST, tid())
    net.port.datagram_received(msg.serialize(fingerprint=True), ("192.0.2.1", 9), 0.0)
    for d, _ in net.sent:  # at most an unsigned error
        assert not parse(d).has(MESSAGE_INTEGRITY) and code_of(d) in (400, 401)
    assert net.port.counters.drops == {"stun_unknown_username": 1}
    assert net.state() == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("rate", [200.0, 50.0])
def test_unknown_ufrag_flood_is_rate_limited(rate: float) -> None:
    net = Net(error_responses_per_s=rate)
    Client(net)
    before = net.state()
    n = 10_000
    # One request body, fresh transaction ids (bytes 8..20) so each one is distinct.
    template = binding_request(
        bytes(12), "floodflood:x", b"k" * 24, 1, controlling=True, tie_breaker=1
    )
    start, end = 100.0, 101.0
    for i in range(n):
        data = template[:8] + i.to_bytes(12, "big") + template[20:]
        net.port.datagram_received(data, ("198.51.100.7", 1000 + i % 50000), start + i / n)
    elapsed = (n - 1) / n * (end - start)
    burst = rate
    assert burst <= len(net.sent) <= burst + rate * elapsed
    assert {code_of(d) for d, _ in net.sent} == {401}
    assert net.port.counters.drops == {"stun_unknown_username": n}
    assert net.port.counters.received["stun"] == n
    assert net.state() == before
    # The bucket refills with time.
    net.sent.clear()
    net.port.datagram_received(template, ("198.51.100.7", 1), end + 10.0)
    assert len(net.sent) == 1


def test_wrong_password_is_401_via_transport_and_validates_nothing() -> None:
    net = Net()
    c = Client(net)
    t = c.transport
    before = net.state()
    c.check(0.0, pwd="x" * 24)
    (response,) = net.take(CLIENT_ADDR)
    msg = parse(response)
    assert msg.msg_class is StunClass.ERROR and msg.error_code is not None
    assert msg.error_code[0] == 401 and not msg.has(MESSAGE_INTEGRITY)
    assert net.port.counters.drops == {"stun_bad_integrity": 1}
    assert net.state() == before
    assert state_of(t) is TransportState.NEW and t.ice.validated_addresses == frozenset()

    # Once ICE selected an address, a bad check from another one changes nothing either.
    c.check(1.0)
    net.take(CLIENT_ADDR)
    other = ("127.0.0.1", 50001)
    c.check(2.0, addr=other, pwd="y" * 24)
    (response,) = net.take(other)
    assert parse(response).error_code is not None
    assert t.ice.validated_addresses == frozenset({("127.0.0.1", 50000)})
    assert t.selected_address == CLIENT_ADDR
    assert net.port.counters.drops["stun_bad_integrity"] == 2
    assert net.port.address_count == 1

    # A wrong remote ufrag is a 401 too.
    c.check(3.0, addr=other, remote="someoneelse")
    (response,) = net.take(other)
    assert code_of(response) == 401
    assert net.port.counters.drops["stun_wrong_username"] == 1
    assert t.ice.validated_addresses == frozenset({("127.0.0.1", 50000)})


def test_dtls_and_srtp_from_unknown_source_are_dropped() -> None:
    net = Net()
    c = Client(net)
    before = net.state()
    hello = c.dtls.start(0.0)
    for d in hello:
        net.port.datagram_received(d, CLIENT_ADDR, 0.0)
    net.port.datagram_received(rtp_packet(1) + bytes(10), CLIENT_ADDR, 0.0)
    net.port.datagram_received(rtcp_packet() + bytes(14), CLIENT_ADDR, 0.0)
    assert net.sent == []
    assert net.port.counters.drops == {
        "dtls_unknown_source": len(hello),
        "rtp_unknown_source": 1,
        "rtcp_unknown_source": 1,
    }
    assert net.state() == before
    assert c.transport.dtls.state is DtlsState.NEW


def test_dtls_from_address_that_never_passed_ice_is_not_routed() -> None:
    net = Net()
    c = Client(net)
    c.check(0.0)
    net.take(CLIENT_ADDR)
    before = net.state()
    intruder = ("127.0.0.1", 50002)
    rogue = DtlsEndpoint(client_cert(), DtlsRole.CLIENT, [server_cert().fingerprint])
    for d in rogue.start(0.0):
        net.port.datagram_received(d, intruder, 0.0)
    assert net.sent == []
    assert net.port.counters.drops["dtls_unknown_source"] >= 1
    assert net.state() == before
    # The real client still completes from the validated address.
    c.pump_dtls(0.1, c.dtls.start(0.1))
    assert state_of(c.transport) is TransportState.CONNECTED


def test_srtp_before_dtls_completes_is_dropped() -> None:
    net = Net()
    c = Client(net)
    c.check(0.0)
    net.take(CLIENT_ADDR)
    before = net.state()
    net.port.datagram_received(rtp_packet(1) + bytes(16), CLIENT_ADDR, 0.0)
    net.port.datagram_received(rtcp_packet() + bytes(14), CLIENT_ADDR, 0.0)
    assert net.port.counters.drops == {"srtp_before_dtls": 2}
    assert net.sent == [] and c.listener.rtp == [] and c.listener.rtcp == []
    assert net.state() == before
    assert state_of(c.transport) is TransportState.CONNECTING


def test_tampered_and_replayed_srtp_are_dropped() -> None:
    net = Net()
    c = Client(net)
    c.connect()
    assert c.srtp is not None
    before = net.state()
    _, protected = c.protect_rtp()
    tampered = bytearray(protected)
    tampered[20] ^= 0x01
    net.port.datagram_received(bytes(tampered), CLIENT_ADDR, 1.0)
    assert net.port.counters.drops == {"srtp_auth": 1}
    rtcp = bytearray(c.srtp.protect_rtcp(rtcp_packet()))
    rtcp[5] ^= 0x80
    net.port.datagram_received(bytes(rtcp), CLIENT_ADDR, 1.0)
    assert net.port.counters.drops == {"srtp_auth": 2}
    assert c.listener.rtp == [] and c.listener.rtcp == []
    # The genuine packet still decrypts, and a replay of it is refused.
    net.port.datagram_received(protected, CLIENT_ADDR, 1.1)
    assert len(c.listener.rtp) == 1
    net.port.datagram_received(protected, CLIENT_ADDR, 1.2)
    assert net.port.counters.drops["srtp_replay"] == 1
    assert len(c.listener.rtp) == 1
    assert net.state() == before
    assert state_of(c.transport) is TransportState.CONNECTED


_CLASSES = [(0, 3), (4, 15), (16, 19), (20, 63), (64, 79), (80, 127), (128, 191), (192, 255)]


@st.composite
def junk(draw: st.DrawFn, ufrags: tuple[str, ...]) -> bytes:
    """Random datagrams of every first-byte class, plus STUN- and RTCP-shaped ones."""
    shape = draw(st.integers(0, 3))
    if shape == 0:
        lo, hi = draw(st.sampled_from(_CLASSES))
        return bytes([draw(st.integers(lo, hi))]) + draw(st.binary(max_size=300))
    if shape == 1:  # RTP range with an RTCP second byte
        return bytes([draw(st.integers(128, 191)), draw(st.integers(192, 223))]) + draw(
            st.binary(max_size=200)
        )
    if shape == 2:  # a STUN header with a well-formed length and random attributes
        body = draw(st.binary(max_size=200))
        body += bytes(-len(body) % 4)
        msg_type = draw(st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011, 0x0002]))
        header = struct.pack(">HHI", msg_type, len(body), 0x2112A442)
        return header + draw(st.binary(min_size=12, max_size=12)) + body
    # A binding request naming a live transport (or not), with junk integrity.
    ufrag = draw(st.sampled_from([*ufrags, "zzzzzzzz", ""]))
    key = draw(st.binary(min_size=0, max_size=30))
    use = draw(st.booleans())
    data = binding_request(
        tid(), f"{ufrag}:{draw(st.text(max_size=8))}", key, 1, controlling=draw(st.booleans()),
        tie_breaker=1, use_candidate=use,
    )  # fmt: skip
    if draw(st.booleans()) and len(data) > 28:
        cut = draw(st.integers(20, len(data) - 1))
        data = data[:cut] + bytes([data[cut] ^ draw(st.integers(1, 255))]) + data[cut + 1 :]
    return data


def test_random_datagrams_never_raise_nor_create_state_nor_disturb_a_session() -> None:
    net = Net()
    live = Client(net)
    live.connect()
    pending = Client(net, addr=("127.0.0.1", 50001))
    t, p = live.transport, pending.transport
    before = net.state()
    assert before == (2, 1, 1, 2, 1)
    validated = t.ice.validated_addresses
    ufrags = (t.ice.local_credentials.ufrag, p.ice.local_credentials.ufrag)
    now = [1.0]

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        data=junk(ufrags),
        host=st.sampled_from(["127.0.0.1", "10.1.2.3", "::1"]),
        port=st.integers(1, 65535).filter(lambda n: n != CLIENT_ADDR[1]),
    )
    def feed(data: bytes, host: str, port: int) -> None:
        now[0] += 0.001
        net.sent.clear()
        net.port.datagram_received(data, (host, port), now[0])
        assert net.state() == before
        assert state_of(t) is TransportState.CONNECTED and state_of(p) is TransportState.NEW
        assert t.selected_address == CLIENT_ADDR and p.selected_address is None
        assert t.ice.validated_addresses == validated
        assert p.ice.validated_addresses == frozenset()
        for d, a in net.sent:  # only unauthenticated errors, back to the source
            assert a == (host, port)
            msg = StunMessage.parse(d)
            assert msg.msg_class is StunClass.ERROR and not msg.has(MESSAGE_INTEGRITY)

    feed()
    assert net.port.counters.total_drops() > 0
    # The session is intact: media still flows both ways.
    plain = live.send_rtp(now[0])
    assert live.listener.rtp[-1] == plain
    assert t.send_rtp(rtp_packet(9))
    assert live.srtp is not None
    (datagram,) = net.take(CLIENT_ADDR)
    assert live.srtp.unprotect_rtp(datagram) == rtp_packet(9)


@functools.cache
def connected_net() -> tuple[Net, Client]:
    """One connected session shared by the examples below."""
    net = Net()
    c = Client(net)
    c.connect()
    return net, c


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200), first=st.integers(128, 191))
def test_random_srtp_from_the_selected_address_is_dropped(data: bytes, first: int) -> None:
    net, c = connected_net()
    port = net.port
    drops = port.counters.total_drops()
    port.datagram_received(bytes([first]) + data, CLIENT_ADDR, 1.0)
    assert state_of(c.transport) is TransportState.CONNECTED
    assert port.counters.total_drops() == drops + 1
    assert net.state() == (1, 0, 1, 1, 1)


def test_forged_dtls_records_from_the_selected_address_do_not_end_a_session() -> None:
    # Off-path attackers can spoof the client's source address: plaintext (epoch 0) alerts and
    # handshake records, or garbage under the current epoch, must not close the session.
    net = Net()
    c = Client(net)
    c.connect()
    t = c.transport

    def noise(n: int) -> bytes:
        return bytes((i * 37 + 11) % 256 for i in range(n))

    def record(content_type: int, epoch: int, seq: int, body: bytes) -> bytes:
        header = struct.pack(">BHH", content_type, 0xFEFD, epoch) + seq.to_bytes(6, "big")
        return header + struct.pack(">H", len(body)) + body

    forged = [
        record(21, 0, 99, bytes([2, 40])),  # fatal handshake_failure, plaintext
        record(21, 0, 100, bytes([1, 0])),  # close_notify, plaintext
        record(21, 1, 5, noise(26)),  # "encrypted" alert that fails authentication
        record(23, 1, 6, noise(40)),
        record(22, 0, 7, noise(60)),
        record(20, 1, 8, b"\x01"),
        b"\x17\xfe\xfd",  # truncated header
    ]
    for d in forged:
        net.port.datagram_received(d, CLIENT_ADDR, 1.0)
        assert state_of(t) is TransportState.CONNECTED, d.hex()
    net.take(CLIENT_ADDR)
    plain = c.send_rtp(1.1)
    assert c.listener.rtp == [plain]
    assert net.state() == (1, 0, 1, 1, 1)


# -- 4: capacity -------------------------------------------------------------------------------


def test_max_pending() -> None:
    net = Net(max_pending=3)
    clients = [Client(net, addr=("127.0.0.1", 40000 + i)) for i in range(3)]
    with pytest.raises(CapacityError):
        Client(net)
    assert net.port.transport_count == 3 and net.port.pending_count == 3
    # Once one passes ICE it no longer counts as pending.
    clients[0].check(0.0)
    assert net.port.pending_count == 2
    Client(net, addr=("127.0.0.1", 40009))
    with pytest.raises(CapacityError):
        Client(net)
    assert net.port.transport_count == 4


def test_max_transports() -> None:
    net = Net(max_transports=2)
    a = Client(net, addr=("127.0.0.1", 40000))
    a.connect()
    b = Client(net, addr=("127.0.0.1", 40001))
    b.check(0.0)
    with pytest.raises(CapacityError):
        Client(net)
    assert net.port.transport_count == 2
    net.port.close_transport(a.transport, 1.0)
    assert net.port.transport_count == 1
    Client(net)
    assert net.port.transport_count == 2


def test_pending_transports_expire_after_connect_timeout() -> None:
    net = Net(max_pending=3, connect_timeout=5.0)
    clients = [Client(net, now=float(i)) for i in range(3)]
    assert net.port.next_timer() == 5.0
    net.port.poll(4.9)
    assert net.port.transport_count == 3
    net.port.poll(5.0)
    assert net.port.transport_count == 2
    assert state_of(clients[0].transport) is TransportState.FAILED
    assert clients[0].transport.close_reason == "ice connect timeout"
    assert clients[0].transport.failure is HandshakeFailure.ICE_TIMEOUT
    assert net.port.counters.handshake_failures == {("ice", "timeout"): 1}
    assert clients[0].listener.states == [TransportState.FAILED]
    assert net.port.get(clients[0].transport.id) is None
    net.port.poll(7.0)
    assert net.state() == (0, 0, 0, 0, 0)
    assert net.port.next_timer() is None
    assert net.sent == []
    # Forgotten: their credentials are unknown now (401 from the port, not the transport).
    clients[1].check(7.5)
    assert net.port.counters.drops == {"stun_unknown_username": 1}
    assert net.state() == (0, 0, 0, 0, 0)
    # And capacity is free again.
    for i in range(3):
        Client(net, now=8.0, addr=("127.0.0.1", 41000 + i))


def test_dtls_handshake_timeout_fails_the_transport() -> None:
    net = Net(handshake_timeout=10.0)
    c = Client(net)
    c.check(0.0)
    net.take(CLIENT_ADDR)
    assert state_of(c.transport) is TransportState.CONNECTING
    c.check(5.0)  # consent is fresh; the handshake just never happens
    net.port.poll(10.0)
    assert state_of(c.transport) is TransportState.FAILED
    assert c.transport.close_reason is not None and "timeout" in c.transport.close_reason
    assert c.transport.failure is HandshakeFailure.DTLS_TIMEOUT
    assert net.port.counters.handshake_failures == {("dtls", "timeout"): 1}
    assert net.state() == (0, 0, 0, 0, 0)


# -- 5: lifecycle ------------------------------------------------------------------------------


def test_open_and_close_200_transports() -> None:
    # Every transport is fully connected (ICE + DTLS): with one cached client certificate and
    # cached SSL contexts a handshake takes a few milliseconds, so all 200 fit well in budget.
    net = Net()
    port = net.port
    now = 0.0
    for i in range(200):
        addr = ("127.0.0.1", 20000 + i)
        c = Client(net, now=now, addr=addr, server_role=(DtlsRole.SERVER, DtlsRole.CLIENT)[i % 2])
        connect_via_port(c, now)
        assert c.srtp is not None
        plain = c.send_rtp(now)
        assert c.listener.rtp == [plain]
        t = c.transport
        mode = i % 3
        if mode == 0:
            port.close_transport(t, now)
            assert t.close_reason == "closed"
            # Our close_notify went to the client.
            sent = net.take(addr)
            assert sent and all(classify(d) is PacketKind.DTLS for d in sent)
            for d in sent:
                c.dtls.receive(d, now)
            assert c.dtls.state is DtlsState.CLOSED
        elif mode == 1:
            for d in c.dtls.close():
                port.datagram_received(d, addr, now)
            assert t.close_reason == "dtls close_notify"
            net.take(addr)
        else:
            now += 31.0
            port.poll(now)
            assert t.close_reason is not None and "consent" in t.close_reason
            net.take(addr)
        assert state_of(t) is TransportState.CLOSED
        assert c.listener.states[-1] is TransportState.CLOSED
        assert not t.has_srtp and t.next_timer() is None
        assert not t.send_rtp(rtp_packet(1))
        # Late media and checks for the dead transport create nothing.
        c.send_rtp(now)
        c.check(now)
        assert net.state() == (0, 0, 0, 0, 0)
        now += 0.5
    assert net.sent == [] or all(classify(d) is PacketKind.STUN for d, _ in net.sent)
    assert net.state() == (0, 0, 0, 0, 0)
    assert port.next_timer() is None
    assert list(port) == []


def test_close_all() -> None:
    net = Net()
    a = Client(net, addr=("127.0.0.1", 1))
    a.connect()
    Client(net, addr=("127.0.0.1", 2)).check(0.0)
    Client(net, addr=("127.0.0.1", 3))
    net.port.close_all(1.0)
    assert net.state() == (0, 0, 0, 0, 0)
    assert a.transport.close_reason == "shutdown"
    assert net.port.next_timer() is None


# -- 6: consent freshness and mobility ----------------------------------------------------------


def test_consent_expires_after_30_s_without_checks() -> None:
    net = Net()
    c = Client(net)
    c.connect(0.0)
    assert net.port.next_timer() == 30.0
    net.port.poll(29.9)
    assert state_of(c.transport) is TransportState.CONNECTED
    net.port.poll(30.0)
    t = c.transport
    assert state_of(t) is TransportState.CLOSED
    assert t.close_reason is not None and "consent" in t.close_reason
    assert c.listener.states[-1] is TransportState.CLOSED
    assert net.state() == (0, 0, 0, 0, 0)
    assert net.port.next_timer() is None
    # Media arriving afterwards is from an unknown source.
    net.take(CLIENT_ADDR)
    c.send_rtp(30.1)
    assert net.port.counters.drops == {"rtp_unknown_source": 1}


def test_checks_every_10_s_keep_consent_for_60_s() -> None:
    net = Net()
    c = Client(net)
    c.connect(0.0)
    now = 0.0
    while now < 60.0:
        now += 1.0
        if now % 10 == 0:
            c.check(now, use_candidate=False)
        net.port.poll(now)
        assert state_of(c.transport) is TransportState.CONNECTED
    plain = c.send_rtp(now)
    assert c.listener.rtp == [plain]
    assert net.port.next_timer() == 90.0
    net.port.poll(89.0)
    assert state_of(c.transport) is TransportState.CONNECTED
    net.port.poll(90.0)
    assert state_of(c.transport) is TransportState.CLOSED


def test_nominated_check_from_new_address_moves_the_client() -> None:
    net = Net()
    c = Client(net)
    c.connect(0.0)
    t = c.transport
    new = ("127.0.0.1", 50099)
    # A non-nominated check from the new address validates it but does not move media.
    c.check(1.0, addr=new, use_candidate=False)
    assert t.selected_address == CLIENT_ADDR
    assert c.listener.rtp == [] and c.send_rtp(1.1) == c.listener.rtp[-1]
    c.check(2.0, addr=new, use_candidate=True)
    responses = net.take(new)
    assert len(responses) == 2 and parse(responses[-1]).xor_mapped_address == new
    assert t.selected_address == new
    assert net.port.address_count == 1
    assert state_of(t) is TransportState.CONNECTED
    delivered = len(c.listener.rtp)
    c.send_rtp(2.1, addr=CLIENT_ADDR)
    assert net.port.counters.drops == {"rtp_unknown_source": 1}
    assert len(c.listener.rtp) == delivered
    plain = c.send_rtp(2.2, addr=new)
    assert c.listener.rtp[-1] == plain
    net.take(CLIENT_ADDR)
    assert t.send_rtp(rtp_packet(3))
    assert net.take(CLIENT_ADDR) == []
    (datagram,) = net.take(new)
    assert c.srtp is not None and c.srtp.unprotect_rtp(datagram) == rtp_packet(3)
    # Consent now follows the new address.
    assert net.port.next_timer() == 32.0


def test_moving_transport_does_not_steal_another_transports_route() -> None:
    # Transport B is nominated on address X after A was; A then moves on to Y. B's route for X
    # must survive A's move: B is the latest owner of X.
    net = Net()
    x, y = ("127.0.0.1", 30001), ("127.0.0.1", 30002)
    a = Client(net, addr=x)
    a.connect(0.0)
    b = Client(net, addr=x)
    b.check(0.1)
    net.take(x)
    b.pump_dtls(0.1, b.dtls.start(0.1))
    assert state_of(b.transport) is TransportState.CONNECTED and b.transport.selected_address == x
    plain = b.send_rtp(0.2)
    assert b.listener.rtp == [plain]
    a.check(0.3, addr=y)
    assert a.transport.selected_address == y
    plain = b.send_rtp(0.4)
    assert net.port.counters.drops.get("rtp_unknown_source", 0) == 0, "A's move unrouted B"
    assert b.listener.rtp[-1] == plain
    assert net.port.address_count == 2


def test_data_plane_must_hold_every_transport_the_port_may_create(kernels: Kernels) -> None:
    """A subscriber the forwarder could not register would get no forwarded media."""
    small = DataPlane(kernels.Forwarder(max_transports=10), kernels=kernels)
    with pytest.raises(ValueError, match="fewer transports"):
        connect_data_plane(
            MediaPort(server_cert(), lambda data, addr: None, max_transports=11), small
        )
    port = MediaPort(server_cert(), lambda data, addr: None, max_transports=10)
    connect_data_plane(port, small)
    assert port.on_transport_changed == small.sync
    assert port.on_transport_closed == small.release


def test_transport_hooks_see_changes_and_the_close() -> None:
    """The port tells its listener when a transport may have moved or keyed, and when it goes."""
    net = Net()
    changed: list[WebRtcTransport] = []
    closed: list[WebRtcTransport] = []
    net.port.on_transport_changed = changed.append
    net.port.on_transport_closed = closed.append
    c = Client(net)
    c.check(0.0)
    assert changed == [c.transport], "the first nomination selects an address"
    net.port.close_transport(c.transport, 0.1)
    assert closed == [c.transport]
    net.port.close_transport(c.transport, 0.2)
    assert closed == [c.transport], "forgotten once"


# -- ICE-TCP peers and candidate types (issue 17) ------------------------------------------


def test_a_transport_over_ice_tcp_connects_and_is_counted_as_tcp() -> None:
    net = Net()
    tcp = tcp_address("127.0.0.1", 50000)  # the same host and port as a UDP peer might use
    client = Client(net, addr=tcp)
    client.connect()
    assert net.port.is_authenticated(tcp)
    assert not net.port.is_authenticated(CLIENT_ADDR)  # the UDP peer is another one
    assert net.port.counters.connected_by_type == {"tcp": 1}
    assert client.transport.candidate_type == "tcp"
    plain = client.send_rtp(1.0)
    assert client.listener.rtp == [plain]
    # Media from the UDP address with the same host and port is not this transport's.
    client.send_rtp(1.1, addr=CLIENT_ADDR)
    assert len(client.listener.rtp) == 1
    net.port.connection_closed(tcp)
    assert not net.port.is_authenticated(tcp) and net.port.address_count == 0


def test_peers_at_a_turn_relay_address_count_as_relay() -> None:
    net = Net()
    net.port.counters.relay_hosts = frozenset({"127.0.0.1"})
    Client(net).connect()
    assert net.port.counters.connected_by_type == {"relay": 1}


def test_a_transport_that_never_heard_a_check_fails_as_none() -> None:
    net = Net(connect_timeout=5.0)
    client = Client(net)
    net.port.poll(5.0)
    assert client.transport.candidate_type == "none"
    assert net.port.counters.failed_by_type == {"none": 1}
