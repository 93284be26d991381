"""The far end of a relay pipe fans its media out in the data plane, as a local publisher's.

With node B's ``DataPlane`` (``relay_far_side.FarSide``), the relayed packets enter the
forwarder through a plaintext source (``DataPlane.ingest``); without it, through the remote
publication's Router (the Python path). Both must deliver the same packets, and the
forwarder's records must land in the same receive bookkeeping (NACKs up the flow included).
"""

from __future__ import annotations

from typing import Any

import pytest
from ingest_paths import PUB_EXT, RIDS, VP8_PT
from relay_far_side import SUBS, FarSide, packet

from sfu.core.dataplane import DataPlane
from sfu.core.kernels import Kernels
from sfu.core.publication import Publication
from sfu.core.relay import RelayHub
from sfu.negotiation import NegotiatedCodec
from sfu.transport.pipe import Pipe


def test_relayed_media_is_forwarded_in_the_data_plane_as_on_the_python_path(
    kernels: Kernels,
) -> None:
    """Every relayed packet reaches both subscribers, byte for byte as the Router's path
    sends it, and the forwarder took each one (none went to the Python path)."""
    sides = [FarSide(kernels, plane=False), FarSide(kernels, plane=True)]
    for side in sides:
        side.announce()
        for seq in range(1, 31):
            side.relay(packet(seq, key=seq == 1))
        side.replay()
    python, compiled = sides
    assert compiled.dataplane is not None
    assert compiled.dataplane.ingested == 30 and compiled.dataplane.ingest_misses == 0
    assert compiled.dataplane.forwarder.ingested_packets == 30
    assert all(len(packets) == 30 for packets in python.received)
    assert compiled.received == python.received
    # The receive bookkeeping saw every packet, on either path.
    for side in sides:
        stream = side.publication.layers[0]
        assert stream.packets == 30
        assert side.remote.counters.rtp_in == 30
        assert side.remote.counters.video_out == 30 * SUBS


def test_a_gap_in_relayed_media_is_nacked_up_the_flow_from_the_replayed_records(
    kernels: Kernels,
) -> None:
    side = FarSide(kernels, plane=True)
    side.announce()
    for seq in [1, 2, 3, 4, 5, 7, 8, 9]:
        side.relay(packet(seq, key=seq == 1))
    assert side.dataplane is not None and side.dataplane.ingested == 8
    side.replay()
    side.now += 0.05
    side.remote.poll(now=side.now)
    assert side.nacked() == [6]


def test_a_stream_not_yet_named_takes_the_router_then_the_data_plane(kernels: Kernels) -> None:
    """Without STREAMS the first packet binds its SSRC on the Router's path; from then on the
    stream is registered and the forwarder takes the rest."""
    side = FarSide(kernels, plane=True)
    for seq in range(1, 6):
        side.relay(packet(seq, key=seq == 1))
    side.replay()
    assert side.dataplane is not None
    assert side.dataplane.ingested == 4 and side.dataplane.ingest_misses == 0
    assert all(len(packets) == 5 for packets in side.received)
    assert side.remote.counters.rtp_in == 5


def test_a_closed_flow_leaves_nothing_in_the_data_plane(kernels: Kernels) -> None:
    side = FarSide(kernels, plane=True)
    dataplane = side.dataplane
    assert dataplane is not None
    side.announce()
    side.relay(packet(1, key=True))
    assert dataplane.stream_count == 3 and dataplane.handle_of(side.remote) >= 0
    side.remote.close()
    assert dataplane.stream_count == 0 and dataplane.handle_of(side.remote) == -1
    assert side.publication.on_fanout is None
    # What still arrives takes the Router's path (nothing is left to take it).
    side.relay(packet(2))
    assert dataplane.ingested == 1
    assert all(len(packets) == 2 for packets in side.received)


def test_the_hub_hands_its_plane_to_each_remote_and_releases_it_with_the_peer(
    kernels: Kernels,
) -> None:
    dataplane = DataPlane(kernels=kernels)
    pipe = Pipe(role=1, now=0.0)
    hub = RelayHub(
        {7: pipe}, lambda track: None, lambda peer, data: None, lambda peer: None, lambda: 0.0
    )
    hub.plane = dataplane
    codec = NegotiatedCodec(VP8_PT, "VP8", 90000, None, None, ())
    publication = Publication(
        "TR_x", "bob", "video", "cam", "0", codec, dict(PUB_EXT), RIDS, kernels=kernels
    )
    assert hub.open(7, publication)
    remote = hub.remotes[7, next(iter(hub.remotes))[1]]
    assert remote.plane is dataplane and dataplane.handle_of(remote) >= 0
    # Opened again (a new pipe to that node): the first flow's source goes.
    assert hub.open(7, publication)
    assert dataplane.handle_of(remote) == -1 and len(hub.remotes) == 1
    current = next(iter(hub.remotes.values()))
    hub.drop_peer(7)
    assert dataplane.handle_of(current) == -1 and not hub.remotes


def test_packets_taken_in_one_batch_are_forwarded_together_when_the_batch_ends(
    kernels: Kernels,
) -> None:
    """With ``defer`` (the loop's call_soon in the server) the packets a socket read brings
    wait for the end of the batch and are forwarded in one go; a source closed meanwhile
    drops its packets, counted, and forwards nothing."""
    side = FarSide(kernels, plane=True)
    dataplane = side.dataplane
    assert dataplane is not None
    deferred: list[Any] = []
    dataplane.defer = deferred.append
    side.announce()
    for seq in range(1, 4):
        side.relay(packet(seq, key=seq == 1))
    assert len(deferred) == 1  # one flush for the batch
    assert dataplane.ingested == 0 and side.received == [[], []]
    deferred.pop()()
    side.collect()
    assert dataplane.ingested == 3 and all(len(p) == 3 for p in side.received)
    side.relay(packet(4))
    side.relay(packet(5))
    side.remote.close()
    deferred.pop()()
    side.collect()
    assert dataplane.ingested == 3 and dataplane.ingest_misses == 2
    assert all(len(p) == 3 for p in side.received)


def test_sources_never_take_a_participants_slot_and_odd_packets_take_the_router(
    kernels: Kernels,
) -> None:
    """Sources are bounded on their own (``max_sources``: the slots kept for them), a packet
    the forwarder would not take (not RTP, too large) goes to the Router's path at once
    (after what was taken before it), and a source is never paced."""
    side = FarSide(kernels, plane=True)
    dataplane = side.dataplane
    assert dataplane is not None
    dataplane.max_sources = 1  # this side's own source is the one
    with pytest.raises(ValueError):  # nothing is ever sent to a source
        dataplane.forwarder.set_pacer(dataplane.handle_of(side.remote), None)
    other = FarSide(kernels, plane=False)
    assert not dataplane.open_source(other.remote, level_id=0)
    side.remote.close()
    assert dataplane.open_source(other.remote, level_id=0)  # its slot came back
    dataplane.close_source(other.remote)
    side = FarSide(kernels, plane=True)
    assert side.dataplane is not None
    deferred: list[Any] = []
    side.dataplane.defer = deferred.append
    side.announce()
    side.relay(packet(1, key=True))
    assert side.dataplane.ingested == 0  # waiting for the end of the batch
    big = packet(2) + bytes(2100)  # beyond the forwarder's work buffer
    side.relay(big)
    # The taken packet went first, then the large one through the Router.
    assert side.dataplane.ingested == 1 and side.remote.counters.rtp_in == 1
    side.replay()
    assert side.remote.counters.rtp_in == 2
