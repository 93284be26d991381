"""Relay outputs: the forwarder seals and sends a relayed publication's packets itself.

The publishing side of a relay used to frame, seal and send every relayed packet in Python
(the tap, the pipe, the node link's media lane). A tap whose carrier names a target (the
link's socket and peer address, the lane's sealer) now gets a relay output in the forwarder;
packets it cannot take (lane not keyed, too large) still go through the tap. No sockets here:
outputs without one keep their datagrams for ``drain_relay_sent``.
"""

from __future__ import annotations

from typing import Any

import pytest
from forwarder_world import (
    AUDIO_SSRC,
    PROFILE,
    PUB_ADDR,
    PUB_KEY,
    PUB_SALT,
    VIDEO_SSRCS,
    World,
    rtp,
    vp8_payload,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_paths import VP8_PT, PathWorld
from ingest_paths import vp8 as vp8_path

from sfu._fastpath import _srtp_py
from sfu._fastpath._lane_shared import HEADER_BYTES, MAX_RELAY_OUTPUTS, TAG_BYTES
from sfu.core.kernels import REFERENCE, Kernels
from sfu.core.relay import PipeOut, PublicationRelay, RelayTarget
from sfu.packet.flow import encode_flow
from sfu.transport.media_lane import LaneKernels, MediaLane
from sfu.transport.pipe import DemandChanged, Media, Pipe, StreamsReceived

A_ADDR = ("10.0.0.1", 4433)
B_ADDR = ("10.0.0.2", 4433)
T0 = 1000.0
KEY = bytes(range(16))
#: A node link's largest pipe datagram (sfu.transport.node_link.MAX_DATAGRAM_DATA).
MAX_DATAGRAM = 1452


def lanes(kernels: Kernels) -> tuple[MediaLane, MediaLane]:
    """A's and B's ends of a keyed lane, of ``kernels``' sealer and opener."""
    a = MediaLane(B_ADDR, now=T0, kernels=LaneKernels(kernels.LaneSealer, kernels.LaneOpener))
    b = MediaLane(A_ADDR, now=T0, kernels=LaneKernels(kernels.LaneSealer, kernels.LaneOpener))
    while a.has_messages or b.has_messages:
        for message in a.take_messages():
            assert b.receive_message(message, now=T0)
        for message in b.take_messages():
            assert a.receive_message(message, now=T0)
    assert a.up and a.sealer.active
    return a, b


# -- the sealer ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("seal"), st.binary(max_size=1500)),
            st.tuples(st.just("active"), st.booleans()),
            st.tuples(st.just("rekey"), st.integers(0, 15), st.binary(min_size=16, max_size=16)),
            st.tuples(st.just("counter"), st.sampled_from([0, 7, (1 << 64) - 2, (1 << 64) - 1])),
        ),
        max_size=40,
    ),
    limit=st.integers(1, 12),
)
def test_the_compiled_sealer_matches_the_reference(
    compiled_kernels: Kernels, steps: list[tuple[Any, ...]], limit: int
) -> None:
    """Byte for byte, whatever the order of seals, key changes, toggles and counters; the
    limit per key and a spent counter refuse alike."""
    ref = REFERENCE.LaneSealer(3, KEY, limit=limit)
    comp = compiled_kernels.LaneSealer(3, KEY, limit=limit)
    for step in steps:
        if step[0] == "seal":
            assert comp.seal(step[1]) == ref.seal(step[1])
        elif step[0] == "active":
            ref.active = comp.active = step[1]
        elif step[0] == "rekey":
            ref.rekey(step[1], step[2])
            comp.rekey(step[1], step[2])
        elif step[1] >= ref.counter:
            ref.counter = comp.counter = step[1]
        else:  # never back: a nonce would be used twice
            for sealer in (ref, comp):
                with pytest.raises(ValueError):
                    sealer.counter = step[1]
        assert (comp.epoch, comp.counter, comp.used, comp.sealed) == (
            ref.epoch, ref.counter, ref.used, ref.sealed
        )  # fmt: skip


def test_a_sealer_refuses_bad_keys(kernels: Kernels) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        kernels.LaneSealer(0, b"short")
    with pytest.raises(ValueError, match="epoch"):
        kernels.LaneSealer(16, KEY)
    with pytest.raises(ValueError, match="limit"):
        kernels.LaneSealer(0, KEY, limit=0)
    sealer = kernels.LaneSealer(0, KEY)
    assert sealer.seal(b"x") is None  # not active until the lane says so
    with pytest.raises(ValueError, match="prefix"):
        kernels.RelayOutput(sealer, None, A_ADDR, b"", max_datagram=MAX_DATAGRAM)
    with pytest.raises(ValueError, match="IP literal"):
        kernels.RelayOutput(sealer, None, ("example.org", 1), b"\x05", max_datagram=MAX_DATAGRAM)


