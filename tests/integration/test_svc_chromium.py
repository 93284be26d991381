"""Scalable video (SVC) from headless Chromium: one VP9 or AV1 ``L3T3_KEY`` stream, layers
chosen per subscriber by the server.

The publishing page is the demo page with ``?codec=vp9&svc=L3T3_KEY`` (or ``codec=av1``): its
fake camera (1280x720) goes out as one stream of three spatial layers (320x180, 640x360,
1280x720) and three temporal layers, the codec offered alone with setCodecPreferences. VP9
names each packet's layers in its payload descriptor (RFC 9628), AV1 in the Dependency
Descriptor header extension (AV1 RTP spec, Appendix A). A receive-only viewer decodes
it; capping the viewer to spatial layer 0 must bring it down to 320 pixels wide at a lower
bitrate (the server drops the upper layer frames), lifting the cap must bring the full
resolution back, both without a freeze; capping the temporal layer to 0 must leave a quarter
of the frames, still decoding.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import pytest
from browser import chromium, wait_until
from meeting import (
    ServerThread,
    open_meeting,
    page_state,
    remote_by,
    sample,
    server_thread,
    set_preferences,
    stats,
    track_id,
    wait_connected,
)
from selenium import webdriver

pytestmark = pytest.mark.integration

#: The fake media UI denies getUserMedia: the demo page joins without sending.
RECEIVE_ONLY = ("--use-fake-ui-for-media-stream=deny",)
JOIN_DEADLINE_S = 20.0
#: Chromium's fake camera: 1280x720; L3T3_KEY halves it per spatial layer below.
TOP_WIDTH = 1280
BASE_WIDTH = 320
#: The fake camera runs at 20 fps (some 40 frames in 2 s): accept half of that.
MIN_FRAMES_2S = 20
#: Temporal layer 0 alone is a quarter of them (some 10 frames in 2 s): accept half of that.
MIN_FRAMES_T0_2S = 5
WINDOW_TRIES = 3
#: A viewer capped to the base layer gets at most this share of the bytes it got uncapped.
#: Not a half: while the publisher's bandwidth estimate still ramps up (some 300 kbit/s for
#: all three layers in a loaded run), the encoder gives its base layer over half of the
#: stream (seen: 38.7 kB against 69.7 kB in 2 s). The frame width is the exact check.
CAPPED_BYTES_SHARE = 0.8

Entry = dict[str, Any] | None


#: Second publishers of the mixed room: (codec, scalability mode; empty: simulcast).
MIXED = (("vp9", "L3T3_KEY"), ("av1", "L3T3_KEY"), ("av1", ""))


def _open_svc_publisher(
    driver: webdriver.Chrome, base: str, room: str, codec: str = "vp9", svc: str = "L3T3_KEY"
) -> None:
    """The demo page publishing ``codec`` in scalability mode ``svc`` (empty: simulcast)."""
    params = {"room": room, "name": "Publisher", "hints": "0", "codec": codec}
    if svc:
        params["svc"] = svc
    query = urllib.parse.urlencode(params)
    driver.get(f"{base}/?{query}")


#: Keep every spatial layer when the publisher's CPU is short (the test machine is shared and
#: loaded; Chromium's default adaptation drops the top spatial layers first).
KEEP_RESOLUTION_JS = """
const done = arguments[arguments.length - 1];
const local = window.sfuRoom && window.sfuRoom._local.get("video");
if (!local) { done("no video sender"); return; }
const sender = local.transceiver.sender;
const params = sender.getParameters();
params.degradationPreference = "maintain-resolution";
sender.setParameters(params).then(() => done("ok"), (e) => done(String(e)));
"""


#: The layers the page's client knows of a track (from track_published / track_updated).
TRACK_LAYERS_JS = """
for (const p of window.sfuRoom.participants.values()) {
  const t = p.tracks.get(arguments[0]);
  if (t) return t.layers;
}
return null;
"""


def _keep_resolution(driver: webdriver.Chrome) -> None:
    wait_until(lambda: driver.execute_async_script(KEEP_RESOLUTION_JS), lambda r: r == "ok", 10.0)


def _video(driver: webdriver.Chrome, participant: str) -> Entry:
    return remote_by(stats(driver), participant, "video")


def _width_is(viewer: webdriver.Chrome, pub_id: str, width: int, timeout: float) -> None:
    wait_until(
        lambda: _video(viewer, pub_id),
        lambda e: e is not None and e["frameWidth"] == width and e["framesDecoded"] > 0,
        timeout=timeout,
    )


def _window(viewer: webdriver.Chrome, pub_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two seconds of the viewer's statistics without a freeze: (first, last). A loaded
    2-core machine (three browsers encoding and decoding 720p) can stall a decoder for a
    moment whatever the server does, so a window with a freeze is sampled again, up to
    :data:`WINDOW_TRIES` times in all."""
    seen: list[tuple[int, int]] = []
    for _ in range(WINDOW_TRIES):
        window = sample(lambda: _video(viewer, pub_id), 2.0)
        first, last = window[0], window[-1]
        assert first is not None and last is not None
        if last["freezeCount"] == first["freezeCount"]:
            return first, last
        seen.append((first["freezeCount"], last["freezeCount"]))
    raise AssertionError(f"no freeze-free 2 s window in {WINDOW_TRIES}: {seen}")


