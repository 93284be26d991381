"""A subscriber's transport estimates its own bandwidth: stamping, feedback, probes, budget.

Driven through the room service with Chromium's extension ids (``room_fixtures``), a fake
clock and a recording transport; the estimator, prober and retransmission budget are the
real ones.
"""

from __future__ import annotations

import pytest
from room_fixtures import CHROMIUM_IDS, Harness, vp8_packet
from test_metrics_core import registry_for, value
from test_room_service import SSRC_F, SSRC_H, SSRC_Q, _video_subscription, harness

from sfu._fastpath._pacer_py import AUDIO as PACED_AUDIO
from sfu._fastpath._pacer_py import PROBE as PACED_PROBE
from sfu._fastpath._pacer_py import RETRANSMISSION as PACED_RETRANSMISSION
from sfu._fastpath._pacer_py import VIDEO as PACED_VIDEO
from sfu.core.allocator import UPGRADE_HOLD
from sfu.core.estimator import INITIAL_BPS, LOSS_SEVERE, PRIMER
from sfu.core.pacing import (
    CONGESTED_PACING_FACTOR,
    CONGESTED_PACING_HOLD,
    PACING_FACTOR,
    PacedSender,
    pacing_rate,
)
from sfu.core.peer import (
    ABANDON_LOSS,
    ABANDON_PRICE_LIMIT,
    ALLOCATION_INTERVAL,
    BUDGET_HEADROOM,
    ESTIMATE_FALL,
    Peer,
    allocation_due,
)
from sfu.core.prober import MIN_CLUSTER_PACKETS, PADDING_SIZE, PRIMER_BYTES
from sfu.core.retransmission import RTX_BURST, RetransmissionBudget
from sfu.core.subscription import PROBE_LOOKBACK, Subscription
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.extensions import TRANSPORT_CC_URI
from sfu.packet.rtcp_feedback import Nack
from sfu.packet.rtp import RtpPacket
from sfu.room.room import Participant
from sfu.transport.transport import WebRtcTransport

TWCC_ID = CHROMIUM_IDS[TRANSPORT_CC_URI]


def _publish(
    h: object,
    alice: object,
    start: float,
    frames: int,
    f_packets: int = 1,
    sizes: tuple[int, int, int] = (200, 600, 1100),
) -> None:
    """Alice sends ``frames`` frames of all three layers (payload ``sizes``; the top one in
    ``f_packets`` packets per frame), each packet with transport-cc."""
    t = alice.peer.transport  # type: ignore[attr-defined]
    twcc = 0
    for i in range(frames):
        now = start + i / 30
        for ssrc, rid, size, count in (
            (SSRC_Q, "q", sizes[0], 1),
            (SSRC_H, "h", sizes[1], 1),
            (SSRC_F, "f", sizes[2], f_packets),
        ):
            for j in range(count):
                seq = i * count + j
                pkt = vp8_packet(
                    ssrc,
                    seq,
                    3000 * i,
                    keyframe=i == 0,
                    start=j == 0,
                    rid=rid,
                    picture_id=i,
                    twcc=twcc & 0xFFFF,
                    payload=bytes(size),
                )
                twcc += 1
                alice.peer.on_rtp(t, pkt, now)  # type: ignore[attr-defined]