def test_the_counter_only_moves_forward(kernels: Kernels) -> None:
    """A counter moved back would reuse a nonce under the key: refused."""
    sealer = kernels.LaneSealer(0, KEY)
    sealer.active = True
    sealer.counter = 10
    assert sealer.seal(b"x") is not None and sealer.counter == 11
    with pytest.raises(ValueError, match="forward"):
        sealer.counter = 10
    with pytest.raises(ValueError, match="forward"):
        sealer.counter = 1 << 65


def test_an_output_keeps_an_ipv6_scope(kernels: Kernels) -> None:
    """A link-local peer (``recvfrom`` gives its scope id as the 4-tuple's last item) is
    sent to on that interface."""
    output = kernels.RelayOutput(None, None, ("fe80::1", 4433, 0, 1), b"\x05", max_datagram=99)
    assert output.address == ("fe80::1%1", 4433)
    named = kernels.RelayOutput(None, None, ("fe80::2%lo", 4433), b"\x05", max_datagram=99)
    assert named.address == ("fe80::2%lo", 4433)


def test_a_closed_lane_seals_nothing_more(kernels: Kernels) -> None:
    """The link went down: the shared sealer stops, whoever would seal next."""
    a, _ = lanes(kernels)
    a.close()
    assert not a.up and not a.sealer.active and a.sealer.seal(b"x") is None


def test_what_the_kernel_seals_the_peer_lane_opens(kernels: Kernels) -> None:
    """The kernel sealer is the lane's own: datagrams it seals open at the peer, and the
    lane's count (which its liveness check reads) includes them."""
    a, b = lanes(kernels)
    datagram = encode_flow(9, b"\x80\x60" + bytes(100))
    sealed = a.sealer.seal(datagram)
    assert sealed is not None and len(sealed) == HEADER_BYTES + len(datagram) + TAG_BYTES
    assert b.open(sealed, A_ADDR) == datagram
    also = a.seal(datagram)  # the lane's own sealing goes on with the next counter
    assert also is not None and b.open(also, A_ADDR) == datagram
    assert a.sealed == 2 and b.received == 2


# -- the forwarder's relay outputs, compiled against the reference ------------------------------


class Outputs:
    """Three relay outputs on each video stream of a forwarding world: sealed, plain, and
    sealed with a datagram limit that the larger packets exceed."""

    def __init__(self, world: World, *, logged: bool) -> None:
        kernels = world.kernels
        self.sealer = kernels.LaneSealer(1, KEY)
        self.sealer.active = True
        self.outputs = [
            kernels.RelayOutput(self.sealer, None, B_ADDR, b"\x05", max_datagram=MAX_DATAGRAM),
            kernels.RelayOutput(None, None, B_ADDR, b"\x41\x00", max_datagram=MAX_DATAGRAM),
            kernels.RelayOutput(self.sealer, None, B_ADDR, b"\x09", max_datagram=200),
        ]
        for handle in range(3):
            world.forwarder.set_relay_outputs(handle, self.outputs)
            world.forwarder.set_relay(handle, logged)

    def counts(self) -> list[tuple[int, int, int, int]]:
        return [(o.packets, o.bytes, o.filtered, o.failed) for o in self.outputs]

    def sent(self, world: World) -> list[tuple[int, bytes]]:
        return [(self.outputs.index(o), d) for o, d in world.forwarder.drain_relay_sent()]