def _publication_layers(server: ServerThread, room: str, pub_id: str) -> tuple[bool, int]:
    def read() -> tuple[bool, int]:
        assert server.server.rooms is not None
        participant = server.server.rooms.rooms[room].participants[pub_id]
        peer = participant.peer
        if peer is None:
            return False, 0  # joined, its offer not handled yet: nothing published so far
        for pub in peer.publications.values():
            if pub.video:
                return pub.svc, pub.num_layers
        return False, 0

    return server.call(read)


@pytest.mark.parametrize("codec", ["vp9", "av1"])
def test_l3t3_key_layers_are_selected_per_subscriber(codec: str) -> None:
    room = f"svc-{codec}"
    with server_thread() as server, chromium() as publisher, chromium(RECEIVE_ONLY) as viewer:
        _open_svc_publisher(publisher, server.base, room, codec)
        open_meeting(viewer, server.base, room, "Viewer")
        pub_id = wait_connected(publisher)
        wait_connected(viewer)
        _keep_resolution(publisher)
        wait_until(
            lambda: _video(viewer, pub_id),
            lambda e: e is not None and e["framesDecoded"] > 0 and e["frameWidth"] > 0,
            timeout=JOIN_DEADLINE_S,
        )
        # One scalable stream whose spatial layers the server learns from its scalability
        # structure (VP9) or template structure (AV1); the encoder adds its upper layers as
        # its bandwidth estimate ramps up.
        wait_until(
            lambda: _publication_layers(server, room, pub_id), lambda v: v == (True, 3), 20.0
        )
        video = track_id(stats(viewer), pub_id, "video")
        assert video is not None
        # ... and re-announces the track with them (track_updated), so clients see its layers.
        wait_until(
            lambda: viewer.execute_script(TRACK_LAYERS_JS, video),
            lambda layers: layers == ["S0", "S1", "S2"],
            10.0,
        )

        # Uncapped: every spatial layer, decoded at the full resolution.
        _width_is(viewer, pub_id, TOP_WIDTH, 25.0)
        first, last = _window(viewer, pub_id)
        top_bytes = last["bytesReceived"] - first["bytesReceived"]
        assert last["framesDecoded"] - first["framesDecoded"] >= MIN_FRAMES_2S

        # Capped to spatial layer 0: only the base layer arrives.
        set_preferences(viewer, video, {"maxSpatial": 0})
        _width_is(viewer, pub_id, BASE_WIDTH, 10.0)
        time.sleep(0.5)
        first, last = _window(viewer, pub_id)
        base_bytes = last["bytesReceived"] - first["bytesReceived"]
        assert last["frameWidth"] == BASE_WIDTH
        assert last["framesDecoded"] - first["framesDecoded"] >= MIN_FRAMES_2S

        # And back up (at the keyframe the server asks for), without a freeze.
        top_bytes = max(top_bytes, _uncapped_again(viewer, pub_id, video))
        assert base_bytes < top_bytes * CAPPED_BYTES_SHARE, (base_bytes, top_bytes)

        # Temporal base layer only: a quarter of the frames (L3T3's 0-2-1-2 pattern), with
        # picture ids / frame numbers left as the publisher numbered them (the gaps are
        # frames never sent).
        set_preferences(viewer, video, {"maxSpatial": 2, "maxTemporal": 0})
        time.sleep(1.0)
        first, last = _window(viewer, pub_id)
        base_frames = last["framesDecoded"] - first["framesDecoded"]
        assert MIN_FRAMES_T0_2S <= base_frames < MIN_FRAMES_2S, base_frames
        set_preferences(viewer, video, {"maxSpatial": 2, "maxTemporal": 2})
        time.sleep(1.0)
        first, last = _window(viewer, pub_id)
        assert last["framesDecoded"] - first["framesDecoded"] >= MIN_FRAMES_2S
        assert page_state(viewer).get("error") is None
        assert page_state(publisher).get("error") is None