def test_subscriber_egress_is_stamped_and_feedback_drives_the_estimate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    assert bob.peer is not None and bob.peer.estimate_bps is None  # nothing sent yet
    _publish(h, alice, 1.0, 30)
    history = bob.peer.send_history
    assert history is not None and history.packets > 0
    # What bob got carries bob's own transport-wide sequence 0, 1, 2, ...
    sent = [RtpPacket.parse(p) for p in h.sent_rtp["bob"]]
    seqs = [int.from_bytes(dict(p.extensions())[TWCC_ID], "big") for p in sent]
    assert seqs == list(range(len(seqs)))
    assert bob.peer.estimate_bps == INITIAL_BPS
    # Bob's browser acknowledges everything 30 ms after it was sent.
    recorder = TwccRecorder(0x42)
    for seq in seqs:
        lookup = history.lookup(seq)
        assert lookup is not None
        recorder.on_packet(seq, sub.out_ssrc, lookup[0] + 0.03)
    for packet in recorder.poll(2.0):
        bob.peer.on_rtcp(bob.peer.transport, packet, 2.0)
    estimator = bob.peer.estimator
    assert estimator is not None and estimator.twcc_seen and estimator.feedbacks >= 1
    assert bob.peer.counters.twcc_in >= 1
    assert estimator.acked_bps is not None and estimator.acked_bps > 0
    # The allocator's budget is the estimate (less headroom and audio): what it picked fits.
    h.service.poll(2.0, 1.7e9)
    assert bob.peer.estimate_bps == estimator.target_bps()
    assert sub.selector is not None and sub.selector.target.spatial is not None
    chosen = sub.publication.layers[sub.selector.target.spatial].meter.bps(2.0)
    assert 0 < chosen <= 0.9 * estimator.target_bps()


def test_probe_clusters_go_out_as_padding_on_the_rtx_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    assert bob.peer is not None and sub.rtx_ssrc is not None
    _publish(h, alice, 1.0, 30, f_packets=2)  # the top layer (528 kbit/s) does not fit
    before = len(h.sent_rtp["bob"])
    h.service.poll(2.0, 1.7e9)  # allocates (the next layer is wanted), then probes
    cluster = bob.peer.prober.pending
    assert cluster is not None
    probes = [RtpPacket.parse(p) for p in h.sent_rtp["bob"][before:]]
    probes = [p for p in probes if p.ssrc == sub.rtx_ssrc]
    assert len(probes) == cluster.primer + cluster.packets
    assert all(p.padding_length == 255 and not p.payload for p in probes)
    history = bob.peer.send_history
    assert history is not None
    clusters = []
    for p in probes:
        stamp = int.from_bytes(dict(p.extensions())[TWCC_ID], "big")
        lookup = history.lookup(stamp)
        assert lookup is not None
        clusters.append(lookup[2])
    # The primer first (under no cluster: it drains a policer's bucket), then cluster 0.
    assert cluster.primer > 0
    assert clusters == [PRIMER] * cluster.primer + [0] * cluster.packets
    assert bob.peer.counters.probe_packets == len(probes)
    assert bob.peer.prober.started == 1
    # No second cluster while the first one's result is awaited.
    h.service.poll(2.2, 1.7e9)
    assert bob.peer.prober.started == 1
    # Nothing comes back for it: after the result timeout it counts as failed, and shows.
    h.service.poll(3.0, 1.7e9)
    registry = registry_for(h.service)
    assert value(registry, "sfu_probe_packets_total") == len(probes)
    assert value(registry, "sfu_probe_clusters_total", outcome="failed") == 1
    assert value(registry, "sfu_probe_clusters_total", outcome="succeeded") == 0
    estimates = value(registry, "sfu_subscriber_estimated_bandwidth_bits_per_second_gcount")
    assert estimates == 1


