"""One node's end of a QUIC link to another node of the cluster (sans-I/O, over aioquic).

A link is one QUIC connection per node pair (RFC 9000) authenticated both ways by the
cluster CA: the client checks the server's certificate names the node it dialled, and the
server asks for the client's certificate and checks it against the same CA before anything
the client sent is delivered (aioquic verifies only the server side by itself). It carries:

- a control stream (the client's first bidirectional stream, id 0) of length-prefixed
  messages (2 bytes, big-endian) that the layers above define;
- flow datagrams, each a flow id varint then an opaque payload (:mod:`sfu.packet.flow`):
  relayed RTP and RTCP, never read or changed here, so E2EE payloads pass untouched. They
  go as DATAGRAM frames (RFC 9221) until the link's sealed media lane
  (:mod:`sfu.transport.media_lane`) is keyed, then as the lane's AES-GCM sealed UDP
  datagrams on the same port, outside QUIC (its per-frame cost and pacing were the relay's
  bottleneck); both are accepted at any time. The lane's keys and its liveness reports
  travel on the control stream as the link's own messages (their first byte tells them from
  the layers' above); a lane the peer reports silent falls back to DATAGRAM frames. Flow
  datagrams are unreliable: a payload that does not fit one packet, or finds the send queue
  full (congestion), is dropped and counted, never queued behind.

Like aioquic's :class:`~aioquic.quic.connection.QuicConnection` that it wraps, a
:class:`NodeLink` takes ``now`` and returns events, datagrams and its next timer; the
asyncio adapter is :mod:`sfu.io.quic_link`.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from aioquic._buffer import Buffer
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from aioquic.tls import Alert, verify_certificate
from cryptography import x509
from cryptography.x509.oid import NameOID

from sfu.packet.errors import ParseError
from sfu.packet.flow import decode_flow, encode_flow
from sfu.transport.media_lane import (
    LANE_DROP_REASONS,
    REFERENCE_LANE,
    LaneKernels,
    MediaLane,
    Random,
    is_lane_datagram,
    is_lane_message,
)

__all__ = [
    "ALPN",
    "ControlReceived",
    "FlowReceived",
    "LinkDown",
    "LinkEvent",
    "LinkUp",
    "NodeLink",
    "link_configuration",
    "node_name_of",
]

#: ALPN of the node link: a peer speaking anything else is refused in the handshake.
ALPN: Final = "sfu-node-link/1"
#: Largest UDP payload a link sends: a 1500-byte Ethernet MTU less IPv6 (40) and UDP (8)
#: headers, so a relayed RTP packet of a browser (at most ~1200 bytes) fits one datagram.
MAX_UDP_PAYLOAD: Final = 1452
#: Bytes of a short-header 1-RTT packet around one DATAGRAM frame: flags (1), connection
#: id (8), packet number (up to 4), AEAD tag (16), frame type and length (1 + 2), with room.
DATAGRAM_OVERHEAD: Final = 40
#: Largest flow id + payload one DATAGRAM carries.
MAX_DATAGRAM_DATA: Final = MAX_UDP_PAYLOAD - DATAGRAM_OVERHEAD
#: Datagrams waiting for congestion window: beyond this a new one is dropped (media late by
#: a queue is worth less than media lost: the receivers' NACK and PLI repair it).
MAX_PENDING_DATAGRAMS: Final = 512
#: Largest control message; a bigger one announced by the peer closes the link.
MAX_CONTROL_MESSAGE: Final = 65535
#: Control messages queued before the control stream is open (server side) or up.
MAX_QUEUED_CONTROL: Final = 256
#: An Initial packet is padded to at least this (RFC 9000 section 14.1); a smaller datagram
#: from an unknown address does not start a link.
MIN_INITIAL_SIZE: Final = 1200
#: Seconds without a packet before QUIC closes the link (the peer is gone).
IDLE_TIMEOUT_S: Final = 5.0
#: QUIC application error code sent when the client's certificate is refused.
ERROR_PEER_REFUSED: Final = 0x1
#: QUIC application error code of a control stream protocol violation.
ERROR_CONTROL: Final = 0x2
#: The control stream: the client's first bidirectional stream (RFC 9000 section 2.1).
CONTROL_STREAM: Final = 0


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The handshake completed and the peer proved to be node ``peer``."""

    peer: str


