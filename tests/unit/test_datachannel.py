"""SCTP association (aiortc's, driven sans-I/O) and DCEP: two endpoints wired back to back with
a fake clock, loss injected by dropping packets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.transport.datachannel import (
    DCEP_OPEN,
    ChannelMessage,
    ChannelOpened,
    DataChannel,
    DataChannels,
    DcepError,
    Ppid,
    parse_open,
)
from sfu.transport.sctp import SctpAssociation


def _open(label: str, channel_type: int = 0, reliability: int = 0) -> bytes:
    raw = label.encode()
    return struct.pack("!BBHIHH", DCEP_OPEN, channel_type, 0, reliability, len(raw), 0) + raw


class _Pair:
    """A server-side DataChannels and a bare client association, delivering to each other."""

    def __init__(self) -> None:
        self.now = 0.0
        self.server = DataChannels(SctpAssociation(server=True))
        self.client = SctpAssociation(server=False)
        self.events: list[ChannelOpened | ChannelMessage] = []
        self.to_client: list[bytes] = []
        self.to_server: list[bytes] = []
        self.drop_to_server = 0

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            if not self.to_client and not self.to_server:
                return
            to_server, self.to_server = self.to_server, []
            for packet in to_server:
                if self.drop_to_server:
                    self.drop_to_server -= 1
                    continue
                out, events = self.server.receive(packet, now=self.now)
                self.to_client += out
                self.events += events
            to_client, self.to_client = self.to_client, []
            for packet in to_client:
                self.to_server += self.client.receive(packet, now=self.now)

    def connect(self) -> None:
        self.to_server += self.client.start(now=self.now)
        self.to_client += self.server.association.start(now=self.now)
        self.pump()
        assert self.server.association.established
        assert self.client.established

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.to_server += self.client.handle_timer(now=self.now)
        self.to_client += self.server.association.handle_timer(now=self.now)
        self.pump()


def test_association_establishes_and_dcep_open_is_acked() -> None:
    pair = _Pair()
    pair.connect()
    sent = pair.client.send(0, Ppid.DCEP, _open("chat"), now=pair.now)
    assert sent
    pair.to_server += sent
    pair.pump()
    assert pair.events == [ChannelOpened(DataChannel(0, "chat", "", True, None))]
    acks = [m for m in pair.client.messages() if m.ppid == Ppid.DCEP]
    assert [m.data for m in acks] == [b"\x02"]


def test_messages_both_ways_and_empty_message() -> None:
    pair = _Pair()
    pair.connect()
    pair.to_server += pair.client.send(0, Ppid.DCEP, _open("chat"), now=pair.now) or []
    pair.to_server += pair.client.send(0, Ppid.STRING, b"hello", now=pair.now) or []
    pair.to_server += pair.client.send(0, Ppid.BINARY_EMPTY, b"\x00", now=pair.now) or []
    pair.pump()
    messages = [e for e in pair.events if isinstance(e, ChannelMessage)]
    assert [(m.data, m.binary) for m in messages] == [(b"hello", False), (b"", True)]
    channel = pair.server.by_label("chat")
    assert channel is not None
    pair.to_client += pair.server.send(channel, "é".encode(), binary=False, now=pair.now) or []
    pair.pump()
    got = [m for m in pair.client.messages() if m.ppid == Ppid.STRING]
    assert [m.data for m in got] == ["é".encode()]


def test_lost_packet_is_retransmitted_on_the_timer() -> None:
    pair = _Pair()
    pair.connect()
    pair.to_server += pair.client.send(0, Ppid.DCEP, _open("chat"), now=pair.now) or []
    pair.pump()
    pair.drop_to_server = 1
    pair.to_server += pair.client.send(0, Ppid.STRING, b"late", now=pair.now) or []
    pair.pump()
    assert not [e for e in pair.events if isinstance(e, ChannelMessage)]
    deadline = pair.client.next_timer()
    assert deadline is not None
    pair.advance(deadline - pair.now + 0.001)
    assert [e.data for e in pair.events if isinstance(e, ChannelMessage)] == [b"late"]


def test_oversized_message_is_refused_not_queued() -> None:
    pair = _Pair()
    pair.connect()
    pair.to_server += pair.client.send(0, Ppid.DCEP, _open("chat"), now=pair.now) or []
    pair.pump()
    channel = pair.server.by_label("chat")
    assert channel is not None
    too_big = b"x" * (pair.server.association.remote_max_message_size + 1)
    assert pair.server.send(channel, too_big, binary=True, now=pair.now) is None
    assert pair.server.refused_sends == 1


def test_message_on_unopened_stream_and_garbage_are_counted() -> None:
    pair = _Pair()
    pair.connect()
    pair.to_server += pair.client.send(4, Ppid.STRING, b"nobody", now=pair.now) or []
    pair.pump()
    assert pair.server.malformed == 1
    out, events = pair.server.receive(b"\x00garbage", now=pair.now)
    assert (out, events) == ([], [])
    assert pair.server.association.malformed == 1


def test_partial_reliability_from_channel_type() -> None:
    unordered_rexmit = parse_open(3, _open("u", 0x81, 2))
    assert (unordered_rexmit.ordered, unordered_rexmit.max_retransmits) == (False, 2)
    with pytest.raises(DcepError):
        parse_open(3, _open("bad", 0x05))


@given(st.binary(max_size=300))
def test_parse_open_raises_only_dcep_error(payload: bytes) -> None:
    try:
        channel = parse_open(1, payload)
    except DcepError:
        return
    assert channel.stream_id == 1


@given(st.binary(max_size=300))
def test_association_never_raises_on_garbage(payload: bytes) -> None:
    association = SctpAssociation(server=True)
    association.start(now=0.0)
    association.receive(payload, now=0.0)
    assert association.messages() == []


def test_sctp_over_real_dtls_endpoints_with_bounded_inbox() -> None:
    """The whole stack below the room: SCTP packets as DTLS application data (RFC 8261)."""
    from test_dtls import make_pair, pump

    from sfu.transport.dtls import MAX_APP_INBOX

    client_dtls, server_dtls = make_pair()
    pump(client_dtls, server_dtls)
    server_dtls.deliver_application_data = True
    client_dtls.deliver_application_data = True
    server = DataChannels(SctpAssociation(server=True))
    client = SctpAssociation(server=False)

    def to_server(packets: list[bytes]) -> None:
        for packet in packets:
            for datagram in client_dtls.send_application_data(packet):
                server_dtls.receive(datagram, 0.0)
        replies: list[bytes] = []
        for record in server_dtls.take_application_data():
            out, events = server.receive(record, now=0.0)
            pair_events.extend(events)
            replies += out
        for packet in replies:
            for datagram in server_dtls.send_application_data(packet):
                client_dtls.receive(datagram, 0.0)
        back: list[bytes] = []
        for record in client_dtls.take_application_data():
            back += client.receive(record, now=0.0)
        if back:
            to_server(back)

    pair_events: list[ChannelOpened | ChannelMessage] = []
    server.association.start(now=0.0)  # its INIT crosses the client's; both resolve (RFC 9260)
    to_server(client.start(now=0.0))
    assert client.established
    to_server(client.send(0, Ppid.DCEP, _open("chat"), now=0.0) or [])
    to_server(client.send(0, Ppid.STRING, b"over dtls", now=0.0) or [])
    assert [e.data for e in pair_events if isinstance(e, ChannelMessage)] == [b"over dtls"]
    # Records nobody takes are bounded: the rest are dropped and counted.
    for i in range(MAX_APP_INBOX + 5):
        for datagram in client_dtls.send_application_data(bytes([i])):
            server_dtls.receive(datagram, 0.0)
    assert len(server_dtls.take_application_data()) == MAX_APP_INBOX
    assert server_dtls.app_data_overflow == 5


def test_peer_closing_a_channel_resets_both_directions() -> None:
    pair = _Pair()
    pair.connect()
    pair.to_server += pair.client.send(0, Ppid.DCEP, _open("chat"), now=pair.now) or []
    pair.pump()
    assert pair.server.by_label("chat") is not None
    # The client resets its outgoing stream 0, as a browser does when a channel closes.
    pair.to_server += pair.client.reset_outgoing(0, now=pair.now)
    pair.pump()
    assert pair.server.by_label("chat") is None
    # The server answered with its own reset of stream 0: the client saw the peer reset it.
    assert pair.client.reset_streams() == [0]


@st.composite
def _chunks(draw: st.DrawFn) -> bytes:
    """Chunks of any type (the known ones weighted in) with arbitrary flags and bodies."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 130, 192, 255]))
        body = draw(st.binary(max_size=40))
        flags = draw(st.integers(0, 255))
        length = 4 + len(body)
        if draw(st.booleans()):
            length = draw(st.integers(0, 0xFFFF))  # a lying length
        out += struct.pack("!BBH", kind, flags, length) + body + b"\x00" * (-len(body) % 4)
    return out


