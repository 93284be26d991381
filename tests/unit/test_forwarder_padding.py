"""A padding-only packet leaves no hole in a subscriber's outgoing sequence.

Padding-only RTP packets (RFC 3550 §5.1: the P bit set and nothing but padding after the
header, as bandwidth probes are) carry nothing to forward, but they took a sequence number
from the publisher. A route whose current layer is the packet's stream must account for it
with the munger's drop (``Subscription.skip``), or its subscriber reports a packet lost that
never existed, and NACKs it.
"""

from __future__ import annotations

from typing import Any

import pytest
from forwarder_world import (
    COMPILED,
    PROFILE,
    PUB_ADDR,
    PUB_KEY,
    PUB_SALT,
    SUB_KEY,
    SUB_SALT,
    SUBS,
    VIDEO_SSRCS,
    World,
    rtp,
    vp8_payload,
)

from sfu._fastpath import _srtp_py
from sfu._fastpath.values import F_PADDING

# The reference forwarder (``_forward_py.py``) gets the same fix (``Subscription.skip``) in a
# change of its own; until then only the compiled forwarder runs here, selected as in the other
# tests of this world (skipped when the compiled kernels are not in use). Once the reference
# skips padding too, add ``pytest.param(False, id="reference")`` to IMPLS.
IMPLS = [pytest.param(True, id="compiled")]
pytestmark = pytest.mark.skipif(COMPILED is None, reason="compiled kernels not in use")

EXT = bytes([0x10, ord("0")])  # mid "0" (one-byte form, id 1)


def _send(world: World, client: Any, packets: list[bytes], now: float) -> list[bytes]:
    """Forward ``packets`` (plain RTP, encrypted here) and return subscriber 0's egress, plain."""
    datagrams = [(client.protect_rtp(p), PUB_ADDR) for p in packets]
    _, egress = world.forwarder.process(datagrams, now)
    receiver = _srtp_py.SrtpContext(PROFILE, SUB_KEY, SUB_SALT, outbound=False)
    return [receiver.unprotect_rtp(wire) for wire, addr in egress if addr == ("127.0.0.1", 6000)]


def _seqs(packets: list[bytes]) -> list[int]:
    return [(p[2] << 8) | p[3] for p in packets]


@pytest.mark.parametrize("compiled", IMPLS)
@pytest.mark.parametrize("probe_size", [1, 4, 200])
def test_padding_only_video_packet_leaves_no_hole(compiled: bool, probe_size: int) -> None:
    world = World(compiled=compiled, subs=SUBS)
    for sub in world.video_subs:
        sub.selector.set_target(0, None)
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    ssrc = VIDEO_SSRCS[0]
    media = [
        rtp(ssrc, 100 + i, 3000, 96, vp8_payload(5, 1, 0, True, i == 0, i == 0, 300), EXT)
        for i in range(3)
    ]
    probe = rtp(ssrc, 103, 3000, 96, b"", EXT, padding=probe_size)
    more = [
        rtp(ssrc, 104 + i, 6000, 96, vp8_payload(6, 2, 0, True, False, i == 0, 300), EXT)
        for i in range(3)
    ]
    before = _send(world, client, media, 1.0)
    assert len(before) == 3
    assert _send(world, client, [probe], 1.01) == []  # nothing sent for the probe...
    (record,) = [r for r in world.forwarder.drain_log() if r[2] == 65536 + 103]
    assert record[1] & F_PADDING and record[8] == 0  # ...and it is logged as padding
    after = _send(world, client, more, 1.02)
    seqs = _seqs(before + after)
    assert seqs == list(range(seqs[0], seqs[0] + 6)), seqs  # contiguous: no hole
    # The other subscribers' sequences are continuous too, and nobody recorded a hole.
    for sub in world.video_subs:
        assert sub.munger.holes == 0
        assert sub.munger.skipped == 1


@pytest.mark.parametrize("compiled", IMPLS)
def test_padding_on_a_layer_a_route_does_not_forward_changes_nothing(compiled: bool) -> None:
    """Only routes whose current layer is the stream's account for the padding packet."""
    world = World(compiled=compiled, subs=1)
    world.video_subs[0].selector.set_target(0, None)
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    key = rtp(VIDEO_SSRCS[0], 100, 3000, 96, vp8_payload(5, 1, 0, True, True, True, 300), EXT)
    assert len(_send(world, client, [key], 1.0)) == 1
    probe = rtp(VIDEO_SSRCS[1], 500, 3000, 96, b"", EXT, padding=8)  # layer 1: not forwarded
    assert _send(world, client, [probe], 1.01) == []
    assert world.video_subs[0].munger.skipped == 0
    nxt = rtp(VIDEO_SSRCS[0], 101, 3000, 96, vp8_payload(5, 1, 0, True, True, False, 300), EXT)
    assert _seqs(_send(world, client, [nxt], 1.02)) == [1001]
