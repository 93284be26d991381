"""Bandwidth adaptation with real clients: a Chromium subscriber behind a shaped downlink.

A Chromium publisher and a receive-only Chromium subscriber run in network namespaces this test
creates (:mod:`netns`); the server runs in the root namespace. The publisher sends three
simulcast layers of about 150 / 490 / 1480 kbit/s: its camera is a generated 1280x720 clip
whose fresh per-frame noise keeps every layer at its encoder's bitrate cap (Chromium's own
fake camera compresses too well). The subscriber's downlink goes through phases shaped with
``tc tbf`` on its veth: uncapped, 400 kbit/s, 900 kbit/s, below the lowest layer, uncapped
again, and the test reads the subscriber's getStats() every half second (frame height,
freezes, loss, retransmissions, the server's stream state) and the issue's targets per phase.

:data:`bench.adaptation.TARGETS` lists every target of issue 13 (the measurement is shared with
``python -m bench adaptation``); :data:`MET_NOW` names those this server met in repeated runs
on this (loaded) machine with the send-side estimator, the prober and the allocator together.
The test asserts the met targets and reports the figures of all of them
(``SFU_ADAPTATION_REPORT=path`` writes them as JSON); ``SFU_BWE_TRACE=path`` writes the
server's ``sfu.bwe`` debug trace (every allocation and probe) with the phase changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Final

import netns
import pytest
from browser import wait_until
from meeting import ServerThread, page_state, wait_connected
from scratch import scratch_dir
from selenium import webdriver

from bench.adaptation import (
    BURST_KBIT,
    FPS,
    FRAMES,
    HEIGHT,
    LATENCY_MS,
    PHASES,
    SAMPLE_S,
    TARGETS,
    TOP,
    WARMUP_S,
    WIDTH,
    PhaseFigures,
    Sample,
    figures,
    read_sample,
    verdicts,
    write_clip,
)
from sfu.config import AuditConfig, AuthConfig, Config, HttpConfig, MediaConfig, ServerConfig
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

ROOM: Final = "adaptation"
#: The publisher's top layer counts as ramped up at this rate (its cap is 1500 kbit/s).
TOP_RAMPED_KBPS: Final = 1000.0
#: The targets met in every run of the integration tuning (bench/RESULTS.md); the others are
#: reported, not asserted (see the module docstring).
#: ``below.audio_intact`` (audio loss under 5 % below the lowest layer) is reported, not
#: asserted: 0.7, 8.7, 3.8 and 6.3 % in four runs with the first clip, 0.9-3.7 % in eight with
#: the camera-like one, too close to the line for CI; so is ``cap400.frozen_le_2s`` (1.92 s in
#: one of those eight). ``cap900.frozen_le_1.5s`` and ``uncapped.via_middle`` were met in all
#: eight, both kernels (bench/RESULTS.md, "the lab's clip").
MET_NOW: Final = frozenset(
    {
        "below.paused",
        "below.paused_half",
        "cap400.no_top_flash",
        "cap400.rtx_le_0.2",
        "cap900.frozen_le_1.5s",
        "cap900.mid_ge_60pct",
        "uncapped.via_middle",
    }
)


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
        audit=AuditConfig(path=scratch_dir()),
    )
    server = ServerThread(config)
    try:
        server.start()
        base = f"http://{address}:{server.server.http_addresses[0][1]}"
        yield server, base, secret
    finally:
        server.stop()


@contextlib.contextmanager
def bwe_trace() -> Iterator[logging.Logger]:
    """The server's bandwidth decisions (the ``sfu.bwe`` DEBUG trace) into the file named by
    ``SFU_BWE_TRACE``, when set; phase changes are written into the same file."""
    logger = logging.getLogger("sfu.bwe")
    path = os.environ.get("SFU_BWE_TRACE")
    if not path:
        yield logger
        return
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(relativeCreated)d %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _open(driver: webdriver.Remote, base: str, token: str, name: str) -> None:
    # No tile-size hints: the tile's size must not be what limits the layer here.
    driver.get(f"{base}/?room={ROOM}&name={name}&hints=0&token={token}")


def _layer_kbps(server: ServerThread) -> list[float]:
    """The publisher's video layers as the server measures them (call on the server's loop)."""
    assert server.server.rooms is not None
    room = server.server.rooms.rooms[ROOM]
    video = next(p for p in room.publications.values() if p.video)
    now = time.monotonic()
    return [round(s.meter.bps(now) / 1000, 1) for _, s in sorted(video.layers.items())]


def _median(readings: list[list[float]]) -> list[float]:
    """Per layer, the median of one-second readings (a single second is bursty)."""
    layers = max((len(r) for r in readings), default=0)
    columns = [sorted(r[i] for r in readings if len(r) > i) for i in range(layers)]
    return [c[len(c) // 2] for c in columns]


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
        bwe_trace() as trace,
        netns.lab(["pub", "sub"]) as hosts,
        lab_server(hosts.server_address) as (server, base, secret),
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
                return read_sample(viewer, publisher_id, started)

            # Uncapped: until the subscriber decodes the top layer and the publisher's own
            # bandwidth estimate has ramped its top layer up (bounded: a loaded machine's
            # encoder may never get there, and the figures then say so).
            reached = wait_until(
                probe, lambda s: s is not None and s.height >= TOP, timeout=WARMUP_S
            )
            assert reached is not None
            ramp_end = time.monotonic() + WARMUP_S / 2
            readings: list[list[float]] = []
            while time.monotonic() < ramp_end:
                time.sleep(1.0)
                readings = [*readings[-4:], server.call(lambda: _layer_kbps(server))]
                if len(readings) == 5 and _median(readings)[-1] >= TOP_RAMPED_KBPS:
                    break
            layer_kbps = _median(readings)
            sub = hosts["sub"]
            phases: dict[str, PhaseFigures] = {}
            current = probe()
            assert current is not None
            for name, cap, seconds in PHASES:
                trace.debug("phase %s cap=%s", name, cap)
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
        "publisher_layers_kbps": layer_kbps,
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
    assert header.startswith(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{FPS}:1".encode())
    frame = len(b"FRAME\n") + WIDTH * HEIGHT * 3 // 2
    assert len(rest) == FRAMES * frame
    assert rest[:6] == b"FRAME\n" and rest[frame : frame + 6] == b"FRAME\n"
