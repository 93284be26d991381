"""Kernel bundles: what each holds, that objects are built from the one they are given, and
that the compiled forwarder refuses objects of the other kind instead of misreading them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from forwarder_world import PUB_EXT, SUB_EXT, World
from kernel_selection import EXPECT_COMPILED, NO_EXTENSIONS

from sfu import _fastpath
from sfu._fastpath.values import VP8
from sfu.core.dataplane import DataPlane
from sfu.core.kernels import REFERENCE, Kernels, compiled, default_kernels
from sfu.core.publication import Publication
from sfu.core.subscription import Subscription
from sfu.negotiation import NegotiatedCodec

VP8_CODEC = NegotiatedCodec(96, "VP8", 90000, None, None, ("nack", "nack pli"))
OPUS_CODEC = NegotiatedCodec(111, "opus", 48000, 2, None, ())
REFERENCE_MODULES = {
    "sfu._fastpath._bwe_py",
    "sfu._fastpath._pacer_py",
    "sfu._fastpath._forward_py",
    "sfu._fastpath._lane_py",
    "sfu.core.header_extensions",
    "sfu.core.layers",
    "sfu.core.svc",
    "sfu.core.munger",
    "sfu.core.retransmission",
    "sfu.core.route_state",
    "sfu.core.vp8_munger",
    "sfu.packet.seqnum",
}
CLASSES = [f.name for f in dataclasses.fields(Kernels) if f.name != "name"]


def video(kernels: Kernels) -> Publication:
    return Publication(
        "v", "p", "video", "cam", "0", VP8_CODEC, dict(PUB_EXT), ("q", "h"), kernels=kernels
    )


def subscription(publication: Publication, kernels: Kernels, **kwargs: Any) -> Subscription:
    return Subscription(
        "s",
        publication,
        "u",
        "0",
        out_ssrc=0x9000,
        payload_type=publication.codec.payload_type,
        extensions=dict(SUB_EXT),
        kernels=kernels,
        **kwargs,
    )


# -- the bundles ---------------------------------------------------------------------------------


def test_reference_bundle_holds_the_pure_python_classes() -> None:
    assert REFERENCE.name == "python"
    for name in CLASSES:
        cls = getattr(REFERENCE, name)
        assert cls.__name__ == name
        assert cls.__module__ in REFERENCE_MODULES


def test_compiled_bundle_holds_the_cython_classes(compiled_kernels: Kernels) -> None:
    assert compiled_kernels.name == "cython"
    assert compiled() is compiled_kernels  # built once
    for name in CLASSES:
        cls = getattr(compiled_kernels, name)
        assert cls.__name__ == name
        assert cls.__module__.startswith("sfu._fastpath._") and cls is not getattr(REFERENCE, name)


def test_bundles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        REFERENCE.RtpMunger = REFERENCE.RtpMunger  # type: ignore[misc]


def test_the_run_checks_the_bundle_the_application_selects(kernels: Kernels) -> None:
    """SFU_NO_EXTENSIONS=1 selects the references; SFU_EXPECT_COMPILED=1 the compiled ones."""
    assert default_kernels() is kernels
    assert kernels.name == _fastpath.IMPLEMENTATION
    if NO_EXTENSIONS:
        assert kernels is REFERENCE
    elif EXPECT_COMPILED:
        assert kernels is compiled()


# -- construction ---------------------------------------------------------------------------------


def test_kernels_is_a_required_keyword() -> None:
    with pytest.raises(TypeError, match="kernels"):
        Publication("a", "p", "audio", "mic", "1", OPUS_CODEC, {})  # type: ignore[call-arg]
    publication = Publication("a", "p", "audio", "mic", "1", OPUS_CODEC, {}, kernels=REFERENCE)
    with pytest.raises(TypeError, match="kernels"):
        Subscription(  # type: ignore[call-arg]
            "s", publication, "u", "0", out_ssrc=1, payload_type=111, extensions={}
        )
    with pytest.raises(TypeError, match="kernels"):
        DataPlane()  # type: ignore[call-arg]


def test_publication_streams_come_from_its_bundle(each_kernels: Kernels) -> None:
    publication = video(each_kernels)
    stream = publication.add_stream(0x1111, 1)
    assert type(stream.unwrapper) is each_kernels.SequenceUnwrapper
    assert type(stream.cache) is each_kernels.RetransmissionBuffer
    assert stream.cache.capacity == 512
    audio = Publication("a", "p", "audio", "mic", "1", OPUS_CODEC, {}, kernels=each_kernels)
    assert audio.add_stream(0x2222, 0).cache.capacity == 64


def test_subscription_objects_come_from_its_bundle(each_kernels: Kernels) -> None:
    sub = subscription(video(each_kernels), each_kernels, initial_seq=1000, initial_ts=5000)
    assert sub.kernels is each_kernels
    assert type(sub.munger) is each_kernels.RtpMunger
    assert type(sub.selector) is each_kernels.SimulcastSelector
    assert type(sub.vp8) is each_kernels.Vp8Munger
    assert type(sub.extensions) is each_kernels.ExtensionRewriter
    assert type(sub.state) is each_kernels.RouteState
    assert sub.send_stats.sent is sub.state
    # The first outgoing values are the ones asked for, not those of the first packet.
    assert sub.munger.translate(70, 123456, 1.0, 0x1111).out_seq % 65536 == 1000
    audio = Publication("a", "p", "audio", "mic", "1", OPUS_CODEC, {}, kernels=each_kernels)
    plain = subscription(audio, each_kernels)
    assert plain.selector is None and plain.vp8 is None


def test_subscription_refuses_a_bundle_other_than_its_publications(
    compiled_kernels: Kernels,
) -> None:
    with pytest.raises(ValueError, match="its publication's kernels"):
        subscription(video(REFERENCE), compiled_kernels)
    with pytest.raises(ValueError, match="its publication's kernels"):
        subscription(video(compiled_kernels), REFERENCE)


def test_data_plane_builds_its_forwarder_from_its_bundle(each_kernels: Kernels) -> None:
    plane = DataPlane(kernels=each_kernels)
    assert plane.kernels is each_kernels
    assert type(plane.forwarder) is each_kernels.Forwarder


def test_data_plane_refuses_a_forwarder_of_another_kind(compiled_kernels: Kernels) -> None:
    with pytest.raises(TypeError, match="not the cython kernels' Forwarder"):
        DataPlane(REFERENCE.Forwarder(), kernels=compiled_kernels)
    with pytest.raises(TypeError, match="not the python kernels' Forwarder"):
        DataPlane(compiled_kernels.Forwarder(), kernels=REFERENCE)


# -- the compiled forwarder and objects of the other kind ----------------------------------------


def test_compiled_forwarder_refuses_reference_streams(compiled_kernels: Kernels) -> None:
    world = World(compiled_kernels)
    stream = video(REFERENCE).add_stream(0x5555, 0)
    with pytest.raises(TypeError, match=r"compiled kernels \(sfu.core.kernels.compiled\(\)\)"):
        world.forwarder.set_stream(10, 0, stream, VP8)
    with pytest.raises(KeyError):  # nothing was registered
        world.forwarder.set_routes(10, [])


@pytest.mark.parametrize("part", ["munger", "selector", "vp8", "extensions", "state"])
def test_compiled_forwarder_refuses_routes_with_reference_objects(
    compiled_kernels: Kernels, part: str
) -> None:
    """Any one reference object in a subscription is refused, and the old routes stay."""
    world = World(compiled_kernels)
    sub = world.video_subs[0]
    other = subscription(video(REFERENCE), REFERENCE)
    setattr(sub, part, getattr(other, part))
    with pytest.raises(TypeError, match=r"compiled kernels \(sfu.core.kernels.compiled\(\)\)"):
        world.forwarder.set_routes(0, [(sub, 1)])
    compiled_sub = world.video_subs[1]
    world.forwarder.set_routes(0, [(compiled_sub, 2)])  # compiled ones still go in
