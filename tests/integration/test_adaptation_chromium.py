"""Bandwidth adaptation with real clients: a Chromium subscriber behind a shaped downlink.

A Chromium publisher and a receive-only Chromium subscriber run in network namespaces this test
creates (:mod:`netns`); the server runs in the root namespace. The publisher sends three
simulcast layers of about 150 / 490 / 1480 kbit/s: its camera is a generated 1280x720 clip
whose fresh per-frame noise keeps every layer at its encoder's bitrate cap (Chromium's own
fake camera compresses too well). The subscriber's downlink goes through phases shaped with
``tc tbf`` on its veth: uncapped, 400 kbit/s, 900 kbit/s, below the lowest layer, uncapped
again, and the test reads the subscriber's getStats() every half second (frame height,
freezes, loss, retransmissions, the server's stream state) and the issue's targets per phase.

:data:`TARGETS` lists every target of issue 13; :data:`MET_NOW` names those this server meets
today with a REMB-driven budget (the send-side estimator from transport-wide CC, which the
other targets need, is another branch's work). The test asserts the met targets and reports the
figures of all of them (``SFU_ADAPTATION_REPORT=path`` writes them as JSON).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import netns
import numpy as np
import pytest
from browser import wait_until
from meeting import ServerThread, page_state, stats, wait_connected
from selenium import webdriver

from sfu.config import AuditConfig, AuthConfig, Config, HttpConfig, MediaConfig, ServerConfig
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

ROOM: Final = "adaptation"
#: Clip geometry: Chromium's fake capture loops the file.
WIDTH, HEIGHT, FPS, FRAMES = 1280, 720, 30, 30
#: Frame heights of the three simulcast layers (scaleResolutionDownBy 4, 2, 1).
LOW, MID, TOP = 180, 360, 720
#: (name, downlink kbit/s or None for uncapped, seconds).
PHASES: Final = (
    ("cap400", 400, 20.0),
    ("cap900", 900, 20.0),
    ("below", 100, 15.0),
    ("uncapped", None, 15.0),
)
#: The uncapped start lasts until the subscriber decodes the top layer, at most this long.
WARMUP_S: Final = 40.0
SAMPLE_S: Final = 0.5
#: Token-bucket depth and queue of the shaped link (``tc tbf``): DESIGN.md's shaping example.
BURST_KBIT: Final = 32
LATENCY_MS: Final = 50

#: The targets of issue 13, by key: what each means.
TARGETS: Final = {
    "cap400.low_within_2s": "capped at 400 kbit/s: on the low layer within 2 s",
    "cap400.frozen_le_2s": "capped at 400 kbit/s: at most 2 s frozen",
    "cap400.loss_lt_5pct": "capped at 400 kbit/s: loss under 5%",
    "cap400.rtx_le_0.2": "capped at 400 kbit/s: <= 0.2 retransmitted per original video packet",
    "cap400.no_top_flash": "capped at 400 kbit/s: no top-layer frames after the shed",
    "cap900.mid_ge_60pct": "capped at 900 kbit/s: the middle layer at least 60% of the time",
    "cap900.frozen_le_1.5s": "capped at 900 kbit/s: at most 1.5 s frozen",
    "below.paused": "below the lowest layer: the server pauses the video and the client says so",
    "below.paused_half": "below the lowest layer: paused (not frozen) most of the phase",
    "below.audio_intact": "below the lowest layer: audio keeps flowing (loss under 5%)",
    "uncapped.top_within_8s": "cap removed: the top layer again within 8 s",
    "uncapped.via_middle": "cap removed: climbing through the middle layer",
}
#: The targets met with the REMB-driven budget this branch has (see the module docstring).
MET_NOW: Final = frozenset({"below.paused", "uncapped.top_within_8s"})


@dataclass
class Sample:
    """One reading of the subscriber's inbound video and audio (cumulative counters)."""

    t: float
    height: int
    frames: int
    freezes_s: float
    lost: int
    received: int
    rtx: int
    state: str
    audio_lost: int
    audio_received: int


@dataclass
class PhaseFigures:
    """What one phase measured."""

    name: str
    cap_kbit: int | None
    seconds: float
    #: Frame height per sample while frames were decoded since the previous one (0: stalled).
    heights: list[int] = field(default_factory=list)
    time_to_low_s: float | None = None
    time_to_top_s: float | None = None
    #: Seconds without a new decoded frame while the video was not paused (sampled), and
    #: Chromium's own totalFreezesDuration (which counts a freeze only once it ended).
    frozen_s: float = 0.0
    chromium_freezes_s: float = 0.0
    loss: float = 0.0
    rtx_per_packet: float = 0.0
    top_after_shed: int = 0
    mid_share: float = 0.0
    paused_share: float = 0.0
    audio_loss: float = 0.0
    saw_mid_before_top: bool = False


