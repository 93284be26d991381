"""The relay pipe carried by a QUIC node link: the same flows, another carrier.

Between workers of one node a :class:`~sfu.transport.pipe.Pipe` speaks loopback UDP; between
nodes the very same pipe rides the node's :class:`~sfu.transport.node_link.NodeLink` (one
mutual-TLS QUIC connection per node pair). The pipe's datagrams are already in the link's
framing (a QUIC varint flow id, then the payload: :mod:`sfu.packet.pipe`, in the style of
draft-ietf-avtcore-rtp-over-quic section 5.1), so the carrier only chooses the lane:

- flow 0, the pipe's control messages (HELLO, DEMAND, CLOSE, RATES, STREAMS), goes on the
  link's control stream, reliable and in order: a CLOSE or a DEMAND is never lost between
  nodes (the pipe still refreshes them, which is the flows' keepalive);
- every other flow (relayed RTP and RTCP, both directions) goes as one datagram of the
  link's sealed media lane (:mod:`sfu.transport.media_lane`: AES-GCM over plain UDP, outside
  QUIC), or as one QUIC DATAGRAM frame (RFC 9221) until that lane is keyed: unreliable,
  never queued behind a loss; the receivers' NACK and PLI repair. The link chooses.

The roles of the pipe (which parity of flow ids each end allocates) follow the link's: the
dialling node (the smaller node id) is role 0. A control message arriving as a datagram, or
media on the control stream, is dropped and counted as malformed. Sans-I/O like both of its
parts: methods take ``now``; the owner sends the link's UDP datagrams afterwards.
"""

from __future__ import annotations

from sfu.packet.errors import ParseError
from sfu.packet.pipe import CONTROL_FLOW, split_flow
from sfu.transport.node_link import NodeLink
from sfu.transport.pipe import DEFAULT_MAX_FLOWS, Pipe, PipeEvent

__all__ = ["LinkPipe"]


class LinkPipe:
    """One end of the relay pipe between two nodes, over their node link."""

    __slots__ = ("link", "pipe", "unsent")

    def __init__(self, link: NodeLink, *, now: float, max_flows: int = DEFAULT_MAX_FLOWS) -> None:
        self.link = link
        self.pipe = Pipe(role=0 if link.is_client else 1, now=now, max_flows=max_flows)
        #: Datagrams the link would not take (too large, congested, control backlog); the
        #: link counts its own reasons too.
        self.unsent = 0
        self.flush()  # the pipe's first HELLO

    def send(self, datagram: bytes) -> bool:
        """Put one pipe datagram on the link (control stream or DATAGRAM by its flow);
        False (counted) when the link refused it."""
        try:
            flow, offset = split_flow(datagram)
        except ParseError:
            self.unsent += 1
            return False
        if flow == CONTROL_FLOW:
            try:
                self.link.send_control(datagram)
            except ValueError:
                self.unsent += 1
                return False
            return True
        if self.link.send_framed(datagram, len(datagram) - offset):
            return True
        self.unsent += 1
        return False

    def flush(self) -> None:
        """Move what the pipe queued (control replies, refreshes) onto the link."""
        for datagram in self.pipe.take_datagrams():
            self.send(datagram)

    def receive_flow(self, flow: int, payload: bytes, *, now: float) -> PipeEvent | None:
        """A flow datagram of the link (DATAGRAM frame or sealed lane): relayed media or
        feedback (never control)."""
        if flow == CONTROL_FLOW:
            self.pipe.counters.drops["malformed"] += 1
            return None
        return self.pipe.receive_flow(flow, payload, now=now)

    def receive_control(self, message: bytes, *, now: float) -> PipeEvent | None:
        """A message of the link's control stream: one pipe control datagram (flow 0)."""
        if not message or message[0] != CONTROL_FLOW:
            self.pipe.counters.drops["malformed"] += 1
            return None
        event = self.pipe.receive(message, now=now)
        self.flush()  # a refused DEMAND is answered with a CLOSE
        return event

    def next_timer(self) -> float:
        """When :meth:`handle_timer` is next due."""
        return self.pipe.next_timer()

    def handle_timer(self, *, now: float) -> list[PipeEvent]:
        """The pipe's refreshes (onto the link) and its expired flows."""
        events = self.pipe.handle_timer(now=now)
        self.flush()
        return events