relay_events = st.lists(
    st.one_of(
        st.tuples(st.just("video"), st.integers(0, 2), st.integers(0, 1300), st.booleans()),
        st.tuples(st.just("active"), st.booleans()),
        st.tuples(st.just("mask"), st.integers(0, 2), st.integers(0, 7)),
        st.tuples(st.just("rekey"), st.integers(0, 15)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(events=relay_events, logged=st.booleans())
def test_compiled_relay_outputs_match_the_reference(
    compiled_kernels: Kernels, events: list[tuple[Any, ...]], logged: bool
) -> None:
    """The same datagrams (sealed byte for byte), the same hand-backs to the taps (the relay
    log and its ``done`` masks) and the same counts, in both implementations."""
    ref, comp = World(REFERENCE), World(compiled_kernels)
    worlds = [(ref, Outputs(ref, logged=logged)), (comp, Outputs(comp, logged=logged))]
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    seqs = [10, 20, 30]
    now = 5.0
    for event in events:
        now += 0.01
        if event[0] == "video":
            _, layer, size, key = event
            seqs[layer] += 1
            payload = vp8_payload(seqs[layer], 1, 0, True, key, True, size)
            plain = rtp(VIDEO_SSRCS[layer], seqs[layer], int(now * 90000), 96, payload, b"")
            wire = client.protect_rtp(plain)
            results = []
            for world, outs in worlds:
                slow, _ = world.forwarder.process([(wire, PUB_ADDR)], now)
                results.append((slow, outs.sent(world), world.forwarder.drain_relay()))
            assert results[0] == results[1]
        else:
            for _, outs in worlds:
                if event[0] == "active":
                    outs.sealer.active = event[1]
                elif event[0] == "mask":
                    outs.outputs[event[1]].spatial_mask = event[2]
                else:
                    outs.sealer.rekey(event[1], bytes([event[1]]) * 16)
        assert worlds[0][1].counts() == worlds[1][1].counts()
        assert ref.forwarder.relay_sent == comp.forwarder.relay_sent
    assert ref.snapshot() == comp.snapshot()  # local subscribers forwarded alike


def test_outputs_are_bounded_and_of_the_forwarders_kind(kernels: Kernels) -> None:
    world = World(kernels)
    sealer = kernels.LaneSealer(0, KEY)
    output = kernels.RelayOutput(sealer, None, B_ADDR, b"\x05", max_datagram=MAX_DATAGRAM)
    with pytest.raises(ValueError, match="at most"):
        world.forwarder.set_relay_outputs(0, [output] * (MAX_RELAY_OUTPUTS + 1))
    with pytest.raises(KeyError):
        world.forwarder.set_relay_outputs(99, [output])
    other = REFERENCE if kernels.name != "python" else None
    if other is not None:
        foreign = other.RelayOutput(None, None, B_ADDR, b"\x05", max_datagram=MAX_DATAGRAM)
        with pytest.raises(TypeError):
            world.forwarder.set_relay_outputs(0, [foreign])
    world.forwarder.set_relay_outputs(0, [output])
    world.forwarder.set_relay_outputs(0, [])  # removed: nothing relayed, nothing logged
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    plain = rtp(VIDEO_SSRCS[0], 1, 90000, 96, vp8_payload(1, 1, 0, True, True, True, 50), b"")
    world.forwarder.process([(client.protect_rtp(plain), PUB_ADDR)], 1.0)
    assert world.forwarder.drain_relay_sent() == [] and world.forwarder.drain_relay() == []
    assert AUDIO_SSRC  # the world's audio stream has no outputs: untouched


# -- the data plane: taps get outputs, fall back, follow the demand ------------------------------


def test_a_tap_with_a_target_relays_in_the_forwarder(kernels: Kernels) -> None:
    """A tap whose carrier names a target gets a relay output: the forwarder seals its
    packets for the lane, which the far side opens; the demand and a hold reach the output;
    while the lane is not keyed the packets go through the tap as before (QUIC DATAGRAMs);
    what the output sent is counted on the pipe and the carrier."""
    world = PathWorld("forwarder", kernels)
    assert world.dataplane is not None
    forwarder = world.dataplane.forwarder
    a, b = lanes(kernels)
    pipe, far = Pipe(role=0, now=0.0), Pipe(role=1, now=0.0)
    sent: list[bytes] = []
    folded: list[tuple[int, int, int]] = []
    target = RelayTarget(a.sealer, None, B_ADDR, MAX_DATAGRAM)
    relay = PublicationRelay(
        lambda track: world.video if track == world.video.id else None,
        lambda peer: PipeOut(sent.append, lambda: target),
        lambda peer, packets, octets: folded.append((peer, packets, octets)),
    )
    flow = far.open_flow(world.video.id, spatial_mask=1, bitrate=0, now=0.0)
    for datagram in far.take_datagrams():
        event = pipe.receive(datagram, now=0.0)
        if event is not None:
            relay.on_event(1, pipe, event, now=0.0)
    (tap,) = relay.taps.values()
    assert tap.output is not None and tap.output.spatial_mask == 1
    streams = far.receive(sent.pop(), now=0.0)  # STREAMS first, before any packet
    assert isinstance(streams, StreamsReceived) and not sent

    def relayed() -> list[bytes]:
        out = []
        for output, datagram in forwarder.drain_relay_sent():
            assert output is tap.output
            opened = b.open(datagram, A_ADDR)
            assert opened is not None
            media = far.receive(opened, now=1.0)
            assert isinstance(media, Media)
            out.append(media.data[media.offset :])
        return out

    before = pipe.counters.relayed
    packet = rtp(VIDEO_SSRCS[0], 100, 9000, VP8_PT, vp8_path(1, key=True), b"")
    world.send(packet, 1.0)
    assert relayed() == [packet] and not sent  # sealed by the forwarder, not the tap
    assert world.dataplane.relayed == 0
    # A layer the far side does not demand is filtered by the output.
    world.send(rtp(VIDEO_SSRCS[1], 200, 9000, VP8_PT, vp8_path(1, key=True), b""), 1.01)
    assert relayed() == [] and tap.output.filtered == 1
    # The far side demands layer 1 too: the output follows the DEMAND.
    relay.on_event(1, pipe, DemandChanged(flow or 0, 3, 0), now=1.02)
    pipe._outbound[flow or 0].spatial_mask = 3  # what the DEMAND set on the pipe
    tap.sync_demand()
    second = rtp(VIDEO_SSRCS[1], 201, 12000, VP8_PT, vp8_path(2, key=True), b"")
    world.send(second, 1.03)
    assert relayed() == [second]
    # Held (its publication muted): nothing leaves, and nothing counts as filtered.
    tap.set_held(True)
    filtered = pipe.counters.filtered
    world.send(rtp(VIDEO_SSRCS[0], 101, 12000, VP8_PT, vp8_path(3, key=False), b""), 1.04)
    assert relayed() == [] and not sent
    tap.set_held(False)
    relay.fold()
    assert pipe.counters.filtered == filtered
    # The lane stops sealing (not keyed, or in fallback): the tap relays, the slow way.
    a.sealer.active = False
    third = rtp(VIDEO_SSRCS[0], 102, 15000, VP8_PT, vp8_path(4, key=False), b"")
    world.send(third, 1.05)
    assert relayed() == [] and len(sent) == 1 and world.dataplane.relayed == 1
    media = far.receive(sent[0], now=1.05)
    assert isinstance(media, Media) and media.data[media.offset :] == third
    # Counted as if the tap had relayed them: two sealed by the forwarder, one by the tap.
    relay.fold()
    assert pipe.counters.relayed == before + 3
    assert folded == [(1, 2, len(packet) + len(second))]
    assert a.sealed == 2  # the lane's liveness count sees the forwarder's seals


# -- the opener ----------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("seal"), st.integers(0, 2), st.integers(0, 3000)),
            st.tuples(st.just("replay"), st.integers(0, 40)),
            st.tuples(st.just("garbage"), st.binary(max_size=60)),
            st.tuples(st.just("flip"), st.integers(0, 40)),
            st.tuples(st.just("key"), st.integers(0, 2)),
        ),
        max_size=60,
    )
)
def test_the_compiled_opener_matches_the_reference(
    compiled_kernels: Kernels, steps: list[tuple[Any, ...]]
) -> None:
    """The same datagrams opened, and the same drops by reason, whatever arrives: sealed
    under three epochs' keys with counters jumping ahead and back (the replay window),
    replays, garbage, flipped bits, keys announced again and evicted."""
    ref, comp = REFERENCE.LaneOpener(), compiled_kernels.LaneOpener()
    sealers = [REFERENCE.LaneSealer(e, bytes([e + 1]) * 16) for e in range(3)]
    for sealer in sealers:
        sealer.active = True
    ref.add_key(0, bytes([1]) * 16)
    comp.add_key(0, bytes([1]) * 16)
    sent: list[bytes] = []
    for step in steps:
        if step[0] == "seal":
            sealer = sealers[step[1]]
            sealer.counter = max(sealer.counter, step[2])
            datagram = sealer.seal(b"\x05" + bytes(range(40)))
            assert datagram is not None
            sent.append(datagram)
            data = datagram
        elif step[0] == "replay":
            if not sent:
                continue
            data = sent[step[1] % len(sent)]
        elif step[0] == "garbage":
            data = step[1]
        elif step[0] == "flip":
            if not sent:
                continue
            original = sent[-1]
            index = step[1] % len(original)
            data = original[:index] + bytes([original[index] ^ 0x04]) + original[index + 1 :]
        else:
            key = bytes([step[1] + 1]) * 16
            ref.add_key(step[1], key)
            comp.add_key(step[1], key)
            continue
        assert comp.open(data) == ref.open(data)
        counts = [(o.received, o.malformed, o.unknown_key, o.replayed, o.auth_failed)
                  for o in (ref, comp)]  # fmt: skip
        assert counts[0] == counts[1]
    assert comp.has_keys and ref.has_keys