def write_clip(path: Path) -> None:
    """A 1280x720 I420 y4m clip: a panning texture plus fresh noise in every frame, so that
    each simulcast layer's encoder spends its whole bitrate cap (Chromium loops the file)."""
    rng = np.random.default_rng(13)
    texture = rng.integers(16, 236, size=(HEIGHT * 2, WIDTH * 2), dtype=np.uint8)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    chroma = np.full((HEIGHT // 2, WIDTH // 2), 128, dtype=np.uint8)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(FRAMES):
            dx, dy = 7 * i, 3 * i
            luma = texture[yy + dy, xx + dx].astype(np.int16)
            luma += rng.integers(-24, 25, size=luma.shape, dtype=np.int16)
            u = (chroma.astype(np.int16) + ((xx[::2, ::2] + 4 * i) % 64) - 32).astype(np.uint8)
            out.write(b"FRAME\n")
            out.write(np.clip(luma, 0, 255).astype(np.uint8).tobytes())
            out.write(u.tobytes())
            out.write(chroma.tobytes())


def _token(secret: str, identity: str) -> str:
    now = int(time.time())
    claims = JoinClaims(
        room=ROOM,
        identity=identity,
        name=identity,
        grants=Grant.PUBLISH | Grant.SUBSCRIBE | Grant.HOST,
        iat=now,
        exp=now + 900,
    )
    return str(issue_token(secret, claims))


@contextlib.contextmanager
def lab_server(address: str) -> Iterator[tuple[ServerThread, str, str]]:
    """The server on the lab's root-namespace address; yields it, its base URL and the
    token secret (development tokens are for loopback only)."""
    secret = secrets.token_urlsafe(48)
    config = Config(
        http=HttpConfig(host=address, port=0),
        media=MediaConfig(udp_host=address, udp_port=0),
        server=ServerConfig(drain_timeout_s=3.0),
        auth=AuthConfig(jwt_secret=secret, dev_tokens=False),
        audit=AuditConfig(path=tempfile.mkdtemp(prefix="sfu-test-audit-")),
    )
    server = ServerThread(config)
    try:
        server.start()
        base = f"http://{address}:{server.server.http_addresses[0][1]}"
        yield server, base, secret
    finally:
        server.stop()


def _open(driver: webdriver.Remote, base: str, token: str, name: str) -> None:
    # No tile-size hints: the tile's size must not be what limits the layer here.
    driver.get(f"{base}/?room={ROOM}&name={name}&hints=0&token={token}")


def _read(driver: webdriver.Remote, publisher_id: str, started: float) -> Sample | None:
    remote = stats(driver).get("remote", {})
    video = next(
        (e for e in remote.values() if e["participant"] == publisher_id and e["kind"] == "video"),
        None,
    )
    audio = next(
        (e for e in remote.values() if e["participant"] == publisher_id and e["kind"] == "audio"),
        None,
    )
    if video is None or audio is None:
        return None
    return Sample(
        t=time.monotonic() - started,
        height=int(video["frameHeight"]),
        frames=int(video["framesDecoded"]),
        freezes_s=float(video["totalFreezesDuration"]),
        lost=int(video["packetsLost"]),
        received=int(video["packetsReceived"]),
        rtx=int(video["retransmittedPacketsReceived"]),
        state=str(video["state"]),
        audio_lost=int(audio["packetsLost"]),
        audio_received=int(audio["packetsReceived"]),
    )


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def figures(name: str, cap: int | None, samples: list[Sample]) -> PhaseFigures:
    """The phase's figures from its samples (the first is the reading at its start)."""
    first, last = samples[0], samples[-1]
    out = PhaseFigures(name, cap, round(last.t - first.t, 1))
    moving = [False] + [b.frames > a.frames for a, b in itertools.pairwise(samples)]
    heights = [s.height if m else 0 for s, m in zip(samples, moving, strict=True)]
    out.heights = heights
    lows = [s.t - first.t for s, h in zip(samples, heights, strict=True) if 0 < h <= LOW]
    out.time_to_low_s = round(lows[0], 1) if lows else None
    tops = [s.t - first.t for s, h in zip(samples, heights, strict=True) if h >= TOP]
    out.time_to_top_s = round(tops[0], 1) if tops else None
    out.frozen_s = round(
        sum(
            b.t - a.t
            for a, b in itertools.pairwise(samples)
            if b.frames == a.frames and b.state != "paused"
        ),
        2,
    )
    out.chromium_freezes_s = round(last.freezes_s - first.freezes_s, 2)
    lost, received = last.lost - first.lost, last.received - first.received
    out.loss = round(_ratio(lost, lost + received), 3)
    rtx = last.rtx - first.rtx
    out.rtx_per_packet = round(_ratio(rtx, received - rtx), 3)
    shed = next((i for i, h in enumerate(heights) if 0 < h < TOP), None)
    out.top_after_shed = 0 if shed is None else sum(1 for h in heights[shed:] if h >= TOP)
    later = samples[1:]
    out.mid_share = round(_ratio(sum(1 for h in heights[1:] if h == MID), len(later)), 2)
    out.paused_share = round(_ratio(sum(1 for s in later if s.state == "paused"), len(later)), 2)
    audio_lost = last.audio_lost - first.audio_lost
    audio_received = last.audio_received - first.audio_received
    out.audio_loss = round(_ratio(audio_lost, audio_lost + audio_received), 3)
    first_top = next((i for i, h in enumerate(heights) if h >= TOP), None)
    out.saw_mid_before_top = first_top is not None and MID in heights[:first_top]
    return out


def verdicts(phases: dict[str, PhaseFigures]) -> dict[str, bool]:
    """Whether each target of :data:`TARGETS` was met."""
    cap400, cap900 = phases["cap400"], phases["cap900"]
    below, uncapped = phases["below"], phases["uncapped"]
    return {
        "cap400.low_within_2s": cap400.time_to_low_s is not None and cap400.time_to_low_s <= 2.0,
        "cap400.frozen_le_2s": cap400.frozen_s <= 2.0,
        "cap400.loss_lt_5pct": cap400.loss < 0.05,
        "cap400.rtx_le_0.2": cap400.rtx_per_packet <= 0.2,
        "cap400.no_top_flash": cap400.top_after_shed == 0,
        "cap900.mid_ge_60pct": cap900.mid_share >= 0.6,
        "cap900.frozen_le_1.5s": cap900.frozen_s <= 1.5,
        "below.paused": below.paused_share > 0,
        "below.paused_half": below.paused_share >= 0.5,
        "below.audio_intact": below.audio_loss < 0.05,
        "uncapped.top_within_8s": uncapped.time_to_top_s is not None
        and uncapped.time_to_top_s <= 8.0,
        "uncapped.via_middle": uncapped.saw_mid_before_top,
    }


def _run_phase(probe: Callable[[], Sample | None], seconds: float, first: Sample) -> list[Sample]:
    samples = [first]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_S)
        sample = probe()
        if sample is not None:
            samples.append(sample)
    return samples


def test_a_shaped_subscriber_adapts_through_the_phases(tmp_path: Path) -> None:
    clip = tmp_path / "clip.y4m"
    write_clip(clip)
    with (
        netns.lab(["pub", "sub"]) as hosts,
        lab_server(hosts.server_address) as (_server, base, secret),
    ):
        secure = f"--unsafely-treat-insecure-origin-as-secure={base}"
        camera = f"--use-file-for-fake-video-capture={clip}"
        with (
            hosts["pub"].chromium((secure, camera)) as publisher,
            hosts["sub"].chromium((secure, "--use-fake-ui-for-media-stream=deny")) as viewer,
        ):
            _open(publisher, base, _token(secret, "publisher"), "Publisher")
            _open(viewer, base, _token(secret, "viewer"), "Viewer")
            publisher_id = wait_connected(publisher, timeout=30.0)
            wait_connected(viewer, timeout=30.0)
            started = time.monotonic()

            def probe() -> Sample | None:
                return _read(viewer, publisher_id, started)

            # Uncapped: until the subscriber decodes the top layer.
            reached = wait_until(
                probe, lambda s: s is not None and s.height >= TOP, timeout=WARMUP_S
            )
            assert reached is not None
            time.sleep(3.0)  # settle on the top layer
            sub = hosts["sub"]
            phases: dict[str, PhaseFigures] = {}
            current = probe()
            assert current is not None
            for name, cap, seconds in PHASES:
                if cap is None:
                    sub.clear()
                else:
                    sub.shape_downlink(cap, BURST_KBIT, LATENCY_MS)
                samples = _run_phase(probe, seconds, current)
                phases[name] = figures(name, cap, samples)
                current = samples[-1]
            sub.clear()
            assert page_state(viewer).get("error") is None
            assert page_state(publisher).get("error") is None
    met = verdicts(phases)
    report = {
        "phases": {name: asdict(p) for name, p in phases.items()},
        "targets": {key: {"met": met[key], "what": TARGETS[key]} for key in TARGETS},
    }
    print(json.dumps(report, indent=1))
    out = os.environ.get("SFU_ADAPTATION_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=1) + "\n", "utf-8")
    missed = sorted(key for key in MET_NOW if not met[key])
    assert not missed, [
        f"{key}: {TARGETS[key]}: {asdict(phases[key.split('.')[0]])}" for key in missed
    ]


def test_the_clip_is_valid_y4m(tmp_path: Path) -> None:
    clip = tmp_path / "clip.y4m"
    write_clip(clip)
    data = clip.read_bytes()
    header, _, rest = data.partition(b"\n")
    assert header.startswith(b"YUV4MPEG2 W1280 H720 F30:1")
    frame = len(b"FRAME\n") + WIDTH * HEIGHT * 3 // 2
    assert len(rest) == FRAMES * frame
    assert rest[:6] == b"FRAME\n" and rest[frame : frame + 6] == b"FRAME\n"