def test_av1_l3t3_key_viewer_capped_to_the_base_layer_gets_only_it() -> None:
    """Chromium publishing AV1 ``L3T3_KEY``: the server learns the three spatial layers from the
    Dependency Descriptor's structure; while the viewer is uncapped every layer is forwarded
    (bytes); capped to spatial layer 0 it decodes 320 pixels wide for far fewer bytes."""
    room = "svc-av1-cap"
    with server_thread() as server, chromium() as publisher, chromium(RECEIVE_ONLY) as viewer:
        _open_svc_publisher(publisher, server.base, room, "av1")
        open_meeting(viewer, server.base, room, "Viewer")
        pub_id = wait_connected(publisher)
        wait_connected(viewer)
        _keep_resolution(publisher)
        wait_until(
            lambda: _publication_layers(server, room, pub_id), lambda v: v == (True, 3), 20.0
        )
        video = track_id(stats(viewer), pub_id, "video")
        assert video is not None
        wait_until(
            lambda: viewer.execute_script(TRACK_LAYERS_JS, video),
            lambda layers: layers == ["S0", "S1", "S2"],
            10.0,
        )
        wait_until(lambda: _forwarded_spatial(server, room), lambda s: s == 2, 20.0)
        # The top layer decoded first: until then the publisher's encoder is still ramping
        # up, and bytes measured then would not compare with the capped ones.
        _width_is(viewer, pub_id, TOP_WIDTH, 25.0)
        first, last = _window(viewer, pub_id)
        top_bytes = last["bytesReceived"] - first["bytesReceived"]

        set_preferences(viewer, video, {"maxSpatial": 0})
        _width_is(viewer, pub_id, BASE_WIDTH, 15.0)
        time.sleep(0.5)
        first, last = _window(viewer, pub_id)
        base_bytes = last["bytesReceived"] - first["bytesReceived"]
        assert last["frameWidth"] == BASE_WIDTH
        assert last["framesDecoded"] - first["framesDecoded"] >= MIN_FRAMES_2S
        top_bytes = max(top_bytes, _uncapped_again(viewer, pub_id, video))
        assert base_bytes < top_bytes * CAPPED_BYTES_SHARE, (base_bytes, top_bytes)
        assert page_state(viewer).get("error") is None


def _uncapped_again(viewer: webdriver.Chrome, pub_id: str, video: str) -> int:
    """Lift the viewer's cap: the top layer decodes again (at the keyframe the server asks
    for) without a freeze; returns the bytes of a 2 s window then.

    The capped window is compared with the larger of the uncapped windows before and after
    it: the publisher's encoder, on a loaded machine, dips its upper layers for seconds at a
    time, and one window can catch a dip."""
    set_preferences(viewer, video, {"maxSpatial": 2})
    _width_is(viewer, pub_id, TOP_WIDTH, 20.0)
    first, last = _window(viewer, pub_id)
    assert last["framesDecoded"] - first["framesDecoded"] >= MIN_FRAMES_2S
    return int(last["bytesReceived"] - first["bytesReceived"])


def _forwarded_spatial(server: ServerThread, room: str) -> int | None:
    """The spatial layer the (one) video subscription in ``room`` forwards now."""

    def read() -> int | None:
        assert server.server.rooms is not None
        for participant in server.server.rooms.rooms[room].participants.values():
            peer = participant.peer
            if peer is None:
                continue
            for sub in peer.subscriptions.values():
                if sub.selector is not None:
                    return sub.selector.current.spatial
        return None

    return server.call(read)


@pytest.mark.parametrize(("codec", "svc"), MIXED)
def test_mixed_room_vp8_simulcast_and_another_codec(codec: str, svc: str) -> None:
    """One page publishes VP8 simulcast (the demo's default), another VP9 ``L3T3_KEY``, AV1
    ``L3T3_KEY`` or AV1 simulcast (layers read from the Dependency Descriptor, one per stream);
    a viewer decodes both, and each publisher decodes the other."""
    room = f"svc-mixed-{codec}"
    with (
        server_thread() as server,
        chromium() as vp8_page,
        chromium() as vp9_page,
        chromium(RECEIVE_ONLY) as viewer,
    ):
        open_meeting(vp8_page, server.base, room, "Eight")
        _open_svc_publisher(vp9_page, server.base, room, codec, svc)
        open_meeting(viewer, server.base, room, "Viewer")
        vp8_id = wait_connected(vp8_page)
        vp9_id = wait_connected(vp9_page)
        wait_connected(viewer)

        def decoding(driver: webdriver.Chrome, participant: str) -> None:
            wait_until(
                lambda: _video(driver, participant),
                lambda e: e is not None and e["framesDecoded"] > 0 and e["frameWidth"] > 0,
                timeout=JOIN_DEADLINE_S,
            )

        decoding(viewer, vp8_id)
        decoding(viewer, vp9_id)
        decoding(vp8_page, vp9_id)
        decoding(vp9_page, vp8_id)
        codecs = server.call(
            lambda: sorted(
                (pub.codec.name.upper(), pub.svc)
                for participant in server.server.rooms.rooms[room].participants.values()  # type: ignore[union-attr]
                if participant.peer is not None
                for pub in participant.peer.publications.values()
                if pub.video
            )
        )
        assert codecs == sorted([("VP8", False), (codec.upper(), bool(svc))])
        # Both keep decoding at the viewer. Two publishing pages (one of them a software
        # AV1 or VP9 encoder of three spatial layers) on two cores can starve an encoder for a
        # few seconds after the start, whatever the server does: one healthy window of
        # WINDOW_TRIES is asked for, each growth is shown if none is.
        for participant in (vp8_id, vp9_id):
            grown: list[int] = []
            for _ in range(WINDOW_TRIES):
                before, after = _window(viewer, participant)
                grown.append(after["framesDecoded"] - before["framesDecoded"])
                if grown[-1] >= MIN_FRAMES_2S / 2:
                    break
            else:
                raise AssertionError(f"{participant}: frames per 2 s window {grown}")