@dataclass(frozen=True, slots=True)
class FlowReceived:
    """A datagram of flow ``flow_id``: its payload, untouched."""

    flow_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ControlReceived:
    """One control message from the peer."""

    message: bytes


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The link closed (``reason`` for logs: no address or identity in it)."""

    reason: str


LinkEvent = LinkUp | FlowReceived | ControlReceived | LinkDown


def link_configuration(
    *,
    is_client: bool,
    ca_file: str,
    cert_file: str,
    key_file: str,
    server_name: str | None = None,
) -> QuicConfiguration:
    """The QUIC configuration of one end: our certificate and key, the cluster CA, DATAGRAM
    frames on. ``server_name`` (client only) is the node id the server's certificate names."""
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        max_datagram_frame_size=65535,
        max_datagram_size=MAX_UDP_PAYLOAD,
        idle_timeout=IDLE_TIMEOUT_S,
        server_name=server_name,
        verify_mode=ssl.CERT_REQUIRED,
    )
    config.load_cert_chain(cert_file, key_file)
    config.load_verify_locations(cafile=ca_file)
    return config


def node_name_of(certificate: x509.Certificate) -> str:
    """The node id a node certificate names: its first DNS subjectAltName, else its CN."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
        if names:
            return str(names[0])
    except x509.ExtensionNotFound:
        pass
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else ""


class _MutualTlsConnection(QuicConnection):
    """A server-side QuicConnection that asks the client for its certificate.

    aioquic's TLS context sends a CertificateRequest only when a private flag is set (it is
    there for its tests); the chain it receives is verified by :class:`NodeLink` instead.
    """

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls._request_client_certificate = True


class NodeLink:
    """One end of the QUIC link between two nodes: control messages and flow datagrams."""

    def __init__(
        self,
        configuration: QuicConfiguration,
        *,
        peer_address: NetworkAddress,
        now: float,
        original_destination_connection_id: bytes | None = None,
        media_lane: bool = True,
        random: Random | None = None,
        lane_kernels: LaneKernels = REFERENCE_LANE,
    ) -> None:
        self.is_client = configuration.is_client
        self.peer_address = peer_address
        self._config = configuration
        if self.is_client:
            self._quic = QuicConnection(configuration=configuration)
            self._quic.connect(peer_address, now=now)
        else:
            self._quic = _MutualTlsConnection(
                configuration=configuration,
                original_destination_connection_id=original_destination_connection_id,
            )
        #: The peer's node id once it proved it (None until then: nothing is delivered).
        self.peer: str | None = None
        self.closed = False
        self._control_open = self.is_client
        self._control_buffer = bytearray()
        self._queued_control: list[bytes] = []
        #: Whether media may leave QUIC for the sealed lane (False: DATAGRAM frames only, as
        #: a peer without the lane; the benchmarks compare both).
        self._lane_enabled = media_lane
        self._random = random
        #: The lane kernels' classes (compiled or reference) its media lane is made of.
        self._lane_kernels = lane_kernels
        #: The sealed lane, from the moment the peer is proven (new keys with every link).
        self.lane: MediaLane | None = None
        #: Sealed datagrams waiting for :meth:`datagrams` (the batch's flush).
        self._sealed_out: list[bytes] = []
        #: Whether QUIC may have something to send: set by every call into the connection
        #: (input, timers, frames queued, close); its output changes with nothing else. A
        #: flush of sealed media alone skips aioquic's costly datagrams_to_send.
        self._quic_dirty = True
        #: Counters read at scrape time.
        self.flows_sent = 0
        self.flows_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.dropped_too_large = 0
        self.dropped_congested = 0
        self.dropped_malformed = 0
        #: Lane datagrams that came before the lane existed (counted as ``unknown_key``).
        self.lane_early = 0

    @classmethod
    def accept(
        cls,
        configuration: QuicConfiguration,
        data: bytes,
        addr: NetworkAddress,
        *,
        now: float,
        media_lane: bool = True,
        random: Random | None = None,
        lane_kernels: LaneKernels = REFERENCE_LANE,
    ) -> NodeLink | None:
        """The server end of a link that ``data`` (a client's Initial) starts, else None."""
        if len(data) < MIN_INITIAL_SIZE:
            return None
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=configuration.connection_id_length
            )
        except ValueError:
            return None
        if header.packet_type != QuicPacketType.INITIAL:
            return None
        return cls(
            configuration,
            peer_address=addr,
            now=now,
            original_destination_connection_id=header.destination_cid,
            media_lane=media_lane,
            random=random,
            lane_kernels=lane_kernels,
        )

    # -- input --------------------------------------------------------------------------------

    def receive(self, data: bytes, addr: NetworkAddress, *, now: float) -> list[LinkEvent]:
        """Take one UDP datagram from the peer (QUIC or the sealed lane's, by its first
        byte); returns what it brought."""
        if is_lane_datagram(data):
            return self.receive_sealed(data, addr)
        self._quic.receive_datagram(data, addr, now=now)
        self._quic_dirty = True
        return self._drain(now)

    def receive_sealed(self, data: bytes, addr: NetworkAddress) -> list[LinkEvent]:
        """One datagram of the sealed lane: its flow, or nothing (dropped and counted)."""
        lane = self.lane
        if lane is None or self.closed:
            self.lane_early += 1
            return []
        plain = lane.open(data, addr)
        if plain is None:
            return []
        try:
            flow_id, payload = decode_flow(plain)
        except ParseError:
            self.dropped_malformed += 1
            return []
        self.flows_received += 1
        self.bytes_received += len(payload)
        return [FlowReceived(flow_id, payload)]

    def flow_opened(self, flow_id: int, payload: bytes) -> list[LinkEvent]:
        """A flow datagram of the sealed lane that the data plane opened (its relay input)
        but did not forward: counted and delivered as :meth:`receive_sealed` would."""
        if self.closed:
            self.lane_early += 1
            return []
        self.flows_received += 1
        self.bytes_received += len(payload)
        return [FlowReceived(flow_id, payload)]

    def handle_timer(self, *, now: float) -> list[LinkEvent]:
        """Run what is due once ``next_timer`` is: QUIC's timers (loss detection, idle
        timeout), the lane's report and liveness check."""
        lane = self.lane
        if lane is not None and not self.closed and lane.next_timer() <= now:
            lane.handle_timer(now=now)
            self._send_lane_messages()  # the REPORT
        timer = self._quic.get_timer()
        if timer is not None and timer <= now:
            self._quic.handle_timer(now=now)
            self._quic_dirty = True
        return self._drain(now)

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due (None: nothing armed)."""
        if self.closed:
            return None
        timer: float | None = self._quic.get_timer()
        lane = self.lane
        if lane is not None:
            at = lane.next_timer()
            timer = at if timer is None else min(timer, at)
        return timer

    # -- output -------------------------------------------------------------------------------

    def send_flow(self, flow_id: int, payload: bytes) -> bool:
        """Queue one payload of flow ``flow_id``; False (and counted) when it was dropped."""
        if self.peer is None or self.closed:
            return False
        return self.send_framed(encode_flow(flow_id, payload), len(payload))

    def send_framed(self, data: bytes, payload_bytes: int) -> bool:
        """Queue one DATAGRAM already framed (flow id varint, then ``payload_bytes`` of
        payload), as the relay pipe makes them: no copy on the way. False (and counted)
        when it was dropped."""
        if self.peer is None or self.closed:
            return False
        if len(data) > MAX_DATAGRAM_DATA:
            self.dropped_too_large += 1
            return False
        lane = self.lane
        if lane is not None and lane.up:
            if len(self._sealed_out) >= MAX_PENDING_DATAGRAMS:
                self.dropped_congested += 1
                return False
            sealed = lane.seal(data)
            if sealed is not None:
                self._sealed_out.append(sealed)
                self.flows_sent += 1
                self.bytes_sent += payload_bytes
                if lane.has_messages:
                    self._send_lane_messages()  # a new key, every REKEY_AFTER datagrams
                return True
        # aioquic's queue of DATAGRAM frames has no bound of its own.
        if len(self._quic._datagrams_pending) >= MAX_PENDING_DATAGRAMS:
            self.dropped_congested += 1
            return False
        self._quic.send_datagram_frame(data)
        self._quic_dirty = True
        self.flows_sent += 1
        self.bytes_sent += payload_bytes
        return True

    def send_control(self, message: bytes) -> None:
        """Queue one control message (reliable, in order); raises ValueError when too long
        or when too many wait for the link to come up."""
        if len(message) > MAX_CONTROL_MESSAGE:
            raise ValueError(f"a control message holds at most {MAX_CONTROL_MESSAGE} bytes")
        if self.closed:
            return
        if self.peer is None or not self._control_open:
            if len(self._queued_control) >= MAX_QUEUED_CONTROL:
                raise ValueError("too many control messages wait for the link")
            self._queued_control.append(message)
            return
        self._write_control(message)

    def datagrams(self, *, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """The UDP datagrams to send now: the sealed lane's first (queued before whatever
        made this flush), then QUIC's."""
        quic: list[tuple[bytes, NetworkAddress]] = []
        if self._quic_dirty:
            self._quic_dirty = False
            quic = self._quic.datagrams_to_send(now=now)
        if not self._sealed_out:
            return quic
        addr = self.peer_address
        out = [(data, addr) for data in self._sealed_out]
        self._sealed_out = []
        out += quic
        return out

    @property
    def rtt(self) -> float | None:
        """QUIC's smoothed round-trip time to the peer in seconds (RFC 9002 section 5.3),
        None before the first sample; aioquic floors each sample at 1 ms."""
        recovery = getattr(self._quic, "_loss", None)  # aioquic keeps it on its recovery
        if recovery is None or not getattr(recovery, "_rtt_initialized", False):
            return None
        smoothed = getattr(recovery, "_rtt_smoothed", None)
        return float(smoothed) if isinstance(smoothed, float) else None

    @property
    def sealed_pending(self) -> int:
        """Sealed datagrams waiting for :meth:`datagrams`."""
        return len(self._sealed_out)

    def lane_totals(self) -> dict[str, int]:
        """The sealed lane's datagrams sent and received, times it was found blocked (and
        fell back to DATAGRAM frames), and its drops by reason."""
        out = {"sent": 0, "received": 0, "blocked": 0, **dict.fromkeys(LANE_DROP_REASONS, 0)}
        lane = self.lane
        if lane is not None:
            out["sent"] = lane.sealed
            out["received"] = lane.received
            out["blocked"] = lane.blocked
            for reason, count in lane.drops.items():
                out[reason] += count
        out["unknown_key"] += self.lane_early
        return out

    def close(self, reason: str = "closed") -> None:
        """Close the link (the CONNECTION_CLOSE leaves with the next :meth:`datagrams`)."""
        if not self.closed:
            self._quic.close(reason_phrase=reason)
            self._quic_dirty = True

    # -- internals ----------------------------------------------------------------------------

    def _write_control(self, message: bytes) -> None:
        self._quic.send_stream_data(CONTROL_STREAM, len(message).to_bytes(2, "big") + message)
        self._quic_dirty = True

    def _authenticate(self) -> str | None:
        """The peer's node id when its certificate is one the cluster CA signed, else None."""
        tls = self._quic.tls
        certificate = tls._peer_certificate
        if certificate is None:
            return None
        if not self.is_client:
            try:
                verify_certificate(
                    certificate=certificate,
                    chain=list(tls._peer_certificate_chain),
                    cafile=self._config.cafile,
                )
            except Alert:
                return None
        name = node_name_of(certificate)
        return name or None

    def _drain(self, now: float) -> list[LinkEvent]:
        out: list[LinkEvent] = []
        while (event := self._quic.next_event()) is not None:
            if isinstance(event, quic_events.HandshakeCompleted):
                peer = self._authenticate()
                if peer is None:
                    self._quic.close(
                        error_code=ERROR_PEER_REFUSED, reason_phrase="peer certificate refused"
                    )
                    continue
                self.peer = peer
                out.append(LinkUp(peer))
                if self.is_client:
                    # Opens the control stream (a message of no bytes) so the server can write.
                    self._write_control(b"")
                    self._flush_control()
                if self._lane_enabled:
                    self.lane = MediaLane(
                        self.peer_address,
                        now=now,
                        random=self._random,
                        kernels=self._lane_kernels,
                    )
                    self._send_lane_messages()  # our key
            elif isinstance(event, quic_events.ConnectionTerminated):
                self.closed = True
                if self.lane is not None:
                    self.lane.close()  # the data plane's relay outputs seal nothing more
                out.append(LinkDown(event.reason_phrase or f"error {event.error_code}"))
            elif self.peer is None:
                continue  # nothing from an unproven peer
            elif isinstance(event, quic_events.DatagramFrameReceived):
                try:
                    flow_id, payload = decode_flow(event.data)
                except ParseError:
                    self.dropped_malformed += 1
                    continue
                self.flows_received += 1
                self.bytes_received += len(payload)
                out.append(FlowReceived(flow_id, payload))
            elif isinstance(event, quic_events.StreamDataReceived):
                out.extend(self._control_data(event, now))
        return out

    def _control_data(
        self, event: quic_events.StreamDataReceived, now: float
    ) -> Sequence[LinkEvent]:
        if event.stream_id != CONTROL_STREAM:
            self._quic.close(error_code=ERROR_CONTROL, reason_phrase="unexpected stream")
            return ()
        if not self._control_open:
            self._control_open = True
            self._flush_control()
        buffer = self._control_buffer
        buffer += event.data
        out: list[LinkEvent] = []
        while len(buffer) >= 2:
            size = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + size:
                break
            message = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            if is_lane_message(message):
                if self.lane is not None:  # a peer's key while ours is off: ignored
                    self.lane.receive_message(message, now=now)
                    self._send_lane_messages()
            elif message:  # the empty message only opened the stream
                out.append(ControlReceived(message))
        if len(buffer) > 2 + MAX_CONTROL_MESSAGE:
            self._quic.close(error_code=ERROR_CONTROL, reason_phrase="control overrun")
        return out

    def _send_lane_messages(self) -> None:
        lane = self.lane
        if lane is None:
            return
        for message in lane.take_messages():
            try:
                self.send_control(message)
            except ValueError:  # the control backlog is full: the lane stays down
                self.dropped_congested += 1

    def _flush_control(self) -> None:
        queued, self._queued_control = self._queued_control, []
        for message in queued:
            self._write_control(message)