@given(_chunks(), st.booleans())
def test_valid_checksum_garbage_is_counted_never_raised(chunks: bytes, right_tag: bool) -> None:
    """Packets that pass the CRC32c (as a peer inside DTLS can send) with any chunks."""
    from google_crc32c import value as crc32c

    pair = _Pair()
    pair.connect()
    server = pair.server.association
    tag = server._assoc._local_verification_tag if right_tag else 0
    header = struct.pack("!HHL", 5000, 5000, tag)
    packet = header + struct.pack("<L", crc32c(header + b"\x00" * 4 + chunks)) + chunks
    before = server.malformed
    out, events = pair.server.receive(packet, now=pair.now)
    assert all(isinstance(p, bytes) for p in out)
    assert all(isinstance(e, (ChannelOpened, ChannelMessage)) for e in events)
    assert server.malformed >= before


class _ReadForever(BaseException):
    """aiortc was given a parameter it would read forever (not an Exception: nothing on the
    packet path may swallow it)."""


@pytest.mark.parametrize(
    ("kind", "fixed"),
    [(1, 16), (2, 16), (4, 0), (5, 0), (6, 0), (9, 0), (130, 0)],
    ids=["init", "init_ack", "heartbeat", "heartbeat_ack", "abort", "error", "reconfig"],
)
def test_a_parameter_of_length_zero_is_dropped_not_read_forever(
    kind: int, fixed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiortc's parameter reader advances by a parameter's length field, so a parameter of
    length 0 (RFC 9260 §3.2.1: at least its 4-byte header) made it loop forever, appending
    until the process ran out of memory (24 GB from one 40-byte packet). Such a packet is
    dropped and counted before aiortc reads it: here aiortc's reader stops the test instead
    of looping if it is ever handed one."""
    import aiortc.rtcsctptransport as aiortc_sctp
    from google_crc32c import value as crc32c

    read = aiortc_sctp.decode_params

    def guarded(body: bytes) -> list[tuple[int, bytes]]:
        pos = 0
        while pos + 4 <= len(body):
            size = int.from_bytes(body[pos + 2 : pos + 4], "big")
            if size < 4:
                raise _ReadForever
            pos += size + (-size % 4)
        return read(body)

    monkeypatch.setattr(aiortc_sctp, "decode_params", guarded)
    pair = _Pair()
    pair.connect()
    pair.pump()
    server = pair.server.association
    # The chunk's fixed fields (INIT's 16 bytes), then a parameter whose length is 0.
    body = bytes(fixed) + struct.pack("!HH", 0x8000, 0)
    chunk = struct.pack("!BBH", kind, 0, 4 + len(body)) + body
    header = struct.pack("!HHL", 5000, 5000, server._assoc._local_verification_tag)
    packet = header + struct.pack("<L", crc32c(header + bytes(4) + chunk)) + chunk
    before = server.drops["sctp_malformed"]
    pair.server.receive(packet, now=pair.now)
    assert server.drops["sctp_malformed"] == before + 1
    # The association is untouched: a message still goes through.
    pair.to_server += pair.client.send(0, Ppid.DCEP, _open("chat"), now=pair.now) or []
    pair.pump()
    assert pair.server.by_label("chat") is not None


def test_peer_overrunning_the_receive_window_is_aborted() -> None:
    """Fragments of a message that never completes, past our advertised window: abort."""
    from google_crc32c import value as crc32c

    from sfu.transport.sctp import MAX_INBOUND_BYTES

    pair = _Pair()
    pair.connect()
    server = pair.server.association
    tag = server._assoc._local_verification_tag
    tsn = pair.client._assoc._local_tsn
    body = b"\x00" * 1024
    aborted = False
    for i in range(MAX_INBOUND_BYTES // len(body) + 2):
        # DATA, first fragment only (B=1, E=0 are flags 0x02), consecutive TSNs, stream 0.
        chunk_body = struct.pack("!LHHL", tsn + i, 0, 0, Ppid.BINARY) + body
        chunk = struct.pack("!BBH", 0, 0x02 if i == 0 else 0x00, 4 + len(chunk_body)) + chunk_body
        header = struct.pack("!HHL", 5000, 5000, tag)
        packet = header + struct.pack("<L", crc32c(header + b"\x00" * 4 + chunk)) + chunk
        pair.server.receive(packet, now=pair.now)
        if server.closed:
            aborted = True
            break
    assert aborted and server.overruns == 1
    assert server.next_timer() is None


def test_message_over_our_max_message_size_is_dropped_and_counted() -> None:
    pair = _Pair()
    pair.server = DataChannels(SctpAssociation(server=True, max_message_size=100))
    pair.connect()
    pair.to_server += pair.client.send(0, Ppid.DCEP, _open("chat"), now=pair.now) or []
    pair.to_server += pair.client.send(0, Ppid.STRING, b"x" * 101, now=pair.now) or []
    pair.to_server += pair.client.send(0, Ppid.STRING, b"y" * 100, now=pair.now) or []
    pair.pump()
    assert [e.data for e in pair.events if isinstance(e, ChannelMessage)] == [b"y" * 100]
    assert pair.server.association.drops == {"message_too_large": 1}


def test_an_aiortc_error_in_a_timer_is_contained_and_counted() -> None:
    pair = _Pair()
    pair.connect()
    server = pair.server.association

    def broken() -> None:
        raise AssertionError("an aiortc state nobody foresaw")

    server._loop.call_later(0.5, broken)
    assert server.handle_timer(now=1.0) == []
    assert server.errors == 1 and server.drops["sctp_error"] == 1


def test_a_sack_acknowledging_more_than_was_sent_is_dropped() -> None:
    """Gap blocks are offsets of 16 bits each, and aiortc expands every block TSN by TSN: a
    peer inside DTLS could make one SACK cost gigabytes. Blocks that cover more TSNs than we
    have in flight (plus MAX_TSN_GAPS) are dropped as malformed; the association goes on."""
    from google_crc32c import value as crc32c

    from sfu.transport.sctp import MAX_TSN_GAPS

    pair = _Pair()
    pair.connect()
    server = pair.server.association
    tag = server._assoc._local_verification_tag
    header = struct.pack("!HHL", 5000, 5000, tag)

    def sack(gaps: list[tuple[int, int]]) -> bytes:
        body = struct.pack("!LLHH", server._assoc._last_sacked_tsn, 65536, len(gaps), 0)
        body += b"".join(struct.pack("!HH", start, end) for start, end in gaps)
        chunk = struct.pack("!BBH", 3, 0, 4 + len(body)) + body
        return header + struct.pack("<L", crc32c(header + b"\x00" * 4 + chunk)) + chunk

    before = server.drops["sctp_malformed"]
    pair.server.receive(sack([(1, 0xFFFF)] * 100), now=pair.now)  # 6.5 million TSNs
    assert server.drops["sctp_malformed"] == before + 1
    # A SACK within what may be in flight is handled as before (not counted).
    pair.server.receive(sack([(2, 1 + MAX_TSN_GAPS // 2)]), now=pair.now)
    assert server.drops["sctp_malformed"] == before + 1
    # The association still carries messages both ways.
    pair.to_server += pair.client.send(0, Ppid.DCEP, _open("after"), now=pair.now) or []
    pair.pump()
    assert pair.server.by_label("after") is not None
