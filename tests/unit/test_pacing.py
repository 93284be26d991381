"""The egress pacer in the forwarder: a paced subscriber's media waits in its pacer and
leaves at the pacing rate, with its send history restamped; the others are untouched."""

from __future__ import annotations

import math
from typing import Any

from forwarder_world import (
    PROFILE,
    PUB_ADDR,
    PUB_KEY,
    PUB_SALT,
    SUB_KEY,
    SUB_SALT,
    VIDEO_SSRCS,
    World,
    rtp,
    vp8_payload,
)

from sfu._fastpath import _srtp_py
from sfu._fastpath._pacer_py import BURST_TIME, RETRANSMISSION, VIDEO
from sfu.core.kernels import Kernels


def _ext(twcc: int) -> bytes:
    """The publisher's extension elements: mid, and its transport-cc number."""
    return bytes([0x10, ord("0"), 0x31, twcc >> 8 & 0xFF, twcc & 0xFF, 0, 0, 0])


def test_a_paced_subscribers_keyframe_leaves_at_the_pacing_rate(each_kernels: Kernels) -> None:
    world = World(each_kernels)
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    for sub in world.video_subs:
        sub.selector.set_target(0, None)
    pacer = each_kernels.Pacer()
    pacer.set_rate(800_000.0, 0.0)  # 100 kB/s
    world.forwarder.set_pacer(1, pacer, world.histories[0])  # subscriber 0 is paced
    # A 20-packet keyframe of the low layer, arriving at once.
    datagrams = []
    for i in range(20):
        payload = vp8_payload(10, 0, 0, True, True, i == 0, 1000)
        plain = rtp(VIDEO_SSRCS[0], 100 + i, 3000, 96, payload, _ext(i))
        datagrams.append((client.protect_rtp(plain), PUB_ADDR))
    _, egress = world.forwarder.process(datagrams, 1.0)
    destinations = [address[1] for _, address in egress]
    # Subscribers 1 and 2 got it at once; of subscriber 0's copies, what the burst allowance
    # lets go (one ~1 kB packet: 5 ms at 100 kB/s) left with the batch, the rest is queued.
    assert destinations.count(6001) == destinations.count(6002) == 20
    assert destinations.count(6000) == 1
    assert world.forwarder.paced_packets == 20 and pacer.queued_packets == 19
    assert world.forwarder.paced_backlog() == [1]  # the backlog, until it is released
    assert 1.0 < world.forwarder.paced_due == pacer.next_deadline(1.0)
    history = world.histories[0]
    assert history.packets == 20  # numbered when forwarded
    released = [(1.0, wire, 0) for wire, address in egress if address[1] == 6000]
    now = 1.0
    while pacer.queued_packets:
        released.extend((now, wire, tag) for wire, tag in pacer.pop(now, history))
        deadline = pacer.next_deadline(now)
        if deadline is None:
            break
        now = deadline
    assert len(released) == 20
    # The copies are those subscriber 1 got, bar the SRTP of their own transport: same sizes.
    assert sorted(len(w) for _, w, _ in released) == sorted(
        len(w) for w, a in egress if a[1] == 6001
    )
    # ~20 kB at 100 kB/s: about 0.2 s less the 5 ms burst allowance, in sequence order.
    assert 0.15 < released[-1][0] - 1.0 < 0.21
    assert [tag for _, _, tag in released] == list(range(20))
    for t, _, tag in released:
        entry = history.lookup(tag)
        assert entry is not None and entry[0] == t  # restamped: when it really left
    first_window = [t for t, _, _ in released if t < 1.0 + BURST_TIME]
    assert 1 <= len(first_window) < 20


def test_an_unstamped_subscriber_is_paced_with_no_tags(each_kernels: Kernels) -> None:
    world = World(each_kernels, stamped=0)
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    world.video_subs[0].selector.set_target(0, None)
    pacer = each_kernels.Pacer()
    pacer.set_rate(16_000.0, 0.0)  # 2 kB/s: the first packet leaves, the second waits
    world.forwarder.set_pacer(1, pacer, world.histories[0])
    payload = vp8_payload(10, 0, 0, True, True, True, 500)
    datagrams = [
        (client.protect_rtp(rtp(VIDEO_SSRCS[0], 100 + i, 3000, 96, payload, _ext(i))), PUB_ADDR)
        for i in range(2)
    ]
    _, egress = world.forwarder.process(datagrams, 1.0)
    assert [address[1] for _, address in egress].count(6000) == 1
    assert [tag for _, tag in pacer.pop(1.4, world.histories[0])] == [-1]
    assert world.histories[0].packets == 0  # neither was numbered
    # Unpaced again: the next packet goes straight out.
    world.forwarder.set_pacer(1, None)
    plain = rtp(VIDEO_SSRCS[0], 102, 6000, 96, payload, _ext(2))
    _, egress = world.forwarder.process([(client.protect_rtp(plain), PUB_ADDR)], 1.1)
    assert [address[1] for _, address in egress].count(6000) == 1


def _keyframe(client: _srtp_py.SrtpContext, count: int, size: int = 1000) -> list[Any]:
    """A ``count``-packet keyframe of the low layer from the publisher, as SRTP datagrams."""
    return [
        (
            client.protect_rtp(
                rtp(
                    VIDEO_SSRCS[0],
                    100 + i,
                    3000,
                    96,
                    vp8_payload(10, 0, 0, True, True, i == 0, size),
                    _ext(i),
                )
            ),
            PUB_ADDR,
        )
        for i in range(count)
    ]