def test_probe_clusters_copy_the_newest_media_when_it_is_large_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    assert bob.peer is not None and sub.rtx_ssrc is not None
    _publish(h, alice, 1.0, 30, f_packets=2, sizes=(700, 900, 1100))
    before = len(h.sent_rtp["bob"])
    media = {
        p.sequence_number: p.payload
        for p in map(RtpPacket.parse, h.sent_rtp["bob"])
        if p.ssrc == sub.out_ssrc
    }
    h.service.poll(2.0, 1.7e9)  # allocates (the next layer is wanted), then probes
    cluster = bob.peer.prober.pending
    assert cluster is not None
    probes = [RtpPacket.parse(p) for p in h.sent_rtp["bob"][before:]]
    probes = [p for p in probes if p.ssrc == sub.rtx_ssrc]
    history = bob.peer.send_history
    assert history is not None
    clusters = []
    for p in probes:
        # RFC 4588 §4: the original sequence number, then the original payload, of one of
        # the newest packets bob was sent (the receiver discards the duplicate).
        osn = int.from_bytes(p.payload[:2], "big")
        assert p.padding_length == 0 and media[osn] == p.payload[2:]
        assert osn in {(sub.munger.last_out_seq - k) & 0xFFFF for k in range(PROBE_LOOKBACK)}
        lookup = history.lookup(int.from_bytes(dict(p.extensions())[TWCC_ID], "big"))
        assert lookup is not None
        clusters.append(lookup[2])
    # The primer (at least PRIMER_BYTES outside the cluster), then the cluster: fewer packets
    # than padding would take, and the prober waits for as many as were sent.
    primer = clusters.count(PRIMER)
    assert clusters == [PRIMER] * primer + [0] * (len(probes) - primer)
    assert sum(len(p.payload) for p in probes[:primer]) >= PRIMER_BYTES
    assert MIN_CLUSTER_PACKETS <= cluster.packets == len(probes) - primer
    assert cluster.packets < cluster.size / PADDING_SIZE
    assert primer < -(-PRIMER_BYTES // PADDING_SIZE)
    assert bob.peer.counters.probe_packets == len(probes)


def test_retransmissions_stay_within_the_budget_and_skip_superseded_packets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    assert bob.peer is not None and sub.selector is not None
    sub.set_preferences(0, None, False)
    sub.selector.set_target(0, None)
    _publish(h, alice, 1.0, 20)
    bob.peer.rtx_budget.set_rate(2400, 1.7)  # an empty bucket (600 bits) to start from
    h.service.poll(1.7, 1.7e9)  # the estimate (300 kbit/s) sets the rate: 60 kbit/s
    sent = [
        RtpPacket.parse(p) for p in h.sent_rtp["bob"] if RtpPacket.parse(p).ssrc == sub.out_ssrc
    ]
    lost = [p.sequence_number for p in sent[5:15]]
    nack = Nack.from_seqs(0x1234, sub.out_ssrc, lost)
    bob.peer.on_rtcp(bob.peer.transport, nack.serialize(), 1.8)
    counters = bob.peer.counters
    assert counters.retransmits + counters.retransmits_dropped == len(lost)
    # 100 ms at 60 kbit/s refill three resends of ~250 bytes; the rest is refused.
    assert 1 <= counters.retransmits <= 4
    assert bob.peer.rtx_budget.rate_bps == 0.2 * 300_000
    # A keyframe of that layer after the lost packets makes them worthless.
    t = alice.peer.transport
    pkt = vp8_packet(SSRC_Q, 40, 3000 * 40, keyframe=True, rid="q", picture_id=40, twcc=500)
    alice.peer.on_rtp(t, pkt, 2.0)
    bob.peer.rtx_budget.set_rate(10_000_000, 2.0)
    bob.peer.on_rtcp(
        bob.peer.transport, Nack.from_seqs(0x1234, sub.out_ssrc, lost).serialize(), 3.0
    )
    assert counters.retransmits_superseded == len(lost)


def test_budget_refills_at_its_rate_up_to_its_burst() -> None:
    assert not RetransmissionBudget().allow(1, 0.0)  # no rate, nothing allowed
    budget = RetransmissionBudget()
    budget.set_rate(100_000, 0.0)  # the first rate fills the bucket
    assert budget.allow(int(100_000 * RTX_BURST), 0.0)
    assert not budget.allow(8000, 0.01)  # 1000 bits refilled so far
    assert budget.allow(8000, 0.09)
    assert not budget.allow(int(100_000 * RTX_BURST) + 1, 100.0)  # the bucket is capped
    assert (budget.sent, budget.dropped) == (2, 2)


def _forwarding_the_middle_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Harness, Participant, Peer, Subscription]:
    """Bob subscribed to Alice's video, its middle layer forwarded after a second of it."""
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    assert bob.peer is not None and sub.selector is not None
    sub.selector.set_target(1, None)
    _publish(h, alice, 1.0, 30)
    assert sub.selector.current.spatial == 1
    return h, alice, bob.peer, sub


def test_a_small_shortfall_keeps_the_layers_being_forwarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, peer, sub = _forwarding_the_middle_layer(monkeypatch)
    layer = 1
    # What is being forwarded: the layer (no audio subscription here); the allocator gets the
    # whole budget and reserves audio itself.
    spend = sub.publication.layers[layer].meter.bps(1.95)
    # 90 % of what the layer costs: one overuse's worth; the layer stays.
    estimate = 0.9 * spend / BUDGET_HEADROOM
    assert peer._budget(estimate, 1.95) == spend
    # Half of it: a real shortfall; the allocator gets the estimate's budget.
    estimate = 0.5 * spend / BUDGET_HEADROOM
    assert peer._budget(estimate, 1.95) == pytest.approx(0.5 * spend)
    # More than it costs: the budget is the estimate's.
    estimate = 2 * spend / BUDGET_HEADROOM
    assert peer._budget(estimate, 1.95) == pytest.approx(2 * spend)


def test_the_shortfall_is_judged_at_the_allocators_price(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What is forwarded is priced as the allocator prices it (its sampled layer rates), not
    at the meter's reading of the moment: where the two differed, the layer got no tolerance
    and the allocator, at its own price, dropped it on a small fall."""
    h, alice, peer, sub = _forwarding_the_middle_layer(monkeypatch)
    layer = 1
    pub = sub.publication
    price = pub.rates.measure(pub, 1.95)[layer][-1]  # sampled now, valid for a while
    # The publisher's middle layer triples its frames; the meter reads it, the price not yet.
    _publish(h, alice, 2.0, 8, sizes=(200, 1800, 1100))
    meter = pub.layers[layer].meter.bps(2.3)
    assert meter > 1.3 * price
    assert pub.rates.measure(pub, 2.3)[layer][-1] == price
    estimate = 0.9 * price / BUDGET_HEADROOM  # one overuse's worth under the price
    assert peer._budget(estimate, 2.3) == pytest.approx(price)


def test_a_falling_estimate_is_allocated_on_at_once() -> None:
    # The periodic tick...
    assert allocation_due(1.0, 1.0 - ALLOCATION_INTERVAL, 1_000_000, 1_000_000)
    assert not allocation_due(1.0, 0.9, 1_000_000, 1_000_000)
    # ... and, between ticks, a fall of more than ESTIMATE_FALL (not a rise, not noise).
    assert allocation_due(1.0, 0.9, (1 - ESTIMATE_FALL) * 1_000_000 - 1, 1_000_000)
    assert not allocation_due(1.0, 0.9, 0.95 * 1_000_000, 1_000_000)
    assert not allocation_due(1.0, 0.9, 3_000_000, 1_000_000)
    assert not allocation_due(1.0, 0.9, None, 1_000_000)


def _paced_peer(monkeypatch: pytest.MonkeyPatch) -> tuple[Harness, Peer]:
    """Bob's peer once Alice's video flowed for a second and the room service paced Bob's
    transport at PACING_FACTOR x its estimate."""
    h = harness(monkeypatch)
    alice, bob, _ = _video_subscription(h)
    peer = bob.peer
    assert peer is not None and peer.pacer is not None
    _publish(h, alice, 1.0, 30)
    h.service.poll(2.0, 1.7e9)
    assert peer.estimate_bps is not None
    assert peer.pacer.rate_bps == PACING_FACTOR * peer.estimate_bps
    return h, peer


def test_pacing_keeps_to_the_estimate_for_a_while_after_congestion() -> None:
    assert pacing_rate(1e6, congested_at=-1e9, now=5.0) == PACING_FACTOR * 1e6
    assert pacing_rate(1e6, congested_at=5.0, now=5.0) == CONGESTED_PACING_FACTOR * 1e6
    hold_end = 5.0 + CONGESTED_PACING_HOLD
    assert pacing_rate(1e6, congested_at=5.0, now=hold_end - 0.01) == CONGESTED_PACING_FACTOR * 1e6
    assert pacing_rate(1e6, congested_at=5.0, now=hold_end) == PACING_FACTOR * 1e6
    # Keeping to the estimate is the point: the factor after congestion is no pacing above it.
    assert CONGESTED_PACING_FACTOR <= 1.0 < PACING_FACTOR


def test_the_peer_paces_at_the_estimate_after_congestion(monkeypatch: pytest.MonkeyPatch) -> None:
    """The room service's poll sets the pacing rate from the estimator's last congestion."""
    h, peer = _paced_peer(monkeypatch)
    assert peer.pacer is not None and peer.estimator is not None and peer.estimate_bps
    peer.estimator.congested_at = 2.0
    h.service.poll(2.5, 1.7e9 + 0.5)
    assert peer.pacer.rate_bps == CONGESTED_PACING_FACTOR * peer.estimate_bps
    h.service.poll(2.0 + CONGESTED_PACING_HOLD, 1.7e9 + CONGESTED_PACING_HOLD)
    assert peer.pacer.rate_bps == PACING_FACTOR * peer.estimate_bps


def test_a_paced_transport_releases_on_the_peers_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the pacer holds leaves through the peer: what the budget allows at once, the rest
    when the room service runs the peer at the pacer's deadline (its ``next_timer``), each
    packet restamped in the send history and counted; retiring the peer empties the pacer."""
    h, peer = _paced_peer(monkeypatch)
    assert peer.pacer is not None and peer.send_history is not None
    sent: list[bytes] = []

    def send_protected(self: WebRtcTransport, datagram: bytes) -> bool:
        sent.append(datagram)
        return True

    monkeypatch.setattr(WebRtcTransport, "send_protected", send_protected)
    peer.pacer.set_rate(80_000.0, 2.0)  # 10 kB/s
    history = peer.send_history
    tags = [history.record(1000, 2.0, -1) for _ in range(4)]
    for tag in tags:
        assert peer.pacer.push(bytes([tag & 0xFF]) * 1000, PACED_VIDEO, tag, 2.0)
    peer.release_paced(2.0)
    assert len(sent) == 1 and peer.pacer.queued_packets == 3
    due = peer.next_timer()
    assert due is not None and 2.0 < due <= 2.1  # the pacer's deadline, not a later report
    for _ in range(200):
        if not peer.pacer.queued_packets:
            break
        at = peer.next_timer()
        assert at is not None
        h.service.poll(at, 1.7e9 + at)
    assert len(sent) == 4 and [p[0] for p in sent] == [t & 0xFF for t in tags]
    for tag in tags[1:]:
        entry = history.lookup(tag)
        assert entry is not None and entry[0] > 2.0  # when it left, not when it was queued
    assert peer.counters.paced_packets == 4
    assert peer.counters.paced_queue_delay_us > 0
    registry = registry_for(h.service)
    assert value(registry, "sfu_paced_packets_total") == 4
    assert value(registry, "sfu_pacer_drops_total", reason="queue_full") == 0
    peer.pacer.push(bytes(10), PACED_VIDEO, -1, 3.0)
    peer.retire()
    assert peer.pacer.queued_packets == 0


def test_a_nacks_paced_retransmissions_keep_their_own_transport_wide_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each resend of one NACK is queued under the number it was stamped with, so its
    release restamps its own send time (not the last resend's, leaving the others'
    queueing to read as link delay)."""
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    peer = bob.peer
    assert peer is not None and sub.selector is not None
    sub.set_preferences(0, None, False)
    sub.selector.set_target(0, None)
    _publish(h, alice, 1.0, 30)
    h.service.poll(2.0, 1.7e9)
    assert peer.pacer is not None and peer.send_history is not None
    sent = [
        RtpPacket.parse(p) for p in h.sent_rtp["bob"] if RtpPacket.parse(p).ssrc == sub.out_ssrc
    ]
    lost = [p.sequence_number for p in sent[5:8]]
    peer.rtx_budget.set_rate(10_000_000, 2.0)
    queued: list[int] = []

    class Recording(PacedSender):
        """What the pacer would be handed (this harness's transports have no SRTP)."""

        def send_rtp_tagged(self, packet: bytes, tag: int) -> bool:
            queued.append(tag)
            return True

    # Resends through the pacer, as Peer._pace sets up once the data plane paces the
    # transport (this harness has no data plane).
    peer.feedback.sender = Recording(
        peer.transport, peer.pacer, peer.send_history, PACED_RETRANSMISSION, lambda: None
    )
    newest = peer.send_history.packets
    peer.on_rtcp(peer.transport, Nack.from_seqs(0x1234, sub.out_ssrc, lost).serialize(), 2.0)
    assert peer.counters.retransmits == len(lost)
    assert queued == [(newest + i) & 0xFFFF for i in range(len(lost))]


def test_pausing_all_video_flushes_its_queue_and_its_retransmissions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A budget below the lowest layer pauses the video: what the pacer still holds of it
    (and of its retransmissions) is dropped and counted, queued audio stays, and NACKs for
    the paused video are not resent (its resume sends a keyframe)."""
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    peer = bob.peer
    assert peer is not None and peer.pacer is not None and sub.selector is not None
    _publish(h, alice, 1.0, 30)
    h.service.poll(2.0, 1.7e9)
    assert sub.selector.target.spatial is not None
    sent = [
        RtpPacket.parse(p) for p in h.sent_rtp["bob"] if RtpPacket.parse(p).ssrc == sub.out_ssrc
    ]
    peer.pacer.set_rate(8_000.0, 2.0)  # 1 kB/s: what is pushed now stays queued
    for cls in (PACED_VIDEO, PACED_RETRANSMISSION, PACED_AUDIO, PACED_VIDEO):
        assert peer.pacer.push(bytes(1000), cls, -1, 2.0)
    peer.pacer.pop(2.0)  # the budget's first packet leaves
    assert peer.pacer.queued_packets == 3
    allocation = peer.allocate(budget_bps=10_000, now=2.1)
    assert allocation.paused == (sub,) and sub.selector.target.spatial is None
    assert peer.pacer.queued_packets == 1  # the audio
    assert peer.counters.pacer_flushed == 2
    registry = registry_for(h.service)
    assert value(registry, "sfu_pacer_drops_total", reason="paused") == 2
    counters = peer.counters
    retransmits, superseded = counters.retransmits, counters.retransmits_superseded
    lost = [p.sequence_number for p in sent[-3:]]
    peer.on_rtcp(peer.transport, Nack.from_seqs(0x1234, sub.out_ssrc, lost).serialize(), 2.2)
    assert counters.retransmits == retransmits
    assert counters.retransmits_superseded - superseded == len(lost)


@pytest.mark.parametrize("pacing", [True, False])
def test_pacing_off_sends_media_and_retransmissions_unpaced(
    monkeypatch: pytest.MonkeyPatch, pacing: bool
) -> None:
    """``bandwidth.pacing = false`` (the room service's ``pacing``): with an estimate the
    peer has no pacer, the data plane queues nothing for its transport and its
    retransmissions go straight to the transport; on (the default) all three are paced."""
    h = harness(monkeypatch)
    h.service.pacing = pacing
    alice, bob, _ = _video_subscription(h)
    peer = bob.peer
    assert peer is not None and peer.pacing is pacing
    _publish(h, alice, 1.0, 30)
    h.service.poll(2.0, 1.7e9)
    assert peer.estimate_bps is not None
    dataplane = h.service.dataplane
    assert dataplane is not None
    paced = [claim for claim in dataplane._paced.values() if claim.pacing is not None]
    if pacing:
        assert peer.pacer is not None and peer.pacer.rate_bps == PACING_FACTOR * peer.estimate_bps
        assert isinstance(peer.feedback.sender, PacedSender) and len(paced) == 1
    else:
        assert peer.pacer is None
        assert peer.feedback.sender is peer.transport and paced == []


@pytest.mark.parametrize(
    ("budget", "loss", "abandoned"),
    [
        (100_000, 0.5, True),
        (150_000, 0.3, False),
        (150_000, LOSS_SEVERE, True),
        (100_000, 0.02, False),
    ],
)
def test_a_layer_far_above_the_budget_is_dropped_at_once_when_switching_down(
    monkeypatch: pytest.MonkeyPatch, budget: float, loss: float, abandoned: bool
) -> None:
    """Waiting to switch down, the top layer (about 270 kbit/s here) keeps being forwarded
    unless it costs over ABANDON_PRICE_LIMIT x the budget while the link loses at least
    ABANDON_LOSS, or over the whole estimate (the budget before its headroom) while the link
    loses LOSS_SEVERE: then the subscription stops at once (and restarts at a keyframe at or
    below its target) and the video queued in the pacer, now all stale, is dropped."""
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    peer = bob.peer
    selector = sub.selector
    assert peer is not None and peer.pacer is not None and selector is not None
    peer.allocate(budget_bps=50_000_000, now=0.9)
    _publish(h, alice, 1.0, 30)
    assert selector.current.spatial == 2
    top = sub.publication.layer_bps(2, 2.0)
    assert 2 * 100_000 < top <= ABANDON_PRICE_LIMIT * 150_000
    assert top > 150_000 / BUDGET_HEADROOM  # over the estimate of a 150 kbit/s budget
    assert peer.pacer.queued_packets == 0 and peer.estimator is not None
    peer.estimator.loss = loss
    assert (loss >= ABANDON_LOSS) == (loss != 0.02)
    for cls in (PACED_VIDEO, PACED_VIDEO, PACED_AUDIO):
        assert peer.pacer.push(bytes(1000), cls, -1, 2.0)
    allocation = peer.allocate(budget_bps=budget, now=2.0)
    target = allocation.targets[sub].spatial
    assert target is not None and target < 2
    assert selector.target.spatial == target
    if abandoned:
        assert selector.current.spatial is None and peer.counters.layers_abandoned == 1
        assert peer.counters.pacer_flushed == 2 and peer.pacer.queued_packets == 1  # audio
        registry = registry_for(h.service)
        assert value(registry, "sfu_layers_abandoned_total") == 1
        # The next keyframe at or below the target starts the subscription again.
        _publish(h, alice, 2.1, 1)
        assert selector.current.spatial == target
    else:
        assert selector.current.spatial == 2 and peer.counters.layers_abandoned == 0
        assert peer.counters.pacer_flushed == 0 and peer.pacer.queued_packets == 3


def test_nacks_for_a_layer_switched_away_from_are_not_resent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a subscription switched to another simulcast layer (at its keyframe), packets
    of the layer it left are worthless to the receiver: NACKs for them are counted as
    superseded, not resent. Before the switch the same NACK is answered."""
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    peer = bob.peer
    assert peer is not None and sub.selector is not None
    peer.allocate(budget_bps=50_000_000, now=0.9)
    _publish(h, alice, 1.0, 20)
    assert sub.selector.current.spatial == 2
    peer.rtx_budget.set_rate(10_000_000, 1.7)
    sent = [
        RtpPacket.parse(p) for p in h.sent_rtp["bob"] if RtpPacket.parse(p).ssrc == sub.out_ssrc
    ]
    counters = peer.counters
    peer.on_rtcp(
        peer.transport,
        Nack.from_seqs(0x1234, sub.out_ssrc, [sent[-3].sequence_number]).serialize(),
        1.75,
    )
    assert counters.retransmits == 1 and counters.retransmits_superseded == 0
    lost = [p.sequence_number for p in sent[-8:-4]]
    # Down to the low layer, at its next keyframe.
    sub.selector.set_target(0, None)
    pkt = vp8_packet(SSRC_Q, 40, 3000 * 40, keyframe=True, rid="q", picture_id=40, twcc=900)
    alice.peer.on_rtp(alice.peer.transport, pkt, 1.8)
    assert sub.selector.current.spatial == 0
    peer.on_rtcp(peer.transport, Nack.from_seqs(0x1234, sub.out_ssrc, lost).serialize(), 1.9)
    assert counters.retransmits == 1
    assert counters.retransmits_superseded == len(lost)


def test_video_flushed_from_the_pacer_leaves_no_gap_in_the_sequence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The video a pause drops from the pacer was numbered when forwarded but never left:
    its numbers are given again (``RtpMunger.rewind``), so the keyframe that resumes the
    subscription follows the last packet that really went out, and the subscriber counts
    nothing lost (Chromium's ``packetsLost`` counted every flushed number before)."""
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    peer = bob.peer
    selector = sub.selector
    assert peer is not None and peer.pacer is not None and selector is not None
    _publish(h, alice, 1.0, 30)
    h.service.poll(2.0, 1.7e9)
    layer = selector.current.spatial
    assert layer is not None
    ssrc, rid = ((SSRC_Q, "q"), (SSRC_H, "h"), (SSRC_F, "f"))[layer]
    left = [
        p.sequence_number for p in map(RtpPacket.parse, h.sent_rtp["bob"]) if p.ssrc == sub.out_ssrc
    ]

    def packet(i: int, keyframe: bool = False) -> bytes:
        return vp8_packet(
            ssrc, i, 3000 * i, keyframe=keyframe, picture_id=i, rid=rid, payload=bytes(900)
        )

    # Forwarded into the pacer (as the data plane does: numbered, then queued), not sent yet.
    peer.pacer.set_rate(8_000.0, 2.0)
    buf = bytearray(1500)
    for i in range(30, 36):
        n = sub.munger.munge(packet(i), i, 2.0 + (i - 30) / 30, buf)
        assert n > 0 and peer.pacer.push(bytes(buf[:n]), PACED_VIDEO, -1, 2.0)
    assert peer.pacer.push(bytes(300), PACED_AUDIO, -1, 2.2)
    # A probe copying the newest media (queued numbers included) goes too: left to go out,
    # it would carry a number the resumed keyframe is given.
    assert peer.pacer.push(bytes(300), PACED_PROBE, -1, 2.2)
    queued = peer.pacer.queued_seqs(PACED_VIDEO)[sub.out_ssrc]
    assert queued == [(left[-1] + k) & 0xFFFF for k in range(1, 7)]
    allocation = peer.allocate(budget_bps=10_000, now=2.3)
    assert allocation.paused == (sub,)
    assert peer.counters.pacer_flushed == 7 and peer.counters.pacer_rewound == 6
    assert value(registry_for(h.service), "sfu_pacer_sequence_rewound_total") == 6
    assert peer.pacer.queued_seqs(PACED_AUDIO) == {0: [0]}  # the audio stays
    # Resumed at a keyframe: it goes out as the number after the last one that left.
    later = 2.4 + UPGRADE_HOLD
    peer.allocator.end_congestion_holds()  # as a successful probe does
    peer.allocate(budget_bps=50_000_000, now=later)
    assert selector.target.spatial is not None
    before = len(h.sent_rtp["bob"])
    for i in range(36, 40):
        alice.peer.on_rtp(alice.peer.transport, packet(i, keyframe=i == 36), later + i / 30)
    resumed = [
        p.sequence_number
        for p in map(RtpPacket.parse, h.sent_rtp["bob"][before:])
        if p.ssrc == sub.out_ssrc
    ]
    assert resumed == [(left[-1] + k) & 0xFFFF for k in range(1, 5)]