def _paced_world(kernels: Kernels) -> tuple[World, _srtp_py.SrtpContext, Any]:
    world = World(kernels)
    for sub in world.video_subs:
        sub.selector.set_target(0, None)
    pacer = kernels.Pacer()
    pacer.set_rate(800_000.0, 0.0)  # 100 kB/s
    world.forwarder.set_pacer(1, pacer, world.histories[0])
    return world, _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True), pacer


def test_the_backlog_is_released_on_the_plane_timer(each_kernels: Kernels) -> None:
    world, client, pacer = _paced_world(each_kernels)
    world.forwarder.process(_keyframe(client, 20), 1.0)
    sent = world.forwarder.sent_packets
    released = 1  # what left with the batch (the burst allowance)
    now = 1.0
    while world.forwarder.paced_backlog():
        due = world.forwarder.paced_due
        assert due > now  # never due again at once: the timer cannot spin
        assert due == pacer.next_deadline(now)
        now = due
        egress = world.forwarder.release_backlog(now)  # no socket: handed back
        assert egress and {address[1] for _, address in egress} == {6000}
        released += len(egress)
    assert released == 20 and pacer.queued_packets == 0
    assert world.forwarder.paced_due == math.inf
    # Counted as sent when released, not when queued: the 19 the timer let go.
    assert world.forwarder.sent_packets == sent + 19
    assert 0.15 < now - 1.0 < 0.21  # ~20 kB at 100 kB/s, less the burst allowance
    assert world.forwarder.release_backlog(now + 1.0) == []  # nothing left


def test_send_paced_hands_back_what_is_due_without_a_socket(each_kernels: Kernels) -> None:
    world, client, pacer = _paced_world(each_kernels)
    assert world.forwarder.send_paced(1, 1.0) == []  # nothing queued
    assert world.forwarder.send_paced(2, 1.0) == []  # not paced
    assert world.forwarder.send_paced(99, 1.0) == []  # unknown
    # A retransmission queued by Python (the peer's PacedSender) behind a paced keyframe.
    world.forwarder.process(_keyframe(client, 3), 1.0)
    assert pacer.queued_packets == 2
    pacer.push(b"\x80" + bytes(299), RETRANSMISSION, -1, 1.0)
    later = pacer.next_deadline(1.0)
    packets = world.forwarder.send_paced(1, later)
    assert packets and all(isinstance(p, bytes) for p in packets)
    # Handed back to the caller (no socket), so not counted as sent by the forwarder.
    sent = world.forwarder.sent_packets
    assert world.forwarder.send_paced(1, later) == [] and world.forwarder.sent_packets == sent
    # What it still holds stays in the backlog, for the plane's timer.
    assert (world.forwarder.paced_backlog() == [1]) == bool(pacer.queued_packets)


def test_a_reused_slot_stays_listed_once(each_kernels: Kernels) -> None:
    world, client, pacer = _paced_world(each_kernels)
    world.forwarder.process(_keyframe(client, 10), 1.0)
    assert world.forwarder.paced_backlog() == [1]
    # The subscriber's transport goes and comes back (a new address, say) while listed.
    world.set_keyed(0, False)
    world.set_keyed(0, True)
    world.forwarder.set_pacer(1, pacer, world.histories[0])
    world.forwarder.process(_keyframe(client, 10), 1.5)
    assert world.forwarder.paced_backlog() == [1]
    world.set_keyed(0, False)
    world.forwarder.release_backlog(2.0)  # the slot is not registered: dropped from the list
    assert world.forwarder.paced_backlog() == []


def test_a_rewound_subscription_continues_its_sequence_on_the_wire(
    each_kernels: Kernels,
) -> None:
    """The forwarder numbers and protects a paced copy before queueing it: when the queue is
    dropped (all video paused or abandoned), the munger gives the numbers again
    (``RtpMunger.rewind`` with ``Pacer.queued_seqs``), and the keyframe that restarts the
    subscription, from another layer, follows on the wire the last packet that really left,
    protected under the numbers given again."""
    world, client, pacer = _paced_world(each_kernels)
    receiver = _srtp_py.SrtpContext(PROFILE, SUB_KEY, SUB_SALT, outbound=False)
    _, egress = world.forwarder.process(_keyframe(client, 10), 1.0)
    left = [receiver.unprotect_rtp(w) for w, a in egress if a[1] == 6000]
    assert len(left) == 1 and pacer.queued_packets == 9
    sub = world.video_subs[0]
    assert sub.selector is not None
    queued = pacer.queued_seqs(VIDEO)[sub.munger.out_ssrc]
    assert len(queued) == 9
    assert sub.munger.rewind(queued) == 9
    assert pacer.clear(RETRANSMISSION) == 9
    # As the peer's abandon: nothing forwarded until a keyframe of the new target.
    sub.selector.set_target(None, None)
    sub.selector.set_target(1, None)
    pacer.set_rate(0.0, 1.1)  # unpaced from here: what is forwarded leaves with the batch
    middle = [
        (
            client.protect_rtp(
                rtp(
                    VIDEO_SSRCS[1],
                    700 + i,
                    9000,
                    96,
                    vp8_payload(11, 0, 0, True, True, i == 0, 800),
                    _ext(20 + i),
                )
            ),
            PUB_ADDR,
        )
        for i in range(3)
    ]
    _, egress = world.forwarder.process(middle, 1.1)
    resumed = [receiver.unprotect_rtp(w) for w, a in egress if a[1] == 6000]
    assert len(resumed) == 3
    seqs = [int.from_bytes(p[2:4], "big") for p in left + resumed]
    assert seqs == [(seqs[0] + k) & 0xFFFF for k in range(4)]
